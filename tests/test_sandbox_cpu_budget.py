"""The time budget is the program's CPU time, not wall-clock time: a correct program that shares its CPU (a pool
running more programs than there are CPUs, a trainer beside it) is not scored `timeout`; a program that sleeps is
stopped by the wall-clock cap. Run against DockerSandbox and LocalSandbox.

The contention is made inside the program, so that it does not depend on this machine's load: the program pins
itself to one CPU and forks a busy process there that it never waits for (its CPU time is not the program's), so it
gets at most half of that CPU and its wall time is at least twice its CPU time."""

from __future__ import annotations

import os
import time

import pytest

import prorl.envs as envs
from prorl.sandbox import Test
from prorl.sandbox.base import WALL_FACTOR, default_pool_size, usable_cpus
from prorl.sandbox.docker import DockerSandbox, DockerSandboxConfig
from prorl.sandbox.local import LocalSandbox
from test_sandbox import require_engine

BURN = ("import os, time\n"
        "def burn(cpu_s):\n"
        "    end = time.process_time() + cpu_s\n"
        "    while time.process_time() < end:\n"
        "        pass\n"
        "    return True\n")
SHARED_CPU = ("os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
              "if os.fork() == 0:  # a neighbour on the same CPU, never waited for; gone after 8 s at most\n"
              "    stop = time.monotonic() + 8\n"
              "    while time.monotonic() < stop:\n"
              "        pass\n"
              "    os._exit(0)\n")


@pytest.fixture(scope="module", params=["docker", "local"])
def sandbox(request):
    if request.param == "docker":
        require_engine()
        sb = DockerSandbox(pool_size=1, timeout_s=1.0)
    else:
        sb = LocalSandbox(workers=1, timeout_s=1.0)
    with sb:
        yield sb


def test_a_correct_program_sharing_its_cpu_keeps_its_reward(sandbox):
    """0.55 s of CPU under a 1 s budget, at most half a CPU: over 1.1 s of wall time. It used to end `timeout`
    (reward 0); counted in CPU time it passes (the wall-clock cap, 3 s, leaves room for a loaded machine)."""
    env = envs.make("code", sandbox=sandbox, timeout_s=1.0)
    row = {"task_id": 1, "text": "burn", "test_setup_code": "", "test_list": ["assert burn(0.55)"]}
    score = env.score(f"```python\n{BURN}{SHARED_CPU}```", row)
    assert score.reward == 1.0, score.details
    res = sandbox.run(BURN + SHARED_CPU + "burn(0.55)\nprint('done')", timeout_s=1.0, wall_timeout_s=10.0)
    assert res.status == "ok" and res.stdout == "done\n", res
    assert 0.55 <= res.cpu_s < 1.0 and res.wall_s > 1.0, res  # shared: more wall time than the budget, not CPU


def test_the_cpu_budget_is_shared_by_the_tests(sandbox):
    """Two tests of 0.4 s CPU each under a 0.6 s budget: the second takes the sum past it and is stopped there."""
    results = sandbox.run_tests(BURN, [Test(code="assert burn(0.4)"), Test(code="assert burn(0.4)"),
                                       Test(code="assert burn(0)")], total_timeout_s=0.6)
    assert [(r.passed, r.status) for r in results] == [(True, "ok"), (False, "timeout"), (False, "timeout")]
    assert 0.4 <= results[0].cpu_s < 0.5 and 0.15 <= results[1].cpu_s < 0.35, results


def test_an_endless_loop_spends_the_cpu_budget(sandbox):
    res = sandbox.run("while True:\n    pass", timeout_s=0.5, wall_timeout_s=20.0)
    assert res.status == "timeout" and 0.5 <= res.cpu_s < 1.5 and res.wall_s < 20.0, res


def test_a_program_that_sleeps_is_stopped_by_the_wall_clock_cap(sandbox):
    t0 = time.monotonic()
    res = sandbox.run("import time\ntime.sleep(100)", timeout_s=0.5, wall_timeout_s=1.5)
    elapsed = time.monotonic() - t0
    assert res.status == "timeout" and res.cpu_s < 0.5 and 1.5 <= res.wall_s < 3.0 and elapsed < 10.0, res
    default = sandbox.run("import time\ntime.sleep(100)", timeout_s=0.2)  # the cap is WALL_FACTOR x the budget
    assert default.status == "timeout" and 0.2 * WALL_FACTOR <= default.wall_s < 0.2 * WALL_FACTOR + 1.5, default


def test_a_bad_wall_clock_cap_is_named(sandbox):
    with pytest.raises(ValueError, match="wall_timeout_s"):
        sandbox.run("print(1)", wall_timeout_s=0)


def test_the_default_pool_runs_no_more_programs_than_cpus():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
    assert default_pool_size() == min(4, usable_cpus())
    assert DockerSandboxConfig().pool_size == default_pool_size()
    with LocalSandbox() as sb:
        assert sb.parallelism == default_pool_size()

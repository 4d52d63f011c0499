"""The `memory` status: a program that runs out of memory is told apart from one that crashes, in both sandboxes,
whether Python raised MemoryError (RLIMIT_AS) or the kernel's OOM killer ended it (a memory cgroup's cap). The
code reward still scores such a test as failed (0 for it). Real engine, real cgroups, real OOM kills."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from prorl.envs.code import CodeEnv
from prorl.sandbox import Test
from prorl.sandbox.docker import DockerSandbox
from prorl.sandbox.local import LocalSandbox
from test_sandbox import require_engine

# Ten children hold 20 MB each (each under RLIMIT_AS), then the program grows 1 MB at a time: the group passes a cap
# of program + tmpfs + runner long before the program reaches its own RLIMIT_AS, and the program, now the biggest
# process, is the OOM killer's victim (SIGKILL, no traceback).
HARD_KILL = ("import os, time\nfor _ in range(10):\n    if os.fork() == 0:\n        b = b'k' * (20 << 20)\n"
             "        time.sleep(30)\n        os._exit(0)\ntime.sleep(0.5)\nx = []\nwhile True:\n"
             "    x.append(b'p' * (1 << 20))")
MEMORY_ERROR = "x = bytearray(10**10)"
SLOW_GROWTH = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))"


def test_docker_memory_error_and_oom_kill_are_memory_not_runtime_error():
    """Before: the OOM-killed program read as runtime_error (exit -9), like any crash."""
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=10.0, memory_mb=128) as sb:  # container cap 128 + 64 + 96 MB
        for program in (MEMORY_ERROR, SLOW_GROWTH):
            res = sb.run(program)
            assert (res.status, res.exit_code) == ("memory", 1) and "MemoryError" in res.stderr, res
        killed = sb.run(HARD_KILL)
        assert (killed.status, killed.exit_code) == ("memory", -9), killed
        crash = sb.run("import os\nos.kill(os.getpid(), 9)")  # a SIGKILL with no OOM kill stays a crash
        assert (crash.status, crash.exit_code) == ("runtime_error", -9), crash
        assert sb.run("print(1)").stdout == "1\n"


def test_code_reward_scores_a_memory_kill_as_a_failed_test():
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=10.0, memory_mb=128) as sb:
        env = CodeEnv(sandbox=sb, memory_mb=128)
        tests = [{"input": "1", "output": "1"}, {"input": "2", "output": "2"}]
        program = f"n = input()\nif n == '2':\n{textwrap.indent(HARD_KILL, '    ')}\nprint(n)"
        task = env.task_from_dict({"question": "Echo n.", "tests": tests})
        score = env.verify(f"```python\n{program}\n```", task)
        assert score.reward == 0.5 and score.details["statuses"] == ["ok", "memory"], score


def _memory_cgroup(limit_mb: int) -> Path:
    """A fresh memory cgroup capped at `limit_mb` under this process's own (v1, or a delegated v2 one), or skip."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # v1
            parent, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
            break
    else:  # v2: needs the memory controller delegated to our subtree
        path = Path("/proc/self/cgroup").read_text().splitlines()[0].split("::", 1)[-1]
        parent, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
        if "memory" not in (parent / "cgroup.subtree_control").read_text(errors="ignore").split():
            pytest.skip("no memory cgroup this process may create: no cap to hit on this machine")
    group = parent / f"prorl-test-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_mb << 20))
    except OSError as exc:
        pytest.skip(f"no memory cgroup this process may create ({exc}): no cap to hit on this machine")
    return group


def _process_tree(root: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += frontier
    return tree


def test_local_memory_error_and_oom_kill_are_memory_not_runtime_error():
    """LocalSandbox has no cgroup of its own: the test puts a started worker in a capped one (what an operator's
    systemd slice or container would be) and checks the OOM-killed program reads as `memory`. Before: runtime_error."""
    with LocalSandbox(workers=1, timeout_s=10.0, memory_mb=128) as sb:
        for program in (MEMORY_ERROR, SLOW_GROWTH):
            res = sb.run(program)
            assert (res.status, res.exit_code) == ("memory", 1) and "MemoryError" in res.stderr, res
        group = _memory_cgroup(260)
        try:
            for pid in _process_tree(sb._all[0].proc.pid):
                (group / "cgroup.procs").write_text(str(pid))
            killed = sb.run(HARD_KILL)
            assert (killed.status, killed.exit_code) == ("memory", -9), killed
            crash = sb.run("import os\nos.kill(os.getpid(), 9)")
            assert (crash.status, crash.exit_code) == ("runtime_error", -9), crash
            assert sb.run("print(1)").stdout == "1\n"  # the runner was spared (programs go first)
        finally:
            sb.close()
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def test_an_assertion_test_that_runs_out_of_memory_is_memory():
    with LocalSandbox(workers=1, timeout_s=5.0, memory_mb=128) as sb:
        [res] = sb.run_tests("def f():\n    return bytearray(10**10)\n", [Test(code="assert f()")])
        assert (res.passed, res.status) == (False, "memory"), res

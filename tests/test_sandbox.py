"""DockerSandbox and LocalSandbox: semantics, statuses, the concurrency cap, recycling, healing, endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from prorl.sandbox import ExecResult, Test, outputs_match
from prorl.sandbox.docker import DockerSandbox, engine_available
from prorl.sandbox.runner import encode_frame, read_frame

REPO = Path(__file__).resolve().parents[1]
ENGINE_OK, ENGINE_WHY = engine_available()


def require_engine() -> None:
    """Docker tests never skip in CI (CI=true): a missing engine or image fails them there."""
    if ENGINE_OK:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must have a Docker engine with the sandbox image (run `make sandbox`): {ENGINE_WHY}")
    pytest.skip(f"no Docker sandbox on this machine: {ENGINE_WHY} (run `make sandbox` as root)")


@pytest.fixture(scope="module")
def sandbox():
    require_engine()
    with DockerSandbox(pool_size=2, timeout_s=3.0) as sb:
        yield sb


def wait_healthy(sb: DockerSandbox, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sb.healthy_slots() == sb.config.pool_size and sb._idle.qsize() == sb.config.pool_size:
            break
        time.sleep(0.2)
    assert sb.healthy_slots() == sb.config.pool_size, "the pool did not heal"
    assert sb.run("print(6 * 7)").stdout == "42\n"


# -- no engine needed --------------------------------------------------------------------------------------
def test_frames_round_trip():
    r, w = os.pipe()
    os.write(w, encode_frame({"a": [1, "é"]}) + encode_frame({"done": True}))
    assert read_frame(r) == {"a": [1, "é"]} and read_frame(r) == {"done": True}
    os.close(w)
    with pytest.raises(EOFError):
        read_frame(r)


def test_outputs_match_is_token_wise():
    assert outputs_match("1 2\n3\n", "1  2 3")
    assert outputs_match("", "\n")
    assert not outputs_match("1 2", "12")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="exactly one"):
        Test(stdin="1")
    with pytest.raises(ValueError, match="status"):
        ExecResult("fine")


# -- Docker ----------------------------------------------------------------------------------------------
def test_image_build_is_cached():
    require_engine()
    out = subprocess.run([str(REPO / "docker/build.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout or "built" in out.stdout


def test_run_statuses(sandbox):
    ok = sandbox.run("import sys\nprint(sys.stdin.read()[::-1], end='')", stdin="abc")
    assert (ok.status, ok.exit_code, ok.stdout) == ("ok", 0, "cba")
    err = sandbox.run("print('partial')\nraise ValueError('boom')")
    assert err.status == "runtime_error" and err.exit_code == 1
    assert err.stdout == "partial\n" and "ValueError: boom" in err.stderr and "runner.py" not in err.stderr
    assert sandbox.run("import sys; sys.exit(3)").exit_code == 3
    assert sandbox.run("import os; os.kill(os.getpid(), 11)").exit_code == -11
    slow = sandbox.run("while True: pass", timeout_s=1.0)
    # The runner enforced the deadline (the host would have called a runner that overran it stuck: infra_error);
    # the upper bound leaves room for a loaded CI machine, it is not a speed target.
    assert slow.status == "timeout" and 0.9 < slow.wall_s < 5.0
    assert sandbox.run("x = bytearray(600 * 2**20)", memory_mb=256).status == "memory"
    big = sandbox.run("print('x' * 5_000_000)")
    assert big.status == "output_limit" and len(big.stdout) <= sandbox.output_limit
    assert sandbox.run("print(1", timeout_s=1).status == "runtime_error"  # SyntaxError inside the sandbox


def test_threads_fit_in_the_memory_cap(sandbox):
    program = ("import threading\nout = []\ndef work(i):\n    out.append(len([bytearray(1000) for _ in range(2000)]))\n"
               "ts = [threading.Thread(target=work, args=(i,)) for i in range(24)]\n"
               "[t.start() for t in ts]\n[t.join() for t in ts]\nprint(len(out))")
    for _ in range(3):
        res = sandbox.run(program)
        assert (res.status, res.stdout) == ("ok", "24\n"), res


def test_environment_inside(sandbox):
    probe = ("import os, socket, sys\n"
             "print(os.getuid(), os.getcwd(), sorted(os.listdir('.')), [n for _, n in socket.if_nameindex()])\n"
             "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])")
    lines = sandbox.run(probe).stdout.splitlines()
    uid, cwd, listing, ifaces = lines[0].split(" ", 3)
    assert uid == "1000" and cwd.startswith("/sandbox/run") and listing == "[]" and ifaces == "['lo']"
    assert int(lines[1], 16) == 0  # no capabilities


def test_run_tests_never_stops_at_first_failure(sandbox):
    code = "def add(a, b):\n    return a + b if a != 2 else 0\n"
    tests = [Test(code="assert add(1, 1) == 2"), Test(code="assert add(2, 2) == 4"),
             Test(code="while True: pass"), Test(code="assert add(3, 4) == 7")]
    res = sandbox.run_tests(code, tests, total_timeout_s=2.0)
    assert [r.passed for r in res] == [True, False, False, False]
    assert [r.status for r in res] == ["ok", "runtime_error", "timeout", "timeout"]  # the budget is shared
    stdio = sandbox.run_tests("print(sum(map(int, input().split())))",
                              [Test(stdin="1 2\n", expected="3"), Test(stdin="5 5\n", expected="11"),
                               Test(stdin="oops\n", expected="0"), Test(stdin="2 2", expected=" 4 \n")])
    assert [r.passed for r in stdio] == [True, False, False, True]
    assert stdio[2].status == "runtime_error"


def test_each_program_gets_a_fresh_process_and_workdir(sandbox):
    prog = ("import os\nprint(sorted(os.listdir('.')), os.getpid())\nopen('mark', 'w').write('x')\n"
            "open('/sandbox/stray', 'w').write('x')")
    outs = [sandbox.run(prog).stdout.split("] ") for _ in range(6)]
    assert all(o[0] == "[" for o in outs)  # empty workdir every time
    assert len({o[1] for o in outs}) == 6  # a new process every time


def test_concurrency_is_capped_by_the_pool(sandbox):
    sandbox.peak_in_flight = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: sandbox.run("import time; time.sleep(0.4)"), range(6)))
    elapsed = time.monotonic() - t0
    assert all(r.ok for r in results)
    assert sandbox.peak_in_flight == 2
    assert elapsed >= 3 * 0.4  # 6 sleeps through 2 slots: at least 3 rounds


def test_recycle_after_k_programs_and_after_a_violation():
    require_engine()
    with DockerSandbox(pool_size=1, recycle_after=3, timeout_s=2.0) as sb:
        ids = []
        for _ in range(7):
            assert sb.run("print(1)").ok
            ids.append(sb._slots[0].container.id if sb._slots[0].container else None)
        assert sb.recycled >= 2 and len(set(ids)) >= 3
        before = sb.recycled
        assert sb.run("while True: pass", timeout_s=0.5).status == "timeout"
        assert sb.recycled == before + 1
        wait_healthy(sb)


def test_pool_heals_when_a_container_dies():
    require_engine()
    with DockerSandbox(pool_size=2, timeout_s=2.0) as sb:
        for slot in sb._slots:
            slot.container.kill()
        results = [sb.run(f"print({i})") for i in range(4)]  # the dead slots are replaced, requests retried
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
        wait_healthy(sb)


def test_unreachable_engine_is_infra_error(tmp_path):
    require_engine()
    sb = DockerSandbox(pool_size=1, endpoints=(f"unix://{tmp_path}/nothing.sock",), timeout_s=1.0)
    try:
        res = sb.run("print(1)")
        assert res.status == "infra_error" and res.error
        assert [r.status for r in sb.run_tests("x = 1", [Test(code="assert x")])] == ["infra_error"]
    finally:
        sb.close()


def test_pool_spreads_over_two_endpoints(tmp_path):
    require_engine()
    alias = tmp_path / "docker2.sock"
    alias.symlink_to("/var/run/docker.sock")
    endpoints = ("unix:///var/run/docker.sock", f"unix://{alias}")
    with DockerSandbox(pool_size=2, endpoints=endpoints, timeout_s=2.0) as sb:
        assert sorted(s.endpoint for s in sb._slots) == sorted(endpoints)
        assert all(s.started for s in sb._slots)
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda i: sb.run(f"print({i} * 3)").stdout, range(8)))
        assert outs == [f"{i * 3}\n" for i in range(8)]



def test_container_killed_mid_batch_is_retried_not_a_zero():
    """`docker kill` during a request: the exec stream ends a moment before the engine reads the container as
    exited; that is infrastructure (retried on a fresh container, else infra_error), never the program's 0."""
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=4.0) as sb:
        for delay in (0.8, 1.2):
            wait_healthy(sb)
            cid = sb._slots[0].container.id
            timer = threading.Timer(delay, lambda: subprocess.run(["docker", "kill", cid], capture_output=True))
            timer.start()
            res = sb.run_tests("import time\ntime.sleep(0.5)\nprint(1)", [Test(stdin="", expected="1")] * 4)
            timer.join()
            assert {r.status for r in res} <= {"ok", "infra_error"}, res
            assert sb._slots[0].container is None or sb._slots[0].container.id != cid


def test_containers_stop_when_their_process_dies_without_clean_up():
    """A host process killed by SIGTERM or SIGKILL runs no atexit: its containers stop (and vanish) on their own."""
    require_engine()
    import docker

    client = docker.from_env()
    script = ("from prorl.sandbox.docker import DockerSandbox\nimport os, signal, sys\n"
              "sb = DockerSandbox(pool_size=1)\nassert sb.run('print(1)').ok\nassert sb.run('print(2)').ok\n"
              "print(sb._slots[0].container.id, flush=True)\nimport time\ntime.sleep(1)\nos.kill(os.getpid(), getattr(signal, sys.argv[1]))")
    for sig in ("SIGTERM", "SIGKILL"):
        out = subprocess.run([sys.executable, "-c", script, sig], capture_output=True, text=True, timeout=120,
                             cwd=REPO)
        cid = out.stdout.split()[0]
        try:
            end = time.monotonic() + 20
            while time.monotonic() < end and client.containers.list(filters={"id": cid}):
                time.sleep(0.5)
            assert not client.containers.list(filters={"id": cid}), f"{sig}: container {cid[:12]} still running"
        finally:  # a failure leaves nothing behind (a container already being auto-removed answers 409)
            for c in client.containers.list(all=True, filters={"id": cid}):
                try:
                    c.remove(force=True)
                except docker.errors.APIError:
                    pass
    client.close()

# -- LocalSandbox -------------------------------------------------------------------------------------------
def test_local_sandbox_runs_and_contains():
    from prorl.sandbox.local import LocalSandbox

    with LocalSandbox(workers=1, timeout_s=2.0) as sb:
        if not sb.namespaced:
            pytest.skip("unshare is not usable on this machine")
        assert sb.run("print(input() * 2)", stdin="ab").stdout == "abab\n"
        res = sb.run_tests("def f():\n    return 1\n", [Test(code="assert f() == 1"), Test(code="assert f() == 2"),
                                                      Test(code="import os; os._exit(0)")])
        assert [r.passed for r in res] == [True, False, False]
        assert sb.run("while True: pass", timeout_s=0.5).status == "timeout"
        net = sb.run("import socket\nprint([n for _, n in socket.if_nameindex()])\n"
                     "s = socket.socket(); s.settimeout(1)\ntry:\n    s.connect(('127.0.0.1', 22)); print('open')\n"
                     "except OSError as e:\n    print(type(e).__name__)")
        assert net.stdout.splitlines()[0] == "['lo']" and "open" not in net.stdout
        killer = sb.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('alive')")
        assert killer.status == "ok"  # the runner is PID 1 of its namespace: the signal is dropped
        assert sb.run("print(2)").stdout == "2\n"


def test_local_sandbox_caps_processes_and_keeps_system_v_ipc_off_the_host():
    """Before: a segment a program made lived on in the host's IPC namespace after the sandbox closed, and nothing
    capped the number of processes (a fork bomb reached the host's limits)."""
    from prorl.sandbox.local import LocalSandbox

    host_keys = lambda: {line.split()[0] for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]}  # noqa: E731
    with LocalSandbox(workers=1, timeout_s=3.0) as sb:
        if not sb.namespaced:
            pytest.skip("unshare is not usable on this machine")
        shm = sb.run("import ctypes\nprint(ctypes.CDLL(None).shmget(0x5eed, 4096, 0o1600) >= 0)")
        assert shm.stdout == "True\n", shm
        assert str(0x5eed) not in host_keys()
        assert sb.run("print(len(open('/proc/sysvipc/shm').read().splitlines()))").stdout == "1\n"
        forks = sb.run("import os, time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
                       "            time.sleep(2)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
                       "    print(e.errno)\nprint(n)")
        errno_, count = forks.stdout.split()
        assert errno_ == "11" and int(count) < sb.max_procs, forks
        assert sb.run("print(2)").stdout == "2\n"


def test_local_sandbox_workers_cannot_reach_each_others_workdirs():
    """Workers run as one uid: a program used to read (and plant files in) a concurrent program's workdir through
    /tmp/prorl-sandbox-*. Each namespaced worker now holds its workdirs on a private tmpfs."""
    from prorl.sandbox.local import LocalSandbox

    spy = ("import glob, os, time\nend = time.monotonic() + 2.5\nfound = []\n"
           "while not found and time.monotonic() < end:\n"
           "    found = [p for p in glob.glob('/tmp/prorl-sandbox-*/run*/secret') if not p.startswith(os.getcwd())]\n"
           "    time.sleep(0.05)\nfor p in found:\n    print(open(p).read())\n"
           "    open(os.path.join(os.path.dirname(p), 'planted'), 'w').close()\nprint(len(found))")
    victim = "import os, time\nopen('secret', 'w').write('SECRET')\ntime.sleep(3)\nprint(sorted(os.listdir('.')))"
    with LocalSandbox(workers=2, timeout_s=5.0) as sb:
        if not sb.namespaced:
            pytest.skip("unshare is not usable on this machine")
        with ThreadPoolExecutor(1) as ex:
            first = ex.submit(sb.run, victim)
            while not sb._all and not first.done():
                time.sleep(0.05)
            res = sb.run(spy)
            assert (res.status, res.stdout) == ("ok", "0\n"), res
            assert first.result().stdout == "['secret']\n", first.result()


def test_threads_may_call_run_at_once(sandbox):
    errors = []

    def worker(i):
        try:
            res = sandbox.run_tests(f"N = {i}", [Test(code=f"assert N == {i}"), Test(code=f"assert N == {i + 1}")])
            assert [r.passed for r in res] == [True, False]
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_make_sandbox_falls_back_to_local_with_a_warning(tmp_path, caplog):
    from prorl.sandbox import make_sandbox
    from prorl.sandbox.local import LocalSandbox

    with caplog.at_level("WARNING"):
        sb = make_sandbox("auto", endpoints=(f"unix://{tmp_path}/none.sock",), pool_size=1)
    try:
        assert isinstance(sb, LocalSandbox) and "WEAKER" in caplog.text
    finally:
        sb.close()
    with pytest.raises(RuntimeError, match="DockerSandbox unavailable.*none.sock.*`make sandbox`"):
        make_sandbox("docker", endpoints=(f"unix://{tmp_path}/none.sock",))
    with pytest.raises(ValueError, match="sandbox kind"):
        make_sandbox("vm")



def test_local_sandbox_has_exit_and_quit_like_docker():
    """The local runner runs under `python -S` (no site): exit()/quit(), common at the end of stdin/stdout
    solutions, must still work as in the container."""
    from prorl.sandbox.local import LocalSandbox

    program = "print(int(input()) * 2)\nexit()"
    sandboxes = [LocalSandbox(workers=1, timeout_s=3.0)]
    if ENGINE_OK:
        sandboxes.append(DockerSandbox(pool_size=1, timeout_s=3.0))
    for sb in sandboxes:
        with sb:
            res = sb.run(program, stdin="21\n")
            assert (res.status, res.stdout) == ("ok", "42\n"), (sb.name, res)
            assert sb.run("print(5)\nquit(0)").status == "ok"
            assert [r.passed for r in sb.run_tests(program, [Test(stdin="4", expected="8")])] == [True]


def test_local_sandbox_leaves_the_hosts_dev_shm_alone():
    """LocalSandbox shares the host's /dev/shm (shared memory of torch, NCCL, ...): its clean-up must not delete
    files there that its user may delete."""
    from prorl.sandbox.local import _NOBODY, LocalSandbox

    mark = Path(f"/dev/shm/prorl-test-{os.getpid()}")
    mark.write_text("host data")
    try:
        if os.geteuid() == 0:  # the local runner runs as nobody: a file it could delete
            os.chown(mark, _NOBODY, _NOBODY)
        with LocalSandbox(workers=1, timeout_s=3.0) as sb:
            assert sb.run("print(1)").stdout == "1\n"
        assert mark.exists() and mark.read_text() == "host data"
    finally:
        mark.unlink(missing_ok=True)


def test_nonce_offered_to_a_child_that_already_exited_is_not_a_runner_error():
    """The runner writes the pass nonce after the fork; a program that exits at once (os._exit(0)) may be gone by
    then. That once failed CI as `runner error: BrokenPipeError` (infra_error) instead of a failed test."""
    from prorl.sandbox.runner import offer_nonce

    read_end, write_end = os.pipe()
    os.close(read_end)  # the child exited: no reader is left
    offer_nonce(write_end, b"n" * 48)
    with pytest.raises(OSError):
        os.fstat(write_end)  # closed either way
    read_end, write_end = os.pipe()
    offer_nonce(write_end, b"nonce")
    assert os.read(read_end, 64) == b"nonce" and os.read(read_end, 64) == b""
    os.close(read_end)

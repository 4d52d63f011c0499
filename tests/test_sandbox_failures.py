"""The sandboxes when something other than the program fails: the engine pauses or restarts a container, the exec
stream breaks, the caller is interrupted, the sandbox is closed under its callers, a request is malformed. None of
these may charge the program (a 0 reward) or leave a later call waiting forever. Real engine, real signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from prorl.sandbox import Test
from prorl.sandbox.docker import DockerSandbox
from prorl.sandbox.local import LocalSandbox
from test_sandbox import require_engine, wait_healthy

SLOW_ECHO = "import time\ntime.sleep(0.6)\nprint(input())"


def later(delay: float, fn) -> threading.Timer:
    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


def interrupt_main_thread() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in a notebook or a terminal: KeyboardInterrupt in the main thread


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test. A process started in the background by a
    non-interactive shell (`make test &`, `nohup`, some CI runners) inherits SIGINT ignored, and Python then installs
    no handler: the signal would be dropped and the interrupt tests fail with 'DID NOT RAISE' (seen in a CI run
    started with `nohup ... &`)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def in_thread(fn, timeout: float):
    """fn() in a daemon thread: (finished within timeout, its result)."""
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), out.get("r")


def test_a_container_the_engine_pauses_is_infra_error_not_a_timeout():
    """Paused past the wall-clock cap (3 s for a 1 s budget; a shorter pause only delays the run: a paused program
    spends no CPU time)."""
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=1.0) as sb:
        wait_healthy(sb)
        cid = sb._slots[0].container.id

        def pause_then_unpause():
            subprocess.run(["docker", "pause", cid], capture_output=True)
            time.sleep(5)
            subprocess.run(["docker", "unpause", cid], capture_output=True)

        timer = later(0.3, pause_then_unpause)
        res = sb.run_tests(SLOW_ECHO, [Test(stdin="1", expected="1")] * 2)
        timer.join()
        assert {r.status for r in res} == {"infra_error"}, res
        wait_healthy(sb)


def test_a_container_the_engine_restarts_mid_request_is_retried():
    """`docker restart -t 0` kills the runner inside a container that then runs again: not the program's doing."""
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=6.0) as sb:
        for _ in range(2):
            wait_healthy(sb)
            cid = sb._slots[0].container.id
            timer = later(0.9, lambda: subprocess.run(["docker", "restart", "-t", "0", cid], capture_output=True))
            res = sb.run_tests(SLOW_ECHO, [Test(stdin="1", expected="1")] * 4)
            timer.join()
            assert {r.status for r in res} <= {"ok", "infra_error"}, res


class ExecStreamCutter:
    """A unix-socket relay in front of the engine that can drop the hijacked exec connections (a network blip
    between host and engine): a real relay of the engine's API, nothing answered in its place."""

    def __init__(self, path: str, upstream: str = "/var/run/docker.sock"):
        self.upstream, self.execs, self.cut_streams = upstream, [], 0
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(self.upstream)
            threading.Thread(target=self._pipe, args=(client, engine, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(engine, client, False), daemon=True).start()

    def _pipe(self, src, dst, from_client):
        first = True
        try:
            while data := src.recv(65536):
                if from_client and first and b"/exec/" in data[:200] and b"/start" in data[:200]:
                    self.execs.append((src, dst))
                first = False
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._shut(src, dst)

    @staticmethod
    def _shut(*socks):
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        cut, self.execs = self.execs, []
        for pair in cut:
            self._shut(*pair)
        self.cut_streams = len(cut)
        return len(cut)

    def close(self):
        self.server.close()


def test_a_broken_exec_stream_is_retried_not_charged_to_the_program(tmp_path):
    require_engine()
    relay = ExecStreamCutter(str(tmp_path / "engine.sock"))
    try:
        with DockerSandbox(pool_size=1, timeout_s=5.0, endpoints=(f"unix://{tmp_path / 'engine.sock'}",)) as sb:
            tests = [Test(stdin="1", expected="1")] * 3
            assert [r.status for r in sb.run_tests(SLOW_ECHO, tests)] == ["ok"] * 3
            timer = later(0.9, relay.cut)
            res = sb.run_tests(SLOW_ECHO, tests)
            timer.join()
            assert relay.cut_streams == 1  # the slot's exec stream was cut while it ran
            assert {r.status for r in res} <= {"ok", "infra_error"}, res
            assert sb.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)").status == "runtime_error"
    finally:
        relay.close()


def test_interrupting_a_call_leaves_the_pool_whole_and_answers_in_order(ctrl_c_raises):
    """Ctrl-C during a run: the slot (whose stream may still carry that run's answer) is replaced, so the next
    call gets its own output, and no slot is lost (a lost one made every later call wait forever)."""
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=5.0) as sb:
        wait_healthy(sb)
        later(0.5, interrupt_main_thread)
        with pytest.raises(KeyboardInterrupt):
            sb.run("import time\ntime.sleep(1.5)\nprint('first')")
        done, res = in_thread(lambda: sb.run("print('second')"), timeout=60)
        assert done and res.stdout == "second\n", res


def test_a_malformed_request_costs_no_slot():
    require_engine()
    with DockerSandbox(pool_size=1, timeout_s=3.0) as sb:
        for _ in range(2):
            with pytest.raises(TypeError, match=r"tests\[0\]\.stdin must be a str"):
                sb.run("print(1)", stdin=b"bytes")
        done, res = in_thread(lambda: sb.run("print(1)"), timeout=30)
        assert done and res.stdout == "1\n"


def test_closing_the_sandbox_under_its_callers_answers_them():
    require_engine()
    sb = DockerSandbox(pool_size=1, timeout_s=5.0)
    results = {}

    def call(i):
        results[i] = sb.run_tests(SLOW_ECHO, [Test(stdin="1", expected="1")] * 3)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.8)
    sb.close()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), "a caller still waits for a slot of the closed sandbox"
    assert all({r.status for r in res} <= {"ok", "infra_error"} for res in results.values()), results


def test_local_sandbox_interrupted_then_its_worker_killed_from_outside(ctrl_c_raises):
    with LocalSandbox(workers=1, timeout_s=5.0) as sb:
        if not sb.namespaced:
            pytest.skip("unshare is not usable on this machine")
        assert sb.run("print(0)").stdout == "0\n"
        later(0.5, interrupt_main_thread)
        with pytest.raises(KeyboardInterrupt):
            sb.run("import time\ntime.sleep(1.5)\nprint('A')")
        assert [sb.run(f"print('{name}')").stdout for name in "BC"] == ["B\n", "C\n"]  # not the answer before
        assert len(sb.run_tests("def f():\n    return 1", [Test(code="assert f() == 2")] * 3)) == 3
        worker = sb._all[0]
        timer = later(0.9, worker.kill)
        res = sb.run_tests(SLOW_ECHO, [Test(stdin="1", expected="1")] * 3)
        timer.join()
        statuses = [r.status for r in res]
        assert set(statuses) <= {"ok", "infra_error"} and statuses[-1] == "infra_error", res
        assert sb.run("print(3)").stdout == "3\n"

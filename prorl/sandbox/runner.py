"""The in-sandbox runner: a fork server that runs one untrusted Python program per fresh process.

Standard library only, Python >= 3.9: this file is copied into the sandbox image (`/opt/prorl/runner.py`) and
also imported on the host for the framing helpers.

Modes:
  `runner.py init`   PID 1 of a container: ignores every signal and lets the kernel reap orphans.
  `runner.py serve`  reads requests on stdin, answers on stdout. A frame is a 4-byte big-endian length and a
                     UTF-8 JSON object.

Request: {"program": str, "tests": [{"stdin": str|null, "code": str|null}], "timeout_s": float (total budget of
all tests), "memory_mb": int, "output_limit": int (bytes per stream)}. The runner answers one frame per test,
{"index", "status", "exit_code", "stdout", "stderr", "wall_s", "passed"}, then {"done": true}.

Every test runs in a fresh forked process with its own empty workdir, rlimits, its own session, restored signal
handlers and only fds 0-2 (plus two private pipes for assertion tests). Tests share one deadline and never stop at
the first failure. After each test every other process of the sandbox is killed and the scratch area wiped.

Assertion tests (`code` set) are fail-closed: the runner writes a random nonce (made after the fork, so never in
the child's memory) into a private pipe; the child's epilogue, bound before the program runs, reads it only after
the program AND the test code returned normally and writes it to a second private pipe (both at random fd numbers).
A program that exits early (`sys.exit`, `os._exit`), prints anything, closes its fds, patches builtins/os/sys or
kills its runner never produces the nonce. The runner is non-dumpable, so programs (same uid) cannot open its fds,
read its memory or ptrace it. Limit: the program shares the test's process, so code written to scan its own fds for
the nonce pipe, or to return objects that compare equal to anything, is not stopped here.
"""

from __future__ import annotations

import json
import os
import random
import resource
import select
import shutil
import signal
import struct
import sys
import time
from traceback import format_exception as _format_exception

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
STATUSES = ("ok", "runtime_error", "timeout", "memory", "output_limit", "infra_error")
_MEMORY_MARK = b"MEMORY"
# Signals the server ignores (a program may signal its parent); its children restore them. Python itself already
# ignores SIGPIPE and SIGXFSZ.
_SERVER_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


def encode_frame(obj) -> bytes:
    data = json.dumps(obj).encode("utf-8")
    return HEADER.pack(len(data)) + data


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError("stream closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(fd: int):
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    return json.loads(_read_exact(fd, size).decode("utf-8"))


# -- PID 1 ----------------------------------------------------------------------------------------------
def run_init() -> None:
    """Ignore every signal; with SIGCHLD ignored the kernel reaps orphans (and zombies reparented here) at once."""
    _make_non_dumpable()
    for sig in signal.Signals:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError, RuntimeError):
                pass
    while True:
        time.sleep(3600)


# -- the child: runs the untrusted program -----------------------------------------------------------------
def _child(program: str, test_code, limits: dict, workdir: str, fds: dict) -> None:
    """Never returns: ends with os._exit. `fds` maps the target fd number to the fd to install there."""
    import io
    import types

    os.setsid()
    for target, fd in fds.items():
        os.dup2(fd, target, inheritable=True)
    low = 0
    for fd in sorted(fds):  # close every other fd (close_range between the kept ones)
        if low < fd:  # an empty range would reach close_range(low, -1): every fd
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    for sig in _SERVER_IGNORES:  # back to the dispositions of a fresh interpreter
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    os.chdir(workdir)
    os.umask(0o077)
    mem = int(limits["memory_mb"]) * 1024 * 1024
    cpu = int(limits["cpu_s"]) + 1
    # CPU: SIGXCPU at the soft limit (reported as `timeout`); with soft == hard Linux sends SIGKILL instead, which
    # would read as a runtime error. The hard limit a second later catches a program that ignores SIGXCPU.
    for res, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                            (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NOFILE, 256, 256)):
        resource.setrlimit(res, (soft, hard))
    os.environ.update(HOME=workdir, TMPDIR=workdir)  # the rest was set once by serve()
    result_fd, nonce_fd = limits.get("result_fd"), limits.get("nonce_fd")
    # Bind what the epilogue needs now: the program may patch os, sys or builtins.
    os_read, os_write, os_exit = os.read, os.write, os._exit
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding="utf-8",
                                 errors="replace")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding="utf-8",
                                  errors="replace")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding="utf-8",
                                  errors="backslashreplace", line_buffering=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    sys.argv = ["main.py"]
    sys.path[:] = [workdir] + [p for p in sys.path[1:] if not p.startswith("/opt/prorl")]
    stdout, stderr = sys.stdout, sys.stderr
    # Everything the epilogue uses is bound before the program runs: it may replace builtins, os, sys.modules.
    run, build, fail = exec, compile, _report_traceback
    code = 0
    try:
        main = types.ModuleType("__main__")  # the program is __main__ (pickle, multiprocessing), not the runner
        main.__file__ = "main.py"
        sys.modules["__main__"] = main
        scope = main.__dict__
        run(build(program, "main.py", "exec"), scope)
        if test_code is not None:
            run(build(test_code, "test.py", "exec"), scope)
        _python_shutdown()
    except SystemExit as exc:
        test_code = None  # an exit, even exit(0), never passes a test
        code = _exit_code(exc)
    except MemoryError:
        test_code = None
        code = 1
        fail(os_write)
        if result_fd is not None:
            os_write(result_fd, _MEMORY_MARK)
    except BaseException:
        test_code = None
        code = 1
        fail(os_write)
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 1
    if test_code is not None and code == 0 and nonce_fd is not None:
        try:
            os_write(result_fd, os_read(nonce_fd, 64))
        except OSError:
            pass
    os_exit(code)


def _python_shutdown() -> None:
    """What the interpreter does at a normal exit: join non-daemon threads, run atexit handlers."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def _report_traceback(write) -> None:
    """Print the traceback of the exception being handled straight to fd 2 (not via the program's sys.stderr)."""
    try:
        etype, value, tb = sys.exc_info()
        lines = _format_exception(etype, value, tb.tb_next if tb is not None else None)  # skip the runner frame
        write(2, "".join(lines)[-20000:].encode("utf-8", "replace"))
    except BaseException:
        pass


# -- the server ---------------------------------------------------------------------------------------------
class Server:
    def __init__(self, root: str):
        self.root = root
        self.count = 0
        # Killing every other process of the sandbox is only safe in a PID namespace of our own.
        self.own_pidns = os.getpid() == 1 or _is_prorl_init(1)

    def cleanup(self) -> None:
        if self.own_pidns:
            # kill(-1) can miss a child forked while it runs (a fork bomb, a double fork): repeat until none is left.
            for _ in range(200):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
                if not _others_alive():
                    break
                time.sleep(0.001)
        for base in (self.root, "/dev/shm"):
            try:
                names = os.listdir(base)
            except OSError:
                continue
            for name in names:
                path = os.path.join(base, name)
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                except OSError:
                    pass

    def run_test(self, program: str, test: dict, limits: dict, deadline: float) -> dict:
        self.count += 1
        workdir = os.path.join(self.root, f"run{self.count}")
        os.mkdir(workdir, 0o700)
        stdin_path = os.path.join(self.root, f".stdin{self.count}")
        with open(stdin_path, "wb") as fh:
            fh.write((test.get("stdin") or "").encode("utf-8"))
        stdin_fd = os.open(stdin_path, os.O_RDONLY)
        os.unlink(stdin_path)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds = {0: stdin_fd, 1: out_w, 2: err_w}
        test_code, nonce, res_r = test.get("code"), None, None
        child_limits = dict(limits, cpu_s=max(1.0, deadline - time.monotonic()))
        if test_code is not None:
            non_r, non_w = os.pipe()
            res_r, res_w = os.pipe()
            # Random target numbers that are none of the source fds (dup2 onto a source would clobber it).
            free = sorted(set(range(10, 250)) - {stdin_fd, out_w, err_w, res_w, non_r})
            result_fd, nonce_fd = random.sample(free, 2)
            fds.update({result_fd: res_w, nonce_fd: non_r})
            child_limits.update(result_fd=result_fd, nonce_fd=nonce_fd)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _child(program, test_code, child_limits, workdir, fds)
            finally:
                os._exit(70)
        for fd in fds.values():
            os.close(fd)
        if test_code is not None:
            # Made after the fork, so the nonce was never in the child's memory: it sits in the pipe until the
            # child's epilogue reads it (that read waits for this write if the child gets there first).
            nonce = os.urandom(24).hex().encode()
            os.write(non_w, nonce)
            os.close(non_w)
        outcome = self._supervise(pid, out_r, err_r, int(limits["output_limit"]), deadline)
        wall = time.monotonic() - start
        passed, memory_mark = False, False
        if res_r is not None:
            os.set_blocking(res_r, False)
            try:
                got = os.read(res_r, 128)
            except (BlockingIOError, OSError):
                got = b""
            os.close(res_r)
            passed = got == nonce
            memory_mark = got == _MEMORY_MARK
        status, exit_code, stdout, stderr = outcome
        if status == "ok" and memory_mark:
            status = "memory"
        if status == "runtime_error" and "MemoryError" in stderr[-300:]:
            status = "memory"
        if status != "ok":
            passed = False
        self.cleanup()
        return {"status": status, "exit_code": exit_code, "stdout": stdout, "stderr": stderr,
                "wall_s": round(wall, 4), "passed": passed}

    def _supervise(self, pid: int, out_r: int, err_r: int, cap: int, deadline: float):
        bufs = {out_r: bytearray(), err_r: bytearray()}
        open_fds = {out_r, err_r}
        status, wait_status = None, None
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            watch = list(open_fds) + ([pidfd] if pidfd is not None else [])
            ready, _, _ = select.select(watch, [], [], min(remaining, 0.05 if pidfd is None else remaining))
            for fd in ready:
                if fd == pidfd:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.discard(fd)
                    continue
                bufs[fd] += chunk
                if len(bufs[fd]) > cap:
                    status = "output_limit"
            if status:
                break
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        if wait_status is None or status:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            _, wait_status = os.waitpid(pid, 0)
        # Drain what is already written (an escaped grandchild may hold the pipes open: do not wait for EOF).
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
            try:
                while len(bufs[fd]) <= cap:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    bufs[fd] += chunk
            except (BlockingIOError, OSError):
                pass
            os.close(fd)
        if pidfd is not None:
            os.close(pidfd)
        if os.WIFSIGNALED(wait_status):
            exit_code = -os.WTERMSIG(wait_status)
            if status is None:
                status = "timeout" if os.WTERMSIG(wait_status) == signal.SIGXCPU else "runtime_error"
        else:
            exit_code = os.WEXITSTATUS(wait_status)
            if status is None:
                status = "ok" if exit_code == 0 else "runtime_error"
        if len(bufs[out_r]) > cap or len(bufs[err_r]) > cap:
            status = "output_limit"
        return (status, exit_code, bufs[out_r][:cap].decode("utf-8", "replace"),
                bufs[err_r][:cap].decode("utf-8", "replace"))

    def handle(self, request: dict, send) -> None:
        program = request["program"]
        tests = request.get("tests") or [{}]
        limits = {"memory_mb": int(request.get("memory_mb", 512)),
                  "output_limit": int(request.get("output_limit", 1 << 20))}
        deadline = time.monotonic() + float(request.get("timeout_s", 5.0))
        for index, test in enumerate(tests):
            if time.monotonic() >= deadline:
                result = {"status": "timeout", "exit_code": None, "stdout": "", "stderr": "budget exhausted",
                          "wall_s": 0.0, "passed": False}
            else:
                result = self.run_test(program, test, limits, deadline)
            result["index"] = index
            send(result)
        send({"done": True})


def _others_alive() -> bool:
    """Whether a process other than PID 1 and this one is alive (zombies do not count) in our PID namespace."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            return True
    return False


def _is_prorl_init(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"runner.py") for a in args) and b"init" in args


def _make_non_dumpable() -> bool:
    """PR_SET_DUMPABLE 0: processes of the same uid (the programs) can no longer open /proc/<runner>/fd/*, read
    /proc/<runner>/mem or ptrace the runner, so they cannot write frames to the host or read a nonce.
    Also caps glibc's malloc arenas at 2 for the forked programs: each thread arena reserves 64 MB of address
    space, so a few threads would otherwise exhaust RLIMIT_AS ("can't start new thread")."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE = 4
    except Exception:
        return False


def serve(root: str) -> None:
    # Keep the protocol stream on private fds; fds 0-2 point to /dev/null so nothing else can touch it.
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    for sig in _SERVER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    sealed = _make_non_dumpable()
    os.environ.clear()  # what every program sees (plus HOME and TMPDIR = its workdir)
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", PYTHONIOENCODING="utf-8",
                      MALLOC_ARENA_MAX="2")
    os.makedirs(root, exist_ok=True)
    server = Server(root)
    server.cleanup()

    def send(obj) -> None:
        data = encode_frame(obj)
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]

    send({"ready": True, "python": sys.version.split()[0], "own_pidns": server.own_pidns, "sealed": sealed})
    while True:
        try:
            request = read_frame(rfd)
        except EOFError:
            return
        try:
            server.handle(request, send)
        except Exception as exc:  # a runner bug answers instead of hanging the host
            send({"error": f"{type(exc).__name__}: {exc}"})


def main(argv) -> None:
    if len(argv) >= 2 and argv[1] == "init":
        run_init()
    elif len(argv) >= 2 and argv[1] == "serve":
        serve(argv[2] if len(argv) > 2 else os.environ.get("PRORL_SANDBOX_ROOT", "/sandbox"))
    else:
        sys.exit("usage: runner.py init | serve [ROOT]")


if __name__ == "__main__":
    main(sys.argv)

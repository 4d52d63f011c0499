"""The sandbox's child process: runs one untrusted program (and its assertion test) under rlimits, then ends with
`os._exit`. Forked by `runner.py` (the fork server) once per test; see runner.py for the protocol and the fail-closed
nonce scheme. Standard library only: copied into the sandbox image beside runner.py (`/opt/prorl/`).

The program runs as a module ("solution", or "__main__" for stdin/stdout tests) compiled from `main.py`; an
assertion test then runs in the scope `guard.Guard.test_scope` makes of it (its callables wrapped, its own builtins,
patched modules put back; the Guard is made before the program runs). The nonce is written only if both returned
normally and the guard rejected nothing, even a rejection the test caught itself.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from traceback import format_exception as _format_exception

if __package__:  # imported on the host (prorl.sandbox.child)
    from prorl.sandbox.guard import PROGRAM_FILE, Guard
else:  # in the sandbox, beside runner.py (which put this folder on sys.path while importing child)
    from guard import PROGRAM_FILE, Guard

MEMORY_MARK = b"MEMORY"
# Signals the server ignores (a program may signal its parent); its children restore them. Python itself already
# ignores SIGPIPE and SIGXFSZ.
SERVER_IGNORES = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


def run_program(program: str, test_code, limits: dict, workdir: str, fds: dict) -> None:
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
    for sig in SERVER_IGNORES:  # back to the dispositions of a fresh interpreter
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    os.chdir(workdir)
    os.umask(0o077)
    try:  # the OOM killer's first choice (the program and its children), so that it spares the runner
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass
    mem = int(limits["memory_mb"]) * 1024 * 1024
    cpu = int(limits["cpu_s"]) + 1
    # CPU: SIGXCPU at the soft limit (reported as `timeout`); with soft == hard Linux sends SIGKILL instead, which
    # would read as a runtime error. The hard limit a second later catches a program that ignores SIGXCPU.
    for res, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_CPU, cpu, cpu + 1),
                            (resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_NOFILE, 256, 256)):
        resource.setrlimit(res, (soft, hard))
    if limits.get("max_procs"):  # LocalSandbox: no pids cgroup caps a fork bomb there
        resource.setrlimit(resource.RLIMIT_NPROC, (int(limits["max_procs"]),) * 2)
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
    guard = Guard() if test_code is not None else None  # copies what the program may patch, before it runs
    start_test, violations = (guard.test_scope, guard.violations) if guard is not None else (None, [])
    try:
        # A stdin/stdout program runs as __main__. Under assertion tests it is a module named "solution", as in
        # the HumanEval/MBPP harnesses (exec with fresh globals): a correct function followed by an
        # `if __name__ == "__main__":` demo (input(), unittest.main()) must not fail its tests. Either way it is
        # what sys.modules["__main__"] holds (pickle, multiprocessing), not the runner.
        main = types.ModuleType("__main__" if test_code is None else "solution")
        main.__file__ = PROGRAM_FILE
        sys.modules["__main__"] = sys.modules[main.__name__] = main
        scope = main.__dict__
        run(build(program, PROGRAM_FILE, "exec"), scope)
        if test_code is not None:  # in a scope of its own: see guard.py
            run(build(test_code, "test.py", "exec"), start_test(scope))
        _python_shutdown()
    except SystemExit as exc:
        test_code = None  # an exit, even exit(0), never passes a test
        code = _exit_code(exc)
    except MemoryError:
        test_code = None
        code = 1
        fail(os_write)
        if result_fd is not None:
            os_write(result_fd, MEMORY_MARK)
    except BaseException:
        test_code = None
        code = 1
        fail(os_write)
    for stream in (stdout, stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 1
    if violations and code == 0:  # the test caught the guard's exception (a bare except): still a failure
        code = 1
        os_write(2, f"prorl sandbox: the test caught the guard's rejection: {violations[0]}\n".encode())
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

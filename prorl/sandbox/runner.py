"""The in-sandbox runner: a fork server that runs one untrusted Python program per fresh process.

Standard library only, Python >= 3.9: this file, child.py (what runs in each forked process), supervise.py (what
watches it: output, CPU time, deadline), guard.py (what stands between a program and its assertion test) and
cleanup.py (what is undone after each) are copied into the sandbox image (`/opt/prorl/`); runner.py is also
imported on the host for the framing helpers.

Modes:
  `runner.py digest` prints `runner_digest()` of the files beside it; `runner.py files` prints RUNNER_FILES (both
                     for docker/build.sh: one definition of what goes into the image).
  `runner.py init`   PID 1 of a container: ignores every signal, lets the kernel reap orphans, exits once the
                     server is gone for good (its host process died).
  `runner.py serve`  reads requests on stdin, answers on stdout. A frame is a 4-byte big-endian length and a
                     UTF-8 JSON object.

Request: {"program": str, "tests": [{"stdin": str|null, "code": str|null}], "timeout_s": float (CPU budget of
all tests together), "wall_timeout_s": float (wall-clock cap of all tests together; default timeout_s), "memory_mb":
int, "output_limit": int (bytes per stream), "max_procs": int (optional RLIMIT_NPROC)}.
The runner answers one frame per test, {"index", "status", "exit_code", "stdout", "stderr", "wall_s", "cpu_s",
"passed"}, then {"done": true, "recycle": bool}.

Time: the budget counts the program's own CPU time (user + system, as `time` reports it: each test process and the
children it waited for), summed over its tests, so a correct program gets the same verdict on a quiet machine and
on one whose CPUs it shares (a pool running more programs than there are CPUs, a trainer beside it). The test whose
CPU time takes the total past `timeout_s` is stopped and reported `timeout`, as is everything still running when
`wall_timeout_s` of wall-clock time have passed since the first test started (a program that sleeps, blocks or
waits, or leaves CPU-burning processes it never waits for); the tests after it are `timeout` without running.

Every test runs in a fresh forked process with its own empty workdir, rlimits, its own session, restored signal
handlers and only fds 0-2 (plus two private pipes for assertion tests). Tests share the two budgets and never stop
at the first failure. After each test every other process of the sandbox is killed, the scratch area wiped and every
System V IPC object removed (they outlive their processes: memory of the container's cap, data for the next program).

Assertion tests (`code` set) are fail-closed: the runner writes a random nonce (made after the fork, so never in
the child's memory) into a private pipe; the child's epilogue, bound before the program runs, reads it only after
the program AND the test code returned normally and writes it to a second private pipe (both at random fd numbers).
A program that exits early (`sys.exit`, `os._exit`), prints anything, closes its fds, patches builtins/os/sys or
kills its runner never produces the nonce. The runner is non-dumpable, so programs (same uid) cannot open its fds,
read its memory or ptrace it. The test runs in a scope of its own, behind guard.py: objects that compare equal to
anything (a class whose `__eq__`, `__bool__`, `__sub__`... the program wrote, `unittest.mock.ANY`) returned to the
test fail it, and builtins or modules the program patched are put back before the test sees them. Limit: the
program shares the test's process, so code written against the guard (frame walking, `gc`, threads, code compiled
at run time; see guard.py) or to scan its own fds for the nonce pipe is not stopped here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import struct
import sys
import time

if __package__:  # imported on the host (prorl.sandbox.runner) for the framing helpers
    from prorl.sandbox.child import MEMORY_MARK, SERVER_IGNORES, run_program
    from prorl.sandbox.guard import freeze
    from prorl.sandbox.supervise import supervise
    from prorl.sandbox.cleanup import (CGROUP_OOM_FILES, HOST_OOM_FILE, live_procs, oom_kills, others_alive,
                                       remove_sysv_ipc, wipe)
else:  # run as a script in the sandbox, child.py beside it (`python -I` leaves the script's folder off sys.path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from child import MEMORY_MARK, SERVER_IGNORES, run_program
    from guard import freeze
    from supervise import supervise
    from cleanup import CGROUP_OOM_FILES, HOST_OOM_FILE, live_procs, oom_kills, others_alive, remove_sysv_ipc, wipe
    del sys.path[0]

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
STATUSES = ("ok", "runtime_error", "timeout", "memory", "output_limit", "infra_error")
# Everything that runs in the sandbox: the files docker/build.sh copies into the image and LocalSandbox into its
# runner folder (the runner, what runs in each forked process, what watches it, what guards its tests, its cleanup).
RUNNER_FILES = ("runner.py", "child.py", "supervise.py", "guard.py", "cleanup.py")


def runner_digest(folder: str | None = None) -> str:
    """sha256 (hex, 16 characters) of RUNNER_FILES in `folder` (default: this file's): names, sizes and bytes.
    The runner reports it in its ready frame, computed over the files it was started from; the host compares it
    with its own (`DockerSandbox` refuses an image built from other runner files)."""
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for name in RUNNER_FILES:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        h.update(b"%s\0%d\0" % (name.encode(), len(data)))
        h.update(data)
    return h.hexdigest()[:16]


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
def run_init(orphan_grace_s: float = 5.0, start_s: float = 60.0) -> None:
    """Ignore every signal; with SIGCHLD ignored the kernel reaps orphans (and zombies reparented here) at once.
    Return (PID 1 exiting stops the container) once no server has lived for `orphan_grace_s` (`start_s` before the
    first): a server ends with its host process (the exec stream closes), so a host killed by SIGTERM/SIGKILL
    leaves no container. The host replaces a container whose server died well within that grace."""
    _make_non_dumpable()
    for sig in signal.Signals:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_IGN)
            except (OSError, ValueError, RuntimeError):
                pass
    quiet_since, allowed = time.monotonic(), start_s
    while True:
        time.sleep(0.2)
        if _server_alive():
            quiet_since, allowed = time.monotonic(), orphan_grace_s
        elif time.monotonic() - quiet_since > allowed:
            return


# -- the server ---------------------------------------------------------------------------------------------
def offer_nonce(fd: int, nonce: bytes) -> None:
    """Write the nonce for the child and close the pipe. A child that already exited (os._exit before its
    epilogue) closed the only read end: EPIPE, and the test simply cannot pass."""
    try:
        os.write(fd, nonce)
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


class Server:
    def __init__(self, root: str):
        self.root = root
        self.count = 0
        # Killing every other process of the sandbox is only safe in a PID namespace of our own.
        self.own_pidns = os.getpid() == 1 or _is_prorl_init(1)
        os.makedirs(root, exist_ok=True)
        self.root_mode = os.stat(root).st_mode & 0o7777
        self.dirty = False  # scratch that cleanup could not wipe: the done frame asks the host for a new sandbox
        # /dev/shm and /dev/mqueue are the container's own under our init; a namespaced LocalSandbox worker mounts a
        # private /dev/shm (named prorl-sandbox); otherwise it is the host's, never wiped.
        self.scratch = ((root, "/dev/shm", "/dev/mqueue") if _is_prorl_init(1)
                        else (root, "/dev/shm") if _mounted_by_local_sandbox("/dev/shm") else (root,))
        # The OOM-kill counter read around each program: the container's own memory cgroup (any rise during a
        # program is its doing), else the host's (LocalSandbox: it counts only for a program ended by SIGKILL).
        own = [p for p in CGROUP_OOM_FILES if oom_kills(p) is not None] if _is_prorl_init(1) else []
        self.oom_file, self.oom_own = (own[0], True) if own else (HOST_OOM_FILE, False)

    def cleanup(self) -> None:
        if self.own_pidns:
            # kill(-1) can miss a child forked while it runs (a fork bomb, a double fork): repeat until none is left.
            for _ in range(200):
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    break
                if not others_alive():
                    break
                time.sleep(0.001)
            if not remove_sysv_ipc():  # our own IPC namespace too (LocalSandbox unshares it with the PID one)
                self.dirty = True
        try:  # a program may have made the root unlistable (same uid): the next mkdir would fail
            os.chmod(self.root, self.root_mode)
        except OSError:
            pass
        if not wipe(self.scratch):
            self.dirty = True

    def run_test(self, program: str, test: dict, limits: dict, deadline: float, cpu_left: float) -> dict:
        """Run one test; stopped at `deadline` (monotonic) or once its CPU time reaches `cpu_left` seconds."""
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
        child_limits = dict(limits, cpu_s=max(1.0, cpu_left))  # RLIMIT_CPU: a backstop to supervise's count
        if test_code is not None:
            non_r, non_w = os.pipe()
            res_r, res_w = os.pipe()
            # Random target numbers that are none of the source fds (dup2 onto a source would clobber it).
            free = sorted(set(range(10, 250)) - {stdin_fd, out_w, err_w, res_w, non_r})
            result_fd, nonce_fd = random.sample(free, 2)
            fds.update({result_fd: res_w, nonce_fd: non_r})
            child_limits.update(result_fd=result_fd, nonce_fd=nonce_fd)
        ooms = oom_kills(self.oom_file)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                run_program(program, test_code, child_limits, workdir, fds)
            finally:
                os._exit(70)
        for fd in fds.values():
            os.close(fd)
        if test_code is not None:
            # Made after the fork, so the nonce was never in the child's memory: it sits in the pipe until the
            # child's epilogue reads it (that read waits for this write if the child gets there first).
            nonce = os.urandom(24).hex().encode()
            offer_nonce(non_w, nonce)
        outcome = supervise(pid, out_r, err_r, int(limits["output_limit"]), deadline, cpu_left)
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
            memory_mark = got == MEMORY_MARK
        status, exit_code, stdout, stderr, cpu = outcome
        if status == "ok" and memory_mark:
            status = "memory"
        if status == "runtime_error" and ("MemoryError" in stderr[-300:] or self._oom_killed(ooms, exit_code)):
            status = "memory"  # MemoryError at RLIMIT_AS, or the OOM killer (the cgroup's cap) ended it or a child
        if status != "ok":
            passed = False
        self.cleanup()
        return {"status": status, "exit_code": exit_code, "stdout": stdout, "stderr": stderr,
                "wall_s": round(wall, 4), "cpu_s": cpu, "passed": passed}

    def _oom_killed(self, before, exit_code) -> bool:
        after = oom_kills(self.oom_file)
        rose = before is not None and after is not None and after > before
        return rose and (self.oom_own or exit_code == -signal.SIGKILL)

    def handle(self, request: dict, send) -> None:
        program = request["program"]
        tests = request.get("tests") or [{}]
        limits = {"memory_mb": int(request.get("memory_mb", 512)),
                  "output_limit": int(request.get("output_limit", 1 << 20)), "max_procs": request.get("max_procs")}
        budget = float(request.get("timeout_s", 5.0))
        deadline = time.monotonic() + float(request.get("wall_timeout_s") or budget)
        spent = 0.0
        for index, test in enumerate(tests):
            if time.monotonic() >= deadline or spent >= budget:
                result = {"status": "timeout", "exit_code": None, "stdout": "", "stderr": "budget exhausted",
                          "wall_s": 0.0, "cpu_s": 0.0, "passed": False}
            else:
                result = self.run_test(program, test, limits, deadline, budget - spent)
                # a test stopped for time spent what was left (its kernel CPU count may end a few ms short of the
                # budget it was stopped at): the tests after it are `timeout` too, never run on the crumbs
                spent = budget if result["status"] == "timeout" else spent + result["cpu_s"]
                result["cpu_s"] = round(result["cpu_s"], 4)
            result["index"] = index
            send(result)
        send({"done": True, "recycle": self.dirty})


def _server_alive() -> bool:
    """Whether a process `docker exec` started (PPid 0: its parent is outside the container), i.e. a server, is
    alive besides this PID 1. Forked programs have a parent inside, so they never count."""
    return any(pid != 1 and ppid == 0 for pid, ppid in live_procs())


def _is_prorl_init(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    return any(a.endswith(b"runner.py") for a in args) and b"init" in args


def _mounted_by_local_sandbox(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as fh:
            return any(line.split()[:2] == ["prorl-sandbox", path] for line in fh)
    except OSError:
        return False


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
    for sig in SERVER_IGNORES:
        signal.signal(sig, signal.SIG_IGN)
    sealed = _make_non_dumpable()
    os.environ.clear()  # what every program sees (plus HOME and TMPDIR = its workdir)
    os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", LANG="C.UTF-8", PYTHONIOENCODING="utf-8",
                      MALLOC_ARENA_MAX="2")
    import builtins

    if not hasattr(builtins, "exit"):  # `python -S` (LocalSandbox) skips site, which defines exit() and quit()
        import site  # under -S, importing site does not run site.main()

        site.setquit()
        site.sethelper()
        site.setcopyright()
    server = Server(root)
    server.cleanup()

    def send(obj) -> None:
        data = encode_frame(obj)
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]

    freeze()  # every module is loaded: the copies the guard puts back before each assertion test
    try:
        digest = runner_digest()
    except OSError as exc:  # a file missing from the image: the host reports the image as not its own
        digest = f"unreadable ({exc})"
    send({"ready": True, "python": sys.version.split()[0], "own_pidns": server.own_pidns, "sealed": sealed,
          "runner_digest": digest})
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
    elif len(argv) == 2 and argv[1] == "digest":
        print(runner_digest())
    elif len(argv) == 2 and argv[1] == "files":
        print(" ".join(RUNNER_FILES))
    elif len(argv) >= 2 and argv[1] == "serve":
        serve(argv[2] if len(argv) > 2 else os.environ.get("PRORL_SANDBOX_ROOT", "/sandbox"))
    else:
        sys.exit("usage: runner.py init | serve [ROOT] | digest | files")


if __name__ == "__main__":
    main(sys.argv)

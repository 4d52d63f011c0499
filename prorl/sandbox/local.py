"""`LocalSandbox`: the same runner without Docker, in Linux namespaces. WEAKER isolation than `DockerSandbox`.

Each worker is `unshare --net --pid --ipc --mount --mount-proc --fork [--user --map-root-user]`, then a private
tmpfs mounted on its root, then (as root: `setpriv` to nobody) `python3 runner.py serve ROOT`: no network but a
down `lo`, its own PID namespace (the runner is its PID 1 and kills every stray process after each program), its own
System V IPC, workdirs other workers cannot see, rlimits (RLIMIT_NPROC = `max_procs` for a pids cgroup) and a
process-group kill per program. Unlike the container, the program can READ the host's world-readable files and
write wherever the worker's user may; there is no cgroup memory/pids/CPU cap (only rlimits) and no seccomp filter.
Use it only where no Docker engine is reachable (the `make_sandbox` helper does that with a warning) or when asked
explicitly. Without a usable `unshare` the worker runs with rlimits and process-group kills only (warned), as nobody
via `setpriv` when the caller is root (never as root). Bubblewrap is not used.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from prorl.sandbox.base import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_LIMIT, DEFAULT_TIMEOUT_S, Sandbox, infra_answers
from prorl.sandbox.runner import HEADER, encode_frame

log = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER_FILES = ("runner.py", "child.py", "cleanup.py")  # the runner, what runs in each forked process, its cleanup
_NOBODY = 65534
_GRACE_S = 0.7
_TMPFS_MB = 64  # the private tmpfs holding a namespaced worker's workdirs (the container's tmpfs_mb)


def _namespace_prefix() -> list[str]:
    """The `unshare` command line for this user, or [] when namespaces are unavailable. A namespaced worker's command
    is this prefix, its root, then the runner's command line: inside the namespaces a private tmpfs is mounted on
    the root (other workers, same uid, used to read and write its programs' workdirs through /tmp; capped as in the
    container), then the runner starts (as root: as nobody)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return _drop_root_prefix()
    # --ipc: System V IPC objects would otherwise live in the host's namespace, past the sandbox (runner.py
    # removes them after each program only in a namespace of its own)
    base = [unshare, "--net", "--pid", "--ipc", "--fork", "--kill-child", "--mount", "--mount-proc"]
    uid, drop = (_NOBODY, _drop_root_prefix()) if os.geteuid() == 0 else (0, [])
    if not drop:
        base += ["--user", "--map-root-user"]
    mount = f"mount -t tmpfs -o size={_TMPFS_MB}m,mode=0700,uid={uid},gid={uid},nosuid,nodev prorl-sandbox \"$0\""
    prefix = base + ["/bin/sh", "-c", f"{mount} && exec {shlex.join(drop)} \"$@\""]
    with tempfile.TemporaryDirectory(prefix="prorl-probe-") as probe_root:
        probe = subprocess.run(prefix + [probe_root, "true"], capture_output=True, timeout=30)
    if probe.returncode == 0:
        return prefix
    log.warning("unshare is not usable here (%s): LocalSandbox runs with rlimits only",
                probe.stderr.decode(errors="replace").strip()[:200])
    return _drop_root_prefix()


def _namespaced(prefix: list[str]) -> bool:
    """Whether `prefix` (from _namespace_prefix) starts the worker in namespaces, not with rlimits only."""
    return bool(prefix) and os.path.basename(prefix[0]) == "unshare"


def _drop_root_prefix() -> list[str]:
    """Without namespaces: [] for a normal user; as root, setpriv to nobody (and refuse without setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("LocalSandbox will not run programs as root without namespaces or setpriv")
    return [setpriv, "--reuid", str(_NOBODY), "--regid", str(_NOBODY), "--clear-groups"]


class _Worker:
    def __init__(self, prefix: list[str], python: str, runner: str):
        self.root = tempfile.mkdtemp(prefix="prorl-sandbox-")
        if os.geteuid() == 0:  # the runner runs as nobody (see _namespace_prefix)
            os.chown(self.root, _NOBODY, _NOBODY)
        os.chmod(self.root, 0o700)
        ns_root = [self.root] if _namespaced(prefix) else []  # the tmpfs mount point (see _namespace_prefix)
        self.proc = subprocess.Popen(prefix + ns_root + [python, "-I", "-S", runner, "serve", self.root],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True, cwd=self.root)
        self._raw = b""
        hello = self.read(time.monotonic() + 30)
        if not hello.get("ready"):
            raise OSError(f"local runner did not start: {hello}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, obj) -> None:
        self.proc.stdin.write(encode_frame(obj))
        self.proc.stdin.flush()

    def read(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while True:
            if len(self._raw) >= HEADER.size:
                (size,) = HEADER.unpack(self._raw[:HEADER.size])
                if len(self._raw) >= HEADER.size + size:
                    frame = self._raw[HEADER.size:HEADER.size + size]
                    self._raw = self._raw[HEADER.size + size:]
                    return json.loads(frame)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("local runner did not answer in time")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError("local runner exited")
            self._raw += chunk

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        try:
            shutil.rmtree(self.root, ignore_errors=True)
        except RecursionError:  # a program's absurdly deep tree (Python < 3.13 rmtree recurses)
            log.warning("could not remove %s (too deep)", self.root)


class LocalSandbox(Sandbox):
    """Namespaced local runners (see the module docstring for what this does NOT isolate)."""

    name = "local"

    def __init__(self, workers: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 output_limit: int = DEFAULT_OUTPUT_LIMIT, python: str | None = None, max_procs: int = 64):
        super().__init__(timeout_s, memory_mb, output_limit)
        # Processes of the worker's user (as root: of `nobody`, host-wide) a program may reach: a fork bomb's cap.
        self.max_procs = max_procs
        self.prefix = _namespace_prefix()
        self.namespaced = _namespaced(self.prefix)
        if not self.namespaced:
            log.warning("LocalSandbox without namespaces: programs share the host's network and processes")
        # A system interpreter the dropped user can execute (not a pyenv shim or a venv under /root).
        self.python = python or next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)),
                                     os.path.realpath(sys.executable))
        self.parallelism = workers
        # A copy of the runner the dropped user can read (the checkout may sit under a private home directory).
        self._code_dir = tempfile.mkdtemp(prefix="prorl-runner-")
        os.chmod(self._code_dir, 0o755)
        for name in RUNNER_FILES:
            os.chmod(shutil.copy(os.path.join(_HERE, name), os.path.join(self._code_dir, name)), 0o444)
        self._runner = os.path.join(self._code_dir, "runner.py")
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(workers):
            self._idle.put(None)  # started on first use
        self._all: list[_Worker] = []
        self._closed = False
        atexit.register(self.close)

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.prefix, self.python, self._runner)
        self._all.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.kill()
        if worker in self._all:
            self._all.remove(worker)

    def _execute(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise RuntimeError("LocalSandbox is closed")
        n = len(request["tests"])
        worker = self._idle.get()
        answers: list[dict] = []
        try:
            if worker is None or not worker.alive():
                if worker is not None:
                    self._retire(worker)
                try:
                    worker = self._new_worker()
                except (OSError, TimeoutError, EOFError) as exc:
                    worker = None
                    return infra_answers(n, f"local runner failed to start: {exc!r}")
            try:
                worker.send(dict(request, max_procs=self.max_procs))
            except OSError as exc:
                self._retire(worker)
                worker = None
                return infra_answers(n, f"local runner unreachable: {exc!r}")
            deadline = time.monotonic() + request["timeout_s"] + _GRACE_S
            try:
                while True:
                    frame = worker.read(deadline)
                    if frame.get("done"):
                        if frame.get("recycle"):  # the runner could not wipe its scratch: a fresh worker
                            self._retire(worker)
                            worker = None
                        return answers
                    if "error" in frame:  # a runner bug, not the program's doing
                        self._retire(worker)
                        worker = None
                        return answers + infra_answers(n - len(answers), f"runner error: {frame['error']}")
                    answers.append(frame)
            except (TimeoutError, EOFError) as exc:
                self._retire(worker)
                worker = None
                if isinstance(exc, EOFError) and self.namespaced:
                    # the runner is PID 1 of its namespace, which no program can kill: something outside did
                    return answers + infra_answers(n - len(answers), f"local runner lost: {exc}")
                status = "timeout" if isinstance(exc, TimeoutError) else "runtime_error"
                return answers + [{"status": status, "exit_code": None, "stdout": "", "stderr": "",
                                   "wall_s": 0.0, "passed": False, "error": f"runner lost: {exc}"}
                                  for _ in range(n - len(answers))]
        except BaseException:
            # Interrupted (KeyboardInterrupt, a signal handler's SystemExit) with an answer maybe still in the pipe:
            # a worker given back would hand it to the next caller, and every later caller its predecessor's.
            if worker is not None:
                self._retire(worker)
                worker = None
            raise
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in list(self._all):
            self._retire(worker)
        shutil.rmtree(self._code_dir, ignore_errors=True)
        atexit.unregister(self.close)

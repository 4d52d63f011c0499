"""`LocalSandbox`: the same runner without Docker, in Linux namespaces. WEAKER isolation than `DockerSandbox`.

Each worker is `unshare --net --pid --ipc --mount --mount-proc --fork [--user --map-root-user]`, then private mounts
(`_mount_script`), then `python3 runner.py serve ROOT` (as root: `setpriv` to nobody; otherwise root of the user
namespace with every capability dropped): no network but a down `lo`, its own PID namespace (the runner is its PID 1
and kills every stray process after each program), its own System V IPC, workdirs on a private 64 MB tmpfs other
workers cannot see, a private 16 MB /dev/shm wiped after each program, empty read-only /tmp, /var/tmp and /run/lock
(as in the container, whose root is read-only), rlimits (RLIMIT_AS = `memory_mb` per process, RLIMIT_NPROC =
`max_procs` for a pids cgroup) and a process-group kill per program.

Unlike the container, the program can READ the host's world-readable files and write wherever the worker's user may
outside those folders (nobody owns next to nothing; an unprivileged caller's own files are writable); there is no
seccomp filter and no cgroup of its own: no CPU cap and no memory cap across a program's processes or the workers,
only RLIMIT_AS per process, so one program can hold up to `max_procs` x `memory_mb` plus the two tmpfs (80 MB per
worker), all host RAM. To cap a LocalSandbox's total, run the process in a memory-capped cgroup (a systemd scope or
slice with MemoryMax, a container): programs are the OOM killer's first choice there (oom_score_adj 1000) and a
program it ends reads as status `memory`. A cgroup made by LocalSandbox itself (cgroup v2 delegation) is not built:
the machines this was written on had cgroup v1 without delegation, so it could not be tested.

Use it only where no Docker engine is reachable (the `make_sandbox` helper does that with a warning) or when asked
explicitly. Without a usable `unshare` the worker runs with rlimits and process-group kills only (warned), as nobody
via `setpriv` when the caller is root (never as root): then /tmp, /var/tmp and /dev/shm are the host's, writable
without a cap, and /dev/shm is never wiped (it holds other processes' shared memory). Bubblewrap is not used.
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

from prorl.sandbox.base import (DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_LIMIT, DEFAULT_TIMEOUT_S, Sandbox, default_pool_size,
                                infra_answers)
from prorl.sandbox.runner import HEADER, RUNNER_FILES, encode_frame

log = logging.getLogger(__name__)

_HERE = os.path.dirname(os.path.abspath(__file__))
_NOBODY = 65534
_GRACE_S = 0.7
_TMPFS_MB = 64  # the private tmpfs holding a namespaced worker's workdirs (the container's tmpfs_mb)
_SHM_MB = 16  # its private /dev/shm (the container's shm_size)
# World-writable host folders a namespaced worker sees as empty and read-only, as in the container (read-only root).
_READ_ONLY_DIRS = ("/tmp", "/var/tmp", "/run/lock")


def _mount_script(uid: int, code_dir: str) -> str:
    """sh run inside the namespaces, with the worker's root as $0: empty read-only tmpfs over `_READ_ONLY_DIRS` (a
    program used to write the host's /tmp and /var/tmp, and list what other processes keep there), a private
    `_SHM_MB` /dev/shm (it used to write the host's, uncapped: RAM), the root's private tmpfs (created in the fresh
    /tmp when it lives there) and `code_dir` (the runner), read-only at its path: bound on /dev/shm before the
    covering, bound back after. Every tmpfs is named prorl-sandbox: the runner wipes /dev/shm when it is one."""
    ro, code = "nosuid,nodev,noexec", shlex.quote(code_dir)
    return (f'mount --bind {code} /dev/shm && '
            f'ro=""; for d in {" ".join(_READ_ONLY_DIRS)}; do if [ -d "$d" ] && [ ! -L "$d" ]; then '
            f'mount -t tmpfs -o size=1m,mode=0755,{ro} prorl-sandbox "$d" || exit 1; ro="$ro $d"; fi; done; '
            f'mkdir -p {code} "$0" && mount --bind /dev/shm {code} && mount -o remount,bind,ro,nosuid,nodev {code} && '
            f'mount -t tmpfs -o size={_SHM_MB}m,mode=1777,{ro} prorl-sandbox /dev/shm && '
            f'mount -t tmpfs -o size={_TMPFS_MB}m,mode=0700,uid={uid},gid={uid},nosuid,nodev prorl-sandbox "$0" && '
            f'for d in $ro; do mount -o remount,bind,ro,{ro} "$d" || exit 1; done')


def _namespace_prefix(code_dir: str) -> list[str]:
    """The `unshare` command line for this user, or [] when namespaces are unavailable. A namespaced worker's command
    is this prefix, its root, then the runner's command line: inside the namespaces `_mount_script` gives it a
    private /dev/shm, read-only empty /tmp, /var/tmp and /run/lock, and a private tmpfs on the root (other workers,
    same uid, used to read and write its programs' workdirs through /tmp; capped as in the container), then the
    runner starts: as root, as nobody; otherwise as root of a user namespace with every capability dropped (it
    could otherwise unmount those tmpfs, or mount new, uncapped ones)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return _drop_root_prefix()
    # --ipc: System V IPC objects would otherwise live in the host's namespace, past the sandbox (runner.py
    # removes them after each program only in a namespace of its own)
    base = [unshare, "--net", "--pid", "--ipc", "--fork", "--kill-child", "--mount", "--mount-proc"]
    if os.geteuid() == 0:
        uid, drop = _NOBODY, _drop_root_prefix()
    else:
        setpriv = shutil.which("setpriv")  # without it the programs keep their user namespace's capabilities
        caps = ["--inh-caps", "-all", "--ambient-caps", "-all", "--bounding-set", "-all"]
        uid, drop = 0, ([setpriv, *caps] if setpriv else [])
        base += ["--user", "--map-root-user"]
    prefix = base + ["/bin/sh", "-c", f"{_mount_script(uid, code_dir)} && exec {shlex.join(drop)} \"$@\""]
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

    def __init__(self, workers: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_mb: int = DEFAULT_MEMORY_MB, output_limit: int = DEFAULT_OUTPUT_LIMIT,
                 python: str | None = None, max_procs: int = 64):
        """`workers` (None: `default_pool_size()`, the CPUs this process may use, at most 4) runners, each running
        one program at a time; `timeout_s`, the default CPU-time budget of a request (see `Sandbox.run_tests`)."""
        super().__init__(timeout_s, memory_mb, output_limit)
        workers = default_pool_size() if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        # Processes of the worker's user (as root: of `nobody`, host-wide) a program may reach: a fork bomb's cap.
        self.max_procs = max_procs
        # A copy of the runner the dropped user can read (the checkout may sit under a private home directory).
        self._code_dir = tempfile.mkdtemp(prefix="prorl-runner-")
        os.chmod(self._code_dir, 0o755)
        for name in RUNNER_FILES:
            os.chmod(shutil.copy(os.path.join(_HERE, name), os.path.join(self._code_dir, name)), 0o444)
        self._runner = os.path.join(self._code_dir, "runner.py")
        self.prefix = _namespace_prefix(self._code_dir)
        self.namespaced = _namespaced(self.prefix)
        if not self.namespaced:
            log.warning("LocalSandbox without namespaces: programs share the host's network and processes")
        # A system interpreter the dropped user can execute (not a pyenv shim or a venv under /root).
        self.python = python or next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)),
                                     os.path.realpath(sys.executable))
        self.parallelism = workers
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
            deadline = time.monotonic() + request["wall_timeout_s"] + _GRACE_S
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

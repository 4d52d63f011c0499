"""`DockerSandbox`: a warm pool of locked-down containers, each running the in-sandbox fork server.

Each container: `--network none`, read-only root, a size-capped tmpfs at /sandbox, memory = memory+swap cap, a pids
limit, a CPU quota, `no-new-privileges`, every capability dropped, uid 1000. Its PID 1 is `runner.py init`; one
long-lived `docker exec -i runner.py serve` per container carries length-prefixed requests over the exec stream,
so one program costs a fork inside a warm container instead of a `docker run` (see benchmarks/bench_sandbox.py).

A slot (one container) serves one request at a time: the number of slots is a hard cap on concurrent runs. A slot
is recycled (container replaced, in the background) after `recycle_after` programs, after any limit violation
(timeout, memory, output limit) and whenever its runner dies; a dead container is replaced and the request retried
(each dead container met is replaced) before it is reported as `infra_error`. Slots are spread round-robin over several Docker endpoints.
Containers are auto-removed and stop about 5 s after their host process is gone (SIGTERM/SIGKILL included: the
exec stream closes and PID 1 exits); `remove_stale_containers` clears any left by dead processes of this host.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prorl.sandbox.base import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_LIMIT, DEFAULT_TIMEOUT_S, Sandbox, infra_answers
from prorl.sandbox.runner import HEADER, encode_frame

log = logging.getLogger(__name__)

IMAGE = "prorl-sandbox:py3"
LABEL = "prorl.sandbox"
_GRACE_S = 0.7  # the host waits this long past the budget before it declares the runner stuck
_RUNNER_OVERHEAD_MB = 96  # the fork server, PID 1 and page cache, on top of one program's memory and the tmpfs
_LIMIT_STATUSES = {"timeout", "memory", "output_limit"}
_STOP_WAIT_S = 1.0  # how long a lost runner's container may take to read as stopped (well under init's 5 s grace)


@dataclass
class DockerSandboxConfig:
    image: str = field(default=IMAGE, metadata={"help": "Sandbox image (built by docker/build.sh)."})
    endpoints: tuple[str, ...] = field(default=(), metadata={
        "help": "Docker endpoints (DOCKER_HOST syntax, e.g. unix:///var/run/docker.sock, tcp://host:2376); slots "
                "are spread round-robin over them. Empty: the environment's DOCKER_HOST or the local socket."})
    pool_size: int = field(default=4, metadata={"help": "Warm containers; also the hard cap on concurrent runs."})
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, metadata={"help": "Default time budget per request."})
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata={"help": "Address-space cap of one program (MB)."})
    tmpfs_mb: int = field(default=64, metadata={"help": "Size of the /sandbox tmpfs holding the workdirs (MB)."})
    pids_limit: int = field(default=64, metadata={"help": "Max processes per container (fork bombs stop here)."})
    cpus: float = field(default=1.0, metadata={"help": "CPU quota per container, in CPUs."})
    output_limit: int = field(default=DEFAULT_OUTPUT_LIMIT, metadata={"help": "Bytes kept per stream; more "
                                                                              "ends the program (output_limit)."})
    recycle_after: int = field(default=500, metadata={"help": "Replace a container after this many programs."})
    start_timeout_s: float = field(default=60.0, metadata={"help": "Max time to start one container's runner."})


def _client(endpoint: str | None):
    import docker

    if endpoint:
        return docker.DockerClient(base_url=endpoint, timeout=60)
    return docker.from_env(timeout=60)


def engine_available(endpoint: str | None = None, image: str = IMAGE) -> tuple[bool, str]:
    """(True, "") when an engine answers at `endpoint` and has `image`; else (False, the reason)."""
    try:
        client = _client(endpoint)
        client.ping()
    except Exception as exc:
        return False, (f"no Docker engine answers at {endpoint or os.environ.get('DOCKER_HOST') or 'the local socket'} "
                       f"({exc.__class__.__name__}: {exc}): start one and build the image with `make sandbox`")
    try:
        client.images.get(image)
    except Exception:
        return False, f"the Docker engine has no image {image!r}: run docker/build.sh (or `make sandbox`)"
    finally:
        client.close()
    return True, ""


class RunnerGone(Exception):
    """The fork server's stream ended or stalled."""


class _Slot:
    """One container plus the open exec stream of its fork server."""

    def __init__(self, connect, config: DockerSandboxConfig, owner: str, endpoint: str):
        self.connect, self.config, self.owner, self.endpoint = connect, config, owner, endpoint
        self.client = None
        self.container = None
        self.sock: socket.socket | None = None
        self.uses = 0
        self._raw = bytearray()  # demultiplexed stdout bytes not yet parsed
        self._buf = bytearray()  # docker stream bytes not yet demultiplexed
        self.exec_id: str | None = None
        self.started_at: str | None = None  # the container's start time: a restart by the engine changes it

    @property
    def started(self) -> bool:
        return self.sock is not None

    def start(self) -> None:
        cfg = self.config
        self.client = self.connect()
        mem = cfg.memory_mb + cfg.tmpfs_mb + _RUNNER_OVERHEAD_MB
        self.container = self.client.containers.run(
            cfg.image, ["python3", "/opt/prorl/runner.py", "init"], detach=True, user="1000:1000",
            network_mode="none", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            tmpfs={"/sandbox": f"rw,nosuid,nodev,noexec,size={cfg.tmpfs_mb}m,uid=1000,gid=1000"},
            mem_limit=f"{mem}m", memswap_limit=f"{mem}m", pids_limit=cfg.pids_limit,
            nano_cpus=int(cfg.cpus * 1e9), shm_size="16m", labels={LABEL: "1", f"{LABEL}.owner": self.owner},
            log_config={"type": "none"}, auto_remove=True,  # init stops it once its host process is gone
        )
        api = self.client.api
        exec_id = api.exec_create(self.container.id, ["python3", "/opt/prorl/runner.py", "serve", "/sandbox"],
                                  stdin=True, stdout=True, stderr=True, user="1000:1000")["Id"]
        stream = api.exec_start(exec_id, socket=True)
        self.sock = getattr(stream, "_sock", stream)
        self._stream = stream  # keep the response object alive with its socket
        self._raw, self._buf = bytearray(), bytearray()
        self.exec_id = exec_id
        self.container.reload()
        self.started_at = self.container.attrs.get("State", {}).get("StartedAt")
        self.uses = 0
        hello = self.read(time.monotonic() + cfg.start_timeout_s)
        if not hello.get("ready"):
            raise RunnerGone(f"runner did not start: {hello}")

    def stop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        if self.container is not None:
            try:
                self.container.remove(force=True)
            except Exception as exc:
                log.debug("removing %s failed: %r", self.container.id[:12], exc)
        self.container = None

    def container_running(self) -> bool:
        try:
            self.container.reload()
            return self.container.status == "running"
        except Exception:
            return False

    def container_stopped(self, wait_s: float) -> bool:
        """Whether the container is no longer running, waiting up to `wait_s` for it to stop: its exec stream can
        end (`docker kill`, a crashed engine) a little before the engine marks the container exited."""
        end = time.monotonic() + wait_s
        while self.container_running():
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)
        return True

    def send(self, obj: Any) -> None:
        self.sock.settimeout(10)
        self.sock.sendall(encode_frame(obj))

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RunnerGone("runner did not answer in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout as exc:
            raise RunnerGone("runner did not answer in time") from exc
        except OSError as exc:
            raise RunnerGone(f"exec stream failed: {exc!r}") from exc
        if not chunk:
            raise RunnerGone("runner exited")
        self._buf += chunk
        # Docker multiplexes the exec stream: 8-byte header (stream, 0, 0, 0, big-endian size), then payload.
        # Parsed in place and cut once (re-slicing per chunk made a 24 MB frame take 5 s).
        at = 0
        while len(self._buf) - at >= 8:
            kind, size = self._buf[at], struct.unpack_from(">I", self._buf, at + 4)[0]
            if len(self._buf) - at < 8 + size:
                break
            if kind == 1:
                self._raw += memoryview(self._buf)[at + 8:at + 8 + size]
            else:
                log.debug("runner stderr: %r", bytes(self._buf[at + 8:at + 8 + min(size, 500)]))
            at += 8 + size
        del self._buf[:at]

    def read(self, deadline: float) -> dict:
        while len(self._raw) < HEADER.size:
            self._fill(deadline)
        (size,) = HEADER.unpack_from(self._raw)
        while len(self._raw) < HEADER.size + size:
            self._fill(deadline)
        frame = bytes(self._raw[HEADER.size:HEADER.size + size])
        del self._raw[:HEADER.size + size]
        return json.loads(frame)

    def lost_to_infrastructure(self, stalled: bool) -> str | None:
        """Why the runner's loss is the infrastructure's doing, not the program's (None: the program's). The engine
        paused or restarted the container, or the exec stream broke (a network blip: the server still runs, or
        exited by itself once its input or output closed); a program can only kill (exit code 128 + signal), stop
        or starve its own server inside the same, still running container."""
        try:
            self.container.reload()
            state = self.container.attrs.get("State", {})
            if state.get("Paused") or self.container.status == "paused":
                return "the engine paused the container"
            if state.get("StartedAt") != self.started_at:
                return "the engine restarted the container"
            if not stalled and self.exec_id:
                end = time.monotonic() + _STOP_WAIT_S  # a killed server's exec may read as running for a moment
                while (info := self.client.api.exec_inspect(self.exec_id)).get("Running"):
                    if time.monotonic() >= end:
                        return "the exec stream broke while the runner still ran"
                    time.sleep(0.05)
                code = info.get("ExitCode")
                if not (isinstance(code, int) and code > 128):  # a program can only kill it (137: SIGKILL)
                    return f"the exec stream broke (the runner exited with {code} once its input or output closed)"
        except Exception as exc:
            return f"the engine could not be asked about the container ({exc!r})"
        return None


class DockerSandbox(Sandbox):
    """The warm-pool Docker sandbox. `DockerSandbox(pool_size=2, endpoints=("unix:///var/run/docker.sock",))`."""

    name = "docker"

    def __init__(self, config: DockerSandboxConfig | None = None, **overrides):
        config = config or DockerSandboxConfig()
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise TypeError(f"DockerSandbox got an unknown option {key!r}")
            setattr(config, key, value)
        if config.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {config.pool_size}")
        super().__init__(config.timeout_s, config.memory_mb, config.output_limit)
        self.config = config
        self.parallelism = config.pool_size
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        endpoints = list(config.endpoints) or [os.environ.get("DOCKER_HOST") or None]
        self._clients: dict[str | None, Any] = {}
        self._slots = [_Slot(self._connector(endpoints[i % len(endpoints)]), config, self.owner,
                             str(endpoints[i % len(endpoints)])) for i in range(config.pool_size)]
        self._idle: queue.Queue[_Slot] = queue.Queue()
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prorl-sandbox-recycle")
        self._lock = threading.Lock()
        self.in_flight = self.peak_in_flight = self.recycled = 0
        self._closed = False
        for endpoint in dict.fromkeys(endpoints):
            try:
                remove_stale_containers(endpoint)
            except Exception as exc:
                log.debug("stale container clean-up on %s failed: %r", endpoint, exc)
        with ThreadPoolExecutor(max_workers=min(8, config.pool_size)) as ex:
            list(ex.map(self._try_start, self._slots))
        for slot in self._slots:
            self._idle.put(slot)
        atexit.register(self.close)

    # -- slot management ---------------------------------------------------------------------------------
    def _connector(self, endpoint: str | None):
        """A function returning the (cached) client of `endpoint`; it raises while the engine is unreachable."""
        def connect():
            with self._lock:
                if endpoint not in self._clients:
                    self._clients[endpoint] = _client(endpoint)
                return self._clients[endpoint]

        return connect

    def _try_start(self, slot: _Slot) -> None:
        try:
            slot.start()
        except Exception as exc:
            log.warning("sandbox container on %s failed to start: %r", slot.endpoint, exc)
            slot.stop()

    def _recycle(self, slot: _Slot) -> None:
        """Replace the slot's container in the background, then hand the slot back to the pool."""
        def work():
            slot.stop()
            if not self._closed:
                self._try_start(slot)
            self._idle.put(slot)

        with self._lock:
            self.recycled += 1
        if self._closed:
            slot.stop()
            return
        self._background.submit(work)

    def healthy_slots(self) -> int:
        return sum(1 for s in self._slots if s.started and s.container_running())

    # -- execution ---------------------------------------------------------------------------------------
    def _execute(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        if self._closed:
            raise RuntimeError("DockerSandbox is closed")
        attempts = self.config.pool_size + 1  # every dead container met is replaced; then one fresh try
        for attempt in range(1, attempts + 1):
            slot = self._next_slot()
            if slot is None:  # closed while this call waited (or retried)
                return infra_answers(len(request["tests"]), "the sandbox was closed during the call")
            with self._lock:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                answers, retry = self._on_slot(slot, request)
            finally:
                with self._lock:
                    self.in_flight -= 1
            if not retry or attempt == attempts:
                return answers
        raise AssertionError("unreachable")

    def _next_slot(self) -> _Slot | None:
        while True:
            try:
                return self._idle.get(timeout=0.2)
            except queue.Empty:
                if self._closed:
                    return None

    def _on_slot(self, slot: _Slot, request: dict) -> tuple[list[dict], bool]:
        """Run `request` on `slot` and give the slot back (or recycle it). Returns (answers, retry?). Whatever
        interrupts it (KeyboardInterrupt, a bug) recycles the slot, whose stream may still carry an answer: a slot
        kept out of the pool would leave later calls waiting forever."""
        try:
            return self._run_on(slot, request)
        except BaseException:
            self._recycle(slot)
            raise

    def _run_on(self, slot: _Slot, request: dict) -> tuple[list[dict], bool]:
        n = len(request["tests"])
        if not slot.started:
            if self._closed:
                return infra_answers(n, "the sandbox was closed during the call"), False
            self._try_start(slot)
            if not slot.started:
                self._idle.put(slot)  # the next caller tries again
                return infra_answers(n, f"no sandbox container could be started on {slot.endpoint}"), False
        answers: list[dict] = []
        try:
            slot.send(request)
        except OSError as exc:  # the runner was gone before the program could run: not the program's doing
            self._recycle(slot)
            return infra_answers(n, f"sandbox runner unreachable: {exc!r}"), True
        slot.uses += 1
        deadline = time.monotonic() + request["timeout_s"] + _GRACE_S
        dirty = False
        try:
            while True:
                frame = slot.read(deadline)
                if frame.get("done"):
                    dirty = bool(frame.get("recycle"))  # the runner could not wipe its scratch
                    break
                if "error" in frame:  # a runner bug, not the program's doing
                    self._recycle(slot)
                    return answers + infra_answers(n - len(answers), f"runner error: {frame['error']}"), False
                answers.append(frame)
        except RunnerGone as exc:
            stalled = "in time" in str(exc)  # a stopped or starved runner: the budget is spent, answer now
            if not stalled and slot.container_stopped(_STOP_WAIT_S):  # the container died: infrastructure, retry
                self._recycle(slot)
                return infra_answers(n, f"sandbox container died: {exc}"), True
            why = slot.lost_to_infrastructure(stalled)
            if why is not None:
                self._recycle(slot)
                return infra_answers(n, f"sandbox runner lost: {why}"), not stalled
            # The container is alive, so the program killed, stopped or starved its own runner.
            status = "timeout" if stalled else "runtime_error"
            answers += [{"status": status, "exit_code": None, "stdout": "", "stderr": "", "wall_s": 0.0,
                         "passed": False, "error": f"the sandbox runner was lost during the run: {exc}"}
                        for _ in range(n - len(answers))]
            self._recycle(slot)
            return answers, False
        if dirty or slot.uses >= self.config.recycle_after or any(a["status"] in _LIMIT_STATUSES for a in answers):
            self._recycle(slot)
        else:
            self._idle.put(slot)
        return answers, False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._background.shutdown(wait=True)
        for slot in self._slots:
            slot.stop()
        for client in self._clients.values():
            try:
                client.close()
            except Exception:
                pass
        atexit.unregister(self.close)


def remove_stale_containers(endpoint: str | None = None) -> int:
    """Remove sandbox containers left by dead processes of this host (e.g. after a crash). Returns the count."""
    client, removed, host = _client(endpoint), 0, socket.gethostname()
    try:
        for c in client.containers.list(all=True, filters={"label": LABEL}):
            owner_host, _, rest = c.labels.get(f"{LABEL}.owner", "").partition(":")
            pid = rest.split(":")[0]
            if owner_host == host and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                c.remove(force=True)
                removed += 1
    finally:
        client.close()
    return removed

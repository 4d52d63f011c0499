"""One sandbox container and the exec stream of its fork server (a slot of `DockerSandbox`'s pool): starting it
locked down, demultiplexing Docker's exec stream into the runner's frames, and telling, when the runner is lost,
whether the engine or the program lost it."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from prorl.sandbox.base import DEFAULT_MEMORY_MB, DEFAULT_OUTPUT_LIMIT, DEFAULT_TIMEOUT_S, default_pool_size
from prorl.sandbox.runner import HEADER, RUNNER_FILES, encode_frame, runner_digest

log = logging.getLogger(__name__)

IMAGE = "prorl-sandbox:py3"  # the default image; env PRORL_SANDBOX_IMAGE names another (e.g. a branch's own build)
LABEL = "prorl.sandbox"
RUNNER_OVERHEAD_MB = 96  # the fork server, PID 1 and page cache, on top of one program's memory and the tmpfs
STOP_WAIT_S = 1.0  # how long a lost runner's container may take to read as stopped (well under init's 5 s grace)


def default_image() -> str:
    return os.environ.get("PRORL_SANDBOX_IMAGE") or IMAGE


class ImageOutdated(RuntimeError):
    """The image's runner was built from other runner files than this prorl's: its rewards would follow them."""


def check_runner(image: str, reported: object) -> None:
    """Raise ImageOutdated unless `reported` (the runner's `runner_digest`, None from an image built before runners
    reported one) is the digest of this prorl's runner files."""
    ours = runner_digest()
    if reported == ours:
        return
    theirs = ("reports no runner digest (built before prorl checked it)" if reported is None
              else f"was built from runner files with digest {reported}")
    how = ("`make sandbox` (or `bash docker/build.sh`)" if image == IMAGE else f"`IMAGE={image} bash docker/build.sh`")
    raise ImageOutdated(
        f"the sandbox image {image!r} is out of date: rebuild it from this prorl's checkout with {how}. Its runner "
        f"{theirs}, but this prorl's runner files ({', '.join(RUNNER_FILES)} in "
        f"{os.path.dirname(os.path.abspath(__file__))}) have digest {ours}: code would be run and rewarded by "
        f"another runner than this prorl's (e.g. without its reward-hack guard or its CPU-time budget)")


@dataclass
class DockerSandboxConfig:
    image: str = field(default_factory=default_image, metadata={
        "help": "Sandbox image (built by docker/build.sh). Default: env PRORL_SANDBOX_IMAGE, else prorl-sandbox:py3."})
    endpoints: tuple[str, ...] = field(default=(), metadata={
        "help": "Docker endpoints (DOCKER_HOST syntax, e.g. unix:///var/run/docker.sock, tcp://host:2376); slots "
                "are spread round-robin over them. Empty: the environment's DOCKER_HOST or the local socket."})
    pool_size: int = field(default_factory=default_pool_size, metadata={
        "help": "Warm containers; also the hard cap on concurrent runs. Default: the CPUs this process may use, at "
                "most 4 (set it to the engines' CPUs when they run on other machines)."})
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, metadata={
        "help": "Default time budget per request: CPU seconds of the program, all its tests together (the wall-clock "
                "cap is WALL_FACTOR times it)."})
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata={"help": "Address-space cap of one program (MB)."})
    tmpfs_mb: int = field(default=64, metadata={"help": "Size of the /sandbox tmpfs holding the workdirs (MB)."})
    pids_limit: int = field(default=64, metadata={"help": "Max processes per container (fork bombs stop here)."})
    cpus: float = field(default=1.0, metadata={"help": "CPU quota per container, in CPUs."})
    output_limit: int = field(default=DEFAULT_OUTPUT_LIMIT, metadata={"help": "Bytes kept per stream; more "
                                                                              "ends the program (output_limit)."})
    recycle_after: int = field(default=500, metadata={"help": "Replace a container after this many programs."})
    start_timeout_s: float = field(default=60.0, metadata={"help": "Max time to start one container's runner."})

def client_for(endpoint: str | None):
    import docker

    if endpoint:
        return docker.DockerClient(base_url=endpoint, timeout=60)
    return docker.from_env(timeout=60)

class RunnerGone(Exception):
    """The fork server's stream ended or stalled."""


class Slot:
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
        self.start_error: Exception | None = None  # why the last start failed (None: it did not)

    @property
    def started(self) -> bool:
        return self.sock is not None

    def start(self) -> None:
        cfg = self.config
        self.client = self.connect()
        mem = cfg.memory_mb + cfg.tmpfs_mb + RUNNER_OVERHEAD_MB
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
        check_runner(cfg.image, hello.get("runner_digest"))

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
                end = time.monotonic() + STOP_WAIT_S  # a killed server's exec may read as running for a moment
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

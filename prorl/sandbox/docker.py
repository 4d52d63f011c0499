"""`DockerSandbox`: a warm pool of locked-down containers, each running the in-sandbox fork server.

Each container: `--network none`, read-only root, a size-capped tmpfs at /sandbox, memory = memory+swap cap, a pids
limit, a CPU quota, `no-new-privileges`, every capability dropped, uid 1000. Its PID 1 is `runner.py init`; one
long-lived `docker exec -i runner.py serve` per container carries length-prefixed requests over the exec stream,
so one program costs a fork inside a warm container instead of a `docker run` (see benchmarks/bench_sandbox.py).

A slot (one container) serves one request at a time: the number of slots is a hard cap on concurrent runs. By
default there are as many as this process has CPUs (`usable_cpus`, at most 4): the time budget counts a program's
CPU time, but more programs at once than CPUs only stretch each one's wall time towards the wall-clock cap. A slot
is recycled (container replaced, in the background) after `recycle_after` programs, after any limit violation
(timeout, memory, output limit) and whenever its runner dies; a dead container is replaced and the request retried
(each dead container met is replaced) before it is reported as `infra_error`. Slots are spread round-robin over several Docker endpoints.
Each runner reports the digest of the runner files it started from: an image built from other files than this
prorl's (or before runners reported one) is refused at start (`ImageOutdated`, naming the command that rebuilds it)
and, met by a later container start, answers `infra_error` with that message.
Containers are auto-removed and stop about 5 s after their host process is gone (SIGTERM/SIGKILL included: the
exec stream closes and PID 1 exits); `remove_stale_containers` clears any left by dead processes of this host.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prorl.sandbox.base import Sandbox, infra_answers
from prorl.sandbox.container import (IMAGE, LABEL, STOP_WAIT_S, DockerSandboxConfig, ImageOutdated, RunnerGone, Slot,
                                     client_for, default_image)

__all__ = ["IMAGE", "DockerSandbox", "DockerSandboxConfig", "ImageOutdated", "engine_available",
           "remove_stale_containers"]
log = logging.getLogger(__name__)

_GRACE_S = 0.7  # the host waits this long past the wall-clock cap before it declares the runner stuck
_LIMIT_STATUSES = {"timeout", "memory", "output_limit"}


def engine_available(endpoint: str | None = None, image: str | None = None) -> tuple[bool, str]:
    """(True, "") when an engine answers at `endpoint` and has `image` (default: `default_image()`); else (False,
    the reason). Whether the image's runner is this prorl's is checked when a DockerSandbox starts."""
    image = image or default_image()
    try:
        client = client_for(endpoint)
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
        self._slots = [Slot(self._connector(endpoints[i % len(endpoints)]), config, self.owner,
                             str(endpoints[i % len(endpoints)])) for i in range(config.pool_size)]
        self._idle: queue.Queue[Slot] = queue.Queue()
        self._background = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prorl-sandbox-recycle")
        self._lock = threading.Lock()
        self.in_flight = self.peak_in_flight = self.recycled = 0
        self._closed = False
        self._starting = True  # an outdated image found now is raised, not logged per slot
        for endpoint in dict.fromkeys(endpoints):
            try:
                remove_stale_containers(endpoint)
            except Exception as exc:
                log.debug("stale container clean-up on %s failed: %r", endpoint, exc)
        with ThreadPoolExecutor(max_workers=min(8, config.pool_size)) as ex:
            list(ex.map(self._try_start, self._slots))
        outdated = next((s.start_error for s in self._slots if isinstance(s.start_error, ImageOutdated)), None)
        if outdated is not None:  # every container would run another runner than this prorl's: refuse
            self.close()
            raise outdated
        self._starting = False
        for slot in self._slots:
            self._idle.put(slot)
        atexit.register(self.close)

    # -- slot management ---------------------------------------------------------------------------------
    def _connector(self, endpoint: str | None):
        """A function returning the (cached) client of `endpoint`; it raises while the engine is unreachable."""
        def connect():
            with self._lock:
                if endpoint not in self._clients:
                    self._clients[endpoint] = client_for(endpoint)
                return self._clients[endpoint]

        return connect

    def _try_start(self, slot: Slot) -> None:
        try:
            slot.start()
            slot.start_error = None
        except Exception as exc:
            if not (self._starting and isinstance(exc, ImageOutdated)):
                log.warning("sandbox container on %s failed to start: %s", slot.endpoint,
                            exc if isinstance(exc, ImageOutdated) else repr(exc))
            slot.start_error = exc
            slot.stop()

    def _recycle(self, slot: Slot) -> None:
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

    def _next_slot(self) -> Slot | None:
        while True:
            try:
                return self._idle.get(timeout=0.2)
            except queue.Empty:
                if self._closed:
                    return None

    def _on_slot(self, slot: Slot, request: dict) -> tuple[list[dict], bool]:
        """Run `request` on `slot` and give the slot back (or recycle it). Returns (answers, retry?). Whatever
        interrupts it (KeyboardInterrupt, a bug) recycles the slot, whose stream may still carry an answer: a slot
        kept out of the pool would leave later calls waiting forever."""
        try:
            return self._run_on(slot, request)
        except BaseException:
            self._recycle(slot)
            raise

    def _run_on(self, slot: Slot, request: dict) -> tuple[list[dict], bool]:
        n = len(request["tests"])
        if not slot.started:
            if self._closed:
                return infra_answers(n, "the sandbox was closed during the call"), False
            self._try_start(slot)
            if not slot.started:
                self._idle.put(slot)  # the next caller tries again
                why = slot.start_error if isinstance(slot.start_error, ImageOutdated) else repr(slot.start_error)
                return infra_answers(n, f"no sandbox container could be started on {slot.endpoint}: {why}"), False
        answers: list[dict] = []
        try:
            slot.send(request)
        except OSError as exc:  # the runner was gone before the program could run: not the program's doing
            self._recycle(slot)
            return infra_answers(n, f"sandbox runner unreachable: {exc!r}"), True
        slot.uses += 1
        deadline = time.monotonic() + request["wall_timeout_s"] + _GRACE_S
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
            if not stalled and slot.container_stopped(STOP_WAIT_S):  # the container died: infrastructure, retry
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
    client, removed, host = client_for(endpoint), 0, socket.gethostname()
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

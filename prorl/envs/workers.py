"""Parallel scoring with a per-sample timeout that really stops a hung verifier.

Verifiers such as math-verify can spin for minutes on a LaTeX bomb, and their signal-based timeouts only work in
the main thread. Here every sample is scored in a worker *process*; the parent waits on a pipe with a deadline and,
when the deadline passes, kills the worker (SIGKILL), reports `timeout` for that sample and starts a fresh worker.
This works from any thread of the caller. Workers are started once per process and reused across calls; each keeps
the environments it was sent (the latest `_KEEP_ENVS`), keyed by their pickled content: an environment changed since
the previous call (an attribute set, a new dataset) is sent again. On Linux a worker is killed with the process that
started it, however that process ends (SIGTERM and SIGKILL run no atexit hook): a worker inside a hung verifier would
otherwise spin on, orphaned.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

import cloudpickle
from typing import Sequence

from prorl.envs.base import Env, Score, Task

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 120.0
_KEEP_ENVS = 64  # environments a worker keeps; the parent mirrors the eviction, so it knows which to re-send


def _remember(cache: OrderedDict, key: str, value) -> None:
    """Insert/refresh `key` as the newest entry, dropping the oldest beyond _KEEP_ENVS (same order on both sides)."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _KEEP_ENVS:
        cache.popitem(last=False)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when its parent (the thread that started it: a pool thread, which lives as long as the
    pool) ends (Linux PR_SET_PDEATHSIG); exit now if it has already ended."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        except (OSError, AttributeError) as exc:
            log.debug("PR_SET_PDEATHSIG unavailable: %r", exc)
    if parent_pid and os.getppid() != parent_pid:  # the parent died before the call above
        os._exit(0)


def _worker_main(rfd: int, wfd: int, parent_pid: int = 0) -> None:
    """Loop of a scoring worker process: receive (env key, pickled env or None, completion, task), send a Score."""
    _die_with_parent(parent_pid)
    import prorl.envs  # noqa: F401  (registers the built-in environments before any env is unpickled)

    conn_in, conn_out = Connection(rfd, writable=False), Connection(wfd, readable=False)
    try:
        conn_out.send("ready")
    except (BrokenPipeError, OSError):  # the parent has gone (closed its pool, or exited) while this one started
        return
    envs: OrderedDict[str, Env] = OrderedDict()
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        key, blob, completion, task = msg
        try:
            if blob is not None:
                # The parent's import path when the env was sent (see _import_path): a plugin installed or put on
                # the path after this worker started, a module imported from an earlier current directory, must
                # still be importable here.
                paths, env_blob = pickle.loads(blob)
                sys.path.extend(p for p in paths if p not in sys.path)
                try:
                    env = pickle.loads(env_blob)
                except Exception as exc:  # kept: the next samples of this env (sent without it) fail the same way
                    env = _Unloadable(f"the scoring worker could not load the environment: {exc!r}",
                                      traceback.format_exc(limit=4))
                _remember(envs, key, env)
            else:
                _remember(envs, key, envs[key])
            score = envs[key].score(completion, task)
        except Exception as exc:  # a verifier bug must not kill the worker or the batch
            score = Score(0.0, "infra_error", {"error": repr(exc), "traceback": traceback.format_exc(limit=4)})
        try:
            try:
                conn_out.send(score)
            except (BrokenPipeError, OSError):
                raise
            except Exception:  # details the parent cannot unpickle (a re.Match...): the verdict, details as text
                conn_out.send(Score(score.reward, score.status, _picklable_details(score.details)))
        except (BrokenPipeError, OSError):
            return


class _Unloadable:
    """In a worker's cache, an environment whose pickle did not load: each of its samples is an infra_error saying
    why (not a KeyError of the cache for the samples sent after the first)."""

    def __init__(self, error: str, tb: str):
        self.error, self.tb = error, tb

    def score(self, completion, task) -> Score:
        return Score(0.0, "infra_error", {"error": self.error, "traceback": self.tb})


def _picklable_details(details) -> dict:
    """`details` with each value that cannot be pickled replaced by its repr (the worker sends Scores by pickle)."""
    if not isinstance(details, dict):
        return {"details": repr(details)}
    out = {}
    for key, value in details.items():
        try:
            pickle.dumps(value)
            out[str(key)] = value
        except Exception:
            out[str(key)] = repr(value)
    return out


class _Worker:
    """One scoring process, started with `python -m prorl.envs.workers` (no fork of a threaded parent, and no
    re-import of the caller's `__main__`, so user scripts need no `if __name__ == "__main__"` guard)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.send_conn = self.recv_conn = None
        self.known: OrderedDict[str, None] = OrderedDict()  # mirrors the worker's kept environments
        self.ready = False
        self.closed = False  # set by ScoringPool.close: no replacement is started after that

    def _start(self) -> None:
        r_child, w_parent = os.pipe()
        r_parent, w_child = os.pipe()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prorl.envs.workers", str(r_child), str(w_child), str(os.getpid())],
            pass_fds=(r_child, w_child), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(r_child)
        os.close(w_child)
        self.send_conn = Connection(w_parent, readable=False)
        self.recv_conn = Connection(r_parent, writable=False)
        self.known = OrderedDict()
        self.ready = False

    def _wait_ready(self, recv: Connection) -> None:
        if not self.ready:
            if not recv.poll(_STARTUP_TIMEOUT_S) or recv.recv() != "ready":
                raise OSError("scoring worker did not start")
            self.ready = True

    def kill(self) -> None:
        # read once: ScoringPool.close may kill a worker while its pool thread, woken by the closed pipe, does too
        proc, conns = self.proc, (self.send_conn, self.recv_conn)
        self.proc = self.send_conn = self.recv_conn = None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the verifier may have started children of its own
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=10)
        for conn in conns:
            if conn is not None:
                conn.close()

    def score(self, key: str, blob: bytes, completion, task, timeout_s: float) -> Score:
        for attempt in (1, 2):  # a dead worker is replaced once before the sample is an infra error
            if self.closed:
                return Score(0.0, "infra_error", {"error": "the scoring pool was closed"})
            if self.proc is None or self.proc.poll() is not None:
                self.kill()
                self._start()
            send_blob = None if key in self.known else blob
            send, recv = self.send_conn, self.recv_conn  # None once the pool is closed from another thread
            try:
                if send is None or recv is None:
                    raise OSError("the scoring pool was closed")
                self._wait_ready(recv)
                t0 = time.monotonic()
                send.send((key, send_blob, completion, task))
                _remember(self.known, key, None)
                if recv.poll(timeout_s):
                    return recv.recv()
            except (EOFError, OSError) as exc:
                self.kill()
                if attempt == 2:
                    return Score(0.0, "infra_error", {"error": f"scoring worker died: {exc!r}"})
                continue
            self.kill()
            if not self.closed:
                self._start()  # start the replacement now: its import overlaps with other work
            return Score(0.0, "timeout", {"timeout_s": timeout_s, "elapsed_s": round(time.monotonic() - t0, 3)})
        raise AssertionError("unreachable")


class ScoringPool:
    """A fixed set of killable worker processes, usable from many threads at once."""

    def __init__(self, workers: int):
        self.size = workers
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all = [_Worker() for _ in range(workers)]
        for w in self._all:
            self._idle.put(w)
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prorl-score")

    def _one(self, key: str, blob: bytes, completion, task, timeout_s: float) -> Score:
        w = self._idle.get()
        try:
            return w.score(key, blob, completion, task, timeout_s)
        finally:
            self._idle.put(w)

    def map(self, jobs: list[tuple[str, bytes, str, object, float]]) -> list[Score]:
        return list(self._threads.map(lambda j: self._one(*j), jobs))

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        for w in self._all:
            w.closed = True
            w.kill()


_POOLS: dict[int, ScoringPool] = {}
_POOLS_LOCK = threading.Lock()
_UNPICKLABLE: "weakref.WeakSet[Env]" = weakref.WeakSet()  # warned about once each


def get_pool(workers: int) -> ScoringPool:
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ScoringPool(workers)
        return _POOLS[workers]


@atexit.register
def close_pools() -> None:
    """Kill every scoring worker (a verifier still running included); the next call starts fresh ones."""
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


def _import_path() -> list[str]:
    """The parent's sys.path, and after it the folder each top-level module was imported from where that folder is
    not on it: the current directory of the time, for a module found through '' (`python -c`, a notebook, the REPL).
    '' means the current directory at each import, so the folder is read from the module's own spec, not from the
    current directory at `import prorl`, at `register` or now: an `os.chdir` (a notebook's `%cd`) after
    `import my_env` would otherwise leave the workers, which import the env's module by name, with
    ModuleNotFoundError for every sample."""
    on_path = {os.path.abspath(p) for p in sys.path if p}
    roots: list[str] = []
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        if spec is None or "." in (spec.name or "."):
            continue
        if spec.submodule_search_locations is not None:  # a package (a namespace package included)
            found = [os.path.dirname(os.path.normpath(p)) for p in spec.submodule_search_locations]
        elif spec.has_location and isinstance(spec.origin, str):
            found = [os.path.dirname(spec.origin)]
        else:  # built-in, frozen
            continue
        roots.extend(p for p in found if os.path.isabs(p) and p not in on_path and p not in roots)
    return list(sys.path) + roots


def _env_blob(env: Env) -> tuple[str | None, bytes | None]:
    """(content key, pickled env), or (None, None) if it cannot be pickled. Pickled on every call (an env is a few
    KB unless it holds a dataset): workers score the env as it is now, not as it was when first sent."""
    try:
        # cloudpickle pickles importable classes by reference and classes of the caller's `__main__` (a user's
        # training script) by value, so those score in workers too.
        blob = pickle.dumps((_import_path(), cloudpickle.dumps(env)))
    except Exception as exc:
        if env not in _UNPICKLABLE:
            _UNPICKLABLE.add(env)
            log.warning("%s cannot be pickled (%r): scoring it in threads, without a killable timeout", env, exc)
        return None, None
    return hashlib.blake2b(blob, digest_size=16).hexdigest(), blob


def default_workers() -> int:
    return max(1, int(os.environ.get("PRORL_SCORE_WORKERS", 0)) or (os.cpu_count() or 1))


def _safe_score(env: Env, completion, task) -> Score:
    try:
        return env.score(completion, task)
    except Exception as exc:
        return Score(0.0, "infra_error", {"error": repr(exc), "env": env.id})


def score_many(envs: Sequence[Env], completions: Sequence[str], tasks: Sequence[Task | dict],
               workers: int | None = None, timeout_s: float | None = None) -> list[Score]:
    """Score `completions[i]` against `tasks[i]` with `envs[i]`, in parallel, keeping order.

    `timeout_s` (None: each environment's own) is the kill deadline of a verifier in a worker process. Environments
    that time their own work in threads (`score_in_subprocess = False`: the code sandbox, whose budget is part of its
    reward, 0 past it) keep their own `timeout_s`. `workers=0` scores inline in the calling thread (no timeout: for
    debugging).
    """
    n = len(completions)
    if not (len(envs) == len(tasks) == n):
        raise ValueError(f"score_many: {len(envs)} envs, {n} completions, {len(tasks)} tasks")
    workers = default_workers() if workers is None else workers
    if workers < 0 or (timeout_s is not None and not timeout_s > 0):  # <= 0 (or NaN): every sample a timeout
        raise ValueError(f"score_many: workers must be >= 0 and timeout_s > 0 (or None), got {workers}, {timeout_s}")
    if workers == 0:
        return [_safe_score(e, c, t) for e, c, t in zip(envs, completions, tasks)]
    results: list[Score | None] = [None] * n
    proc_jobs, proc_idx, thread_idx = [], [], []
    blobs: dict[int, tuple[str | None, bytes | None]] = {}  # once per distinct env object and call
    for i, env in enumerate(envs):
        if id(env) not in blobs:
            blobs[id(env)] = _env_blob(env) if env.score_in_subprocess else (None, None)
        key, blob = blobs[id(env)]
        if blob is None:
            thread_idx.append(i)
        else:
            proc_jobs.append((key, blob, completions[i], tasks[i], timeout_s or env.timeout_s))
            proc_idx.append(i)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as threads:
        futures = {i: threads.submit(_safe_score, envs[i], completions[i], tasks[i]) for i in thread_idx}
        if proc_jobs:
            for i, score in zip(proc_idx, get_pool(workers).map(proc_jobs)):
                results[i] = score
        for i, fut in futures.items():
            results[i] = fut.result()
    return results  # type: ignore[return-value]


if __name__ == "__main__":
    _worker_main(*map(int, sys.argv[1:4]))

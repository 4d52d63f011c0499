"""The sandbox API: `Sandbox.run` / `Sandbox.run_tests`, and their results `ExecResult` / `TestResult`.

A backend (Docker, local namespaces) only implements `_execute(request)`: send one request to an in-sandbox
runner (`prorl/sandbox/runner.py`) and return its per-test answers. Everything else (request building, output
comparison, result types) lives here so both backends behave the same.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from prorl.sandbox.runner import STATUSES

DEFAULT_TIMEOUT_S = 5.0  # CPU seconds of a program, all its tests together
WALL_FACTOR = 3.0  # the default wall-clock cap of a run: this many times its CPU budget
DEFAULT_MEMORY_MB = 512
DEFAULT_OUTPUT_LIMIT = 1 << 20  # bytes kept per stream; more is status `output_limit`
_KEEP_IN_TEST_RESULT = 2000  # characters of stdout/stderr kept per TestResult


def status_order(seen) -> tuple[str, ...]:
    """The order sandbox status counts are shown in: every one of `STATUSES`, then any other status in `seen`."""
    return (*STATUSES, *sorted(set(seen) - set(STATUSES)))


@dataclass
class ExecResult:
    """One program run. `stdout`/`stderr` are capped at the output limit. `status` is one of `STATUSES`:
    `ok` (exit 0), `runtime_error` (any other exit or signal: an exception, `sys.exit(3)`, a segfault),
    `timeout` (past the CPU-time budget, or past the wall-clock cap: see `Sandbox.run_tests`), `memory` (out of memory: a MemoryError at the program's
    RLIMIT_AS of `memory_mb`, or ended by the kernel's OOM killer at a cgroup's cap: exit -9, no traceback),
    `output_limit` (more than `output_limit` bytes on a stream) or `infra_error` (the sandbox failed, not the
    program; `error` says why). Only `ok` can pass a test."""

    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    error: str = ""  # why the sandbox (not the program) failed, for `infra_error` and lost runners
    cpu_s: float = 0.0  # CPU time (user + system) of the program and the children it waited for

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"ExecResult.status must be one of {STATUSES}, got {self.status!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Test:
    """One test: either stdin/expected stdout (`expected` compared token-wise) or Python assertion `code` run
    after the program in the same namespace (passes only if both return normally)."""

    stdin: str | None = None
    expected: str | None = None
    code: str | None = None

    __test__ = False  # not a pytest class

    def __post_init__(self):
        if (self.code is None) == (self.expected is None):
            raise ValueError("a Test needs exactly one of `expected` (stdout test) or `code` (assertion test)")


@dataclass
class TestResult:
    passed: bool
    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0  # as ExecResult.cpu_s

    __test__ = False  # not a pytest class


def default_pool_size() -> int:
    """How many programs a sandbox runs at once by default: no more than there are CPUs to run them (`usable_cpus`),
    at most 4."""
    return min(4, usable_cpus())


def usable_cpus() -> int:
    """CPUs this process can run on: its affinity mask, capped by its cgroup's CPU quota (cgroup v2 `cpu.max`, v1
    `cpu.cfs_quota_us`; a container started with --cpus), at least 1."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(n, math.ceil(quota)) if quota else n)


def _cgroup_cpu_quota() -> float | None:
    """This process's cgroup CPU quota in CPUs; None when unlimited or unknown."""
    try:
        with open("/proc/self/cgroup") as fh:
            entries = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        return None
    for entry in entries:
        if len(entry) != 3:
            continue
        _, controllers, path = entry
        if controllers == "":  # cgroup v2: cpu.max is "max 100000" or "150000 100000"
            bases, files = ("/sys/fs/cgroup",), ("cpu.max",)
        elif "cpu" in controllers.split(","):
            bases, files = ("/sys/fs/cgroup/cpu", f"/sys/fs/cgroup/{controllers}"), ("cpu.cfs_quota_us",
                                                                                     "cpu.cfs_period_us")
        else:
            continue
        for base in bases:  # in a container the mount is its own cgroup, while the file names the host's path
            for folder in (base + path.rstrip("/"), base):
                words = _read_words([f"{folder}/{name}" for name in files])
                if words is None or len(words) != 2:
                    continue
                return None if words[0] in ("max", "-1") else int(words[0]) / int(words[1])
    return None


def _read_words(paths: list[str]) -> list[str] | None:
    words = []
    for path in paths:
        try:
            with open(path) as fh:
                words += fh.read().split()
        except OSError:
            return None
    return words


def outputs_match(got: str, expected: str) -> bool:
    """Token-wise comparison with whitespace normalised (APPS/TACO/Codeforces style)."""
    return got.split() == expected.split()


class Sandbox:
    """Runs untrusted Python programs. Thread-safe; use as a context manager or call `close()`."""

    name = "sandbox"
    parallelism = 1  # how many requests the sandbox runs at once (callers size their thread pools by it)

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, memory_mb: int = DEFAULT_MEMORY_MB,
                 output_limit: int = DEFAULT_OUTPUT_LIMIT):
        if timeout_s <= 0 or memory_mb < 32 or output_limit < 1:
            raise ValueError(f"bad sandbox limits: timeout_s={timeout_s}, memory_mb={memory_mb} (>= 32), "
                             f"output_limit={output_limit}")
        self.timeout_s, self.memory_mb, self.output_limit = timeout_s, memory_mb, output_limit

    # -- backend -----------------------------------------------------------------------------------------
    def _execute(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Run `request` (see runner.py) and return one answer dict per test, in order. Must not raise for a
        misbehaving program; infrastructure failures become answers with status `infra_error`."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- API -----------------------------------------------------------------------------------------------
    def _request(self, program: str, tests: list[dict], timeout_s: float | None, memory_mb: int | None,
                 wall_timeout_s: float | None = None) -> dict:
        if not isinstance(program, str):
            raise TypeError(f"program must be a str, got {type(program).__name__}")
        for i, test in enumerate(tests):  # checked before a runner is taken: a bad request must not cost one
            for key in ("stdin", "code"):
                if test.get(key) is not None and not isinstance(test[key], str):
                    raise TypeError(f"tests[{i}].{key} must be a str or None, got {type(test[key]).__name__}")
        memory_mb = memory_mb or self.memory_mb
        if memory_mb > self.memory_mb:
            raise ValueError(f"memory_mb={memory_mb} exceeds this sandbox's cap of {self.memory_mb} MB")
        timeout_s = float(timeout_s or self.timeout_s)
        wall = WALL_FACTOR * timeout_s if wall_timeout_s is None else float(wall_timeout_s)
        if not wall > 0:
            raise ValueError(f"wall_timeout_s must be > 0, got {wall_timeout_s!r}")
        return {"program": program, "tests": tests, "timeout_s": timeout_s, "wall_timeout_s": wall,
                "memory_mb": int(memory_mb), "output_limit": int(self.output_limit)}

    def run(self, program: str, stdin: str | None = None, timeout_s: float | None = None,
            memory_mb: int | None = None, wall_timeout_s: float | None = None) -> ExecResult:
        """Run `program` once with `stdin`, with `timeout_s` seconds of CPU time and a wall-clock cap of
        `wall_timeout_s` (as `run_tests`); returns within the wall-clock cap plus the transport's overhead."""
        t0 = time.monotonic()
        [answer] = self._execute(self._request(program, [{"stdin": stdin}], timeout_s, memory_mb, wall_timeout_s))
        return ExecResult(answer["status"], answer.get("exit_code"), answer.get("stdout", ""),
                          answer.get("stderr", ""), answer.get("wall_s") or round(time.monotonic() - t0, 4),
                          answer.get("error", ""), answer.get("cpu_s", 0.0))

    def run_tests(self, code: str, tests: Sequence[Test], total_timeout_s: float | None = None,
                  memory_mb: int | None = None, wall_timeout_s: float | None = None) -> list[TestResult]:
        """Run every test of one program in one round trip (each in a fresh process), sharing one time budget.
        Never stops at the first failure: one `TestResult` per test, in order.

        The budget, `total_timeout_s` (None: the sandbox's `timeout_s`), is CPU time: the program's own, user +
        system, each test's process with the children it waited for, summed over the tests. The test that takes
        the sum past it is stopped and `timeout`, and so are the tests after it. It does not depend on how many
        other programs share the machine's CPUs. `wall_timeout_s` (None: `WALL_FACTOR` x the budget) caps the
        wall-clock time of all the tests together: a program that sleeps, blocks or waits, or whose CPU-burning
        processes it never waits for, ends `timeout` there."""
        if not tests:
            raise ValueError("run_tests needs at least one test")
        wire = [{"stdin": t.stdin, "code": t.code} for t in tests]
        answers = self._execute(self._request(code, wire, total_timeout_s, memory_mb, wall_timeout_s))
        results = []
        for test, ans in zip(tests, answers):
            status = ans["status"]
            if test.code is not None:
                passed = status == "ok" and bool(ans.get("passed"))
            else:
                passed = status == "ok" and outputs_match(ans.get("stdout", ""), test.expected)
            details = {k: ans[k] for k in ("error",) if k in ans}
            results.append(TestResult(passed, status, ans.get("exit_code"), ans.get("stdout", "")[:_KEEP_IN_TEST_RESULT],
                                      ans.get("stderr", "")[-_KEEP_IN_TEST_RESULT:], ans.get("wall_s", 0.0), details,
                                      ans.get("cpu_s", 0.0)))
        return results


def infra_answers(n: int, error: str) -> list[dict[str, Any]]:
    return [{"status": "infra_error", "exit_code": None, "stdout": "", "stderr": "", "wall_s": 0.0,
             "passed": False, "error": error} for _ in range(n)]

"""The sandbox API: `Sandbox.run` / `Sandbox.run_tests`, and their results `ExecResult` / `TestResult`.

A backend (Docker, local namespaces) only implements `_execute(request)`: send one request to an in-sandbox
runner (`prorl/sandbox/runner.py`) and return its per-test answers. Everything else (request building, output
comparison, result types) lives here so both backends behave the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from prorl.sandbox.runner import STATUSES

DEFAULT_TIMEOUT_S = 5.0
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
    `timeout` (past the time budget, or CPU-time limit), `memory` (out of memory: a MemoryError at the program's
    RLIMIT_AS of `memory_mb`, or ended by the kernel's OOM killer at a cgroup's cap: exit -9, no traceback),
    `output_limit` (more than `output_limit` bytes on a stream) or `infra_error` (the sandbox failed, not the
    program; `error` says why). Only `ok` can pass a test."""

    status: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    error: str = ""  # why the sandbox (not the program) failed, for `infra_error` and lost runners

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

    __test__ = False  # not a pytest class


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
    def _request(self, program: str, tests: list[dict], timeout_s: float | None, memory_mb: int | None) -> dict:
        if not isinstance(program, str):
            raise TypeError(f"program must be a str, got {type(program).__name__}")
        for i, test in enumerate(tests):  # checked before a runner is taken: a bad request must not cost one
            for key in ("stdin", "code"):
                if test.get(key) is not None and not isinstance(test[key], str):
                    raise TypeError(f"tests[{i}].{key} must be a str or None, got {type(test[key]).__name__}")
        memory_mb = memory_mb or self.memory_mb
        if memory_mb > self.memory_mb:
            raise ValueError(f"memory_mb={memory_mb} exceeds this sandbox's cap of {self.memory_mb} MB")
        return {"program": program, "tests": tests, "timeout_s": float(timeout_s or self.timeout_s),
                "memory_mb": int(memory_mb), "output_limit": int(self.output_limit)}

    def run(self, program: str, stdin: str | None = None, timeout_s: float | None = None,
            memory_mb: int | None = None) -> ExecResult:
        """Run `program` once with `stdin`; returns within `timeout_s` plus the transport's overhead."""
        t0 = time.monotonic()
        [answer] = self._execute(self._request(program, [{"stdin": stdin}], timeout_s, memory_mb))
        return ExecResult(answer["status"], answer.get("exit_code"), answer.get("stdout", ""),
                          answer.get("stderr", ""), answer.get("wall_s") or round(time.monotonic() - t0, 4),
                          answer.get("error", ""))

    def run_tests(self, code: str, tests: Sequence[Test], total_timeout_s: float | None = None,
                  memory_mb: int | None = None) -> list[TestResult]:
        """Run every test of one program in one round trip (each in a fresh process), sharing one time budget.
        Never stops at the first failure: one `TestResult` per test, in order."""
        if not tests:
            raise ValueError("run_tests needs at least one test")
        wire = [{"stdin": t.stdin, "code": t.code} for t in tests]
        answers = self._execute(self._request(code, wire, total_timeout_s, memory_mb))
        results = []
        for test, ans in zip(tests, answers):
            status = ans["status"]
            if test.code is not None:
                passed = status == "ok" and bool(ans.get("passed"))
            else:
                passed = status == "ok" and outputs_match(ans.get("stdout", ""), test.expected)
            details = {k: ans[k] for k in ("error",) if k in ans}
            results.append(TestResult(passed, status, ans.get("exit_code"), ans.get("stdout", "")[:_KEEP_IN_TEST_RESULT],
                                      ans.get("stderr", "")[-_KEEP_IN_TEST_RESULT:], ans.get("wall_s", 0.0), details))
        return results


def infra_answers(n: int, error: str) -> list[dict[str, Any]]:
    return [{"status": "infra_error", "exit_code": None, "stdout": "", "stderr": "", "wall_s": 0.0,
             "passed": False, "error": error} for _ in range(n)]

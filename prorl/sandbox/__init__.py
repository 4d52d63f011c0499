"""Sandboxed execution of untrusted Python programs (the `code` environment's verifier).

    from prorl.sandbox import make_sandbox, Test
    with make_sandbox() as sb:
        sb.run("print(input()[::-1])", stdin="abc").stdout          # 'cba\\n'
        sb.run_tests("def f(x): return x + 1", [Test(code="assert f(1) == 2")])

`DockerSandbox` (warm container pool, the default) is the real isolation; `LocalSandbox` (Linux namespaces and
rlimits) is weaker and used only when asked or when no Docker engine is reachable.
"""

from __future__ import annotations

import logging
import os

from prorl.sandbox.base import ExecResult, Sandbox, Test, TestResult, outputs_match
from prorl.sandbox.runner import STATUSES

log = logging.getLogger(__name__)


def make_sandbox(kind: str | None = None, **options) -> Sandbox:
    """`kind`: "docker", "local" or "auto" (default; env PRORL_SANDBOX): Docker when an engine with the sandbox
    image answers, else LocalSandbox with a warning. Options go to the chosen class."""
    kind = kind or os.environ.get("PRORL_SANDBOX", "auto")
    if kind not in ("auto", "docker", "local"):
        raise ValueError(f"sandbox kind must be 'auto', 'docker' or 'local', got {kind!r}")
    if kind in ("auto", "docker"):
        from prorl.sandbox.docker import DockerSandbox, engine_available

        endpoints = options.get("endpoints") or (None,)
        ok, reason = engine_available(endpoints[0], options.get("image"))
        if ok:
            return DockerSandbox(**options)
        if kind == "docker":
            raise RuntimeError(f"DockerSandbox unavailable: {reason}")
        log.warning("%s; falling back to LocalSandbox (WEAKER isolation: namespaces and rlimits only)", reason)
    from prorl.sandbox.local import LocalSandbox

    local_opts = {k: v for k, v in options.items() if k in ("workers", "timeout_s", "memory_mb", "output_limit")}
    if "pool_size" in options:
        local_opts.setdefault("workers", options["pool_size"])
    return LocalSandbox(**local_opts)


def __getattr__(name: str):
    """`prorl.sandbox.DockerSandbox` / `LocalSandbox`, imported on first use (the docker SDK is not needed before)."""
    if name == "DockerSandbox":
        from prorl.sandbox.docker import DockerSandbox

        return DockerSandbox
    if name == "LocalSandbox":
        from prorl.sandbox.local import LocalSandbox

        return LocalSandbox
    raise AttributeError(f"module 'prorl.sandbox' has no attribute {name!r}")


__all__ = ["DockerSandbox", "LocalSandbox", "STATUSES", "ExecResult", "Sandbox", "Test", "TestResult", "make_sandbox", "outputs_match"]

"""Device timing and hardware limits for the GPU benchmarks: synchronised timers, the measured bf16 matmul ceiling
and copy bandwidth, the spec peak by GPU name, peak memory. Imported by benchmarks/gpu_step.py (run as a script from
this folder)."""

from __future__ import annotations

import time

import torch

SPEC_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 peak by GPU name (SXM parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def matmul_tflops(n: int, dtype: torch.dtype, device: torch.device, iters: int = 20) -> float:
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(iters)], device)
    return 2 * n**3 * iters / seconds / 1e12


def copy_gbs(nbytes: int, device: torch.device, iters: int = 10) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.int16, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _, seconds = timed(lambda: [dst.copy_(src) for _ in range(iters)], device)
    return 2 * nbytes * iters / seconds / 1e9  # read + write


def spec_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in SPEC_BF16_TFLOPS.items() if k in name), None)


def peak_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}


def reset_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

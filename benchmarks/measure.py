"""Measurement for the GPU benchmarks: synchronised timers, the hardware limits (measured bf16 matmul ceiling and copy
bandwidth, spec peak by GPU name, peak memory), and the per-phase clock of a trainer's steps with its summary (step
time split, tokens/s, MFU). Imported by benchmarks/gpu_step.py and the CPU benchmarks (run as scripts from this
folder), which also share `cpu_bench_model`."""

from __future__ import annotations

import time
from collections import defaultdict

import torch

SPEC_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 peak by GPU name (SXM parts)


def cpu_bench_model(prefix: str) -> str:
    """The CPU benchmarks' model: a Qwen2 of 4 layers x 256 with its tokenizer, built locally into a new temporary
    folder (prorl.demo.tiny, seed 0); torch set to at most 2 threads. Returns the folder."""
    import os
    import tempfile

    from prorl.demo.tiny import build_tiny_model

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return build_tiny_model(tempfile.mkdtemp(prefix=prefix), seed=0, hidden_size=256, num_hidden_layers=4,
                            intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)


def report(summary: dict, out: str | None, **settings) -> dict:
    """Print the summary as one JSON line and, with `out`, write it with the settings (and torch's thread count)."""
    import json

    print(json.dumps(summary))
    if out:
        with open(out, "w") as f:
            json.dump({"settings": {**settings, "threads": torch.get_num_threads()}, **summary}, f, indent=1)
    return summary


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


# -- Trainer steps by phase ---------------------------------------------------------------------------------------
class PhaseClock:
    """Times each optimizer step and, inside it, the trainer's generation / scoring / batch-preparation calls
    (instance-level wrappers, so the trainer classes are untouched). A `TrainerCallback` marks the steps."""

    def __init__(self, device: torch.device):
        self.device, self.steps, self.current = device, [], None

    def attach(self, trainer) -> None:
        from transformers import TrainerCallback

        for method, phase in (("_generate_single_turn", "generation"), ("_calculate_rewards", "scoring"),
                              ("_generate_and_score_completions", "prepare"), ("_generate_round", "round")):
            if hasattr(trainer, method):  # `_generate_round`: one dynamic-sampling round (ProRLTrainer only)
                setattr(trainer, method, self._timed(getattr(trainer, method), phase))
        clock = self

        class Steps(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync(clock.device)
                clock.current = defaultdict(float, rounds=0, start=time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                sync(clock.device)
                step = clock.current
                step["step_s"] = time.perf_counter() - step.pop("start")
                clock.steps.append(dict(step))

        trainer.add_callback(Steps())

    def _timed(self, fn, phase: str):
        def wrapper(*args, **kwargs):
            out, seconds = timed(lambda: fn(*args, **kwargs), self.device)
            step = self.current
            step[f"{phase}_s"] += seconds
            if phase == "generation":
                step["rounds"] += 1
                step["completion_tokens"] += sum(len(c) for c in out[0])
            elif phase == "prepare":
                step["train_tokens"] += int(out["prompt_mask"].sum() + out["completion_mask"].sum())
            return out

        return wrapper


def summarize(steps: list[dict], warmup: int, n_params: dict, tflops: float, spec: float | None) -> dict:
    """Means over the steps after `warmup`. MFU = 6 * N * train tokens / training-phase time over a peak, with N the
    matmul parameters (and, for comparison with shared/MEASURED.md, all parameters over the spec peak)."""
    measured = steps[warmup:] or steps
    mean = {k: sum(s.get(k, 0.0) for s in measured) / len(measured)
            for k in ("step_s", "generation_s", "scoring_s", "prepare_s", "round_s", "rounds", "completion_tokens",
                      "train_tokens")}
    train_s = mean["step_s"] - mean["prepare_s"]
    flops = 6 * n_params["matmul"] * mean["train_tokens"]
    flops_all = 6 * n_params["all"] * mean["train_tokens"]
    # dynamic sampling: its rounds beyond the first (same size; their log-prob passes are deferred to the kept rows)
    extra = (mean["round_s"] or mean["prepare_s"]) * (mean["rounds"] - 1) / mean["rounds"] if mean["rounds"] else 0.0
    return {
        "steps_measured": len(measured), "first_step_s": steps[0]["step_s"], **mean,
        "reference_logps_s": mean["prepare_s"] - mean["generation_s"] - mean["scoring_s"], "train_s": train_s,
        "generation_share": mean["generation_s"] / mean["step_s"],
        "completion_tok_per_s": mean["completion_tokens"] / mean["generation_s"],
        "train_tok_per_s": mean["train_tokens"] / train_s,
        "mfu_vs_measured_matmul": flops / train_s / (tflops * 1e12),
        "mfu_vs_spec": flops / train_s / (spec * 1e12) if spec else None,
        "mfu_vs_spec_all_params": flops_all / train_s / (spec * 1e12) if spec else None,
        "extra_rounds_s": extra, "step_s_equal_work": mean["step_s"] - extra,
    }

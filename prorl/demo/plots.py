"""Training curves of a ProRL run: reward per domain, entropy, KL, completion length, with the hard resets marked.

Reads what `ProRLTrainer` writes: `trainer_state.json` (the Trainer's log_history) and `resets.jsonl`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from prorl.envs.jsonl import read_jsonl


def load_history(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(per-step training logs, reset events) of a run folder."""
    run_dir = Path(run_dir)
    state = run_dir / "trainer_state.json"
    if not state.exists():
        raise FileNotFoundError(f"{state} does not exist: is {run_dir} a finished ProRL run?")
    logs = [h for h in json.loads(state.read_text())["log_history"] if "step" in h and "reward" in h]
    resets_file = run_dir / "resets.jsonl"
    resets = [row for _, row in read_jsonl(resets_file)] if resets_file.exists() else []
    return logs, resets


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (NaN-free input); the first points average what is there."""
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_curves(run_dir: str | Path, path: str | Path, envs: Sequence[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs, resets = load_history(run_dir)
    if not logs:
        raise ValueError(f"{run_dir}: no training steps logged")
    steps = [h["step"] for h in logs]
    window = max(1, len(steps) // 15)
    panels = [
        ("reward per domain (training rollouts)", [(f"reward/{e}", e) for e in envs] + [("reward", "all")]),
        ("entropy (nats/token)", [("entropy", "entropy")]),
        ("KL to the reference", [("kl", "kl")]),
        ("completion length (tokens)", [("completions/mean_length", "mean"), ("completions/max_length", "max")]),
        ("dynamic sampling (groups per step)", [("dynamic_sampling/kept_groups", "kept"),
                                                ("dynamic_sampling/dropped_groups", "dropped")]),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.3 * len(panels)), sharex=True)
    for ax, (title, series) in zip(axes, panels):
        for key, label in series:
            pts = [(h["step"], h[key]) for h in logs if isinstance(h.get(key), (int, float)) and h[key] == h[key]]
            if pts:
                xs, ys = zip(*pts)
                line, = ax.plot(xs, ys, alpha=0.25, linewidth=0.8)
                ax.plot(xs, smooth(ys, window), color=line.get_color(), label=label, linewidth=1.6)
        for i, event in enumerate(resets):
            ax.axvline(event["step"], color="red", linestyle="--", linewidth=1,
                       label="hard reset" if i == 0 else None)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1].set_xlabel("optimizer step (faint: per step; solid: moving average)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

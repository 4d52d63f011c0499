"""Seed-to-seed spread of the embedded default: `prorl demo` with 3 seeds, RL gain against the spread.

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out runs/demo-seeds] [--set rl.max_steps=60 ...]

Each seed is a whole demo run (its own tokenizer, initial weights, SFT data order and RL sampling; the held-out
prompts are the same for every seed). Writes benchmarks/results/demo_seeds.json and .md: per seed the SFT and RL
held-out mean rewards per env, the wall time and the machine load, then the spread (max - min over seeds) of the
SFT mean, of the RL mean, and the RL - SFT gains, with the acceptance check: min gain > max spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from prorl.demo.run import DEFAULT_RECIPE, load_recipe, run_demo

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/demo-seeds")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        load_before = os.getloadavg()[0]
        start = time.monotonic()
        recipe = load_recipe(args.recipe, list(args.set) + [f"seed={seed}"])
        summary = run_demo(Path(args.out) / f"seed{seed}", recipe, threads=args.threads)
        runs.append({"seed": seed, "sft": summary["sft"], "rl": summary["rl"], "wall_s": summary["wall_s"],
                     "this_call_s": round(time.monotonic() - start, 1), "steps": summary["steps"],
                     "resets": summary["resets"], "threads": summary["threads"],
                     "load_avg_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}})
        print(f"seed {seed}: SFT {summary['sft']['mean']:.3f} -> RL {summary['rl']['mean']:.3f} "
              f"({summary['wall_s']:.0f} s)", flush=True)

    sft = [r["sft"]["mean"] for r in runs]
    rl = [r["rl"]["mean"] for r in runs]
    gains = [b - a for a, b in zip(sft, rl)]
    spread = {"sft": round(max(sft) - min(sft), 4), "rl": round(max(rl) - min(rl), 4)}
    result = {
        "recipe": str(args.recipe), "overrides": args.set, "runs": runs,
        "sft_mean": round(statistics.mean(sft), 4), "rl_mean": round(statistics.mean(rl), 4),
        "gain": {"per_seed": [round(g, 4) for g in gains], "mean": round(statistics.mean(gains), 4),
                 "min": round(min(gains), 4)},
        "spread_max_minus_min": spread,
        "gain_beats_spread": min(gains) > max(spread.values()),
        "cpu_count": os.cpu_count(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo_seeds.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "demo_seeds.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    envs = [e for e in result["runs"][0]["sft"] if e != "mean"]
    lines = ["# `prorl demo` across seeds", "",
             f"Recipe `{Path(result['recipe']).name}` {' '.join(result['overrides'])}; held-out mean reward "
             "(the same prompts for every seed), SFT -> RL.", "",
             "| seed | " + " | ".join(envs) + " | mean | wall s | load avg (1 min) |",
             "|---|" + "---|" * (len(envs) + 3)]
    for r in result["runs"]:
        cells = [f"{r['sft'][e]:.3f} -> {r['rl'][e]:.3f}" for e in envs + ["mean"]]
        load = r["load_avg_1min"]
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {r['wall_s']:.0f} | {load['before']} -> "
                     f"{load['after']} |")
    s, g = result["spread_max_minus_min"], result["gain"]
    lines += ["", f"- RL - SFT gain per seed: {g['per_seed']} (mean {g['mean']}, min {g['min']})",
              f"- seed-to-seed spread (max - min): SFT {s['sft']}, RL {s['rl']}",
              f"- smallest gain > largest spread: **{result['gain_beats_spread']}**", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

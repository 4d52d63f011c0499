"""Plots and numbers of the learning experiments (benchmarks/learning/run.py): one figure per claim, summary.json
and results.md with a verdict per claim and seed.

    .venv/bin/python benchmarks/learning/report.py [--runs runs/learning] [--results benchmarks/learning/results]

A claim counts as reproduced when the paper's direction holds in every seed by more than the seed-to-seed spread of
either arm; "contradicted" when the opposite holds likewise; a direction shared by the seeds but within the spread is
reported as such, not as a reproduction. Held-out values at the end of a run are the
mean of its last `END_EVALS` evaluations (each one is 200 samples per group: a single one is noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from prorl.envs.jsonl import read_jsonl

RESULTS = Path(__file__).resolve().parent / "results"
TRAINED = ("math", "logic/aiw", "ifeval")
UNSEEN = "unseen/aiw_friends"
END_EVALS = 3
CLAIMS = {
    "a": ("base", "eps_high_0.2", "clip-higher (eps_high 0.4 vs 0.2) keeps policy entropy higher"),
    "a2": ("base", "eps_high_0.2", "clip-higher keeps the policy entropy on fixed held-out prompts higher"),
    "b": ("base", "no_resets", "hard resets of reference + optimizer give a higher held-out reward"),
    "b2": ("plateau_resets", "no_resets", "resets when the held-out reward plateaus (the paper's trigger) give a "
                                          "higher held-out reward"),
    "b3": ("kl_0.1", "kl_0.1_no_resets", "with beta 0.1, hard resets give a higher held-out reward"),
    "b4": ("kl_1", "kl_1_no_resets", "with beta 1.0, hard resets give a higher held-out reward"),
    "c": ("base", "no_dynamic_sampling", "dynamic sampling gives a higher held-out reward per generated token"),
    "c2": ("ds_adaptive", "no_dynamic_sampling", "dynamic sampling with refills sized to the missing groups gives a "
                                                 "higher held-out reward per generated token"),
    "d": ("base", "logic_only", "the multi-domain mixture gives a higher held-out reward on a task no arm trains on"),
}


def _jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)] if path.exists() else []  # a run without resets has no resets.jsonl


def load_runs(runs: Path) -> dict[tuple[int, str], dict]:
    out = {}
    for done_file in sorted(runs.glob("seed*/*/done.json")):
        run_dir = done_file.parent
        seed = int(run_dir.parent.name.removeprefix("seed"))
        steps = [r for r in _jsonl(run_dir / "metrics.jsonl") if "step_time" in r]
        heldout = _jsonl(run_dir / "heldout.jsonl")
        for h in heldout:
            h["trained_mean"] = statistics.mean(h[g] for g in TRAINED)
        out[(seed, run_dir.name)] = {"done": json.loads(done_file.read_text()), "steps": steps, "heldout": heldout,
                                     "resets": _jsonl(run_dir / "resets.jsonl")}
    return out


def end_value(heldout: list[dict], key: str) -> float:
    return statistics.mean(h[key] for h in heldout[-END_EVALS:])


def late_entropy(steps: list[dict]) -> float:
    """Mean policy entropy over the last quarter of the run's steps."""
    tail = steps[len(steps) * 3 // 4:]
    return statistics.mean(s["entropy"] for s in tail)


def late_heldout_entropy(heldout: list[dict]) -> float | None:
    """Mean policy entropy on the held-out prompts over the last quarter of the evaluations (None: not measured)."""
    values = [h["entropy/trained_mean"] for h in heldout if "entropy/trained_mean" in h]
    if not values:
        return None
    return round(statistics.mean(values[len(values) * 3 // 4:]), 4)


def token_auc(heldout: list[dict], key: str, budget: float) -> float:
    """Mean held-out value over the generated-token axis from 0 to `budget` (trapezoids): reward per token spent."""
    pts = [(h["generated_tokens"], h[key]) for h in heldout]
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]) if x0 < budget)
    return area / min(budget, pts[-1][0])


def verdict(diffs: list[float], spread: float) -> str:
    """The paper's direction in every seed and larger than the seed spread: reproduced; the opposite likewise:
    contradicted; one direction in every seed but within the spread: only a trend; else the seeds disagree."""
    if all(d > 0 for d in diffs):
        return "reproduced" if min(diffs) > spread else "same direction, within the seed spread"
    if all(d < 0 for d in diffs):
        return "contradicted" if max(diffs) < -spread else "opposite direction, within the seed spread"
    if all(d == 0 for d in diffs):
        return "no difference"
    return "not reproduced: the seeds disagree"


def summarize(runs: dict) -> dict:
    seeds = sorted({s for s, _ in runs})
    budget = min(r["done"]["generated_tokens"] for r in runs.values())
    per_run = {}
    for (seed, arm), r in sorted(runs.items()):
        h = r["heldout"]
        per_run[f"seed{seed}/{arm}"] = {
            "steps": r["done"]["steps"], "generated_tokens": r["done"]["generated_tokens"],
            "resets": r["done"]["resets"], "wall_s": r["done"]["wall_s"],
            "entropy_first_step": round(r["steps"][0]["entropy"], 4), "entropy_last_quarter": round(late_entropy(
                r["steps"]), 4),
            "entropy_heldout_last_quarter": late_heldout_entropy(h),
            "clip_ratio_high_mean": round(statistics.mean(s.get("clip_ratio/high_mean", 0.0) for s in r["steps"]), 5),
            "heldout_start": {k: round(h[0][k], 4) for k in (*TRAINED, UNSEEN, "trained_mean")},
            "heldout_end": {k: round(end_value(h, k), 4) for k in (*TRAINED, UNSEEN, "trained_mean")},
            "trained_mean_token_auc": round(token_auc(h, "trained_mean", budget), 4),
            "dropped_groups_share": round(sum(s.get("dynamic_sampling/dropped_groups", 0) for s in r["steps"]) / max(
                1, sum(s.get("dynamic_sampling/dropped_groups", 0) + s.get("dynamic_sampling/kept_groups", 0)
                       for s in r["steps"])), 4),
        }
    measures = {  # claim -> (value of one run, higher is the paper's direction for the first arm)
        "a": lambda k: per_run[k]["entropy_last_quarter"],
        "a2": lambda k: per_run[k]["entropy_heldout_last_quarter"],
        "b": lambda k: per_run[k]["heldout_end"]["trained_mean"],
        "b2": lambda k: per_run[k]["heldout_end"]["trained_mean"],
        "b3": lambda k: per_run[k]["heldout_end"]["trained_mean"],
        "b4": lambda k: per_run[k]["heldout_end"]["trained_mean"],
        "c": lambda k: per_run[k]["trained_mean_token_auc"],
        "c2": lambda k: per_run[k]["trained_mean_token_auc"],
        "d": lambda k: per_run[k]["heldout_end"][UNSEEN],
    }
    claims = {}
    for claim, (arm, other, text) in CLAIMS.items():
        rows = [(s, measures[claim](f"seed{s}/{arm}"), measures[claim](f"seed{s}/{other}")) for s in seeds
                if f"seed{s}/{arm}" in per_run and f"seed{s}/{other}" in per_run]
        rows = [r for r in rows if r[1] is not None and r[2] is not None]
        if len(rows) < 2:  # one seed says nothing about seed noise
            continue
        diffs = [a - b for _, a, b in rows]
        # seed-to-seed spread of each arm: how much the measure moves with the seed alone
        spread = max(max(v) - min(v) for v in ([a for _, a, _ in rows], [b for _, _, b in rows]))
        claims[claim] = {"claim": text, "arms": [arm, other], "per_seed": {f"seed{s}": [round(a, 4), round(b, 4)]
                                                                           for s, a, b in rows},
                         "difference_per_seed": [round(d, 4) for d in diffs], "seed_spread": round(spread, 4),
                         "verdict": verdict(diffs, spread)}
    return {"budget_tokens": budget, "seeds": seeds, "claims": claims, "runs": per_run}


# -- figures -------------------------------------------------------------------------------------------------------
COLORS = {"base": "tab:blue", "eps_high_0.2": "tab:red", "no_resets": "tab:orange", "no_dynamic_sampling": "tab:green",
          "logic_only": "tab:purple", "plateau_resets": "tab:brown", "ds_adaptive": "tab:olive",
          "kl_0.1": "tab:blue", "kl_0.1_no_resets": "tab:orange", "kl_1": "tab:cyan", "kl_1_no_resets": "tab:red"}
STYLES = ["-", "--", ":", "-."]


def _smooth(values: list[float], window: int = 20) -> list[float]:
    return [statistics.mean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def plot_all(runs: dict, results: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({s for s, _ in runs})
    written = []

    def lines(ax, arms, x_key, y_fn, source):
        for arm in arms:
            for i, seed in enumerate(seeds):
                r = runs.get((seed, arm))
                if not r:
                    continue
                rows = r[source]
                ax.plot([row[x_key] for row in rows], y_fn(rows), STYLES[i % 4], color=COLORS[arm],
                        label=f"{arm} seed {seed}", lw=1.3)
        ax.grid(alpha=0.3)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(results / name, dpi=110)
        plt.close(fig)
        written.append(name)

    def have(*arms) -> bool:  # a figure for the claims whose arms ran (e.g. the (a) or (d) reruns alone)
        return all((s, a) in runs for s in seeds for a in arms)

    held_entropy = any("entropy/trained_mean" in h for r in runs.values() for h in r["heldout"])
    if have("base", "eps_high_0.2"):
        plot_entropy(runs, lines, held_entropy, save)
    if have("base", "no_resets", "plateau_resets"):
        plot_resets(runs, seeds, lines, save, ["base", "no_resets", "plateau_resets"], "b_resets.png", "")
    kl_arms = [a for a in ("kl_0.1", "kl_0.1_no_resets", "kl_1", "kl_1_no_resets") if have(a)]
    if kl_arms:
        plot_resets(runs, seeds, lines, save, kl_arms, "b_resets_kl.png", ", beta 0.1 and 1.0")
    if have("base", "no_dynamic_sampling", "ds_adaptive"):
        plot_dynamic_sampling(lines, save)
    if have("base", "logic_only"):
        plot_domains(lines, save)
    return written


def plot_entropy(runs, lines, held_entropy, save) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if held_entropy else 2, figsize=(16 if held_entropy else 11, 4))
    lines(axes[0], ["base", "eps_high_0.2"], "step", lambda rows: _smooth([r["entropy"] for r in rows]), "steps")
    axes[0].set(title="(a) entropy of the training batches (20-step mean)", xlabel="step",
                ylabel="entropy (nats/token)")
    lines(axes[1], ["base", "eps_high_0.2"], "step",
          lambda rows: _smooth([r.get("clip_ratio/high_mean", 0.0) for r in rows]), "steps")
    axes[1].set(title="(a) share of tokens clipped above (1 + eps_high)", xlabel="step")
    if held_entropy:
        lines(axes[2], ["base", "eps_high_0.2"], "step",
              lambda rows: [r.get("entropy/trained_mean") for r in rows], "heldout")
        axes[2].set(title="(a) policy entropy on fixed held-out prompts", xlabel="step", ylabel="entropy (nats/token)")
    axes[0].legend(fontsize=7)
    save(fig, "a_entropy.png")


def plot_resets(runs, seeds, lines, save, b_arms: list[str], name: str, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines(axes[0], b_arms, "step", lambda rows: [r["trained_mean"] for r in rows], "heldout")
    for arm in (a for a in b_arms if "no_resets" not in a):
        for seed in seeds:
            for ev in (runs.get((seed, arm)) or {}).get("resets", []):
                axes[0].axvline(ev["step"], color=COLORS[arm], lw=0.6, ls=":")
    axes[0].set(title=f"(b) held-out reward, trained domains{title} (dotted: resets)", xlabel="step",
                ylabel="mean reward")
    lines(axes[1], b_arms, "step", lambda rows: _smooth([r.get("kl", 0.0) for r in rows]), "steps")
    axes[1].set(title="(b) KL to the reference (20-step mean)", xlabel="step")
    axes[0].legend(fontsize=7)
    save(fig, name)


def plot_dynamic_sampling(lines, save) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    c_arms = ["base", "no_dynamic_sampling", "ds_adaptive"]
    lines(axes[0], c_arms, "generated_tokens", lambda rows: [r["trained_mean"] for r in rows], "heldout")
    axes[0].set(title="(c) held-out reward per generated token", xlabel="generated completion tokens",
                ylabel="mean reward, trained domains")
    lines(axes[1], c_arms, "step", lambda rows: [r["trained_mean"] for r in rows], "heldout")
    axes[1].set(title="(c) the same per optimizer step", xlabel="step")
    axes[0].legend(fontsize=7)
    save(fig, "c_dynamic_sampling.png")


def plot_domains(lines, save) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, group in zip(axes, (UNSEEN, "logic/aiw", "math", "ifeval")):
        lines(ax, ["base", "logic_only"], "generated_tokens", lambda rows, g=group: [r[g] for r in rows], "heldout")
        ax.set(title=f"(d) held-out {group}", xlabel="generated tokens")
    axes[0].set_ylabel("mean reward")
    axes[0].legend(fontsize=7)
    save(fig, "d_domains.png")


def markdown(summary: dict, figures: list[str]) -> str:
    lines = ["# Learning experiments: results (generated by benchmarks/learning/report.py)", "",
             f"Budget: {summary['budget_tokens']:,} generated completion tokens per run (the smallest run's count); "
             f"seeds {summary['seeds']}.", "",
             "| claim | measure | seed | paper's arm | other arm | difference | verdict |",
             "|---|---|---|---|---|---|---|"]
    end = f"last {END_EVALS} evals"
    measure = {"a": "entropy of the training batches, last quarter of steps",
               "a2": "entropy on held-out prompts, last quarter of evals",
               "b": f"held-out trained-domain reward, {end}", "b2": f"held-out trained-domain reward, {end}",
               "b3": f"held-out trained-domain reward, {end}", "b4": f"held-out trained-domain reward, {end}",
               "c": "held-out trained-domain reward, mean over the token budget",
               "c2": "held-out trained-domain reward, mean over the token budget",
               "d": f"held-out {UNSEEN} reward, {end}"}
    for key, c in summary["claims"].items():
        for i, (seed, (a, b)) in enumerate(c["per_seed"].items()):
            lines.append(f"| ({key}) {c['arms'][0]} vs {c['arms'][1]} | {measure[key]} | {seed} | {a:.4f} | {b:.4f} | "
                         f"{c['difference_per_seed'][i]:+.4f} | {c['verdict'] if i == 0 else ''} |")
    spreads = ", ".join(f"({k}) {c['seed_spread']:.4f}" for k, c in summary["claims"].items())
    lines += ["", f"Seed spread (max - min over seeds of either arm): {spreads}.", "", "## Runs", "",
              "| run | steps | tokens | resets | wall s | entropy first -> last quarter | held-out trained start -> end "
              "| math, logic/aiw, ifeval at the end | unseen start -> end | dropped groups |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in summary["runs"].items():
        hs, he = r["heldout_start"], r["heldout_end"]
        entropy = f"{r['entropy_first_step']:.3f} -> {r['entropy_last_quarter']:.3f}"
        if r["entropy_heldout_last_quarter"] is not None:
            entropy += f" (held-out {r['entropy_heldout_last_quarter']:.3f})"
        per_domain = ", ".join(f"{he[g]:.3f}" for g in TRAINED)
        lines.append(f"| {name} | {r['steps']} | {r['generated_tokens']:,} | {r['resets']} | {r['wall_s']:.0f} | "
                     f"{entropy} | {hs['trained_mean']:.3f} -> {he['trained_mean']:.3f} | {per_domain} | "
                     f"{hs[UNSEEN]:.3f} -> {he[UNSEEN]:.3f} | {r['dropped_groups_share']:.2f} |")
    lines += ["", "Figures: " + ", ".join(f"[{f}]({f})" for f in figures), ""]
    return "\n".join(lines)


def write_report(runs_dir: str | Path, results: Path = RESULTS) -> dict:
    runs = load_runs(Path(runs_dir))
    if not runs:
        raise SystemExit(f"no finished runs under {runs_dir}")
    results.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    settings = Path(runs_dir) / "settings.json"
    if settings.exists():
        summary["settings"] = json.loads(settings.read_text())
    (results / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    figures = plot_all(runs, results)
    (results / "results.md").write_text(markdown(summary, figures))
    print(markdown(summary, figures))
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/learning")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    write_report(args.runs, Path(args.results))

"""`prorl eval`: sample n completions per prompt, score them with the gym, report pass@1 and pass@k per env.

    prorl eval --model runs/demo/rl --data runs/data/mix            # a build folder (held-out split when present)
    prorl eval --model A --compare B --data datasets/prorl-mix.yaml --sample-data --n 16 --k 1,4,16 -o runs/eval

Protocol (the ProRL paper's): temperature 0.6, top_p 0.95, n samples per prompt. A sample is correct when its
reward is 1 (partial credit counts toward `mean_reward`, not toward pass@k). pass@1 is the mean over prompts of
c/n; pass@k is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), averaged over prompts.
`overall` averages over all prompts (each env weighted by its prompt count), not over the per-env figures.
Samples the gym could not score (timeout, infra_error) are left out of that prompt's n and counted as `masked`
(and apart, as `timeout` and `infra_error`); pass@k is over the prompts with at least k scored samples.
With a chat template that opens `<think>` (DeepSeek-R1-Distill), a completion that never closes it answers nothing,
as in training.

`evaluate(model_dir, rows, n, ks)` is the Python entry point; `--data` takes a build folder, a .parquet/.jsonl of
schema rows (or public rows with `--env`), or a recipe (built in memory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from prorl.data.sampling import SamplingConfig
from prorl.envs import Env, Score, Task
from prorl.envs.base import as_task_within, task_error

# -- pass@k ------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): P(at least one of k samples drawn without replacement from n, of
    which c are correct, is correct) = 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def prompt_stats(scores: Sequence[Score]) -> dict[str, Any]:
    """Counts of one prompt's samples: n (scored), correct, masked (= timeout + infra_error), format errors,
    summed reward."""
    scored = [s for s in scores if not s.masked]
    return {"n": len(scored), "correct": sum(s.reward >= 1.0 for s in scored), "masked": len(scores) - len(scored),
            "timeout": sum(s.status == "timeout" for s in scores),
            "infra_error": sum(s.status == "infra_error" for s in scores),
            "format_error": sum(s.status == "format_error" for s in scored),
            "reward_sum": sum(s.reward for s in scored)}


def aggregate(per_prompt: Sequence[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """pass@1, pass@k, mean reward and counts over prompts (each prompt as returned by `prompt_stats`): pass@k is
    the mean over the prompts (with at least k scored samples) of their estimate, so a summary over several envs
    weighs each env by its prompt count; mean_reward is over the scored samples."""
    out: dict[str, Any] = {"prompts": len(per_prompt), "samples": sum(p["n"] + p["masked"] for p in per_prompt),
                           "masked": sum(p["masked"] for p in per_prompt),
                           "timeout": sum(p["timeout"] for p in per_prompt),
                           "infra_error": sum(p["infra_error"] for p in per_prompt),
                           "format_error": sum(p["format_error"] for p in per_prompt)}
    scored = sum(p["n"] for p in per_prompt)
    out["mean_reward"] = sum(p["reward_sum"] for p in per_prompt) / scored if scored else None
    for k in sorted(set(ks) | {1}):
        usable = [p for p in per_prompt if p["n"] >= k]
        out[f"pass@{k}"] = sum(pass_at_k(p["n"], p["correct"], k) for p in usable) / len(usable) if usable else None
        if len(usable) < len(per_prompt):
            out[f"pass@{k}_prompts"] = len(usable)  # prompts with fewer than k scored samples are left out
    return out


# -- evaluation --------------------------------------------------------------------------------------------------
def evaluate(model_dir: str, rows: Sequence[dict[str, Any]], n: int = 16, ks: Sequence[int] = (1, 4, 16), *,
             sampling: SamplingConfig | None = None, workers: int | None = None, timeout_s: float | None = None,
             keep_completions: bool = False, progress: bool = False, envs: dict[str, Env] | None = None,
             checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Sample `n` completions per row with the model in `model_dir`, score them, and return the report:

    {"model", "n", "ks", "sampling", "wall_s", "overall": {...}, "per_env": {env: {...}}, "per_prompt": [...]}
    where each summary holds prompts, samples, masked, format_error, mean_reward, pass@1 and pass@k.
    Rows are schema rows ({"id", "env", "prompt", "reference", ...}, see prorl.data.build) or `prorl.Task`s.
    `envs`: environments already built, by id (as `load_eval_rows` fills it); the missing ones are built and added.
    `checkpoint`: a file that keeps the samples as they are drawn (HF backend), see `Sampler.sample`.
    """
    from prorl.data.sampling import Sampler, render
    from prorl.envs import make, split_think
    from prorl.envs.workers import score_many

    ks = sorted(set(ks))
    if n < 1 or not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"need n >= 1 and 1 <= k <= n for every k, got n={n}, ks={ks}")
    if not rows:
        raise ValueError("no prompts to evaluate")
    rows = [r.to_dict() if isinstance(r, Task) else r for r in rows]
    sampling = sampling or SamplingConfig()
    envs = {} if envs is None else envs
    for env_id in sorted({r["env"] for r in rows} - set(envs)):  # an unknown env fails before hours of sampling
        envs[env_id] = make(env_id)
    t0 = time.monotonic()
    sampler = Sampler(model_dir, sampling)
    bar = _progress_bar(len(rows) * n, f"sampling {Path(model_dir).name}") if progress else None
    with bar or contextlib.nullcontext():
        completions = sampler.sample([r["prompt"] for r in rows], n,
                                     progress=(lambda k: bar.advance(bar.task_ids[0], k)) if bar else None,
                                     checkpoint=checkpoint)
    flat_rows = [r for r in rows for _ in range(n)]
    # A chat template that opens <think> for the model (DeepSeek-R1-Distill): a completion cut off mid-thought
    # must answer nothing, as when the model opens the block itself (the trainer's EnvReward does the same).
    opens = [split_think(render(sampler.tokenizer, r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"])[0]
             is None for r in rows]
    flat = [("<think>" if opens[i] else "") + c for i, cs in enumerate(completions) for c in cs]
    scores = score_many([envs[r["env"]] for r in flat_rows], flat, flat_rows, workers=workers, timeout_s=timeout_s)
    per_prompt, by_env = [], defaultdict(list)
    for i, row in enumerate(rows):
        mine = scores[i * n:(i + 1) * n]
        stats = {"id": row.get("id", str(i)), "env": row["env"], **prompt_stats(mine)}
        if keep_completions:
            stats["samples"] = [{"completion": c, "reward": s.reward, "status": s.status}
                                for c, s in zip(completions[i], mine)]
        per_prompt.append(stats)
        by_env[row["env"]].append(stats)
    return {
        "model": str(model_dir), "n": n, "ks": ks, "sampling": sampling.to_dict(), "backend": sampler.backend,
        "wall_s": round(time.monotonic() - t0, 2), "overall": aggregate(per_prompt, ks),
        "per_env": {env: aggregate(ps, ks) for env, ps in sorted(by_env.items())}, "per_prompt": per_prompt,
    }


def _progress_bar(total: int, label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    bar.add_task(label, total=total)
    return bar


# -- data --------------------------------------------------------------------------------------------------------
def load_eval_rows(spec: str, split: str | None = None, env: str | None = None, sample_data: bool = False,
                   limit: int | None = None, envs: dict[str, Env] | None = None) -> list[dict[str, Any]]:
    """Schema rows from a build folder, a .parquet/.jsonl file or a recipe; public rows are converted with
    `--env`'s task_from_dict. `limit` keeps the first N prompts of each env. The environments the rows name are
    built to check them; pass `envs` (a dict) to get them back, by id, for `evaluate(..., envs=envs)`."""
    from prorl.data import build, load_recipe
    from prorl.data.card import load_named_rows
    from prorl.envs import make

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--data {spec}: no such file or folder")
    if split and path.is_file() and path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--data {spec}: --split is for a build folder or a recipe; a file is evaluated whole "
                         f"(leave --split out)")
    if sample_data and path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--data {spec}: --sample-data is for a recipe (.yaml); leave it out")
    if path.suffix in (".yaml", ".yml"):
        result = build(load_recipe(path), sample_data=sample_data)
        if split == "heldout" and not result.heldout:  # as a build folder without heldout.parquet: not the train rows
            raise ValueError(f"{spec}: the recipe holds no rows out (no `holdout` or `holdout_per_task`); "
                             f"evaluate its training rows with --split train")
        rows = result.heldout if (split or "heldout") == "heldout" and result.heldout else result.train
        named = [(f"{spec}: row {i} (0-based, id {row.get('id')!r})", row) for i, row in enumerate(rows)]
    elif path.is_dir():
        split = split or ("heldout" if (path / "heldout.parquet").exists() else "train")
        named = load_named_rows(path, split)
    else:
        named = load_named_rows(path)
    out, envs = [], {} if envs is None else envs
    for i, (where, row) in enumerate(named):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a {type(row).__name__}, not an object")
        if env and row.get("env") and row["env"] != env:  # --env names the env of rows that have none
            raise ValueError(f"{where}: env {row['env']!r}, not --env {env!r} (--env is for rows with no `env` "
                             f"column)")
        row_env = env or row.get("env")
        if not row_env:
            raise ValueError(f"{where}: no `env`; pass --env ID for files of public rows")
        if row_env not in envs:
            try:
                envs[row_env] = make(row_env)
            except KeyError as exc:  # a typo or an env plugin not installed: named before any sampling
                raise ValueError(f"{where}: {exc.args[0]}") from None
        if not (isinstance(row.get("prompt"), list) and isinstance(row.get("reference"), dict)):
            try:
                task = as_task_within(envs[row_env], row, envs[row_env].timeout_s, public=True)  # a hang: named
            except Exception as exc:  # any error of the environment's task_from_dict, named with the row
                raise ValueError(f"{where} ({row_env}){task_error(exc)}") from exc
            row = {"id": task.id or str(i), "env": row_env, "prompt": task.prompt, "reference": task.reference,
                   "metadata": task.metadata}
        out.append({**row, "env": row_env})
    if limit:
        seen: dict[str, int] = defaultdict(int)
        kept = []
        for row in out:
            seen[row["env"]] += 1
            if seen[row["env"]] <= limit:
                kept.append(row)
        out = kept
    return out


# -- reports -----------------------------------------------------------------------------------------------------
def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pass_cell(summary: dict[str, Any], k: int) -> str:
    """pass@k, with the number of prompts it is over when masked samples left some out (fewer than k scored)."""
    cell = _fmt(summary.get(f"pass@{k}"))
    return f"{cell} ({summary[f'pass@{k}_prompts']})" if f"pass@{k}_prompts" in summary else cell


def report_table(results: Sequence[dict[str, Any]]):
    """A rich table: per env (+ overall) one row per model, and the difference when comparing two models."""
    from rich.table import Table

    ks = results[0]["ks"]
    names = [Path(r["model"]).name or r["model"] for r in results]
    summaries = [s for r in results for s in [r["overall"], *r["per_env"].values()]]
    partial = any(f"pass@{k}_prompts" in s for s in summaries for k in ks)
    caption = "overall: mean over all prompts (each env weighted by its prompt count), not of the env rows"
    if partial:
        caption += "\npass@k (N): over the N prompts with at least k scored samples (masked ones are not scored)"
    table = Table(title=f"n={results[0]['n']} samples per prompt, temperature {results[0]['sampling']['temperature']}, "
                        f"top_p {results[0]['sampling']['top_p']}", caption=caption)
    for col in ["env", "model", "prompts"] + [f"pass@{k}" for k in ks] + ["mean reward", "masked"]:
        table.add_column(col, justify="left" if col in ("env", "model") else "right")
    for env in list(results[0]["per_env"]) + ["overall"]:
        summaries = [r["overall"] if env == "overall" else r["per_env"].get(env, {}) for r in results]
        for i, (name, s) in enumerate(zip(names, summaries)):
            table.add_row(env if i == 0 else "", name, str(s.get("prompts", 0)),
                          *[_pass_cell(s, k) for k in ks], _fmt(s.get("mean_reward")), str(s.get("masked", 0)),
                          style="bold" if env == "overall" else None)
        if len(results) == 2:
            deltas = []
            for key in [f"pass@{k}" for k in ks] + ["mean_reward"]:
                a, b = summaries[0].get(key), summaries[1].get(key)
                deltas.append("-" if a is None or b is None else f"{b - a:+.3f}")
            table.add_row("", f"Δ {names[1]}", "", *deltas, "", style="dim")
        table.add_section()
    return table


def plot(results: Sequence[dict[str, Any]], path: str | Path) -> None:
    """A PNG bar chart: one panel per k, bars per env (+ overall), one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = results[0]["ks"]
    envs = list(results[0]["per_env"]) + ["overall"]
    fig, axes = plt.subplots(1, len(ks), figsize=(max(4.0, 1.2 * len(envs)) * len(ks), 3.6), squeeze=False)
    width = 0.8 / len(results)
    for ax, k in zip(axes[0], ks):
        for m, res in enumerate(results):
            vals = [(res["overall"] if e == "overall" else res["per_env"].get(e, {})).get(f"pass@{k}") or 0.0
                    for e in envs]
            xs = [i + (m - (len(results) - 1) / 2) * width for i in range(len(envs))]
            bars = ax.bar(xs, vals, width, label=Path(res["model"]).name or res["model"])
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(envs)), envs, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"pass@{k} (n={results[0]['n']})")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("pass rate")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- CLI ---------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.epilog = "\n\n".join(__doc__.split("\n\n")[1:3])  # examples; what a sample, pass@k, `overall` are
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # the epilog's lines as written
    parser.add_argument("--model", required=True, help="local model folder (transformers format)")
    parser.add_argument("--data", required=True, help="build folder, .parquet/.jsonl file, or recipe .yaml")
    parser.add_argument("--compare", metavar="DIR", help="a second model, evaluated on the same prompts")
    parser.add_argument("--n", type=int, default=16, help="samples per prompt (default 16)")
    parser.add_argument("--k", default=None, help="comma-separated k values, each <= n (default: those of 1,4,16 "
                        "that are <= n)")
    parser.add_argument("--split", choices=("train", "heldout"), help="split of a build folder/recipe "
                                                                      "(default: heldout when present)")
    parser.add_argument("--env", help="environment of rows that have no `env` column (public files)")
    parser.add_argument("--sample-data", action="store_true", help="with a recipe: build from its sample files")
    parser.add_argument("--limit", type=int, help="at most this many prompts per env")
    parser.add_argument("--temperature", type=float, default=0.6, help="(default 0.6, the paper's)")
    parser.add_argument("--top-p", type=float, default=0.95, help="(default 0.95, the paper's)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="(default 1024)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per generate call")
    parser.add_argument("--backend", choices=("auto", "hf", "vllm"), default="auto",
                        help="auto: vLLM when importable and on a GPU, else HF generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, help="scoring processes (default: CPU count)")
    parser.add_argument("-o", "--output", help="folder for results.json, passk.png and completions.jsonl (and, "
                        "while sampling, sampling.*.jsonl: the samples drawn so far)")
    parser.add_argument("--resume", action="store_true", help="go on from the samples an interrupted run with the "
                        "same -o and settings kept (HF backend), drawing what an uninterrupted run draws")


def run(args: argparse.Namespace, name: str) -> int:
    from rich.console import Console

    console, err = Console(), Console(stderr=True)
    try:
        if args.n < 1 or (args.limit is not None and args.limit < 1):
            raise ValueError("--n must be >= 1" if args.n < 1 else f"--limit must be >= 1, got {args.limit}")
        parts = [k.strip() for k in args.k.split(",") if k.strip()] if args.k else None
        if parts is not None and (not parts or not all(k.isdigit() for k in parts)):
            raise ValueError(f"--k {args.k!r}: expected comma-separated whole numbers, e.g. 1,4,16")
        ks = [int(k) for k in parts] if parts is not None else [k for k in (1, 4, 16) if k <= args.n]
        if any(k < 1 or k > args.n for k in ks):
            raise ValueError(f"--k {args.k}: every k must be between 1 and --n {args.n}")
        sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, seed=args.seed, backend=args.backend)
        for flag, model in (("--model", args.model), ("--compare", args.compare)):
            if model and not (Path(model) / "config.json").is_file():  # else transformers looks it up on the Hub
                raise FileNotFoundError(f"{flag} {model}: not a local model folder (no config.json)")
        envs: dict[str, Env] = {}  # built once: to check the rows, then to score every model's samples
        rows = load_eval_rows(args.data, args.split, args.env, args.sample_data, args.limit, envs)
        if not rows:  # else a traceback from evaluate(), after loading the model
            raise ValueError(f"--data {args.data}: no rows to evaluate (an empty file, or a split with no rows)")
        if args.resume and not args.output:
            raise ValueError("--resume goes on from the samples kept in -o DIR: give the -o of the interrupted run")
        if args.output:  # an unusable output folder fails before the sampling, not after it
            Path(args.output).mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError, KeyError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    console.print(f"{len(rows)} prompts, {args.n} samples each")
    results = []
    models = {"model": args.model, **({"compare": args.compare} if args.compare else {})}
    checkpoints = {m: Path(args.output) / f"sampling.{m}.jsonl" for m in models} if args.output else {}
    for path in checkpoints.values() if not args.resume else ():
        path.unlink(missing_ok=True)  # a fresh run: not the samples of an earlier one
    try:
        for key, model in models.items():
            results.append(evaluate(model, rows, args.n, ks, sampling=sampling, workers=args.workers,
                                    keep_completions=bool(args.output), progress=True, envs=envs,
                                    checkpoint=checkpoints.get(key)))
    except KeyboardInterrupt:
        err.print(f"interrupted: the samples drawn so far are in {args.output}/sampling.*.jsonl; rerun the same "
                  f"command with --resume to go on" if args.output else
                  "interrupted: no samples kept (with -o DIR they are, and --resume goes on from them)")
        return 130
    except ValueError as exc:  # --resume over samples of other settings
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    console.print(report_table(results))
    for res in results:
        s = res["overall"]
        if s["masked"]:  # not a verdict on the completion: say so, rather than leave a bare count in the table
            console.print(f"{Path(res['model']).name}: {s['masked']} samples unscored (infra_error {s['infra_error']}, "
                          f"timeout {s['timeout']}): left out of n, not scored 0; each sample's status is in "
                          f"completions.jsonl (-o)", highlight=False)
    if args.output:
        out = Path(args.output)
        with open(out / "completions.jsonl", "w") as f:
            for res in results:  # `prompt`: the prompt's index in results.json's per_prompt (ids may repeat)
                for i, p in enumerate(res["per_prompt"]):
                    for j, s in enumerate(p.pop("samples", [])):
                        f.write(json.dumps({"model": res["model"], "prompt": i, "sample": j, "id": p["id"],
                                            "env": p["env"], **s}) + "\n")
        (out / "results.json").write_text(json.dumps(results if len(results) > 1 else results[0], indent=2) + "\n")
        plot(results, out / "passk.png")
        for path in checkpoints.values():
            path.unlink(missing_ok=True)  # every sample is in completions.jsonl now
        console.print(f"wrote {out}/results.json, {out}/passk.png, {out}/completions.jsonl")
    return 0

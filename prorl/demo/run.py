"""`prorl demo`: the embedded default, end to end on a CPU.

    prorl demo --output runs/demo                      # the recipe datasets/tiny.yaml
    prorl demo --output /tmp/d --set rl.max_steps=10   # any recipe value overridden

Steps, each skipped when its output is already there (so the command is idempotent and resumable):
  1. model/     tiny tokenizer + Qwen2 built locally (prorl.demo.tiny)
  2. sft/       TRL SFT warm start on demonstrations of the training tasks
  3. eval_sft.json  held-out evaluation of the SFT model
  4. rl/        ProRL: GRPO + DAPO loss, KL penalty, dynamic sampling, hard resets (prorl.trainer.ProRLTrainer)
  5. eval_rl.json   the same held-out evaluation of the RL model
  6. summary.json, curves.png and a before/after table

The whole recipe (with the --set overrides) is checked before any step: a bad key or value is one line, exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from prorl.demo.recipe import FieldError, RecipeError, _field, check_recipe, load_recipe

log = logging.getLogger("prorl.demo")

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "datasets" / "tiny.yaml"


# -- recipe (prorl.demo.recipe: load_recipe, check_recipe) ---------------------------------------------------------
def recipe_hash(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


# -- data ----------------------------------------------------------------------------------------------------------
def build_rows(recipe: dict[str, Any]) -> tuple[list[dict], list[dict], list[dict]]:
    """(SFT rows, RL rows, held-out rows): generated, split by content hash, env shares from `envs`."""
    from prorl.demo.tasks import TaskConfig, make_rows

    cfg, seed, envs = TaskConfig(**recipe["tasks"]), int(recipe["seed"]), recipe["envs"]
    total_w = sum(float(w) for w in envs.values())
    sft_total = int(recipe["sft"].get("steps", 300)) * int(recipe["sft"].get("batch_size", 32))
    rl = recipe["rl"]
    prompts_per_step = int(rl.get("per_device_train_batch_size", 128)) // int(rl.get("num_generations", 8))
    rl_total = int(rl.get("max_steps", 100)) * prompts_per_step * (1 + int(rl.get("dynamic_sampling_max_rounds", 2)))
    sft_rows, rl_rows, heldout = [], [], []
    for env_id, weight in envs.items():
        share = float(weight) / total_w
        n_sft, n_rl = max(1, round(sft_total * share)), max(1, round(rl_total * share))
        rows = make_rows(env_id, n_sft + n_rl, seed, "train", cfg)
        sft_rows += rows[:n_sft]
        rl_rows += rows[n_sft:]
        heldout += make_rows(env_id, int(recipe["eval"].get("prompts_per_env", 200)), 0, "heldout", cfg)
    random.Random(seed).shuffle(sft_rows)
    random.Random(seed + 1).shuffle(rl_rows)
    return sft_rows, rl_rows, heldout  # held-out rows: seed 0 always, so every seed is scored on the same prompts


def rl_dataset(rows: list[dict]):
    """The trainer's dataset: `env`, `prompt`, and the reference/metadata as JSON (mixed types across envs)."""
    from datasets import Dataset

    return Dataset.from_list([{"id": r["id"], "env": r["env"], "prompt": r["prompt"],
                               "reference": json.dumps(r["reference"]), "metadata": json.dumps(r["metadata"])}
                              for r in rows])


# -- steps ---------------------------------------------------------------------------------------------------------
def rl_config(recipe: dict[str, Any], output_dir: str | Path):
    from prorl.trainer import ProRLConfig
    from prorl.trainer.config import field_types
    from prorl.trainer.values import field_value

    types = field_types()
    unknown = sorted(set(recipe["rl"]) - set(types))
    if unknown:
        raise FieldError(f"rl.{unknown[0]}", f"unknown ProRLConfig field(s) {unknown}")
    rl = {}
    for key, value in recipe["rl"].items():
        with _field(f"rl.{key}"):
            rl[key] = field_value(f"rl.{key}", value, types[key])
    return ProRLConfig(
        output_dir=str(output_dir), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True, seed=int(recipe["seed"]), gradient_checkpointing=False, **rl,
    )


def train_rl(model_dir: str, rows: list[dict], output_dir: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """ProRL from the SFT model; returns {"steps", "resets"} and leaves the model in output_dir."""
    from transformers import AutoTokenizer

    from prorl.envs.jsonl import read_jsonl
    from prorl.trainer import ProRLTrainer

    config = rl_config(recipe, output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = ProRLTrainer(model_dir, args=config, train_dataset=rl_dataset(rows), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    trainer.save_state()
    resets = output_dir / "resets.jsonl"  # one line per reset; none when no reset happened
    return {"steps": trainer.state.global_step, "resets": sum(1 for _ in read_jsonl(resets)) if resets.exists() else 0}


def eval_sampling(recipe: dict[str, Any], seed: int):
    """(SamplingConfig, samples per prompt) of the held-out evaluation."""
    from prorl.data.sampling import SamplingConfig

    ev = recipe["eval"]
    sampling = SamplingConfig(temperature=float(ev.get("temperature", 0.6)), top_p=float(ev.get("top_p", 0.95)),
                              max_new_tokens=int(ev.get("max_new_tokens", 32)), batch_size=256, seed=seed,
                              backend="hf")
    n, prompts = int(ev.get("n", 4)), int(ev.get("prompts_per_env", 200))
    if n < 1 or prompts < 1:
        raise ValueError(f"eval.n and eval.prompts_per_env must be >= 1, got {n} and {prompts}")
    return sampling, n


def evaluate_model(model_dir: str, rows: list[dict], recipe: dict[str, Any], seed: int) -> dict[str, Any]:
    from prorl.eval import evaluate

    sampling, n = eval_sampling(recipe, seed)
    report = evaluate(model_dir, rows, n=n, ks=(1,), sampling=sampling, workers=int(recipe["rl"].get(
        "reward_workers", 1) or 1))
    report.pop("per_prompt", None)
    return report


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def pick_threads(requested: int | None) -> int:
    """Torch threads: as asked, else all cores on an idle machine and 1 on a busy one (spinning OpenMP threads
    on a loaded 2-core machine made training 3x slower than one thread, measured)."""
    if requested:
        return requested
    cores = os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


# -- the command ---------------------------------------------------------------------------------------------------
def run_demo(output: str | Path, recipe: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """Run (or finish) the demo in `output`; returns the summary."""
    import torch

    from prorl.demo.plots import plot_curves
    from prorl.demo.sft import teacher_rows, train_sft
    from prorl.demo.tiny import build_tiny_model

    out = Path(output)
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--output {out} is a file, not a folder")
    try:
        check_recipe(recipe)
    except (ValueError, TypeError) as exc:  # before any work, and before the folder records the recipe
        raise RecipeError(f"recipe: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = recipe_hash(recipe)
    recipe_file = out / "recipe.json"
    if recipe_file.exists() and json.loads(recipe_file.read_text()).get("hash") != fingerprint:
        raise RecipeError(f"{out} holds a demo run of a different recipe; pick another --output or delete it")
    _write_json(recipe_file, {"hash": fingerprint, "recipe": recipe})
    summary = _load_json(out / "summary.json")
    if summary is not None:
        return summary

    torch.set_num_threads(pick_threads(threads))
    seed = int(recipe["seed"])
    timings = _load_json(out / "timings.json") or {"wall_s": {}, "cpu_s": {}, "load_avg_1min": {}}

    def timed(name, fn, *a, **kw):
        """Run one step, recording its wall time, this process's CPU time and the machine's load meanwhile."""
        start, cpu = time.monotonic(), time.process_time()
        result = fn(*a, **kw)
        timings["wall_s"][name] = round(time.monotonic() - start, 1)
        timings["cpu_s"][name] = round(time.process_time() - cpu, 1)
        timings["load_avg_1min"][name] = round(os.getloadavg()[0], 2)
        _write_json(out / "timings.json", timings)
        return result

    sft_rows, rl_rows, heldout = timed("data", build_rows, recipe)
    if not (out / "heldout.jsonl").exists():  # the held-out prompts, for `prorl eval --data OUT/heldout.jsonl`
        _write_text(out / "heldout.jsonl", "".join(json.dumps(row) + "\n" for row in heldout))
    model_dir = str(out / "model")
    timed("build_model", build_tiny_model, model_dir, seed=seed, **recipe["model"])

    sft_dir = out / "sft"
    if not (sft_dir / "trainer_state.json").exists():
        sft = recipe["sft"]
        demos = teacher_rows(sft_rows, float(sft.get("teacher_error", 0.0)), seed)
        timed("sft", train_sft, model_dir, demos, str(sft_dir), steps=int(sft.get("steps", 300)),
              batch_size=int(sft.get("batch_size", 32)), learning_rate=float(sft.get("learning_rate", 2e-3)),
              seed=seed)
    eval_sft = _load_json(out / "eval_sft.json")
    if eval_sft is None:
        eval_sft = timed("eval_sft", evaluate_model, str(sft_dir), heldout, recipe, seed)
        _write_json(out / "eval_sft.json", eval_sft)

    rl_dir = out / "rl"
    rl_info = _load_json(out / "rl_done.json")
    if rl_info is None:
        shutil.rmtree(rl_dir, ignore_errors=True)  # an interrupted run left appended metric files: start clean
        rl_info = timed("rl", train_rl, str(sft_dir), rl_rows, rl_dir, recipe)
        _write_json(out / "rl_done.json", rl_info)
    eval_rl = _load_json(out / "eval_rl.json")
    if eval_rl is None:
        eval_rl = timed("eval_rl", evaluate_model, str(rl_dir), heldout, recipe, seed)
        _write_json(out / "eval_rl.json", eval_rl)

    def per_env(report):
        rewards = {env: round(s["mean_reward"], 4) for env, s in report["per_env"].items()}
        rewards["mean"] = round(sum(rewards.values()) / len(rewards), 4)  # envs weighted equally
        return rewards

    timed("plot", plot_curves, rl_dir, out / "curves.png", sorted(recipe["envs"]))
    summary = {
        "sft": per_env(eval_sft), "rl": per_env(eval_rl), "steps": rl_info["steps"], "resets": rl_info["resets"],
        # every step is timed once, also across an interrupted and resumed run. cpu_s: this process's CPU time
        # (scoring workers not included); on a busy machine wall_s / cpu_s shows the contention.
        "wall_s": round(sum(timings["wall_s"].values()), 1), "cpu_s": round(sum(timings["cpu_s"].values()), 1),
        "timings": timings, "threads": torch.get_num_threads(), "seed": seed,
        "eval": {"prompts": eval_sft["overall"]["prompts"], "samples_per_prompt": eval_sft["n"],
                 "sampling": eval_sft["sampling"]},
    }
    _write_json(out / "summary.json", summary)
    return summary


def print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out mean reward (n={summary['eval']['samples_per_prompt']} samples per prompt, "
                        f"T={summary['eval']['sampling']['temperature']})")
    for col in ("env", "SFT", "RL", "change"):
        table.add_column(col, justify="left" if col == "env" else "right")
    for env in summary["sft"]:
        before, after = summary["sft"][env], summary["rl"].get(env)
        table.add_row(env, f"{before:.3f}", f"{after:.3f}", f"{after - before:+.3f}")
    Console().print(table)
    print(f"RL steps {summary['steps']}, resets {summary['resets']}, wall {summary['wall_s']:.0f} s, CPU "
          f"{summary['cpu_s']:.0f} s ({summary['threads']} torch threads)")


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="demo recipe YAML (default: datasets/tiny.yaml)")
    parser.add_argument("--output", "-o", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set rl.max_steps=20 (repeatable)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores when idle, fewer when the machine is busy)")


def run(args: argparse.Namespace, name: str) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = list(args.set) + ([f"seed={args.seed}"] if args.seed is not None else [])
    try:  # mistakes found before any work: one line and status 2, as the other commands do
        recipe = load_recipe(args.recipe, overrides)
        summary = run_demo(args.output, recipe, threads=args.threads)
    except RecipeError as exc:
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    print_table(summary)
    print(f"wrote {Path(args.output) / 'summary.json'} and {Path(args.output) / 'curves.png'}")
    return 0

"""The paper's qualitative claims side by side on the embedded default, at an equal generated-token budget.

    .venv/bin/python benchmarks/learning/run.py                       # 5 arms x 2 seeds, then the report
    .venv/bin/python benchmarks/learning/run.py --seeds 0 --arms base no_resets --budget 50000
    .venv/bin/python benchmarks/learning/run.py --set model.hidden_size=384 --set model.num_hidden_layers=8 ...

Every arm of a seed starts from the same SFT model (datasets/tiny.yaml: tiny Qwen2 + TRL SFT on an imperfect
teacher, exactly `prorl demo`'s) and runs ProRL (prorl.trainer.ProRLTrainer) until `--budget` completion tokens have
been generated (`max_generated_tokens`: every dynamic-sampling round counts, dropped groups too). The arms differ
from `base` (the recipe with RECIPE_SET: 4 policy updates per generation, eps_high 0.4, a hard reset every 40
generations, dynamic sampling, 3-domain mixture) in one setting each:

  (a) eps_high_0.2         clip-higher off              -> policy entropy over steps
  (b) no_resets            no reference/optimizer reset -> held-out reward over steps
  (c) no_dynamic_sampling  every group trained on        -> held-out reward per generated token
  (c) ds_adaptive          refills sized to the missing groups (dynamic_sampling_refill='adaptive')
  (d) logic_only           RL on logic/aiw alone         -> held-out reward on tasks the arm does not train on
  (b) plateau_resets       resets triggered by a plateau of the held-out reward (the paper's trigger), not by a
                           fixed schedule
  (b) kl_0.1, kl_1         beta 0.1 / 1.0 instead of 1e-3 (a KL penalty that binds), with resets and, in the
      kl_*_no_resets       `_no_resets` arms, without

Held-out reward is measured during training every `--eval-every` steps (and at steps 0 and last) by sampling the
policy in memory on held-out prompts of each trained domain plus `unseen/aiw_friends` (reasoning-gym AIW "friends"
questions, a question type no arm trains on; with --unseen-in-sft the SFT warm start learns it too, and it stays
out of every arm's RL prompts), scored by the gym. Each run writes OUT/seedS/ARM/{metrics.jsonl,
heldout.jsonl, done.json}; finished runs are skipped, so the command resumes. `report.py` then writes the plots
and the numbers to benchmarks/learning/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from prorl.demo.run import DEFAULT_RECIPE, build_rows, load_recipe, rl_dataset

# Each arm: overrides of the recipe's `rl` section (ProRLConfig fields).
ARMS: dict[str, dict] = {
    "base": {},
    "eps_high_0.2": {"epsilon_high": 0.2},
    "no_resets": {"reset_every_steps": None},
    "no_dynamic_sampling": {"dynamic_sampling": False},
    # (c) with refills sized to the missing groups instead of whole batches
    "ds_adaptive": {"dynamic_sampling_refill": "adaptive"},
    "logic_only": {"env_weights": {"logic/aiw": 1.0}},
    # (b) as the paper triggers them: a reset when the held-out reward has not improved for 2 evaluations
    "plateau_resets": {"reset_every_steps": None, "reset_on_plateau": "heldout/trained_mean",
                       "reset_plateau_patience": 2, "reset_plateau_min_delta": 0.005, "reset_min_interval": 80},
    # (b) where the KL penalty binds: the recipe's beta 1e-3 barely holds the policy (KL 0.3-0.7 with or without
    # resets), so releasing it cannot matter; with beta 0.1 and 1.0 the reference anchors the policy
    "kl_0.1": {"beta": 0.1},
    "kl_0.1_no_resets": {"beta": 0.1, "reset_every_steps": None},
    "kl_1": {"beta": 1.0},
    "kl_1_no_resets": {"beta": 1.0, "reset_every_steps": None},
}
TRAINED_GROUPS = ("math", "logic/aiw", "ifeval")
# The recipe's RL section changed for these runs (before --set): the paper's rollout batch split into 4 mini-batches
# (256 prompts, mini-batch 64: 4 policy updates per generation). With one update per generation, as `prorl demo`
# runs, the policy ratio is exactly 1 when the loss is computed and no clipping ever happens, so eps_high could not
# matter. Resets every 160 updates = every 40 generations, the demo's cadence; rl.max_steps sizes the prompt pool.
RECIPE_SET = ["rl.per_device_train_batch_size=24", "rl.steps_per_generation=4", "rl.reset_every_steps=160",
              "rl.max_steps=500"]
UNSEEN = "unseen/aiw_friends"
MAX_STEPS = 1000  # a cap only: the generation budget ends every run


UNSEEN_TYPE = "friends"


def is_unseen(row: dict) -> bool:
    entry = row["reference"].get("entry") or {}  # the logic env keeps reasoning-gym's entry in the reference
    return row["env"] == "logic/aiw" and (entry.get("metadata") or {}).get("task_type") == UNSEEN_TYPE


def rows_of(recipe: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(SFT, RL, held-out) rows as `prorl demo` builds them. With `unseen_in_sft` (the (d) variant) the recipe's AIW
    types include the unseen one: it is in the SFT rows, and taken out of the RL rows (of every arm) and of the
    trained held-out groups, so it stays a task no arm trains on in RL, which the SFT model can partly solve."""
    sft, rl, heldout = build_rows(recipe)
    if recipe.get("unseen_in_sft"):
        rl, heldout = [r for r in rl if not is_unseen(r)], [r for r in heldout if not is_unseen(r)]
    return sft, rl, heldout


# -- held-out evaluation during training ---------------------------------------------------------------------------
def heldout_sets(recipe: dict, per_group: int) -> dict[str, list[dict]]:
    """Held-out rows by group: the recipe's domains (the demo's held-out prompts) and the unseen AIW type."""
    from prorl.demo.tasks import TaskConfig, make_rows

    _, _, heldout = rows_of(recipe)
    groups: dict[str, list[dict]] = {}
    for row in heldout:
        if len(groups.setdefault(row["env"], [])) < per_group:
            groups[row["env"]].append(row)
    cfg = TaskConfig(**{**recipe["tasks"], "aiw_types": [UNSEEN_TYPE]})
    groups[UNSEEN] = make_rows("logic/aiw", per_group, 0, "heldout", cfg)
    return groups


class HeldoutEval(TrainerCallback):
    """Samples the policy on held-out prompts every `every` steps and appends the mean reward per group (and the
    generated-token count at that step) to `path`."""

    def __init__(self, groups: dict[str, list[dict]], path: Path, every: int, n: int, sampling: dict):
        self.groups, self.path, self.every, self.n, self.sampling = groups, path, every, n, sampling
        self.trainer = None  # set after the trainer is built: the token count lives in its run state

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.evaluate(0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            record = self.evaluate(state.global_step)
            # the trainer's plateau trigger watches this value (reset_on_plateau="heldout/trained_mean")
            self.trainer.resets.on_log(args, state, control, logs={"heldout/trained_mean": record["trained_mean"]})

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step % self.every:  # the budget ended the run between two evaluations
            self.evaluate(state.global_step)

    def evaluate(self, step: int) -> dict:
        from prorl.data.sampling import Sampler, SamplingConfig
        from prorl.envs import make
        from prorl.envs.workers import score_many

        tr = self.trainer
        model = tr.accelerator.unwrap_model(tr.model)
        was_training = model.training
        model.eval()
        start = time.monotonic()
        rows = [r for group in self.groups.values() for r in group]
        sampler = Sampler.from_model(model, tr.processing_class, SamplingConfig(seed=1234, **self.sampling))
        completions = sampler.sample([r["prompt"] for r in rows], self.n)
        entropies = policy_entropy(model, sampler.tokenizer, [r["prompt"] for r in rows],
                                   self.sampling["max_new_tokens"], temperature=float(tr.args.temperature))
        model.train(was_training)
        flat_rows = [r for r in rows for _ in range(self.n)]
        scores = score_many([make(r["env"]) for r in flat_rows], [c for cs in completions for c in cs], flat_rows,
                            workers=1)
        record = {"step": step, "generated_tokens": tr.resets.state.generated_tokens,
                  "resets": tr.resets.state.reset_count}
        i = 0
        for name, group in self.groups.items():
            mine = scores[i:i + len(group) * self.n]
            i += len(group) * self.n
            rewards = [s.reward for s in mine if s.status not in ("timeout", "infra_error")]
            record[name] = sum(rewards) / len(rewards) if rewards else None
            first = i // self.n - len(group)
            record[f"entropy/{name}"] = sum(entropies[first:first + len(group)]) / len(group)
        trained = [record[g] for g in TRAINED_GROUPS if record.get(g) is not None]
        record["trained_mean"] = sum(trained) / len(trained) if trained else None
        record["entropy/trained_mean"] = sum(record[f"entropy/{g}"] for g in TRAINED_GROUPS) / len(TRAINED_GROUPS)
        record["eval_s"] = round(time.monotonic() - start, 2)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def policy_entropy(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float, seed: int = 4321,
                   batch_size: int = 256) -> list[float]:
    """Per prompt, the mean entropy (nats) of the policy's next-token distribution at the training temperature
    along one completion it samples at that temperature (fixed seed, up to and including its EOS): the policy
    entropy of the paper's plots, measured on fixed held-out prompts instead of each step's training batch (whose
    mix of domains changes from step to step)."""
    import torch

    from prorl.data.sampling import render

    out: list[float] = []
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            texts = [render(tokenizer, p) for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tokenizer.pad_token_id)
            logp = (torch.stack(gen.logits, dim=1).float() / temperature).log_softmax(-1)
            entropy = -(logp.exp() * logp).sum(-1)  # (rows, generated tokens)
            tokens = gen.sequences[:, enc["input_ids"].shape[1]:]
            ended = torch.zeros_like(tokens[:, 0], dtype=torch.bool)
            valid = torch.zeros_like(tokens, dtype=torch.bool)
            for t in range(tokens.size(1)):  # tokens up to and including the first stop token
                valid[:, t] = ~ended
                ended |= torch.isin(tokens[:, t], torch.tensor(sorted(stop), device=tokens.device))
            out += ((entropy * valid).sum(1) / valid.sum(1).clamp(min=1)).tolist()
    return out


# -- one run -------------------------------------------------------------------------------------------------------
def run_arm(run_dir: Path, sft_dir: Path, recipe: dict, arm: str, budget: int, eval_every: int, eval_n: int,
            per_group: int) -> dict:
    import torch
    from transformers import AutoTokenizer

    from prorl.trainer import ProRLConfig, ProRLTrainer

    torch.set_num_threads(1)
    on_gpu = torch.cuda.is_available()  # fp32 either way: the tiny model's runs stay comparable
    _, rl_rows, _ = rows_of(recipe)
    rl = {**recipe["rl"], **ARMS[arm], "max_steps": MAX_STEPS, "max_generated_tokens": budget}
    shutil.rmtree(run_dir, ignore_errors=True)  # an interrupted run left appended metric files: start clean
    run_dir.mkdir(parents=True)
    config = ProRLConfig(output_dir=str(run_dir), use_cpu=not on_gpu, bf16=False, report_to="none", save_strategy="no",
                         logging_steps=1, disable_tqdm=True, seed=int(recipe["seed"]), gradient_checkpointing=False,
                         **rl)
    ev = recipe["eval"]
    sampling = {"temperature": float(ev.get("temperature", 0.6)), "top_p": float(ev.get("top_p", 0.95)),
                "max_new_tokens": int(ev.get("max_new_tokens", 32)), "batch_size": 256, "backend": "hf"}
    heldout = HeldoutEval(heldout_sets(recipe, per_group), run_dir / "heldout.jsonl", eval_every, eval_n, sampling)
    tokenizer = AutoTokenizer.from_pretrained(str(sft_dir))
    trainer = ProRLTrainer(str(sft_dir), args=config, train_dataset=rl_dataset(rl_rows), processing_class=tokenizer,
                           callbacks=[heldout])
    heldout.trainer = trainer
    start = time.monotonic()
    trainer.train()
    done = {"arm": arm, "seed": recipe["seed"], "rl": rl, "steps": trainer.state.global_step,
            "generated_tokens": trainer.resets.state.generated_tokens, "resets": trainer.resets.state.reset_count,
            "wall_s": round(time.monotonic() - start, 1)}
    (run_dir / "done.json").write_text(json.dumps(done, indent=1) + "\n")
    return done


def prepare_seed(out: Path, recipe: dict) -> Path:
    """The seed's tiny model and SFT warm start, as `prorl demo` builds them (skipped when already there)."""
    import torch

    from prorl.demo.sft import teacher_rows, train_sft
    from prorl.demo.tiny import build_tiny_model

    sft_dir = out / "sft"
    if (sft_dir / "trainer_state.json").exists():
        return sft_dir
    torch.set_num_threads(os.cpu_count() or 1)
    seed = int(recipe["seed"])
    sft_rows, _, _ = rows_of(recipe)
    build_tiny_model(str(out / "model"), seed=seed, **recipe["model"])
    sft = recipe["sft"]
    train_sft(str(out / "model"), teacher_rows(sft_rows, float(sft.get("teacher_error", 0.0)), seed), str(sft_dir),
              steps=int(sft.get("steps", 300)), batch_size=int(sft.get("batch_size", 32)),
              learning_rate=float(sft.get("learning_rate", 2e-3)), seed=seed)
    return sft_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--budget", type=int, default=200_000, help="generated completion tokens per run")
    parser.add_argument("--eval-every", type=int, default=40, help="optimizer steps between held-out evaluations")
    parser.add_argument("--eval-n", type=int, default=2, help="samples per held-out prompt")
    parser.add_argument("--per-group", type=int, default=100, help="held-out prompts per group")
    parser.add_argument("--parallel", type=int, default=max(1, (os.cpu_count() or 1)),
                        help="runs at a time (each uses 1 torch thread)")
    parser.add_argument("--out", default="runs/learning")
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--set", action="append", default=[], help="recipe override, as for `prorl demo`")
    parser.add_argument("--one", nargs=2, metavar=("SEED", "ARM"), help=argparse.SUPPRESS)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--unseen-in-sft", action="store_true",
                        help=f"(d) variant: SFT also on AIW {UNSEEN_TYPE!r} questions, which stay out of every arm's "
                             "RL prompts (a task not trained on in RL that the SFT model can partly solve)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)

    def recipe_of(seed: int) -> dict:
        recipe = load_recipe(args.recipe, RECIPE_SET + list(args.set) + [f"seed={seed}"])
        if args.unseen_in_sft:  # the unseen type's SFT rows come on top: AIW's share and the SFT steps grow so
            types = list(recipe["tasks"].get("aiw_types") or ["siblings"])  # that every other task keeps its rows
            recipe["tasks"]["aiw_types"] = types + [UNSEEN_TYPE]
            envs, sft = recipe["envs"], recipe["sft"]
            total, aiw = sum(float(w) for w in envs.values()), float(envs["logic/aiw"])
            extra = aiw / len(types)
            envs["logic/aiw"] = aiw + extra
            sft["steps"] = round(int(sft.get("steps", 300)) * (total + extra) / total)
            recipe["unseen_in_sft"] = True
        return recipe

    if args.one:  # a child process: one arm of one seed
        seed, arm = int(args.one[0]), args.one[1]
        done = run_arm(out / f"seed{seed}" / arm, out / f"seed{seed}" / "sft", recipe_of(seed), arm, args.budget,
                       args.eval_every, args.eval_n, args.per_group)
        print(json.dumps(done))
        return

    (out).mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "one"}, indent=1))
    for seed in args.seeds:
        prepare_seed(out / f"seed{seed}", recipe_of(seed))
    jobs = [(s, a) for s in args.seeds for a in args.arms if not (out / f"seed{s}" / a / "done.json").exists()]
    running: list[tuple[subprocess.Popen, tuple]] = []
    failed = []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            seed, arm = jobs.pop(0)
            cmd = [sys.executable, __file__, "--one", str(seed), arm, "--out", args.out, "--recipe", args.recipe,
                   "--budget", str(args.budget), "--eval-every", str(args.eval_every), "--eval-n", str(args.eval_n),
                   "--per-group", str(args.per_group)] + [x for s in args.set for x in ("--set", s)] \
                + ["--unseen-in-sft"] * args.unseen_in_sft
            log_path = out / f"seed{seed}" / f"{arm}.log"
            running.append((subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT), (seed, arm)))
            print(f"started seed {seed} {arm} (log {log_path})", flush=True)
        time.sleep(2)
        for proc, job in list(running):
            if proc.poll() is not None:
                running.remove((proc, job))
                print(f"finished seed {job[0]} {job[1]}: exit {proc.returncode}", flush=True)
                if proc.returncode:
                    failed.append(job)
    if failed:
        raise SystemExit(f"runs failed: {failed} (see their .log files under {out})")
    if not args.no_report:
        from report import write_report  # benchmarks/learning/report.py

        write_report(out)


if __name__ == "__main__":
    main()

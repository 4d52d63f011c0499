"""Training-phase time with micro-batches grouped by completion length (`group_micro_batches_by_length=True`) vs
TRL's shuffled, generation-wide padding (False), in the same run, on CPU.

A locally built Qwen2 (4 layers, 256 wide) whose generation config makes one token in `--eos-every` an EOS, so
completion lengths spread like reasoning traces (roughly geometric, mean ~`--eos-every`, a tail cut at
`--length`). 8 completions per prompt, micro-batches of 8, 4 accumulated per optimizer step, a generation every 2
steps (old-policy log-probs needed), beta 1e-4 (reference log-probs). Both arms sample the same completions (same
seed; grouping draws no random numbers) and make the same update. Printed per arm: completion positions forwarded
in training (padding included) and real tokens, seconds in the training forwards + backwards (each `training_step`
less its batch preparation: generation, scoring, log-prob passes) and in the no-grad old-policy + reference
log-prob passes, then the ratios grouped / plain. Arms alternate over `--repeat` rounds; the best of each counts.

    .venv/bin/python benchmarks/bench_length_grouping.py [--repeat 2] [--steps 4] [--length 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from measure import cpu_bench_model, report  # noqa: E402


def hash_reward(prompts, completions, **kwargs):
    return [zlib.crc32(c[-1]["content"].encode()) % 1000 / 1000 for c in completions]


def run_arm(model_dir: str, grouped: bool, args) -> dict:
    from datasets import Dataset

    from prorl.trainer import ProRLConfig, ProRLTrainer

    class Timed(ProRLTrainer):
        step_s = prepare_s = logp_s = 0.0
        padded = real = 0

        def _get_per_token_logps_and_entropies(self, model, input_ids, *a, **k):
            if torch.is_grad_enabled() or self._deferred_models is not None:  # the loss pass, or a placeholder
                return super()._get_per_token_logps_and_entropies(model, input_ids, *a, **k)
            start = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(model, input_ids, *a, **k)
            self.logp_s += time.perf_counter() - start
            return out

        def training_step(self, model, inputs, num_items_in_batch=None):
            start = time.perf_counter()
            out = super().training_step(model, inputs, num_items_in_batch)
            self.step_s += time.perf_counter() - start
            return out

        def _prepare_inputs(self, generation_batch):
            start = time.perf_counter()
            out = super()._prepare_inputs(generation_batch)
            self.prepare_s += time.perf_counter() - start
            self.padded += out["completion_mask"].numel()
            self.real += int(out["completion_mask"].sum())
            return out

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}: add 2 and {i}"}] for i in range(64)]})
    config = ProRLConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_lg_"), per_device_train_batch_size=8, num_generations=8,
        gradient_accumulation_steps=4, steps_per_generation=8, max_completion_length=args.length, beta=1e-4,
        dynamic_sampling=False, group_micro_batches_by_length=grouped, max_steps=args.steps, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
        dataloader_num_workers=0, learning_rate=1e-5)
    trainer = Timed(model_dir, reward_funcs=hash_reward, args=config, train_dataset=data)
    trainer.train()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return {"train_phase_s": trainer.step_s - trainer.prepare_s, "logp_s": trainer.logp_s,
            "padded_tokens": trainer.padded, "real_tokens": trainer.real,
            "param_checksum": float(params.double().sum())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (a generation every 2)")
    p.add_argument("--length", type=int, default=256, help="max_completion_length")
    p.add_argument("--eos-every", type=int, default=96, help="one vocabulary id in this many is an EOS")
    p.add_argument("--out", help="also write the summary (and the settings) to this JSON file")
    args = p.parse_args(argv)

    model_dir = cpu_bench_model("bench_lg_model_")
    gen_file = Path(model_dir, "generation_config.json")
    gen = json.loads(gen_file.read_text())
    vocab = json.loads(Path(model_dir, "config.json").read_text())["vocab_size"]
    gen["eos_token_id"] = sorted({gen["eos_token_id"], *range(10, vocab, args.eos_every)})
    gen_file.write_text(json.dumps(gen))

    best: dict[str, dict] = {}
    for r in range(args.repeat):
        for name, grouped in (("grouped", True), ("plain", False)):
            res = run_arm(model_dir, grouped, args)
            print(f"round {r} {name:8s} training forwards+backwards {res['train_phase_s']:6.2f} s, old-policy + "
                  f"reference log-prob passes {res['logp_s']:5.2f} s, over "
                  f"{res['padded_tokens']} completion positions ({res['real_tokens']} real)", flush=True)
            if name not in best or res["train_phase_s"] < best[name]["train_phase_s"]:
                best[name] = res
    g, n = best["grouped"], best["plain"]
    summary = {"grouped": g, "plain": n, "padded_tokens_ratio": g["padded_tokens"] / n["padded_tokens"],
               "train_phase_s_ratio": g["train_phase_s"] / n["train_phase_s"],
               "logp_s_ratio": g["logp_s"] / n["logp_s"],
               "real_fraction_plain": n["real_tokens"] / n["padded_tokens"],
               "same_update": abs(g["param_checksum"] - n["param_checksum"])
               <= 1e-6 * max(1.0, abs(n["param_checksum"]))}
    print(f"grouped / plain: completion positions forwarded {summary['padded_tokens_ratio']:.2f}, training-phase "
          f"time {summary['train_phase_s_ratio']:.2f}, log-prob pass time {summary['logp_s_ratio']:.2f} (best of "
          f"{args.repeat}; real tokens are "
          f"{summary['real_fraction_plain']:.0%} of the plain arm's positions; same weights: {summary['same_update']})")
    return report(summary, args.out, repeat=args.repeat, steps=args.steps, length=args.length,
                  eos_every=args.eos_every)


if __name__ == "__main__":
    main()

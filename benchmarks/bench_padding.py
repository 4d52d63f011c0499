"""Training-phase time of the ways to forward less padding, in the same run, on CPU: TRL's shuffled micro-batches
padded to the generation's longest completion (`plain`), micro-batches grouped by completion length and cut to their
own longest (`grouped`, `group_micro_batches_by_length`), padding-free packed rows (`packed`, `padding_free`: rows
no wider than the padded ones; `packed1`: each micro-batch in one row, `padding_free_max_tokens` large), and both.

A locally built Qwen2 (4 layers, 256 wide) whose generation config makes one token in `--eos-every` an EOS, so
completion lengths spread like reasoning traces (roughly geometric, mean ~`--eos-every`, a tail cut at
`--length`). 8 completions per prompt, micro-batches of 8, 4 accumulated per optimizer step, a generation every 2
steps (old-policy log-probs needed), beta 1e-4 (reference log-probs). Every arm samples the same completions (same
seed; neither grouping nor packing draws random numbers) and makes the same update. Printed per arm: token
positions the log-prob forwards compute (the model's input size, prompts and padding included) and the real
tokens among them, seconds in the training forwards + backwards (each `training_step` less its batch preparation:
generation, scoring, log-prob passes) and in the no-grad old-policy + reference log-prob passes, then each arm's
ratios to `plain`. Arms alternate over `--repeat` rounds; the best of each counts.

    .venv/bin/python benchmarks/bench_padding.py [--repeat 2] [--steps 4] [--length 256] [--arms ...] [--out FILE]
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


ARMS = {  # name: ProRLConfig overrides
    "plain": {},
    "grouped": {"group_micro_batches_by_length": True},
    "packed": {"padding_free": True},
    "packed1": {"padding_free": True, "padding_free_max_tokens": 1 << 20},
    "grouped+packed": {"group_micro_batches_by_length": True, "padding_free": True},
}


def run_arm(model_dir: str, overrides: dict, args) -> dict:
    from datasets import Dataset

    from prorl.trainer import ProRLConfig, ProRLTrainer

    class Timed(ProRLTrainer):
        step_s = prepare_s = logp_s = 0.0
        positions = real = 0

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, *a, **k):
            if self._deferred_models is not None:  # a placeholder: no forward
                return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, *a, **k)

            def count(module, inputs, kwargs):
                self.positions += kwargs["input_ids"].numel()

            self.real += int(attention_mask.sum())
            hook = model.register_forward_pre_hook(count, with_kwargs=True)
            start = time.perf_counter()
            try:
                return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, *a, **k)
            finally:
                hook.remove()
                if not torch.is_grad_enabled():  # the old-policy and reference passes
                    self.logp_s += time.perf_counter() - start

        def training_step(self, model, inputs, num_items_in_batch=None):
            start = time.perf_counter()
            out = super().training_step(model, inputs, num_items_in_batch)
            self.step_s += time.perf_counter() - start
            return out

        def _prepare_inputs(self, generation_batch):
            start = time.perf_counter()
            out = super()._prepare_inputs(generation_batch)
            self.prepare_s += time.perf_counter() - start
            return out

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}: add 2 and {i}"}] for i in range(64)]})
    config = ProRLConfig(**{**dict(
        output_dir=tempfile.mkdtemp(prefix="bench_pad_"), per_device_train_batch_size=8, num_generations=8,
        gradient_accumulation_steps=4, steps_per_generation=8, max_completion_length=args.length, beta=1e-4,
        dynamic_sampling=False, max_steps=args.steps, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-5),
        **overrides})
    trainer = Timed(model_dir, reward_funcs=hash_reward, args=config, train_dataset=data)
    trainer.train()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return {"train_phase_s": trainer.step_s - trainer.prepare_s, "logp_s": trainer.logp_s,
            "positions": trainer.positions, "real_tokens": trainer.real,
            "param_checksum": float(params.double().sum())}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run (a generation every 2)")
    p.add_argument("--length", type=int, default=256, help="max_completion_length")
    p.add_argument("--eos-every", type=int, default=96, help="one vocabulary id in this many is an EOS")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)} (plain needed)")
    p.add_argument("--out", help="also write the summary (and the settings) to this JSON file")
    args = p.parse_args(argv)

    model_dir = cpu_bench_model("bench_pad_model_")
    gen_file = Path(model_dir, "generation_config.json")
    gen = json.loads(gen_file.read_text())
    vocab = json.loads(Path(model_dir, "config.json").read_text())["vocab_size"]
    gen["eos_token_id"] = sorted({gen["eos_token_id"], *range(10, vocab, args.eos_every)})
    gen_file.write_text(json.dumps(gen))

    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "plain" not in arms:
        raise SystemExit(f"--arms: {unknown or 'plain is needed (the baseline)'}; known: {', '.join(ARMS)}")
    run_arm(model_dir, {}, argparse.Namespace(**{**vars(args), "steps": 1}))  # warm-up, not counted (the first
    best: dict[str, dict] = {}                                                # run of a process is slower)
    for r in range(args.repeat):
        for name in arms:
            res = run_arm(model_dir, ARMS[name], args)
            print(f"round {r} {name:15s} training forwards+backwards {res['train_phase_s']:6.2f} s, old-policy + "
                  f"reference log-prob passes {res['logp_s']:5.2f} s, over {res['positions']} token positions "
                  f"({res['real_tokens']} real)", flush=True)
            if name not in best or res["train_phase_s"] < best[name]["train_phase_s"]:
                best[name] = res
    base = best["plain"]
    summary = {"arms": best, "real_fraction_plain": base["real_tokens"] / base["positions"], "ratios": {}}
    for name in arms[1:] if arms[0] == "plain" else [a for a in arms if a != "plain"]:
        res = best[name]
        ratios = {"positions": res["positions"] / base["positions"],
                  "train_phase_s": res["train_phase_s"] / base["train_phase_s"],
                  "logp_s": res["logp_s"] / base["logp_s"],
                  "same_update": abs(res["param_checksum"] - base["param_checksum"])
                  <= 1e-6 * max(1.0, abs(base["param_checksum"]))}
        summary["ratios"][name] = ratios
        print(f"{name} / plain: token positions forwarded {ratios['positions']:.2f}, training-phase time "
              f"{ratios['train_phase_s']:.2f}, log-prob pass time {ratios['logp_s']:.2f}, same weights: "
              f"{ratios['same_update']}")
    print(f"(best of {args.repeat}; real tokens are {summary['real_fraction_plain']:.0%} of the plain arm's positions)")
    return report(summary, args.out, repeat=args.repeat, steps=args.steps, length=args.length,
                  eos_every=args.eos_every, arms=arms)


if __name__ == "__main__":
    main()

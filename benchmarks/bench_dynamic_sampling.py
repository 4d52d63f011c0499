"""Dynamic sampling's log-prob passes: deferred to the merged batch (prorl's default) vs computed every round (TRL's
generate-and-score as is, `_defer_logps = False`), in the same run, on CPU.

A locally built Qwen2 (4 layers, 256 wide), 64 prompts, a reward constant on half of them (those groups are
dropped, so each step needs refill rounds), 4 completions of exactly `--length` tokens per prompt, 2 policy updates
per generation (TRL then needs old-policy log-probs) and beta 0.1 (reference log-probs). Both arms sample the same
completions (same seed; the deferred passes draw no random numbers). Printed per arm: rows through no-grad log-prob
passes, seconds in them, training wall time; then the ratios deferred / every-round. Arms alternate over
`--repeat` rounds and the best time of each is compared (a shared machine is noisy).

    .venv/bin/python benchmarks/bench_dynamic_sampling.py [--repeat 2] [--steps 8] [--length 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zlib

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from measure import cpu_bench_model, report  # noqa: E402


def half_constant_reward(prompts, completions, qid, **kwargs):
    return [0.5 if q % 2 == 0 else zlib.crc32(c[-1]["content"].encode()) % 1000 / 1000
            for q, c in zip(qid, completions)]


def run_arm(model_dir: str, defer: bool, args) -> dict:
    from datasets import Dataset

    from prorl.trainer import ProRLConfig, ProRLTrainer

    class Timed(ProRLTrainer):
        logp_rows, logp_s = 0, 0.0

        def _get_per_token_logps_and_entropies(self, model, input_ids, *a, **k):
            if self._deferred_models is not None or torch.is_grad_enabled():  # a placeholder, or the loss pass
                return super()._get_per_token_logps_and_entropies(model, input_ids, *a, **k)
            start = time.perf_counter()
            out = super()._get_per_token_logps_and_entropies(model, input_ids, *a, **k)
            self.logp_s += time.perf_counter() - start
            self.logp_rows += input_ids.size(0)
            return out

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"q{i}: add 2 and {i}"}] for i in range(64)],
                              "qid": list(range(64))})
    config = ProRLConfig(
        output_dir=tempfile.mkdtemp(prefix="bench_ds_"), per_device_train_batch_size=16, num_generations=4,
        steps_per_generation=2, max_completion_length=args.length, generation_kwargs={"min_new_tokens": args.length},
        beta=0.1, max_steps=args.steps, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=False, seed=0, disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-5)
    trainer = Timed(model_dir, reward_funcs=half_constant_reward, args=config, train_dataset=data)
    trainer._defer_logps = defer
    start = time.perf_counter()
    trainer.train()
    rounds = [h["dynamic_sampling/rounds"] for h in trainer.state.log_history if "dynamic_sampling/rounds" in h]
    return {"train_s": time.perf_counter() - start, "logp_s": trainer.logp_s, "logp_rows": trainer.logp_rows,
            "rounds_mean": sum(rounds) / len(rounds) if rounds else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (2 per generation)")
    p.add_argument("--length", type=int, default=32, help="completion length (forced)")
    p.add_argument("--out", help="also write the summary (and the settings) to this JSON file")
    args = p.parse_args(argv)

    model_dir = cpu_bench_model("bench_ds_model_")
    best: dict[str, dict] = {}
    for r in range(args.repeat):
        for name, defer in (("deferred", True), ("every_round", False)):
            res = run_arm(model_dir, defer, args)
            print(f"round {r} {name:12s} train {res['train_s']:6.2f} s  log-prob passes {res['logp_s']:5.2f} s "
                  f"over {res['logp_rows']} rows", flush=True)
            if name not in best or res["train_s"] < best[name]["train_s"]:
                best[name] = res
    d, e = best["deferred"], best["every_round"]
    summary = {"deferred": d, "every_round": e, "logp_rows_ratio": d["logp_rows"] / e["logp_rows"],
               "logp_s_ratio": d["logp_s"] / e["logp_s"], "train_s_ratio": d["train_s"] / e["train_s"]}
    print(f"deferred / every round: log-prob rows {summary['logp_rows_ratio']:.2f}, log-prob time "
          f"{summary['logp_s_ratio']:.2f}, training wall time {summary['train_s_ratio']:.2f} "
          f"(best of {args.repeat}; mean logged dynamic-sampling rounds {e['rounds_mean']:.2f})")
    return report(summary, args.out, repeat=args.repeat, steps=args.steps, length=args.length)


if __name__ == "__main__":
    main()

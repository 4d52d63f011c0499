"""Fixtures and helpers for the trainer tests: a tiny Qwen2 built locally, small datasets, a fast ProRLConfig.

Also runnable (`python tests/trainer_utils.py OUTPUT_DIR MODEL_DIR [--resume] [--kill-at-step N]`) to train in a
subprocess for the kill-and-resume test, and under `torch.distributed.run` (`trainer_utils.py MODE OUTPUT_DIR
MODEL_DIR [--resume]`, MODE one of ddp, ddp-packed, ddp-adaptive, ddp-restart, ddp-fillers, ddp-resume: see
`two_ranks`) for the two-process tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_SIZE = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2}


def build_model(path: str | Path) -> str:
    from prorl.demo.tiny import build_tiny_model

    return build_tiny_model(str(path), seed=0, **TINY_SIZE)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Path of a 2-layer, 64-wide Qwen2 with a local tokenizer (a path, so TRL can build the reference model)."""
    return build_model(tmp_path_factory.mktemp("tiny-model"))


def varied_length_model(tiny_model, tmp_path) -> str:
    """The tiny model with a sixth of its vocabulary as EOS tokens: completions of very different lengths."""
    import shutil

    path = Path(tmp_path) / "varied-model"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "generation_config.json").read_text())
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    config["eos_token_id"] = [2] + list(range(10, vocab, 6))
    (path / "generation_config.json").write_text(json.dumps(config))
    return str(path)


def tiny_moe_model(tiny_model, tmp_path) -> str:
    """A 1-layer Mixtral with 2 experts, the tiny model's tokenizer and a router load-balancing loss."""
    import shutil

    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    path = Path(tmp_path) / "tiny-moe"
    shutil.copytree(tiny_model, path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    MixtralForCausalLM(MixtralConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, num_local_experts=2,
                                     num_experts_per_tok=1, router_aux_loss_coef=0.01, output_router_logits=True,
                                     pad_token_id=0, eos_token_id=2)).save_pretrained(path)
    return str(path)


def two_ranks(script: str, mode: str, out: Path, model: str, *flags: str, phase: str = "", timeout: int = 400,
              **env: str) -> list[dict]:
    """`tests/SCRIPT MODE OUT MODEL FLAGS` under `torch.distributed.run` with two CPU processes (gloo); the JSON
    each rank wrote to OUT/[PHASE-]rank<N>.json, rank 0 first."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **env)
    here = Path(__file__).resolve().parent
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(here / script), mode, str(out), model, *flags],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=here)
    assert proc.returncode == 0, proc.stderr[-6000:]
    ranks = [json.loads((Path(out) / f"{phase + '-' if phase else ''}rank{i}.json").read_text()) for i in range(2)]
    assert [r["rank"] for r in ranks] == [0, 1]
    return ranks


def prompt_dataset(n: int = 8, prefix: str = "q"):
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"{prefix}{i}: add 2 and {i}"}] for i in range(n)],
        "qid": list(range(n)),
    })


def fast_config(output_dir: str | Path, **overrides):
    """A ProRLConfig sized for 2 CPU cores: 2 prompts x 4 completions of 8 tokens per step."""
    from prorl.trainer import ProRLConfig

    kwargs = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        max_steps=3, logging_steps=1, save_strategy="no", report_to="none", bf16=False, use_cpu=True, seed=0,
        gradient_checkpointing=False, dataloader_num_workers=0, disable_tqdm=True, learning_rate=1e-3,
    )
    kwargs.update(overrides)
    return ProRLConfig(**kwargs)


def history(trainer, key: str) -> list:
    """The values of a logged metric, one per log line that has it."""
    return [h[key] for h in trainer.state.log_history if key in h]


def text_hash_reward(prompts, completions, **kwargs):
    """A reward that differs between completions: a hash of the completion text in [0, 1)."""
    import zlib

    return [zlib.crc32(c[-1]["content"].encode()) % 1000 / 1000 for c in completions]


def half_constant_reward(prompts, completions, qid, **kwargs):
    """0.5 for every completion of an even-`qid` prompt (a constant group), a text hash otherwise."""
    varying = text_hash_reward(prompts, completions)
    return [0.5 if q % 2 == 0 else r for q, r in zip(qid, varying)]


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def _subprocess_main(argv: list[str]) -> None:
    """Train 6 steps with a reset every 3 and a checkpoint every 2; optionally SIGKILL itself at a step."""
    import signal

    from transformers import TrainerCallback

    from prorl.trainer import ProRLTrainer

    out, model = argv[0], argv[1]
    resume = "--resume" in argv
    kill_at = int(argv[argv.index("--kill-at-step") + 1]) if "--kill-at-step" in argv else None

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            s = trainer.resets.state
            print("PROBE " + json.dumps({"step": state.global_step, "resets": s.reset_count, "stage": s.stage,
                                         "temperature": trainer.temperature}), flush=True)

        def on_step_begin(self, args, state, control, **kwargs):
            if kill_at is not None and state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    args = fast_config(out, max_steps=6, save_strategy="steps", save_steps=2, reset_every_steps=3, beta=0.05,
                       stages=[{"temperature": 0.9}], dynamic_sampling=False)
    trainer = ProRLTrainer(model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                           callbacks=[Probe()])
    trainer.train(resume_from_checkpoint=True if resume else None)


def _ddp_main(argv: list[str], mode: str = "ddp") -> None:
    """Under `torch.distributed.run --nproc_per_node 2`: 6 rows per process and groups of 4, so one group spans
    both processes; a reward constant on even prompts; a reset after step 2. With `adaptive`: 16 rows per process,
    a reward constant on every fourth prompt and adaptive refills. With `packed`: as `ddp`, padding-free. With
    `restart`: no dynamic sampling, 4 rows per process, and a stage at the reset after step 2 that doubles them (an
    in-process restart). Writes OUT/rank<N>.json per rank (with a checksum of its weights)."""
    import re

    from prorl.trainer import ProRLTrainer

    out, model = argv[0], argv[1]
    trained = []

    class Recording(ProRLTrainer):
        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if self.model.training:
                texts = self.processing_class.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
                trained.append([int(re.search(r"q(\d+):", t).group(1)) for t in texts])
            return batch

    rounds = []

    def quarter_constant_reward(prompts, completions, qid, **kwargs):
        rounds.append(len(completions))  # this rank's share of each generation round
        varying = text_hash_reward(prompts, completions)
        return [0.5 if q % 4 == 0 else r for q, r in zip(qid, varying)]

    if mode == "ddp-adaptive":  # 16 rows per process = 4 whole groups; prompts 0, 4, 8 are constant
        args = fast_config(out, per_device_train_batch_size=16, dynamic_sampling_refill="adaptive",
                           dynamic_sampling_max_rounds=3, use_cpu=True)
        reward = quarter_constant_reward
    elif mode == "ddp-restart":
        args = fast_config(out, per_device_train_batch_size=4, max_steps=4, beta=0.1, reset_every_steps=2,
                           dynamic_sampling=False, stages=[{"per_device_train_batch_size": 8}], use_cpu=True)
        reward = text_hash_reward
    else:  # ddp-packed: the same with padding_free (packed shapes differ between the ranks)
        args = fast_config(out, per_device_train_batch_size=6, beta=0.1, reset_every_steps=2, use_cpu=True,
                           padding_free=mode == "ddp-packed")
        reward = half_constant_reward
    trainer = Recording(model, reward_funcs=reward, args=args, train_dataset=prompt_dataset(12))
    trainer.train()
    kl = [h["kl"] for h in trainer.state.log_history if "kl" in h]
    rank = trainer.accelerator.process_index
    weights = sum(float(p.double().sum()) for p in trainer.model.parameters())
    # one file per rank: two ranks printing long lines to one pipe can interleave them
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "trained": trained, "kl": kl,
                                                         "resets": trainer.resets.state.reset_count,
                                                         "rounds": rounds, "weights": weights}))
    trainer.accelerator.wait_for_everyone()  # as prorl.train does: the process group torn down before exit
    trainer.accelerator.end_training()


def _ddp_fillers_main(argv: list[str]) -> None:
    """Under `torch.distributed.run --nproc_per_node 2`: for loss_type grpo, then dr_grpo, one step at the cap of
    dynamic sampling (no refill) on 5 prompts x 4 completions, 10 rows per process (the middle group split across
    the two), of which the first and third groups of TRL's shuffled order vary: 6 kept rows and 4 fillers on rank
    0, 2 and 8 on rank 1. Writes OUT/rank<N>.json: per loss type the kept rows, the filler factors, a hash of the
    weights after the step and `gradient_error`, the step's gradient (averaged over the processes) against the
    gradient of TRL's loss over the kept rows of both processes as one batch: max |got - want| / (1e-7 + 1e-4
    |want|), <= 1 when they agree."""
    import hashlib

    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from prorl.trainer import ProRLTrainer
    from prorl.trainer.fillers import FILLER_KEY, SCALE_KEY
    from prorl.trainer.sampling import concat_rows

    out, model = argv[0], argv[1]
    order = torch.randperm(5, generator=torch.Generator().manual_seed(0)).tolist()  # TRL's RepeatSampler, seed 0
    varying = {order[0], order[2]}

    def reward(prompts, completions, qid, **kwargs):
        return [r if q in varying else 0.5 for q, r in zip(qid, text_hash_reward(prompts, completions))]

    class Recording(ProRLTrainer):
        generation = None  # the merged batch of the step (this process's rows)

        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if self.model.training:
                self.generation = batch
            return batch

    class Gradient(TrainerCallback):
        grad = None  # of the step, after DDP averaged it over the processes

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grad = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    result = {}
    for loss_type in ("grpo", "dr_grpo"):
        args = fast_config(Path(out, loss_type), max_steps=1, loss_type=loss_type, per_device_train_batch_size=5,
                           gradient_accumulation_steps=2, steps_per_generation=2, dynamic_sampling_max_rounds=0,
                           max_grad_norm=0.0, beta=0.05)
        gradient = Gradient()
        trainer = Recording(model, reward_funcs=reward, args=args, train_dataset=prompt_dataset(5),
                            callbacks=[gradient])
        policy = trainer.model
        initial = {n: p.detach().clone() for n, p in policy.named_parameters()}
        trainer.train()
        got = gradient.grad
        weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in policy.parameters())).hexdigest()
        scales = [b[SCALE_KEY] for b in trainer._buffered_inputs]
        # The reference: TRL's loss over the kept rows of both processes as one batch, the same on both (its metric
        # gathers are collectives of equal shapes)
        batch = trainer.generation
        keep = ~batch[FILLER_KEY]
        kept = [None, None]
        dist.all_gather_object(kept, {k: v[keep] for k, v in batch.items()
                                      if k not in ("num_items_in_batch", FILLER_KEY, SCALE_KEY)})
        kept = concat_rows(kept, trainer._tokenizer.pad_token_id, trainer._token_level_keys())
        with torch.no_grad():
            for n, p in policy.named_parameters():
                p.copy_(initial[n])
        policy.train()
        policy.zero_grad()
        trainer.current_gradient_accumulation_steps = 1
        GRPOTrainer._compute_loss(trainer, policy, kept).backward()
        want = {n: p.grad for n, p in policy.named_parameters()}
        assert any(w.abs().max() > 0 for w in want.values())
        error = max(float(((got[n] - w).abs() / (1e-7 + 1e-4 * w.abs())).max()) for n, w in want.items())
        result[loss_type] = {"kept": int(keep.sum()), "scales": scales, "weights": weights, "gradient_error": error}
    rank = trainer.accelerator.process_index
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, **result}))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


# The train metrics a resumed run must log as the uninterrupted one did.
REPLAYED = ("loss", "kl", "entropy", "reward", "reward_std", "grad_norm", "learning_rate", "completions/mean_length",
            "dynamic_sampling/rounds", "dynamic_sampling/filled_rows", "resets", "stage", "tokens/generated")


def _ddp_resume_main(argv: list[str]) -> None:
    """Under `torch.distributed.run --nproc_per_node 2`: 8 steps over 6 prompts (3 per generation, 6 rows per
    process, the middle group split), one generation per 2 steps of 1 micro-batch, dynamic sampling (even prompts
    constant), a reset with a temperature stage every 3 steps and a checkpoint every 3 steps (checkpoint-3 inside a
    generation buffer, checkpoint-6 inside epoch 1); with --resume, from OUT's latest checkpoint. Writes
    OUT/rank<N>.json (the REPLAYED metrics per step) and OUT/weights<N>.pt."""
    import torch

    from prorl.trainer import ProRLTrainer

    out, model = argv[0], argv[1]
    args = fast_config(out, per_device_train_batch_size=3, steps_per_generation=2, max_steps=8, save_strategy="steps",
                       save_steps=3, beta=0.05, reset_every_steps=3, stages=[{"temperature": 0.9}])
    trainer = ProRLTrainer(model, reward_funcs=half_constant_reward, args=args, train_dataset=prompt_dataset(6))
    trainer.train(resume_from_checkpoint=True if "--resume" in argv else None)
    rank = trainer.accelerator.process_index
    rows = {h["step"]: {k: h.get(k) for k in REPLAYED} for h in trainer.state.log_history if "loss" in h}
    torch.save({n: p.detach().clone() for n, p in trainer.model.named_parameters()}, Path(out, f"weights{rank}.pt"))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"rank": rank, "rows": rows}))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    if sys.argv[1] in ("ddp", "ddp-packed", "ddp-adaptive", "ddp-restart"):
        _ddp_main(sys.argv[2:], mode=sys.argv[1])
    elif sys.argv[1] == "ddp-fillers":
        _ddp_fillers_main(sys.argv[2:])
    elif sys.argv[1] == "ddp-resume":
        _ddp_resume_main(sys.argv[2:])
    else:
        _subprocess_main(sys.argv[1:])

"""Two-process entry points for sharded training (FSDP2, DeepSpeed ZeRO-2/3) on CPU, launched by
tests/test_trainer_fsdp.py and tests/test_trainer_deepspeed.py as
`python -m torch.distributed.run --standalone --nproc_per_node 2 tests/sharded_main.py MODE OUT MODEL [flags]`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from trainer_utils import fast_config, half_constant_reward, prompt_dataset, text_hash_reward

def _fsdp_main(argv: list[str], mode: str) -> None:
    """Under `torch.distributed.run --nproc_per_node 2` (gloo, CPU) with torch's FSDP2 `fully_shard` itself
    (accelerate prepares FSDP only on accelerators: on CPU it trains DDP), wrapped as accelerate and TRL wrap
    them: the policy per decoder layer and at the root, the reference at the root only. `fsdp2`:
    reshard_after_forward=True (their default), `fsdp2-keep`: False. One AdamW step, a reset with prorl's helpers,
    the reference saved as a checkpoint saves it and loaded into a fresh reference as a resume loads it, and the
    padding-free probe. `fsdp1`: prorl's helpers refuse FSDP1. Writes OUT/rank<N>.json."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file, save_file
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from transformers import AutoModelForCausalLM

    from prorl.trainer.callbacks import copy_weights_, full_weights, load_weights_, reset_optimizer_state
    from prorl.trainer.packing import packing_error

    out, path = Path(argv[0]), argv[1]
    out.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo")
    rank, result = dist.get_rank(), {"rank": dist.get_rank()}

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    if mode == "fsdp1":
        def fsdp1():
            return FullyShardedDataParallel(load(), device_id=torch.device("cpu"))

        ref = fsdp1()
        for name, call in (("copy", lambda: copy_weights_(fsdp1(), ref)), ("full", lambda: full_weights(ref)),
                           ("load", lambda: load_weights_(ref, {k: v.detach().clone()
                                                                for k, v in ref.named_parameters()}))):
            try:
                call()
                result[name] = "no error"
            except NotImplementedError as exc:
                result[name] = str(exc)
    else:
        def shard(model, per_layer: bool):
            for layer in model.model.layers if per_layer else []:
                fully_shard(layer, reshard_after_forward=mode == "fsdp2")
            fully_shard(model, reshard_after_forward=mode == "fsdp2")
            return model

        policy, reference = shard(load(), True), shard(load(), False).eval()
        optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
        ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))

        def kl(p, q):
            with torch.no_grad():
                lp, lq = (m(input_ids=ids).logits.float().log_softmax(-1) for m in (p, q))
            return float((lp.exp() * (lp - lq)).sum(-1).mean())

        def train_step():
            policy(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        with torch.no_grad():  # TRL's reference log-probs, then the training step: at the reset (on_step_end)
            reference(input_ids=ids)  # the policy is resharded by its backward, the reference is as its forward
        train_step()  # left it (fsdp2-keep: unsharded)
        copy_weights_(policy, reference)
        reset_optimizer_state(optimizer)
        result["optimizer_state"] = len(optimizer.state)
        result["kl_after"] = kl(policy, reference)
        at_reset = full_weights(policy)
        saved = full_weights(reference, keep=rank == 0)  # a collective: every rank joins, rank 0 saves
        if rank == 0:
            save_file(saved, str(out / "reference.safetensors"))
            result["saved_shapes"] = {k: list(v.shape) for k, v in saved.items()}
            result["full_shapes"] = {k: list(v.shape) for k, v in load().named_parameters()}
            result["saved_equal"] = all(torch.equal(v, at_reset[k]) for k, v in saved.items())
        dist.barrier()
        train_step()  # the policy moves on after the reset
        result["kl_policy_moved"] = kl(policy, reference)
        resumed = shard(load(), False).eval()
        result["kl_base"] = kl(reference, resumed)  # forwarded before the load, as a resumed run may not be
        load_weights_(resumed, load_file(str(out / "reference.safetensors")))
        result["kl_resumed"] = kl(reference, resumed)
        result["resumed_equal"] = all(torch.equal(v, at_reset[k]) for k, v in full_weights(resumed).items())
        result["packing"] = packing_error(policy, one_row=False)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def deepspeed_config(stage: int) -> dict:
    """A DeepSpeed config (as `TrainingArguments(deepspeed=...)` takes it) for ZeRO-`stage` in fp32."""
    return {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto", "bf16": {"enabled": False},
            "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True}}


def init_deepspeed_on_cpu() -> None:
    """Set up DeepSpeed's process group (gloo) and accelerate's state for a CPU-only run (DS_ACCELERATOR=cpu).

    Needed because TrainingArguments' DeepSpeed branch passes no backend to accelerate's PartialState, whose
    `_prepare_backend` finds none without a GPU: it would init DeepSpeed's group but report 1 process
    (generation_batch_size checks then fail). With the state built here, `accelerator_config={"use_configured_state":
    True}` makes the Trainer use it. A GPU run (`accelerate launch --config_file configs/accelerate/zero3.yaml`)
    does not need this."""
    import deepspeed
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def adam_state(trainer) -> dict:
    """The optimizer chain's class names and its innermost (torch) optimizer's Adam state on this rank: the total
    |exp_avg| + |exp_avg_sq|, how many moment tensors, and the step counts (per parameter and per group)."""
    opt, chain = trainer.optimizer, []
    while opt is not None:
        chain.append(f"{type(opt).__module__}.{type(opt).__name__}")
        base, opt = opt, getattr(opt, "optimizer", None)
    moments = [v for state in base.state.values() for k, v in state.items() if k in ("exp_avg", "exp_avg_sq")]
    steps = [int(state["step"]) for state in base.state.values() if "step" in state]
    steps += [int(group["step"]) for group in base.param_groups if "step" in group]
    return {"chain": chain, "moments": float(sum(float(v.abs().sum()) for v in moments)),
            "n_moments": len(moments), "numel": sum(v.numel() for v in moments), "steps": steps}


def _deepspeed_main(argv: list[str], stage: int) -> None:
    """Under `torch.distributed.run --nproc_per_node 2` with DS_ACCELERATOR=cpu: DeepSpeed ZeRO-`stage` (gloo), as
    `ddp` (6 rows per process, groups of 4, a reward constant on even prompts, beta 0.1), a reset after step 2 and a
    checkpoint every 2 steps. Flags: `--resume CKPT` goes on from a checkpoint; `--restart-stage`: 4 steps of a
    cosine schedule and a stage at the reset that raises the rows per process from 6 to 8 and halves the base rate
    (DeepSpeed does not restart in process: the run stops at the reset's checkpoint); `--padding-free`;
    `--static-generation` (prorl's decode loop, its calls counted); `--buffered` (steps_per_generation=3);
    `--empty-step-2` (2 steps, the second with no loss token: its update is skipped); `--accumulate` (2 micro-batches
    per optimizer step; with `--empty-step-2` 3 steps of a linear schedule, steps 2 and 3 skipped). Writes
    OUT/<phase>-rank<N>.json (phase: train or resume) with the Adam state around the reset, the engine's batch
    geometry when training begins and its optimizer steps (and samples) after each micro-batch, and at the reset the
    policy's full weights to OUT/policy-at-reset.safetensors."""
    import re

    from safetensors.torch import load_file, save_file
    from transformers.integrations import is_deepspeed_zero3_enabled

    import prorl.trainer.trainer as trainer_module
    from prorl.trainer import ProRLTrainer, ResetCallback
    from prorl.trainer.callbacks import full_weights

    init_deepspeed_on_cpu()
    generate = trainer_module.trainer_generate

    def counted_generate(*args, **kwargs):  # the static backend's entry point: counted, then run as is
        record["static_generations"] += 1
        return generate(*args, **kwargs)

    trainer_module.trainer_generate = counted_generate
    out, model = argv[0], argv[1]
    resume = argv[argv.index("--resume") + 1] if "--resume" in argv else None
    phase = "resume" if resume else "train"
    record: dict = {"trained": [], "opt": {}, "ref_vs_policy_at_reset": None,
                    "restored_ref_vs_policy_at_reset": None, "lr": [], "static_generations": 0,
                    "step_weights": [], "engine_steps": [], "engine_substeps": []}

    class Recording(ProRLTrainer):
        def _generate_and_score_completions(self, inputs):
            batch = super()._generate_and_score_completions(inputs)
            if self.model.training:
                texts = self.processing_class.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
                record["trained"].append([int(re.search(r"q(\d+):", t).group(1)) for t in texts])
            return batch

    def gathered(model):  # every rank joins (ZeRO-3 gathers); rank 0 keeps the tensors
        return full_weights(trainer.accelerator.unwrap_model(model), keep=trainer.accelerator.is_main_process)

    def max_diff(a: dict, b: dict) -> float:
        assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())[:5]
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

    class Probe(ResetCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record["opt"][f"begin@{state.global_step}"] = adam_state(trainer)
            engine = trainer.model_wrapped  # the DeepSpeedEngine built for this train()
            record["geometry"] = {
                "engine_micro_batch": engine.train_micro_batch_size_per_gpu(),
                "engine_train_batch": engine.train_batch_size(), "engine_gas": engine.gradient_accumulation_steps(),
                "accelerator_gas": trainer.accelerator.gradient_accumulation_steps,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "trainer_batch": trainer._train_batch_size, "generation_batch_size": args.generation_batch_size,
                "config_from": "accelerate" if args.deepspeed is None else "deepspeed"}
            if resume:  # the reference restored from the checkpoint vs the policy saved at the reset
                ref = gathered(trainer.ref_model)
                if trainer.accelerator.is_main_process:
                    record["restored_ref_vs_policy_at_reset"] = max_diff(
                        ref, load_file(f"{out}/policy-at-reset.safetensors"))

        def on_step_begin(self, args, state, control, **kwargs):
            record["lr"].append(trainer.optimizer.param_groups[0]["lr"])

        def on_substep_end(self, args, state, control, **kwargs):  # a micro-batch before the update's last one
            record["engine_substeps"].append([state.global_step, trainer.model_wrapped.global_steps])

        def on_step_end(self, args, state, control, **kwargs):  # before ResetController's: before a reset
            record["opt"][f"end@{state.global_step}"] = adam_state(trainer)
            engine = trainer.model_wrapped  # its optimizer steps and samples so far (restored from a checkpoint)
            record["engine_steps"].append([state.global_step, engine.global_steps, engine.global_samples])
            weights = full_weights(trainer.accelerator.unwrap_model(trainer.model))
            record["step_weights"].append(sum(float(t.double().sum()) for t in weights.values()))

        def on_reset(self, args, state, control, event, trainer, replay=False, **kwargs):
            if replay:  # a resumed run replaying its checkpoint's reset, before training
                return
            record["opt"][f"reset@{state.global_step}"] = adam_state(trainer)
            policy, ref = gathered(trainer.model), gathered(trainer.ref_model)
            if trainer.accelerator.is_main_process:
                record["ref_vs_policy_at_reset"] = max_diff(ref, policy)
                save_file(policy, f"{out}/policy-at-reset.safetensors")

    more = {"generation_backend": "static"} if "--static-generation" in argv else {}
    if "--buffered" in argv:  # one generation for 3 steps: the reset after step 2 refreshes step 3's reference logps
        more.update(steps_per_generation=3)
    if "--restart-stage" in argv:  # 4 steps of a cosine schedule; the reset gives 8 rows and halves the base rate
        more.update(stages=[{"per_device_train_batch_size": 8, "learning_rate": 5e-4}], max_steps=4,
                    lr_scheduler_type="cosine")
    reward = half_constant_reward
    if "--empty-step-2" in argv:  # step 2 keeps no group (one round, all constant): no loss token anywhere
        calls = []

        def reward(prompts, completions, **kwargs):
            calls.append(1)
            return text_hash_reward(prompts, completions) if len(calls) == 1 else [1.0] * len(completions)

        more.update(max_steps=2, dynamic_sampling_max_rounds=1, reset_every_steps=None)
    if "--accumulate" in argv:  # 2 micro-batches per optimizer step; with --empty-step-2: 3 steps, a linear schedule
        more.update(gradient_accumulation_steps=2)
        if "--empty-step-2" in argv:
            more.update(max_steps=3, lr_scheduler_type="linear")
    deepspeed = deepspeed_config(stage)
    if "--explicit-batch" in argv:  # the base config's batch as numbers, not "auto"
        gas = more.get("gradient_accumulation_steps", 1)
        deepspeed.update(train_micro_batch_size_per_gpu=6, gradient_accumulation_steps=gas, train_batch_size=12 * gas)
    if "--accelerate-config" in argv:  # the DeepSpeed config as `accelerate launch` passes a deepspeed_config_file
        path = Path(out, f"deepspeed-rank{os.environ['RANK']}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(deepspeed))
        os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_CONFIG_FILE=str(path))
        deepspeed = None
    args = fast_config(out, **{"per_device_train_batch_size": 6, "beta": 0.1, "reset_every_steps": 2,
                               "save_strategy": "steps", "save_steps": 2, "use_cpu": False,
                               "deepspeed": deepspeed, "padding_free": "--padding-free" in argv,
                               "accelerator_config": {"use_configured_state": True}, **more})
    trainer = Recording(model, reward_funcs=reward, args=args, train_dataset=prompt_dataset(12), callbacks=[Probe()])
    trainer.train(resume_from_checkpoint=resume)
    policy = full_weights(trainer.accelerator.unwrap_model(trainer.model))  # every rank keeps it: replicas equal?
    rank = trainer.accelerator.process_index
    engine = trainer.model_wrapped
    record.update(rank=rank, zero3=is_deepspeed_zero3_enabled(), engine=type(engine).__name__,
                  zero_stage=engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
                  kl=[h["kl"] for h in trainer.state.log_history if "kl" in h], step=trainer.state.global_step,
                  logged_lr=[h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h],
                  skipped=[h.get("skipped_updates") for h in trainer.state.log_history if "loss" in h],
                  resets=trainer.resets.state.reset_count, pack_one_row=trainer._pack_one_row,
                  local_numel=sum(p.numel() for p in trainer.model.parameters()),
                  weights=sum(float(t.double().sum()) for t in policy.values()) if policy else None)
    Path(out, f"{phase}-rank{rank}.json").write_text(json.dumps(record))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


def _partial_offload_main(argv: list[str]) -> None:
    """ZeRO-3 with partial optimizer offload (`offload_optimizer.ratio` 0.5, DeepSpeedCPUAdam): DeepSpeed then keeps
    a second torch optimizer, `backup_optimizer` (AdamW), for the sub-groups left on the accelerator. On the CPU
    accelerator every sub-group is on "cpu" and only DeepSpeedCPUAdam steps, so one sub-group's fp32 partition is
    stepped by the backup optimizer here as DeepSpeed's `_optimizer_step` does on a GPU. Records both optimizers'
    state after a guarded (skipped) step and after the hard reset's `reset_optimizer_state`."""
    import deepspeed
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from prorl.trainer.callbacks import innermost_optimizers, reset_optimizer_state
    from prorl.trainer.update_guard import SkipEmptyUpdatesMixin

    out = Path(argv[0])
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32))
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "sub_group_size": 512,
                                    "offload_optimizer": {"device": "cpu", "ratio": 0.5}}}
    engine, *_ = deepspeed.initialize(model=model, optimizer=DeepSpeedCPUAdam(model.parameters(), lr=1e-3),
                                      config=config)
    for _ in range(2):
        engine.backward(engine(torch.randn(2, 32)).pow(2).mean())
        engine.step()
    zero = engine.optimizer
    optimizers, wrapped_by_deepspeed = innermost_optimizers(zero)
    backup, fp32 = zero.backup_optimizer, zero.fp32_partitioned_groups_flat[0]

    def backup_step():  # DeepSpeed's ZeRO-3 `_optimizer_step` for a sub-group kept on the accelerator
        fp32.grad = torch.ones_like(fp32)
        backup.param_groups[0]["params"] = [fp32]
        backup.step()
        backup.param_groups[0]["params"] = []

    def state(opt) -> dict:
        moments = [v for st in opt.state.values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
        return {"moments": float(sum(float(v.abs().sum()) for v in moments)), "n": len(moments),
                "steps": sorted({int(st["step"]) for st in opt.state.values() if "step" in st})}

    backup_step()
    record = {"rank": int(os.environ["RANK"]), "types": [type(o).__name__ for o in optimizers],
              "wrapped_by_deepspeed": wrapped_by_deepspeed, "is_backup": optimizers[-1] is backup,
              "trained": [state(o) for o in optimizers]}

    class Guard(SkipEmptyUpdatesMixin):  # the trainer's guard, as its compute_loss applies it under DeepSpeed
        is_deepspeed_enabled, _skip_update = True, True

    guard, weights = Guard(), fp32.detach().clone()
    for opt in optimizers:
        guard._guard_step(opt)
    backup_step()
    record["skipped_step_changed_weights"] = not torch.equal(weights, fp32.detach())
    record["after_skipped_step"] = [state(o) for o in optimizers]
    reset_optimizer_state(zero)
    record["after_reset"] = [state(o) for o in optimizers]
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    if sys.argv[1] in ("fsdp2", "fsdp2-keep", "fsdp1"):
        _fsdp_main(sys.argv[2:], mode=sys.argv[1])
    elif sys.argv[1] == "zero3-partial-offload":
        _partial_offload_main(sys.argv[2:])
    elif sys.argv[1] in ("zero2", "zero3"):
        _deepspeed_main(sys.argv[2:], stage=int(sys.argv[1][-1]))
    else:
        raise SystemExit(f"sharded_main.py: unknown mode {sys.argv[1]!r}")

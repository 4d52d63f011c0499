"""Resets and stages of `ProRLTrainer`: the reference synced to the policy (and the reference log-probs of batches
already generated recomputed), a stage's overrides applied to `args` and to the trainer attributes TRL copied them
into (sampling settings, beta, clipping, learning rate in the optimizer's groups), and the generation-batch shape of a
restart stage. The reset decisions themselves are `ResetController`'s (prorl/trainer/callbacks.py)."""

from __future__ import annotations

from typing import Any

from accelerate.utils import is_peft_model
from trl.trainer.utils import add_fused_lm_head

from prorl.trainer.callbacks import copy_weights_
from prorl.trainer.config import LIVE_STAGE_FIELDS, RESTART_STAGE_FIELDS, ProRLConfig


class StagesMixin:
    """Mixed into `ProRLTrainer` before `GRPOTrainer`; uses its attributes (args, model, ref_model, optimizer,
    lr_scheduler, generation_kwargs, _buffered_inputs, _step)."""

    def sync_reference_to_policy(self) -> None:
        """Reference model := a copy of the current policy weights (no-op when beta = 0: there is none)."""
        if self.ref_model is None:
            return
        copy_weights_(self.accelerator.unwrap_model(self.model), self.accelerator.unwrap_model(self.ref_model))
        self._refresh_buffered_reference_logps()

    def _refresh_buffered_reference_logps(self) -> None:
        """Generation batches already buffered for the next steps (steps_per_generation > gradient accumulation,
        or num_iterations > 1) carry log-probs of the old reference: recompute them with the new one."""
        if self.beta == 0 or not self._mid_generation_buffer():
            return
        # only the batches still to be trained on (TRL takes batch _step % steps_per_generation for each micro-batch
        # until the next generation), also those sampled while a stage had beta = 0 (no reference log-probs yet)
        spg, generate_every = self.args.steps_per_generation, self.args.steps_per_generation * self.num_iterations
        for index in sorted({(self._step + i) % spg for i in range(generate_every - self._step % generate_every)}):
            batch = self._buffered_inputs[index]
            batch["ref_per_token_logps"] = self._batch_logps(self.ref_model, batch)

    def apply_stage(self, overrides: dict[str, Any], live: bool) -> bool:
        """Apply a stage's overrides to `args` and the trainer. With `live=True` (at a reset, mid-run) the fields
        that reshape the generation batch are left for the restart; returns True if there are any."""
        restart = {k: v for k, v in overrides.items() if k in RESTART_STAGE_FIELDS}
        previous_lr = self.args.learning_rate
        for key, value in overrides.items():
            if key in LIVE_STAGE_FIELDS or not live:
                setattr(self.args, key, value)
        if restart and not live:
            self._apply_batch_shape()
        for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_completion_length"):
            if key not in overrides:
                continue
            if key == "temperature" and live and self._mid_generation_buffer():
                # buffered batches were sampled, and their old log-probs computed, at the current temperature:
                # the new one starts with the next generation (so does its use in the loss)
                self._pending_temperature = self.args.temperature
            else:
                if key == "temperature":  # an earlier stage's deferred temperature must not come back later
                    self._pending_temperature = None
                self._set_sampling(key, getattr(self.args, key))
        if "beta" in overrides:
            self.beta = self.args.beta
        if "epsilon" in overrides:
            self.epsilon_low = self.args.epsilon
        if "epsilon_high" in overrides or "epsilon" in overrides:
            self.epsilon_high = self.args.epsilon_high if self.args.epsilon_high is not None else self.args.epsilon
        if "mask_truncated_completions" in overrides:
            self.mask_truncated_completions = self.args.mask_truncated_completions
        if "learning_rate" in overrides and self.optimizer is not None and self.args.learning_rate != previous_lr:
            # every group's base rate scales by new / old, so groups built at other rates (LoRA+, no decay at 10x)
            # keep their ratios; the schedule's factor for the next step (already in the groups) is kept
            scale = self.args.learning_rate / previous_lr if previous_lr else None  # from 0: no ratio to keep
            bases = list(getattr(self.lr_scheduler, "base_lrs", None) or [])
            for i, group in enumerate(self.optimizer.param_groups):
                old = bases[i] if i < len(bases) else group.get("initial_lr", group["lr"])
                new = self.args.learning_rate if scale is None else old * scale
                group["lr"] = new * group["lr"] / old if old else new
                if "initial_lr" in group:
                    group["initial_lr"] = new
                if i < len(bases):
                    bases[i] = new
            if bases:
                self.lr_scheduler.base_lrs = bases
            if hasattr(self.lr_scheduler, "_last_lr"):  # what Trainer logs as this step's learning_rate
                self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return bool(restart) and live

    def _set_sampling(self, key: str, value: Any) -> None:
        setattr(self, key, value)
        gen_key = "max_new_tokens" if key == "max_completion_length" else key
        if self.use_vllm:
            setattr(self.vllm_generation, key, value)
        else:
            self.generation_kwargs[gen_key] = value
            setattr(self.generation_config, gen_key, value)
        if key == "temperature":  # the fused LM head divides the logits by the temperature
            self._patch_fused_heads()

    def _mid_generation_buffer(self) -> bool:
        """Whether the next training steps still consume batches generated before now."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self._buffered_inputs is not None and self._step % generate_every != 0

    def _apply_batch_shape(self) -> None:
        args = self.args
        self.num_generations = args.num_generations
        self._train_batch_size = args.per_device_train_batch_size
        args.generation_batch_size = args.per_device_train_batch_size * args.world_size * args.steps_per_generation
        if self.is_deepspeed_enabled:  # before training builds the engine from that config
            deepspeed_batch_(self.accelerator.state.deepspeed_plugin, args)
        if args.generation_batch_size % args.num_generations:
            raise ValueError(f"stage: generation_batch_size {args.generation_batch_size} is not divisible by "
                             f"num_generations {args.num_generations}")


    def _patch_fused_heads(self) -> None:
        policy = self.accelerator.unwrap_model(self.model)
        add_fused_lm_head(policy.get_base_model() if is_peft_model(policy) else policy, temperature=self.temperature,
                          cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32, outputs=("log_probs", "entropy"))
        if self.ref_model is not None:
            add_fused_lm_head(self.accelerator.unwrap_model(self.ref_model), temperature=self.temperature,
                              cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)


def deepspeed_batch_(deepspeed_plugin: Any, args: ProRLConfig) -> None:
    """The batch of the DeepSpeed config that the engine is built from, set to a stage's per_device_train_batch_size
    (applied at the relaunch that resumes it, before training builds the engine). transformers filled these keys
    from the base config's value when it was parsed, so the engine kept the base micro-batch and train batch size: its
    samples count (global_samples, in its checkpoints and monitors) and throughput were those of the old batch.
    Gradient accumulation, which sets the engine's optimizer steps, is no stage field."""
    batch = {"train_micro_batch_size_per_gpu": args.per_device_train_batch_size,  # transformers' own formula
             "train_batch_size": args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps}
    for config in (deepspeed_plugin.deepspeed_config, deepspeed_plugin.hf_ds_config.config):  # one dict, as built
        config.update(batch)

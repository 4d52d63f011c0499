"""Skipping an optimizer update whose batch has no loss token on any process (a dynamic-sampling step at its cap
that kept no group, or a step whose completions were all unscored): AdamW would otherwise still move the weights
by its momentum and weight decay on an all-zero gradient. `ResetController.on_pre_optimizer_step` calls
`decide_update` before each step; under DeepSpeed, whose engine steps inside the backward of the update's last
micro-batch (before that callback), the decision is made in `compute_loss` and the torch optimizer inside ZeRO's
(and ZeRO-3's `backup_optimizer` under partial offload) are the ones guarded. Mixed into `ProRLTrainer` (which sets
`_step_loss_tokens` and `_skip_update`)."""

from __future__ import annotations

import logging

import torch
from accelerate.utils import gather

from prorl.trainer.callbacks import innermost_optimizers

log = logging.getLogger("prorl.trainer.trainer")  # the trainer's warnings, under one logger


class SkipEmptyUpdatesMixin:
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
            self._step_loss_tokens += int(mask.sum())
            if self.is_deepspeed_enabled and self.accelerator.sync_gradients:
                # DeepSpeed's engine steps inside the backward of the update's last micro-batch, before
                # on_pre_optimizer_step: decide now, and guard the torch optimizer(s) its ZeRO optimizer steps
                for optimizer in innermost_optimizers(self.optimizer)[0]:
                    self._guard_step(optimizer)
                self._decide_update()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def create_optimizer(self, model=None):
        """TRL's optimizer, whose `step` does nothing when the update's batch had no loss token on any process (a
        dynamic-sampling step at its cap that kept no group): AdamW would otherwise still move the weights by its
        momentum and weight decay on an all-zero gradient."""
        optimizer = super().create_optimizer(model)
        self._guard_step(optimizer)
        return optimizer

    def _guard_step(self, optimizer) -> None:
        """`optimizer.step` does nothing while `_skip_update` is set; the step clears it, except under DeepSpeed,
        whose ZeRO optimizer steps it once per parameter (sub-)group: there `decide_update` does, after the engine."""
        if getattr(optimizer, "_prorl_guarded", False):
            return
        step = optimizer.step

        def guarded_step(*args, **kwargs):
            if self._skip_update:
                if not self.is_deepspeed_enabled:
                    self._skip_update = False
                return None
            return step(*args, **kwargs)

        optimizer.step, optimizer._prorl_guarded = guarded_step, True

    def decide_update(self) -> bool:
        """Called right before each optimizer step (ResetController.on_pre_optimizer_step): whether it updates
        (under DeepSpeed decided in `compute_loss`, before the engine stepped)."""
        if self.is_deepspeed_enabled:
            skipped, self._skip_update = self._skip_update, False
            return not skipped
        return self._decide_update()

    def _decide_update(self) -> bool:
        tokens = gather(torch.tensor([self._step_loss_tokens], device=self.accelerator.device)).sum().item()
        self._step_loss_tokens = 0
        self._skip_update = tokens == 0
        if self._skip_update:
            self._metrics["train"]["skipped_updates"].append(1.0)
            log.warning("step %d: no loss token in the batch on any process; the optimizer step is skipped",
                        self.state.global_step + 1)
        return not self._skip_update

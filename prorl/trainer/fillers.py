"""Dynamic sampling's filler rows out of the loss normalisers.

At `dynamic_sampling_max_rounds` with too few kept groups, `_dynamic_sampling` completes the batch with dropped rows
whose advantages and loss masks are zeroed (fillers: the batch keeps its shape). The losses that TRL normalises by
tokens over the generation (`dapo`, `cispo`, `vespo`: `num_items_in_batch`) do not see them, but TRL 1.16's
`_compute_loss` divides some by what fillers add to:
  - rows: `grpo` and `sapo` (mean of per-sequence token means), `luspo` (mean of per-sequence sums), `dr_grpo`
    (sum / (rows x max_completion_length)); each micro-batch's value is then divided by the accumulation steps;
  - micro-batches: `bnpo` (a token mean per micro-batch, divided by the accumulation steps) and the entropy bonus
    (the same for every loss type), to which a micro-batch holding nothing but fillers adds a 0.
So a step with fillers made a smaller update than one on the same kept rows alone (half of it with half the rows
filled, for `grpo`). Here each micro-batch's loss is multiplied, per optimizer step (all processes, all its
micro-batches), by rows / kept rows for the row-normalised losses, by micro-batches / micro-batches holding a kept
row for `bnpo` and the entropy bonus: the update of the kept rows alone (for `bnpo` and the entropy bonus, of the
micro-batches that hold them). A router load-balancing loss stays TRL's (the fillers' prompts are forwarded). An
optimizer step that spans two generations (`steps_per_generation` not a multiple of the accumulation steps) gets
its generation's factors. Mixed into `ProRLTrainer` before `GRPOTrainer`.
"""

from __future__ import annotations

import torch
from accelerate.utils import gather

FILLER_KEY = "filler"  # per row of a dynamic-sampling batch: True for a filler
SCALE_KEY = "filler_scale"  # per micro-batch: (policy loss factor, per-micro-batch-mean factor)
ROW_NORMALISED = ("grpo", "sapo", "luspo", "dr_grpo")
MICRO_BATCH_NORMALISED = ("bnpo",)


def filler_scales(loss_type: str, rows: int, kept_rows: int, micro_batches: int,
                  kept_micro_batches: int) -> tuple[float, float]:
    """(factor of the policy loss, factor of the per-micro-batch means) of an optimizer step of `rows` rows in
    `micro_batches` micro-batches (all processes), of which `kept_rows` are not fillers, in `kept_micro_batches`."""
    per_micro_batch = micro_batches / kept_micro_batches if kept_micro_batches else 1.0
    if loss_type in ROW_NORMALISED:
        return (rows / kept_rows if kept_rows else 1.0), per_micro_batch
    return (per_micro_batch if loss_type in MICRO_BATCH_NORMALISED else 1.0), per_micro_batch


class FillerScalingMixin:
    _loss_capture: dict | None = None  # during a rescaled loss: the training forward's entropies and aux loss

    def _scale_fillers(self) -> None:
        """After a generation (buffered micro-batches, regrouped if asked): each micro-batch's `SCALE_KEY`."""
        buffer = self._buffered_inputs
        if FILLER_KEY not in buffer[0]:  # not a dynamic-sampling batch
            return
        ga = self.current_gradient_accumulation_steps
        per_step = ga if len(buffer) % ga == 0 else len(buffer)
        for start in range(0, len(buffer), per_step):
            chunk = buffer[start:start + per_step]
            counts = [(b[FILLER_KEY].numel(), int((~b[FILLER_KEY]).sum())) for b in chunk]
            local = torch.tensor([[sum(n for n, _ in counts), sum(k for _, k in counts), len(chunk),
                                   sum(k > 0 for _, k in counts)]], device=self.accelerator.device)
            rows, kept, micro, kept_micro = gather(local).sum(dim=0).tolist()
            scales = filler_scales(self.loss_type, rows, kept, micro, kept_micro)
            for batch in chunk:
                batch[SCALE_KEY] = scales

    def _compute_loss(self, model, inputs):
        policy, per_micro_batch = inputs.get(SCALE_KEY, (1.0, 1.0))
        if policy == per_micro_batch == 1.0 or not self.model.training:
            return super()._compute_loss(model, inputs)
        # TRL's loss is policy / ga - coef * entropy / ga + aux_coef * aux / ga (ga: accumulation steps): the policy
        # term gets `policy`, the entropy bonus `per_micro_batch`, the aux loss stays
        bonus = self._entropy_bonus_enabled and policy != per_micro_batch
        aux = self.aux_loss_enabled and policy != 1.0
        coef = self.entropy_coef  # as TRL applies it: before this micro-batch's adaptive update
        if self.use_adaptive_entropy and self._last_world_entropy > self.args.entropy_target:
            coef = 0.0
        self._loss_capture = {} if bonus or aux else None
        try:
            loss = super()._compute_loss(model, inputs) * policy
            capture = self._loss_capture
        finally:
            self._loss_capture = None
        ga = self.current_gradient_accumulation_steps
        if bonus:
            if capture.get("entropies") is None:
                raise RuntimeError("filler scaling: TRL's loss forward returned no entropies to rescale the bonus")
            mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)
            if capture.get("entropy_mask") is not None:
                mask = mask * capture["entropy_mask"]
            entropy = (capture["entropies"] * mask).sum() / mask.sum().clamp(min=1.0)
            loss = loss + (policy - per_micro_batch) * coef * entropy / ga
        if aux:
            loss = loss - (policy - 1.0) * self.router_aux_loss_coef * capture["aux"] / ga
        return loss

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._loss_capture is not None:
            self._loss_capture["entropies"], self._loss_capture["aux"] = out[1], out[2]
        return out

    def get_high_entropy_mask(self, *args, **kwargs):
        out = super().get_high_entropy_mask(*args, **kwargs)
        if self._loss_capture is not None:
            self._loss_capture["entropy_mask"] = out
        return out

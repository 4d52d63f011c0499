"""Dynamic sampling's filler rows (a step at `dynamic_sampling_max_rounds` completed with masked rows) leave the
update of the kept rows as it is, whatever TRL's loss normalises by (prorl/trainer/fillers.py)."""

import pytest
import torch
from trainer_utils import fast_config, half_constant_reward, prompt_dataset, tiny_model  # noqa: F401
from transformers import TrainerCallback
from trl import GRPOTrainer

from prorl.trainer import ProRLTrainer
from prorl.trainer.fillers import FILLER_KEY, SCALE_KEY, filler_scales


class Recorder(ProRLTrainer):
    """Keeps the merged generation batch and every micro-batch of the loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generations, self.micro_batches = [], []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.generations.append(out)
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.micro_batches.append(dict(inputs))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class Gradients(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def _filler_step(tiny_model, tmp_path, **overrides):
    """One step at the cap: 2 prompts x 4 completions, q0's group constant (4 fillers), q1's kept; micro-batches of
    2 rows, 4 accumulation steps. Returns the trainer (weights put back to the initial ones) and its gradient."""
    kwargs = dict(max_steps=1, dynamic_sampling_max_rounds=0, per_device_train_batch_size=2,
                  gradient_accumulation_steps=4, steps_per_generation=4, max_grad_norm=0.0, beta=0.05)
    args = fast_config(tmp_path, **(kwargs | overrides))
    grads = Gradients()
    trainer = Recorder(tiny_model, reward_funcs=half_constant_reward, args=args, train_dataset=prompt_dataset(2),
                       callbacks=[grads])
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.log_history[0]["dynamic_sampling/filled_rows"] == 4.0
    with torch.no_grad():
        for n, p in trainer.model.named_parameters():
            p.copy_(initial[n])
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, grads.grads[0]


def _trl_gradient(trainer, batches, accumulation: int) -> dict[str, torch.Tensor]:
    """The gradient of TRL's own loss over `batches`, each one micro-batch of `accumulation`."""
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = accumulation
    for batch in batches:
        GRPOTrainer._compute_loss(trainer, trainer.model, batch).backward()
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}


def _kept_rows(batch: dict) -> dict:
    keep = ~batch[FILLER_KEY]
    out = {k: v[keep] for k, v in batch.items() if k not in ("num_items_in_batch", FILLER_KEY, SCALE_KEY)}
    out["num_items_in_batch"] = (out["completion_mask"] * out.get("tool_mask", 1)).sum()
    return out


def _assert_close(got, want):
    assert any(w.abs().max() > 0 for w in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-7, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("loss_type", ["grpo", "sapo", "dr_grpo", "luspo", "dapo"])
def test_a_step_with_fillers_updates_as_its_kept_rows_alone(tiny_model, tmp_path, loss_type):
    """TRL's grpo/sapo/luspo average over rows and dr_grpo divides by rows x max_completion_length: with half of
    the rows filled the update was half the kept rows' (dapo's token normaliser never saw the fillers)."""
    trainer, grads = _filler_step(tiny_model, tmp_path, loss_type=loss_type)
    kept = _kept_rows(trainer.generations[0])
    assert len(kept["advantages"]) == 4 and kept["advantages"].abs().min() > 0
    trainer.args.steps_per_generation = 1  # the kept rows as one generation of one micro-batch (dapo reads it)
    _assert_close(grads, _trl_gradient(trainer, [kept], accumulation=1))
    assert trainer.micro_batches[0][SCALE_KEY][0] == (1.0 if loss_type == "dapo" else 2.0)  # 8 rows, 4 kept


def test_bnpo_and_the_entropy_bonus_leave_out_the_micro_batches_of_fillers(tiny_model, tmp_path):
    """bnpo and the entropy bonus are token means per micro-batch, divided by the accumulation steps: a micro-batch
    of fillers only added a 0 to the step's mean. They are the mean over the micro-batches holding kept rows."""
    trainer, grads = _filler_step(tiny_model, tmp_path, loss_type="bnpo", entropy_coef=0.3)
    kept = [mb for mb in trainer.micro_batches if not mb[FILLER_KEY].all()]
    assert 0 < len(kept) < len(trainer.micro_batches)  # this seed deals the fillers into whole micro-batches
    _assert_close(grads, _trl_gradient(trainer, kept, accumulation=len(kept)))


def test_a_row_normalised_loss_with_an_entropy_bonus(tiny_model, tmp_path):
    """grpo's policy term gets rows / kept rows; its entropy bonus (a per-micro-batch token mean) micro-batches /
    micro-batches with kept rows, not the row factor."""
    trainer, grads = _filler_step(tiny_model, tmp_path, loss_type="grpo", entropy_coef=0.3)
    mbs = [mb for mb in trainer.micro_batches if not mb[FILLER_KEY].all()]
    with_bonus = _trl_gradient(trainer, mbs, accumulation=len(mbs))
    trainer.entropy_coef, trainer._entropy_bonus_enabled = 0.0, False
    policy_only = _trl_gradient(trainer, mbs, accumulation=len(mbs))
    kept_policy = _trl_gradient(trainer, [_kept_rows(trainer.generations[0])], accumulation=1)
    _assert_close(grads, {n: kept_policy[n] + with_bonus[n] - policy_only[n] for n in grads})


def test_filler_scales():
    assert filler_scales("grpo", rows=8, kept_rows=4, micro_batches=4, kept_micro_batches=3) == (2.0, 4 / 3)
    assert filler_scales("bnpo", 8, 4, 4, 3) == (4 / 3, 4 / 3)
    assert filler_scales("dapo", 8, 4, 4, 3) == (1.0, 4 / 3)
    assert filler_scales("dr_grpo", 8, 0, 4, 0) == (1.0, 1.0)  # nothing kept: the update is skipped anyway

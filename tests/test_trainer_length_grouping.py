"""group_micro_batches_by_length: each optimizer step trains the same rows with the same update, in micro-batches
dealt by completion length and cut to their own padding (fewer padded tokens forwarded)."""

from __future__ import annotations

import pytest
import torch
from trainer_utils import (fast_config, half_constant_reward, history, prompt_dataset, text_hash_reward,  # noqa: F401
                           tiny_model, tiny_moe_model, varied_length_model)

from prorl.trainer import ProRLConfig, ProRLTrainer
from prorl.trainer.sampling import group_by_length


class Recording(ProRLTrainer):
    """Per training micro-batch: its completion width and its rows (completion tokens up to the mask)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            mask = inputs["completion_mask"].bool()
            rows = sorted(tuple(ids[m].tolist()) for ids, m in zip(inputs["completion_ids"], mask))
            self.micro_batches.append({"width": inputs["completion_ids"].size(1), "rows": rows,
                                       "real": int(mask.sum()), "padded": mask.numel()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *a, **k):
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, *a, **k)
        if not torch.is_grad_enabled() and self._deferred_models is None:  # a real no-grad pass (old / reference)
            self.nograd_positions += input_ids.size(0) * logits_to_keep
        return out


def _train(model, out, grouped: bool, dynamic_sampling: bool = False, reward=text_hash_reward, **overrides):
    args = fast_config(out, **{**dict(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                      steps_per_generation=4, num_generations=4, max_completion_length=16,
                                      max_steps=2, beta=0.1, dynamic_sampling=dynamic_sampling,
                                      group_micro_batches_by_length=grouped), **overrides})
    trainer = Recording(model, reward_funcs=reward, args=args, train_dataset=prompt_dataset(8))
    trainer.micro_batches, trainer.nograd_positions = [], 0
    trainer.train()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("dynamic_sampling", [False, True])
def test_grouped_micro_batches_give_the_same_update_with_less_padding(tiny_model, tmp_path, dynamic_sampling):
    """beta > 0 and 2 optimizer steps per generation: old-policy and reference log-probs are computed too, per
    grouped micro-batch at its own width."""
    model = varied_length_model(tiny_model, tmp_path)
    plain = _train(model, tmp_path / "plain", False, dynamic_sampling)
    grouped = _train(model, tmp_path / "grouped", True, dynamic_sampling)
    a, b = plain.micro_batches, grouped.micro_batches
    assert len(a) == len(b) == 4  # one generation of 16 rows, 2 optimizer steps of 2 micro-batches
    lengths = {len(r) for mb in a for r in mb["rows"]}
    assert len(lengths) > 3, lengths  # the EOS set really varies the lengths
    for step in (0, 2):  # each optimizer step: the same rows, re-dealt
        assert sorted(a[step]["rows"] + a[step + 1]["rows"]) == sorted(b[step]["rows"] + b[step + 1]["rows"])
    assert all(mb["width"] == max(2, *(len(r) for r in mb["rows"])) for mb in b)  # cut to its own longest
    assert [mb["width"] for mb in b[:2]] == sorted((mb["width"] for mb in b[:2]), reverse=True)
    assert sum(mb["padded"] for mb in b) < sum(mb["padded"] for mb in a)
    assert sum(mb["real"] for mb in b) == sum(mb["real"] for mb in a)
    # the no-grad passes (old policy + reference: 2 x 16 rows) over the grouped widths, not the generation's
    assert grouped.nograd_positions == 2 * sum(mb["padded"] for mb in b)
    assert plain.nograd_positions == 2 * sum(mb["padded"] for mb in a)
    assert history(grouped, "loss") == pytest.approx(history(plain, "loss"), abs=1e-6)
    for (name, p), q in zip(plain.model.named_parameters(), grouped.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_grouped_micro_batches_without_loss_tokens_leave_the_step_metrics_alone(tiny_model, tmp_path):
    """Dynamic sampling at its cap fills half of each step with masked rows, which grouping deals into the same
    micro-batches: TRL's 0 for their token means halved the logged entropy (3.23 for 6.45 before the fix), and a
    1-token micro-batch's entropy was averaged over its masked rows (1.61)."""
    model = varied_length_model(tiny_model, tmp_path)
    kwargs = dict(dynamic_sampling=True, reward=half_constant_reward, dynamic_sampling_max_rounds=0, max_steps=4)
    plain = _train(model, tmp_path / "plain", False, **kwargs)
    grouped = _train(model, tmp_path / "grouped", True, **kwargs)
    assert sum(mb["real"] == 0 for mb in grouped.micro_batches) >= 2  # micro-batches with no loss token
    assert min(mb["width"] for mb in grouped.micro_batches) >= 2
    entropy = history(plain, "entropy")
    assert len(entropy) == 4 and min(entropy) > 6
    assert history(grouped, "entropy") == pytest.approx(entropy, abs=1e-2)
    assert history(grouped, "loss") == pytest.approx(history(plain, "loss"), abs=1e-6)
    assert grouped.resets.step_metrics["entropy"] == pytest.approx(entropy[-1], abs=1e-2)  # reset_on_* read it


def test_group_by_length_keeps_rows_whole_and_sizes_per_step():
    rows, width = 6, 5
    lengths = torch.tensor([1, 5, 0, 3, 2, 4])  # row 2: a masked truncated completion
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.arange(rows)[:, None] * 10 + torch.arange(width)[None]
    batch = {"prompt_ids": torch.arange(rows)[:, None].repeat(1, 3), "prompt_mask": torch.ones(rows, 3),
             "completion_ids": ids, "completion_mask": mask, "old_per_token_logps": ids.float() / 100,
             "advantages": torch.arange(rows).float()}
    slices = [{k: v[i:i + 2] for k, v in batch.items()} | {"num_items_in_batch": torch.tensor(15)}
              for i in (0, 2, 4)]
    out = group_by_length(slices, group=3)
    assert [len(s["advantages"]) for s in out] == [2, 2, 2]
    assert [s["advantages"].tolist() for s in out] == [[1, 5], [3, 4], [0, 2]]  # longest first
    assert [s["completion_ids"].size(1) for s in out] == [5, 3, 2]  # 2 at least: TRL reads (rows, 1) per sequence
    for s in out:
        r = s["advantages"].long()
        assert torch.equal(s["prompt_ids"][:, 0], r) and torch.equal(s["completion_ids"][:, 0], r * 10)
        assert torch.equal(s["old_per_token_logps"], s["completion_ids"].float() / 100)
        assert int(s["num_items_in_batch"]) == 15
    two = group_by_length(slices[:2], group=1)  # group 1: each micro-batch on its own, only cut
    assert [s["advantages"].tolist() for s in two] == [[1, 0], [3, 2]]


def test_length_grouping_refuses_losses_and_shapes_it_would_change(tmp_path):
    ok = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", group_micro_batches_by_length=True)
    with pytest.raises(ValueError, match="group_micro_batches_by_length.*loss_type"):
        ProRLConfig(**ok, loss_type="bnpo")
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        ProRLConfig(**ok, top_entropy_quantile=0.2)
    # the entropy bonus is a token mean per micro-batch: grouped, the first step's loss moved by 7e-5 (coef 0.5)
    with pytest.raises(ValueError, match="group_micro_batches_by_length.*entropy_coef"):
        ProRLConfig(**ok, entropy_coef=0.5)
    with pytest.raises(ValueError, match="group_micro_batches_by_length.*entropy_coef"):
        ProRLConfig(**ok, use_adaptive_entropy=True, entropy_coef=0.0)
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        ProRLConfig(**ok, gradient_accumulation_steps=4, steps_per_generation=6)
    with pytest.raises(ValueError, match=r"stages\[0\].*multiple of gradient_accumulation_steps"):
        ProRLConfig(**ok, gradient_accumulation_steps=2, steps_per_generation=2, per_device_train_batch_size=16,
                    stages=[{"steps_per_generation": 3}])


def test_length_grouping_refuses_a_router_load_balancing_loss(tiny_model, tmp_path):
    """A Mixture-of-Experts model's aux loss is a per-micro-batch routing statistic: refused when the trainer is
    built, before any generation."""
    path = tiny_moe_model(tiny_model, tmp_path)
    args = fast_config(tmp_path / "out", group_micro_batches_by_length=True, beta=0.0)
    with pytest.raises(ValueError, match="group_micro_batches_by_length: the model's router load-balancing loss"):
        ProRLTrainer(path, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(8))
    args = fast_config(tmp_path / "out2", group_micro_batches_by_length=True, beta=0.0, router_aux_loss_coef=0.0)
    ProRLTrainer(path, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(8))  # no aux loss

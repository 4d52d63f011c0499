"""ProRLTrainer on a tiny local Qwen2 (CPU): dynamic sampling, the generation budget, config validation and the
mixture view (resets and stages: test_trainer_resets.py)."""

import json
import logging
import re

import pytest
import torch
from trainer_utils import history as _history
from trainer_utils import (constant_reward, fast_config, half_constant_reward, prompt_dataset, text_hash_reward,
                           tiny_model)  # noqa: F401  (tiny_model is a fixture)
from transformers import TrainerCallback

from prorl.trainer import ProRLConfig, ProRLTrainer
from prorl.trainer.sampling import concat_rows, group_keep_mask


class RecordingTrainer(ProRLTrainer):
    """Keeps every generation batch the trainer trains on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained = []

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            self.trained.append(out)
        return out


class Snapshots(TrainerCallback):
    """The weights after every optimizer step."""

    def __init__(self):
        self.weights = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights.append({n: p.detach().clone() for n, p in model.named_parameters()})


# -- Dynamic sampling --------------------------------------------------------------------------------------------
def test_group_keep_mask_uses_a_tolerance_and_the_window():
    nearly_constant = torch.tensor([0.5, 0.5 + 1e-9, 0.5, 0.5])
    mixed = torch.tensor([0.0, 1.0, 1.0, 0.0])
    all_right = torch.tensor([1.0, 1.0, 1.0, 1.0])
    two_masked = torch.tensor([float("nan"), 1.0, float("nan"), 0.0])
    one_scored = torch.tensor([float("nan"), 1.0, float("nan"), float("nan")])
    rewards = torch.cat([nearly_constant, mixed, all_right, two_masked, one_scored])
    keep = group_keep_mask(rewards, 4, (0.0, 1.0), std_tol=1e-6)
    assert keep.tolist() == [False, True, False, True, False]
    # a narrower window drops a group whose mean (0.75) is above it
    keep = group_keep_mask(torch.tensor([1.0, 1.0, 1.0, 0.0]), 4, (0.0, 0.7), std_tol=1e-6)
    assert keep.tolist() == [False]


def test_dynamic_sampling_filter_is_the_std_and_the_window_reads_the_unshaped_verdicts():
    # a no-EOS penalty of -1 on truncated completions: one solved completion among truncated ones still teaches
    shaped = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0])
    verdicts = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert group_keep_mask(shaped, 4, None, 1e-6).tolist() == [True, True, False]
    assert group_keep_mask(shaped, 4, (0.0, 1.0), 1e-6, accuracy=verdicts).tolist() == [True, True, False]
    assert group_keep_mask(shaped, 4, (0.0, 0.4), 1e-6, accuracy=verdicts).tolist() == [True, False, False]
    # two reward functions: totals in [0, 2]; a group with spread is kept without a window
    assert group_keep_mask(torch.tensor([1.5, 1.5, 1.5, 0.0]), 4, None, 1e-6).tolist() == [True]


def test_concat_rows_pads_prompts_left_and_completions_right():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "prompt_mask": torch.ones(1, 2, dtype=torch.long),
         "completion_ids": torch.tensor([[7]]), "completion_mask": torch.ones(1, 1, dtype=torch.long),
         "advantages": torch.tensor([1.0]), "num_items_in_batch": torch.tensor(1)}
    b = {"prompt_ids": torch.tensor([[8]]), "prompt_mask": torch.ones(1, 1, dtype=torch.long),
         "completion_ids": torch.tensor([[9, 10, 11]]), "completion_mask": torch.ones(1, 3, dtype=torch.long),
         "advantages": torch.tensor([-1.0]), "num_items_in_batch": torch.tensor(3)}
    out = concat_rows([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[5, 6], [0, 8]]
    assert out["prompt_mask"].tolist() == [[1, 1], [0, 1]]
    assert out["completion_ids"].tolist() == [[7, 0, 0], [9, 10, 11]]
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["advantages"].tolist() == [1.0, -1.0]
    assert "num_items_in_batch" not in out


def test_dynamic_sampling_never_trains_on_a_constant_group(tiny_model, tmp_path):
    trainer = RecordingTrainer(tiny_model, reward_funcs=half_constant_reward, args=fast_config(tmp_path),
                               train_dataset=prompt_dataset())
    trainer.train()
    assert len(trainer.trained) == 3
    tok = trainer.processing_class
    for batch in trainer.trained:
        assert batch["prompt_ids"].size(0) == 8  # the batch is full
        texts = tok.batch_decode(batch["prompt_ids"], skip_special_tokens=True)
        qids = [int(re.search(r"q(\d+):", t).group(1)) for t in texts]
        assert all(q % 2 == 1 for q in qids), qids  # even prompts have a constant reward: never trained on
        for g in range(0, 8, 4):  # groups stay contiguous; each has a non-zero advantage
            assert len(set(qids[g:g + 4])) == 1
            assert batch["advantages"][g:g + 4].abs().max() > 0
        loss_tokens = batch["completion_mask"].sum()
        assert batch["num_items_in_batch"] == loss_tokens
    dropped = _history(trainer, "dynamic_sampling/dropped_groups")
    assert len(dropped) == 3 and sum(dropped) > 0
    assert all(r >= 1 for r in _history(trainer, "dynamic_sampling/rounds"))
    assert _history(trainer, "dynamic_sampling/filled_rows") == [0.0, 0.0, 0.0]


def test_dynamic_sampling_cap_finishes_the_step_with_a_warning(tiny_model, tmp_path, caplog):
    args = fast_config(tmp_path, max_steps=1, dynamic_sampling_max_rounds=2)
    trainer = RecordingTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset())
    with caplog.at_level(logging.WARNING, logger="prorl.trainer.dynamic_sampling"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert any("hit the cap of 2 extra rounds" in r.getMessage() for r in caplog.records)
    assert _history(trainer, "dynamic_sampling/rounds") == [3.0]
    assert _history(trainer, "dynamic_sampling/filled_rows") == [8.0]
    assert _history(trainer, "dynamic_sampling/dropped_groups") == [6.0]
    batch = trainer.trained[0]
    assert batch["prompt_ids"].size(0) == 8 and torch.all(batch["advantages"] == 0)
    assert batch["completion_mask"].sum() == 0 and batch["num_items_in_batch"] == 0  # nothing is trained on
    assert _history(trainer, "loss") == [0.0]


def test_dynamic_sampling_computes_log_probs_for_the_kept_rows_only(tiny_model, tmp_path):
    """Old-policy and reference log-probs are computed once per generation, for the merged batch, and equal the
    ones TRL computes round by round (dropped groups included)."""

    class CountingTrainer(RecordingTrainer):
        def __init__(self, *args, defer=True, **kwargs):
            super().__init__(*args, **kwargs)
            self._defer_logps = defer
            self.logp_rows = 0  # rows through a no-grad log-prob forward pass

        def _get_per_token_logps_and_entropies(self, model, input_ids, *args, **kwargs):
            if self._deferred_models is None and not torch.is_grad_enabled():
                self.logp_rows += input_ids.size(0)
            return super()._get_per_token_logps_and_entropies(model, input_ids, *args, **kwargs)

    runs = {}
    for defer in (True, False):
        # 2 updates per generation (so TRL needs old log-probs), beta > 0 (reference log-probs), half the groups
        # constant: every generation takes refill rounds
        args = fast_config(tmp_path / str(defer), max_steps=4, steps_per_generation=2, beta=0.1)
        trainer = CountingTrainer(tiny_model, reward_funcs=half_constant_reward, args=args,
                                  train_dataset=prompt_dataset(), defer=defer)
        trainer.train()
        runs[defer] = trainer
    deferred, eager = runs[True], runs[False]
    rounds = sum(_history(eager, "dynamic_sampling/rounds"))
    assert _history(deferred, "dynamic_sampling/rounds") == _history(eager, "dynamic_sampling/rounds")
    assert rounds > len(eager.trained) == len(deferred.trained) == 2  # refills happened
    assert deferred.logp_rows == 2 * 16 * 2  # 2 generations x 16 rows x (old, reference)
    assert eager.logp_rows == rounds * 16 * 2
    for a, b in zip(deferred.trained, eager.trained):
        assert torch.equal(a["completion_ids"], b["completion_ids"])  # same samples, same order
        mask = a["completion_mask"].bool()
        assert mask.any()
        for key in ("old_per_token_logps", "ref_per_token_logps"):
            assert torch.allclose(a[key][mask], b[key][mask], atol=1e-5), key
    for key in ("loss", "kl"):
        assert _history(deferred, key) == pytest.approx(_history(eager, key), abs=1e-5)


def test_adaptive_refill_samples_only_what_the_missing_groups_need(tiny_model, tmp_path):
    def quarter_constant_reward(prompts, completions, qid, **kwargs):  # prompts 0 and 4 teach nothing
        varying = text_hash_reward(prompts, completions)
        return [0.5 if q % 4 == 0 else r for q, r in zip(qid, varying)]

    class RoundSizes(RecordingTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.rounds = []  # completions sampled by each generation round

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            if self.model.training:
                self.rounds.append(len(completion_ids_list))
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    args = fast_config(tmp_path, per_device_train_batch_size=16, max_steps=4, dynamic_sampling_max_rounds=3,
                       dynamic_sampling_refill="adaptive")
    trainer = RoundSizes(tiny_model, reward_funcs=quarter_constant_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert len(trainer.trained) == 4
    for batch in trainer.trained:
        assert batch["prompt_ids"].size(0) == 16 and batch["completion_mask"].sum() > 0
        qids = [int(re.search(r"q(\d+):", t).group(1))
                for t in trainer.processing_class.batch_decode(batch["prompt_ids"], skip_special_tokens=True)]
        assert all(q % 4 for q in qids), qids  # constant groups never trained on
    sizes = trainer.rounds
    assert all(n % 4 == 0 and n <= 16 for n in sizes)
    assert sizes[0] == 16 and any(n < 16 for n in sizes), sizes  # a refill smaller than a full batch
    assert _history(trainer, "dynamic_sampling/filled_rows") == [0.0] * 4
    assert sum(_history(trainer, "dynamic_sampling/rounds")) == len(sizes)


def test_generated_tokens_count_every_sampled_completion(tiny_model, tmp_path):
    args = fast_config(tmp_path, dynamic_sampling=False)
    trainer = RecordingTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    trained = [int(b["completion_mask"].sum()) for b in trainer.trained]  # without DS: all that was sampled
    expected = [sum(trained[:i + 1]) for i in range(len(trained))]
    assert _history(trainer, "tokens/generated") == [float(x) for x in expected]
    assert trainer.resets.state.generated_tokens == expected[-1] > 0


def test_generation_budget_counts_dropped_groups_and_stops_the_run(tiny_model, tmp_path):
    args = fast_config(tmp_path, max_steps=1, dynamic_sampling_max_rounds=1)
    trainer = RecordingTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()  # constant reward: each step samples 2 rounds and trains on nothing
    assert _history(trainer, "dynamic_sampling/rounds") == [2.0]
    generated = _history(trainer, "tokens/generated")
    assert len(generated) == 1 and generated[0] > 0
    args = fast_config(tmp_path / "budget", max_steps=10, dynamic_sampling_max_rounds=1,
                       max_generated_tokens=int(generated[0]) + 1)
    trainer = RecordingTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert trainer.state.global_step == 2  # the step that crossed the budget is the last
    assert trainer.resets.state.generated_tokens >= args.max_generated_tokens
    # with a save strategy, the run ends with a checkpoint there, as at max_steps
    args = fast_config(tmp_path / "saved", max_steps=10, dynamic_sampling_max_rounds=1, save_strategy="steps",
                       save_steps=100, max_generated_tokens=int(generated[0]) + 1)
    RecordingTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset()).train()
    assert sorted(p.name for p in (tmp_path / "saved").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_step_that_kept_no_group_leaves_the_weights_alone(tiny_model, tmp_path, caplog):
    calls = []

    def varying_then_constant(prompts, completions, **kwargs):
        calls.append(1)  # the first generation round varies; every later one is constant
        return text_hash_reward(prompts, completions) if len(calls) == 1 else [1.0] * len(completions)

    snaps = Snapshots()
    args = fast_config(tmp_path, max_steps=2, dynamic_sampling_max_rounds=1)
    trainer = RecordingTrainer(tiny_model, reward_funcs=varying_then_constant, args=args,
                               train_dataset=prompt_dataset(), callbacks=[snaps])
    with caplog.at_level(logging.WARNING, logger="prorl.trainer.trainer"):
        trainer.train()
    assert trainer.trained[0]["completion_mask"].sum() > 0  # step 1 trained: AdamW has momentum
    assert trainer.trained[1]["completion_mask"].sum() == 0  # step 2 kept nothing
    first, second = snaps.weights
    assert all(torch.equal(first[n], second[n]) for n in first)  # momentum did not move the weights
    assert any("the optimizer step is skipped" in r.getMessage() for r in caplog.records)
    assert _history(trainer, "skipped_updates") == [1.0]



def test_an_empty_update_of_several_micro_batches_is_skipped_and_the_schedule_goes_on(tiny_model, tmp_path):
    """Gradient accumulation 2, a generation for 2 updates (steps_per_generation 4): steps 1-2 train, step 3 (a
    generation that kept no group) is skipped, its loss tokens counted over both micro-batches; the learning rate
    schedule advances on a skipped update, as DeepSpeed's engine does (tests/test_trainer_deepspeed.py)."""
    calls = []

    def varying_then_constant(prompts, completions, **kwargs):
        calls.append(1)
        return text_hash_reward(prompts, completions) if len(calls) == 1 else [1.0] * len(completions)

    snaps = Snapshots()
    args = fast_config(tmp_path, max_steps=3, dynamic_sampling_max_rounds=1, per_device_train_batch_size=4,
                       gradient_accumulation_steps=2, steps_per_generation=4, lr_scheduler_type="linear")
    trainer = RecordingTrainer(tiny_model, reward_funcs=varying_then_constant, args=args,
                               train_dataset=prompt_dataset(), callbacks=[snaps])
    trainer.train()
    first, second, third = snaps.weights
    assert not all(torch.equal(first[n], second[n]) for n in first)  # step 2 trained
    assert all(torch.equal(second[n], third[n]) for n in second)  # step 3 skipped
    assert [h.get("skipped_updates") for h in trainer.state.log_history if "loss" in h] == [None, None, 1.0]
    assert _history(trainer, "learning_rate") == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])

def test_unscored_completions_are_out_of_the_loss(tiny_model, tmp_path, caplog):
    """Rewards of None (a timeout, an infra_error): TRL zeroes the advantage only. Here those rows have no loss
    tokens either (no KL gradient, not in the normaliser), and a step of nothing but unscored samples (a sandbox
    outage) is skipped, the weights left alone."""
    def first_group_unscored_then_outage(prompts, completions, trainer_state, **kwargs):
        if trainer_state.global_step == 1:
            return [None] * len(completions)
        return [None] * 4 + text_hash_reward(prompts, completions)[4:]  # 4 = num_generations: the first group

    snaps = Snapshots()
    args = fast_config(tmp_path, max_steps=2, beta=0.1, dynamic_sampling=False, no_eos_penalty=None,
                       per_device_train_batch_size=8, num_generations=4)
    trainer = RecordingTrainer(tiny_model, reward_funcs=first_group_unscored_then_outage, args=args,
                               train_dataset=prompt_dataset(), callbacks=[snaps])
    with caplog.at_level(logging.WARNING, logger="prorl.trainer.trainer"):
        trainer.train()
    first, outage = trainer.trained
    tokens = first["completion_mask"].sum(dim=1)
    assert (tokens[:4] == 0).all() and (tokens[4:] > 0).all()  # the unscored group of step 1, the scored one
    assert first["num_items_in_batch"] == tokens.sum()
    assert outage["completion_mask"].sum() == 0 and outage["num_items_in_batch"] == 0
    assert _history(trainer, "skipped_updates") == [1.0]
    before, after = snaps.weights
    assert all(torch.equal(before[n], after[n]) for n in before)  # AdamW's momentum did not move them


def test_dynamic_sampling_drops_groups_with_nothing_to_train_on(tiny_model, tmp_path):
    """With mask_truncated_completions every truncated completion is out of the loss: a group of varied rewards
    whose completions are all truncated is dropped (and refilled), not kept as rows that train nothing."""
    args = fast_config(tmp_path, max_steps=1, mask_truncated_completions=True, max_completion_length=4,
                       no_eos_penalty=None, dynamic_sampling_max_rounds=2)
    trainer = RecordingTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    kept = _history(trainer, "dynamic_sampling/kept_groups")[0]
    mask = trainer.trained[0]["completion_mask"]
    trained_groups = int((mask.view(-1, args.num_generations).sum(dim=1) > 0).sum())
    assert kept == trained_groups  # every kept group has a completion that trains
    assert _history(trainer, "dynamic_sampling/dropped_groups")[0] > 0


def test_dynamic_sampling_filters_on_what_normalize_then_sum_advantages_see(tiny_model, tmp_path):
    """Two reward functions that trade off (weights 2 and 1, 0/1 and 2/0 by turn) have a constant weighted total,
    but under multi_objective_aggregation='normalize_then_sum' TRL normalises each within the group first, and the
    group has advantages of +-0.94: it is kept. A group where each function is constant is still dropped."""
    def correct(prompts, completions, qid, **kwargs):
        return [0.0 if q % 2 == 0 else float(i % 2) for i, q in enumerate(qid)]

    def concise(prompts, completions, qid, **kwargs):
        return [1.0 if q % 2 == 0 else 2.0 * (1 - i % 2) for i, q in enumerate(qid)]

    args = fast_config(tmp_path, max_steps=1, reward_weights=[2.0, 1.0], dynamic_sampling_max_rounds=0,
                       multi_objective_aggregation="normalize_then_sum")
    trainer = RecordingTrainer(tiny_model, reward_funcs=[correct, concise], args=args,
                               train_dataset=prompt_dataset(2))  # q0 (constant), q1 (trade-off)
    trainer.train()
    assert _history(trainer, "dynamic_sampling/kept_groups") == [1.0]
    assert _history(trainer, "dynamic_sampling/dropped_groups") == [1.0]
    batch = trainer.trained[0]
    trained = (batch["completion_mask"].sum(dim=1) > 0).view(-1, 4).any(dim=1)
    assert trained.sum() == 1  # the trade-off group trains, the filler rows of q0 do not
    assert batch["advantages"].view(-1, 4)[trained].abs().min() > 0.9


# -- Configuration and the mixture ------------------------------------------------------------------------------
def test_config_rejects_bad_fields(tmp_path):
    with pytest.raises(ValueError, match="accuracy_window"):
        fast_config(tmp_path, dynamic_sampling_accuracy_window=[0.8, 0.2])
    with pytest.raises(ValueError, match=r"stages\[0\]: 'seed' cannot change"):
        fast_config(tmp_path, stages=[{"seed": 3}])
    with pytest.raises(ValueError, match=r"stages\[1\]: 'tempreature' is not a ProRLConfig field"):
        fast_config(tmp_path, stages=[{}, {"tempreature": 1.0}])
    with pytest.raises(ValueError, match="reset_on_kl needs beta > 0"):
        fast_config(tmp_path, beta=0.0, reset_on_kl=0.1)
    # each reward function gets penalty / sum of weights: with weights summing to 0 the penalty would vanish
    with pytest.raises(ValueError, match=r"no_eos_penalty: reward_weights \[1.0, -1.0\] sum to 0"):
        fast_config(tmp_path, reward_weights=[1.0, -1.0], no_eos_penalty=-1.0)
    with pytest.raises(ValueError, match="no_eos_penalty: reward_weights"):
        fast_config(tmp_path, reward_weights=[1.0, -1.0], stages=[{"no_eos_penalty": 0.0}])
    assert fast_config(tmp_path, reward_weights=[1.0, -0.5], no_eos_penalty=-1.0).no_eos_penalty == -1.0
    args = fast_config(tmp_path, stages='[{"temperature": 1.0}]')
    assert args.stages == [{"temperature": 1.0}]
    # stage values get their field's type now, as argparse gives top-level ones (YAML reads 5e-6 as a string)
    args = fast_config(tmp_path, stages=[{"learning_rate": "5e-6", "max_completion_length": 64.0, "top_k": "8"}])
    assert args.stages == [{"learning_rate": 5e-6, "max_completion_length": 64, "top_k": 8}]
    for stage, message in (({"learning_rate": "abc"}, r"stages\[0\]\.learning_rate must be a number, got 'abc'"),
                           ({"dynamic_sampling": "yes"}, r"stages\[0\]\.dynamic_sampling must be true or false"),
                           ({"top_k": "x2"}, r"stages\[0\]\.top_k must be an integer"),
                           ({"temperature": None}, r"stages\[0\]\.temperature cannot be null")):
        with pytest.raises(ValueError, match=message):
            fast_config(tmp_path, stages=[stage])
    defaults = ProRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, per_device_train_batch_size=16)
    assert (defaults.loss_type, defaults.epsilon, defaults.epsilon_high, defaults.beta, defaults.temperature,
            defaults.num_generations, defaults.learning_rate) == ("dapo", 0.2, 0.4, 1e-4, 1.2, 16, 2e-6)
    assert defaults.lr_scheduler_type == "constant"


def test_stage_values_get_the_configs_range_checks(tmp_path):
    """A stage value the config itself would refuse is refused when the config is parsed, naming the stage (before:
    accepted; at the reset, hours in, 'adaptiv' silently refilled in full, reset_every_steps 0 or reset_on_kl -1
    reset every step, an inverted accuracy window dropped every group)."""
    for stage, message in (({"dynamic_sampling_refill": "adaptiv"}, ": dynamic_sampling_refill must be 'full' or"),
                           ({"reset_every_steps": 0}, ": reset_every_steps must be > 0"),
                           ({"reset_on_kl": -1.0}, ": reset_on_kl must be > 0"),
                           ({"reset_plateau_patience": 0}, ": reset_plateau_patience must be >= 1"),
                           ({"dynamic_sampling_max_rounds": -1}, ": dynamic_sampling_max_rounds must be >= 0"),
                           ({"dynamic_sampling_std_tol": "-1e-3"}, ": dynamic_sampling_std_tol must be >= 0"),
                           ({"reset_min_interval": -5}, ": reset_min_interval must be >= 0"),
                           ({"dynamic_sampling_accuracy_window": [0.9, 0.1]},
                            r"\.dynamic_sampling_accuracy_window must be \[low, high\] with low < high")):
        with pytest.raises(ValueError, match=r"stages\[1\]" + message):
            fast_config(tmp_path, stages=[{}, stage])
    with pytest.raises(ValueError, match=r"stages\[0\]: reset_on_kl needs beta > 0"):  # no KL once beta is 0
        fast_config(tmp_path, reset_on_kl=0.1, stages=[{"beta": 0.0}])
    args = fast_config(tmp_path, reset_on_kl=0.1, stages=[{"beta": 0.0, "reset_on_kl": None},
                                                          {"dynamic_sampling_accuracy_window": [0, 1]}])
    assert args.stages[1] == {"dynamic_sampling_accuracy_window": [0.0, 1.0]}


@pytest.mark.parametrize("field,value,message", [
    ("temperature", 0, "must be > 0 (completions are sampled at it, their log-probs divided by it), got 0.0"),
    ("learning_rate", -1e-6, "must be >= 0, got -1e-06"),
    ("beta", -0.1, "must be >= 0 (0: no KL penalty), got -0.1"),
    ("max_completion_length", 0, "must be >= 1, got 0"),
    ("top_p", 1.5, "must be in (0, 1], got 1.5"),
    ("top_k", -1, "must be >= 0 (0: no top-k filtering), got -1"),
    ("repetition_penalty", 0.0, "must be > 0, got 0.0"),
    ("no_eos_penalty", float("nan"), "must be a finite number, got nan"),
])
def test_sampling_and_loss_values_are_refused_in_the_config_and_in_a_stage_alike(tmp_path, field, value, message):
    """A value the config refuses is refused in a stage too, naming the stage, when the config is parsed. Before:
    both accepted (neither TRL nor prorl checked these); a temperature of 0 or a top_p of 1.5 raised in
    transformers' generation, for a stage after the reset applying it, hours into the run; a stage's negative
    learning rate (set on the optimizer's groups, past AdamW's own check) or negative beta trained the wrong way
    without an error."""
    with pytest.raises(ValueError) as info:
        fast_config(tmp_path, **{field: value})
    assert str(info.value) == f"{field} {message}"
    with pytest.raises(ValueError) as info:
        fast_config(tmp_path, stages=[{"temperature": 1.0}, {field: value}])
    assert str(info.value) == f"stages[1]: {field} {message}"


def test_gradient_accumulation_is_no_stage_field(tmp_path):
    """gradient_accumulation_steps decides when the optimizer steps (the Trainer's loop; under DeepSpeed also the
    engine's and accelerate's accumulation, set up once per launch) and how TRL scales each micro-batch's loss. A
    stage may not change it: refused when the config is parsed, naming the stage. Pinned, as of the three DeepSpeed
    batch keys only the micro-batch and train batch size follow a stage (per_device_train_batch_size; see
    tests/test_trainer_deepspeed.py)."""
    with pytest.raises(ValueError, match=r"^stages\[1\]: 'gradient_accumulation_steps' cannot change during a run; "
                                         r"stage keys are \["):
        fast_config(tmp_path, stages=[{}, {"gradient_accumulation_steps": 2}])


def test_a_stage_of_fewer_than_two_generations_is_refused_as_the_config_is(tmp_path):
    """num_generations 1 (TRL refuses it in the config: GRPO's advantages compare a prompt's completions) in a
    stage, where 1 divides every batch. Before: accepted; the run restarted at that stage with groups of one."""
    with pytest.raises(ValueError, match="GRPO requires at least 2 generations per prompt"):
        fast_config(tmp_path, num_generations=1)
    with pytest.raises(ValueError, match=r"^stages\[0\]: num_generations must be >= 2 .*got 1$"):
        fast_config(tmp_path, stages=[{"num_generations": 1}])


def test_a_plateau_of_an_eval_metric_needs_evaluation(tmp_path):
    """reset_on_plateau on an eval_ metric with eval_strategy 'no' (TrainingArguments' default) is refused, in the
    config or a stage. Before: accepted; the metric was never logged, so the plateau reset silently never came."""
    for kwargs in ({"reset_on_plateau": "eval_reward"}, {"stages": [{}, {"reset_on_plateau": "eval_reward"}]}):
        with pytest.raises(ValueError, match=r"reset_on_plateau 'eval_reward' is an evaluation metric: it needs "
                                             r"eval_strategy 'steps' or 'epoch'"):
            fast_config(tmp_path, **kwargs)
    assert fast_config(tmp_path, reset_on_plateau="reward").reset_on_plateau == "reward"
    args = fast_config(tmp_path, reset_on_plateau="eval_reward", eval_strategy="steps", eval_steps=1,
                       per_device_eval_batch_size=8)
    assert args.reset_on_plateau == "eval_reward"


def test_reward_workers_and_timeout_are_checked(tmp_path):
    """reward_timeout_s <= 0 and reward_workers < 0 are refused when the config is parsed. Before: accepted; with a
    negative timeout every completion was scored `timeout` and masked (the run trained on nothing), with -1 workers
    the first reward call raised, after the model was loaded and the first batch generated."""
    for kwargs, message in (({"reward_timeout_s": -1.0}, "reward_timeout_s must be > 0"),
                            ({"reward_timeout_s": 0.0}, "reward_timeout_s must be > 0"),
                            ({"reward_workers": -1}, "reward_workers must be >= 0"),
                            ({"reward_workers": 1.5}, "reward_workers must be an integer, got 1.5")):
        with pytest.raises(ValueError, match=message):
            fast_config(tmp_path, **kwargs)
    args = fast_config(tmp_path, reward_workers=2.0, reward_timeout_s=0.5)
    assert (args.reward_workers, args.reward_timeout_s) == (2, 0.5) and isinstance(args.reward_workers, int)


def test_mixture_view_follows_env_weights():
    from collections import Counter

    from datasets import Dataset

    from prorl.trainer.sampling import mixture_view

    ds = Dataset.from_dict({"env": ["a"] * 6 + ["b"] * 2 + ["c"] * 4, "i": list(range(12))})
    view = mixture_view(ds, {"a": 1.0, "b": 2.0}, seed=0)
    counts = Counter(view["env"])
    assert len(view) == 12 and counts == {"a": 4, "b": 8}  # c is left out; b's 2 rows repeat 4 times each
    assert Counter(i for i, e in zip(view["i"], view["env"]) if e == "b") == {6: 4, 7: 4}
    assert len(set(i for i, e in zip(view["i"], view["env"]) if e == "a")) == 4  # no repeats when not needed
    with pytest.raises(ValueError, match=r"env_weights: no rows for \['z'\]"):
        mixture_view(ds, {"z": 1.0})
    with pytest.raises(ValueError, match=r"stages\[0\].env_weights\['a'\] must be a number >= 0"):
        fast_config("/tmp/unused", stages=[{"env_weights": {"a": -1}}])


def test_env_weights_of_a_stage_naming_no_rows_fail_when_the_trainer_is_built(tiny_model, tmp_path):
    """A stage's env_weights naming an environment the dataset has no rows of (a typo) is an error when the trainer
    is built. Before: the trainer was built and trained; the error came at the reset that applies the stage (its
    in-process restart, hours in)."""
    from datasets import Dataset

    ds = Dataset.from_dict({"prompt": prompt_dataset()["prompt"], "env": ["a"] * 4 + ["b"] * 4})
    args = fast_config(tmp_path, stages=[{"env_weights": {"a": 1.0, "bb": 1.0}}])
    with pytest.raises(ValueError, match=r"stages\[0\]\.env_weights: no rows for \['bb'\] in the train dataset \(it "
                                         r"has \['a', 'b'\]\)"):
        ProRLTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=ds)
    args = fast_config(tmp_path, stages=[{"env_weights": {"a": 1.0, "b": 1.0}}])
    assert ProRLTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=ds).source_dataset is ds


def test_env_weights_must_be_finite_numbers(tmp_path):
    """NaN (JSON on the command line reads it), infinity and a YAML `yes` are refused when the config is parsed.
    Before: accepted; NaN and infinity failed when the trainer was built, with 'cannot convert float NaN to integer'
    (naming no field), and `yes` weighed as 1."""
    for weights, shown in (('{"a": NaN, "b": 1}', "nan"), ('{"a": Infinity}', "inf"), ({"a": True, "b": 1}, "True")):
        with pytest.raises(ValueError, match=rf"env_weights\['a'\] must be a number >= 0, got {shown}"):
            fast_config(tmp_path, env_weights=weights)
        stage = {"env_weights": json.loads(weights) if isinstance(weights, str) else weights}
        with pytest.raises(ValueError, match=r"stages\[0\]\.env_weights\['a'\] must be a number >= 0"):
            fast_config(tmp_path, stages=[stage])
    assert fast_config(tmp_path, env_weights='{"a": 0.4, "b": 0}').env_weights == {"a": 0.4, "b": 0}


def test_env_reward_is_attached_to_the_tokenizer_and_the_dataset(tiny_model, tmp_path):
    """The default EnvReward reads an R1-style chat template that opens <think> for the completion (so a completion
    cut off mid-thought answers nothing), and a row naming an unknown env fails when the trainer is built."""
    import json

    from datasets import Dataset
    from transformers import AutoTokenizer

    from prorl.trainer import EnvReward

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"id": f"r{i}", "prompt": [{"role": "user", "content": "1 + 2?"}], "env": "math",
             "reference": json.dumps({"answer": "3"})} for i in range(4)]
    plain = ProRLTrainer(tiny_model, args=fast_config(tmp_path / "a"), train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    assert isinstance(plain.reward_funcs[0], EnvReward) and not plain.reward_funcs[0].template_opens_think
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}")
    r1 = ProRLTrainer(tiny_model, args=fast_config(tmp_path / "b"), train_dataset=Dataset.from_list(rows),
                      processing_class=tok)
    reward = r1.reward_funcs[0]
    assert reward.template_opens_think
    cut, done = "so maybe \\boxed{3}. Wait, let me", "1 + 2 = 3.\n</think>\n\\boxed{3}"
    assert reward([rows[0]["prompt"]] * 2, [[{"role": "assistant", "content": c}] for c in (cut, done)],
                  env=["math"] * 2, reference=[rows[0]["reference"]] * 2) == [0.0, 1.0]
    # an EnvReward built by the caller (mixed with a function of theirs) takes the config's scoring settings
    # unless it set its own
    mine, set_own = EnvReward(), EnvReward(workers=2, timeout_s=3.0)
    mixed = ProRLTrainer(tiny_model, [mine, text_hash_reward, set_own], train_dataset=Dataset.from_list(rows),
                         args=fast_config(tmp_path / "d", reward_workers=0, reward_timeout_s=7.0))
    assert mixed.reward_funcs[0] is mine and (mine.workers, mine.timeout_s) == (0, 7.0)
    assert (set_own.workers, set_own.timeout_s) == (2, 3.0)
    rows[3]["env"] = "mathh"
    with pytest.raises(KeyError, match=r"row 3 \(0-based\) \(id 'r3'\): unknown environment 'mathh'"):
        ProRLTrainer(tiny_model, args=fast_config(tmp_path / "c"), train_dataset=Dataset.from_list(rows),
                     processing_class=tok)


def test_fsdp_that_accelerate_does_not_enable_is_said(tiny_model, tmp_path, caplog):
    """accelerate 1.16 turns FSDP on only on accelerators: a CPU run asking for it trains whole replicas."""
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=fast_config(tmp_path),
                           train_dataset=prompt_dataset())
    # transformers refuses fsdp in a single process ("only works in distributed training"); on two CPU processes
    # accelerate 1.16 prepares DDP (tests/test_trainer_fsdp.py): the check, on the flag as such a run has it
    trainer.args.fsdp = True
    with caplog.at_level(logging.WARNING, logger="prorl.trainer.trainer"):
        trainer._check_fsdp()
    assert not trainer.is_fsdp_enabled
    assert any("fsdp is set but accelerate did not enable FSDP" in r.getMessage() for r in caplog.records)


def test_positional_arguments_are_grpo_trainers():
    """A GRPOTrainer call switched to ProRLTrainer passes each positional argument to the same parameter: before,
    reward_processing_classes (7th) landed in callbacks, and failed only when training called the first hook."""
    import inspect

    from trl import GRPOTrainer

    ours = list(inspect.signature(ProRLTrainer.__init__).parameters)
    theirs = list(inspect.signature(GRPOTrainer.__init__).parameters)
    positional = ours[:ours.index("callbacks") + 1]
    assert positional == theirs[:len(positional)]

"""ProRLTrainer on a tiny local Qwen2 (CPU): hard resets (reference, optimizer, KL), triggers, and stages applied at
resets, also inside a buffered generation."""

import json
import math

import pytest
import torch
from trainer_utils import fast_config, half_constant_reward, prompt_dataset, text_hash_reward, tiny_model  # noqa: F401
from trainer_utils import history as _history
from transformers import TrainerCallback

from prorl.trainer import ProRLTrainer, ResetCallback


# -- Hard resets -------------------------------------------------------------------------------------------------
class ResetProbe(ResetCallback):
    """Checks the state right after each reset and on the step after it."""

    def __init__(self):
        self.events, self.ref_equal, self.opt_state_sizes, self.after = [], [], [], {}

    def on_reset(self, args, state, control, event, trainer, **kwargs):
        self.events.append(event)
        policy = dict(trainer.model.named_parameters())
        self.ref_equal.append(all(torch.equal(p, policy[n]) for n, p in trainer.ref_model.named_parameters()))
        self.opt_state_sizes.append(len(trainer.optimizer.state))
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.events and state.global_step == self.events[-1].step + 1:
            opt = self.trainer.optimizer
            self.after = {"size": len(opt.state), "steps": {float(s["step"]) for s in opt.state.values()}}


def test_hard_reset_copies_policy_clears_optimizer_and_zeroes_kl(tiny_model, tmp_path):
    probe = ResetProbe()
    args = fast_config(tmp_path, beta=0.1, reset_every_steps=2, dynamic_sampling=False)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                           callbacks=[probe])
    trainer.train()
    assert [e.step for e in probe.events] == [2] and probe.events[0].trigger == "every_steps"
    assert probe.ref_equal == [True]
    assert probe.opt_state_sizes == [0]  # empty right after the reset...
    n_params = sum(1 for p in trainer.model.parameters() if p.requires_grad)
    assert probe.after == {"size": n_params, "steps": {1.0}}  # ...and rebuilt by the next step, from step 1
    kl = _history(trainer, "kl")
    assert kl[1] > 1e-4  # step 2: the policy had moved away from the initial reference
    assert kl[2] < 1e-6  # step 3: the first step against the new reference
    assert _history(trainer, "resets") == [0.0, 1.0, 1.0]
    assert _history(trainer, "learning_rate") == [1e-3, 1e-3, 1e-3]  # the schedule continues
    lines = (tmp_path / "resets.jsonl").read_text().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["step"] == 2 and event["reset"] == 1 and event["trigger"] == "every_steps" and event["stage"] == 0
    assert event["metrics"]["kl"] == pytest.approx(kl[1]) and set(event["metrics"]) == {"reward", "kl", "entropy"}


@pytest.mark.parametrize("trigger,extra", [
    ("kl", {"reset_on_kl": 1e-5}),
    ("plateau", {"reset_on_plateau": "reward", "reset_plateau_patience": 1, "reset_plateau_min_delta": 10.0}),
])
def test_triggered_resets(tiny_model, tmp_path, trigger, extra):
    args = fast_config(tmp_path, beta=0.1, dynamic_sampling=False, reset_min_interval=2, **extra)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    events = [json.loads(line) for line in (tmp_path / "resets.jsonl").read_text().splitlines()]
    # step 1 never triggers (KL is 0 before any update; the first plateau value is the best so far); step 2 does,
    # and the minimum interval of 2 steps keeps step 3 from resetting again.
    assert [(e["step"], e["trigger"]) for e in events] == [(2, trigger)]
    assert math.isfinite(next(iter(events[0]["metrics"].values())))


def test_stage_overrides_apply_at_the_reset(tiny_model, tmp_path):
    args = fast_config(tmp_path, beta=0.1, reset_every_steps=2, dynamic_sampling=False, no_eos_penalty=None,
                       stages=[{"temperature": 0.7, "max_completion_length": 5, "no_eos_penalty": 0.0}])
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert trainer.temperature == 0.7 and trainer.generation_config.temperature == 0.7
    assert trainer.generation_config.max_new_tokens == 5 and trainer.args.no_eos_penalty == 0.0
    assert _history(trainer, "completion_length/max")[2] <= 5
    assert _history(trainer, "stage") == [0.0, 1.0, 1.0]
    # every step-3 completion ran out of tokens and got the no-EOS penalty of 0 (text_hash_reward is never 0 there)
    assert _history(trainer, "no_eos_fraction")[2] == 1.0 and _history(trainer, "reward")[2] == 0.0
    assert _history(trainer, "kl")[2] < 1e-6  # the temperature change is applied to the fused heads of both models


def test_stages_at_a_reset_in_the_middle_of_a_generation_buffer(tiny_model, tmp_path):
    """2 updates per generation and a reset after every step: resets at odd steps fall inside a buffered
    generation. A temperature stage waits for the next generation (the buffered batches, their old and reference
    log-probs are at the old one), and a stage that turns beta back on fills in the buffered reference log-probs."""
    common = dict(max_steps=4, reset_every_steps=1, per_device_train_batch_size=4, steps_per_generation=2,
                  dynamic_sampling=False, beta=0.1)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, train_dataset=prompt_dataset(),
                           args=fast_config(tmp_path / "t", stages=[{"temperature": 0.6}], **common))
    trainer.train()
    assert _history(trainer, "kl")[1] < 1e-6 and _history(trainer, "clip_ratio/region_mean")[1] == 0.0
    assert trainer.temperature == 0.6 and trainer.generation_config.temperature == 0.6  # from step 3 on
    assert _history(trainer, "kl")[3] < 1e-6  # reset at step 3 (aligned): reference at the new temperature

    class Temperatures(ProRLTrainer):  # two stages: deferred at step 2 (mid-buffer), then 0.7 at once at step 3
        sampled = []

        def _generate_and_score_completions(self, inputs):
            if self.model.training:
                self.sampled.append((self.state.global_step, self.temperature, self.generation_config.temperature))
            return super()._generate_and_score_completions(inputs)

    trainer = Temperatures(tiny_model, reward_funcs=text_hash_reward, train_dataset=prompt_dataset(),
                           args=fast_config(tmp_path / "tt", stages=[{"temperature": 0.9}, {"temperature": 0.7}],
                                            **common))
    trainer.train()  # the deferred 0.9 must not come back over the later stage's 0.7
    assert Temperatures.sampled == [(0, 1.2, 1.2), (2, 0.7, 0.7)] and trainer.args.temperature == 0.7

    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, train_dataset=prompt_dataset(),
                           args=fast_config(tmp_path / "b", stages=[{"beta": 0.0}, {}, {"beta": 0.1}], **common))
    trainer.train()  # step 4 trains on a batch generated with beta = 0
    assert trainer.state.global_step == 4 and trainer.beta == 0.1
    assert len(_history(trainer, "kl")) == 2 and _history(trainer, "kl")[-1] < 1e-6  # logged only while beta > 0


def test_learning_rate_stage_keeps_the_schedule(tiny_model, tmp_path):
    """A stage halving the learning rate under a cosine schedule: the step after the reset runs at half the
    scheduled rate, not at the new base rate."""
    class Rates(TrainerCallback):
        def __init__(self):
            self.rates = []

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.rates.append(optimizer.param_groups[0]["lr"])

    runs = {}
    for name, stages in (("plain", None), ("halved", [{"learning_rate": 5e-4}])):
        rates = Rates()
        args = fast_config(tmp_path / name, max_steps=6, reset_every_steps=3, dynamic_sampling=False,
                           lr_scheduler_type="cosine", stages=stages)
        trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                               callbacks=[rates])
        trainer.train()
        runs[name] = rates.rates
    plain, halved = runs["plain"], runs["halved"]
    assert halved[:3] == pytest.approx(plain[:3])
    assert halved[3:] == pytest.approx([r / 2 for r in plain[3:]]) and plain[3] < 1e-3
    logged = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]
    assert logged == pytest.approx(halved)  # the log shows the rate each step used, the step after the stage too


class TwoRates(ProRLTrainer):
    """An optimizer whose first parameter learns at 10x the base rate (as LoRA+ or a no-decay group would)."""

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = torch.optim.AdamW([{"params": params[:1], "lr": 10 * self.args.learning_rate},
                                                {"params": params[1:]}], lr=self.args.learning_rate)
        return super().create_optimizer(model)


def test_learning_rate_stage_keeps_the_ratios_of_param_groups(tiny_model, tmp_path):
    """A stage halving the learning rate halves every group's rate: a group at 10x stays at 10x the new rate
    (it was set to the new base rate, losing the ratio)."""
    class Rates(TrainerCallback):
        def __init__(self):
            self.rates = []

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.rates.append(tuple(group["lr"] for group in optimizer.param_groups))

    rates = Rates()
    args = fast_config(tmp_path, max_steps=4, reset_every_steps=2, dynamic_sampling=False,
                       stages=[{"learning_rate": 5e-4}])
    trainer = TwoRates(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                       callbacks=[rates])
    trainer.train()
    assert [pytest.approx(r) for r in rates.rates] == [(1e-2, 1e-3)] * 2 + [(5e-3, 5e-4)] * 2
    assert trainer.lr_scheduler.base_lrs == pytest.approx([5e-3, 5e-4])
    logged = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]
    assert logged == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])  # Trainer logs the first group's rate


def test_zeroing_adamw_state_in_place_equals_a_fresh_optimizer():
    """The DeepSpeed reset path (state zeroed in place) gives the same next update as a new AdamW."""
    from prorl.trainer.callbacks import reset_optimizer_state, zero_optimizer_state_

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5))
    opt = torch.optim.AdamW([w], lr=0.1)
    for _ in range(3):
        w.grad = torch.randn(5)
        opt.step()
    start, grad = w.detach().clone(), torch.randn(5)
    fresh_w = torch.nn.Parameter(start.clone())
    fresh = torch.optim.AdamW([fresh_w], lr=0.1)
    fresh_w.grad = grad.clone()
    fresh.step()
    zero_optimizer_state_(opt)
    w.grad = grad.clone()
    opt.step()
    assert torch.allclose(w, fresh_w, atol=1e-7)
    reset_optimizer_state(opt)
    assert len(opt.state) == 0


def test_reset_refreshes_reference_logps_of_buffered_batches(tiny_model, tmp_path):
    """With steps_per_generation=2 the batch of step 4 is generated at step 3, before the reset that ends step 3:
    its reference log-probs must be recomputed, or step 4's KL would be measured against the old reference."""
    args = fast_config(tmp_path, max_steps=4, per_device_train_batch_size=4, steps_per_generation=2, beta=0.1,
                       reset_every_steps=3, dynamic_sampling=False)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    kl = _history(trainer, "kl")
    assert kl[2] > 1e-4 and kl[3] < 1e-6


def test_reset_event_reward_is_the_whole_generation_with_dynamic_sampling(tiny_model, tmp_path):
    """A generation spans 2 steps (steps_per_generation=2) and several dynamic-sampling rounds (half the prompts
    get a constant reward): the reward a reset records is the generation's, the mean over its rounds, at both steps,
    though the per-step metric lists were cleared by the log of step 1."""
    round_means = []

    def reward(prompts, completions, qid, **kwargs):
        values = half_constant_reward(prompts, completions, qid)
        round_means.append(sum(values) / len(values))
        return values

    args = fast_config(tmp_path, max_steps=2, steps_per_generation=2, reset_every_steps=1, beta=0.1,
                       no_eos_penalty=None)
    trainer = ProRLTrainer(tiny_model, reward_funcs=reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    events = [json.loads(line) for line in (tmp_path / "resets.jsonl").read_text().splitlines()]
    assert len(round_means) >= 2  # one generation, refilled at least once
    expected = sum(round_means) / len(round_means)
    assert [e["step"] for e in events] == [1, 2]
    assert [e["metrics"]["reward"] for e in events] == [pytest.approx(expected)] * 2
    assert events[1]["metrics"]["kl"] < 1e-6  # kl is still the step's own (right after the reset at step 1)


def test_reset_refreshes_only_the_buffered_batches_still_to_train_on(tiny_model, tmp_path):
    """4 steps per generation and a reset after each of the first 3 steps: each reset recomputes the reference
    log-probs of the batches not yet trained on (3, 2, 1), and each following step's KL is ~0."""
    refreshed = []

    class Counting(ProRLTrainer):
        def _batch_logps(self, model, batch):
            if model is self.ref_model:
                refreshed.append(self.state.global_step)
            return super()._batch_logps(model, batch)

    args = fast_config(tmp_path, max_steps=4, per_device_train_batch_size=4, steps_per_generation=4, beta=0.1,
                       reset_every_steps=1, dynamic_sampling=False)
    trainer = Counting(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert refreshed == [1, 1, 1, 2, 2, 3]
    assert all(kl < 1e-6 for kl in _history(trainer, "kl"))


def test_the_end_of_training_summary_is_not_a_plateau_observation(tiny_model, tmp_path):
    """Trainer's summary log after the last step (train_runtime, ...) carries TRL's metrics not yet logged (step 3's
    reward, with logging_steps=2): counted as a plateau observation it reset the run after its final checkpoint,
    applying a stage and writing an event that no checkpoint holds."""
    args = fast_config(tmp_path, max_steps=3, logging_steps=2, beta=0.1, dynamic_sampling=False,
                       reset_on_plateau="reward", reset_plateau_patience=1, reset_plateau_min_delta=10.0,
                       stages=[{"temperature": 0.5}])
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert "reward" in trainer.state.log_history[-1] and "train_runtime" in trainer.state.log_history[-1]
    assert trainer.resets.state.reset_count == 0 and trainer.temperature == 1.2
    assert not (tmp_path / "resets.jsonl").exists()


def test_a_plateau_of_an_eval_metric_records_the_steps_kl_and_entropy(tiny_model, tmp_path):
    """reset_on_plateau="eval_reward" resets in the eval log, after the step's train log cleared TRL's per-step kl and
    entropy lists: the event still records them (the values of the step, like a reset at the step's end)."""
    args = fast_config(tmp_path, max_steps=2, beta=0.1, dynamic_sampling=False, eval_strategy="steps", eval_steps=1,
                       per_device_eval_batch_size=8, reset_on_plateau="eval_reward", reset_plateau_patience=1,
                       reset_plateau_min_delta=10.0)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                           eval_dataset=prompt_dataset(4, "e"))
    trainer.train()
    events = [json.loads(line) for line in (tmp_path / "resets.jsonl").read_text().splitlines()]
    assert [(e["step"], e["trigger"]) for e in events] == [(2, "plateau")]
    assert set(events[0]["metrics"]) == {"reward", "kl", "entropy", "eval_reward", "eval_reward/best"}
    assert events[0]["metrics"]["kl"] == pytest.approx(_history(trainer, "kl")[1])


def test_the_no_eos_penalty_shapes_training_not_evaluation(tiny_model, tmp_path):
    """Before: evaluation applied the penalty too, so eval_reward (and a reset_on_plateau on it) tracked the shaped
    reward of truncated completions rather than the environments' verdict."""
    args = fast_config(tmp_path, max_steps=1, dynamic_sampling=False, no_eos_penalty=-1.0,
                       per_device_eval_batch_size=8)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                           eval_dataset=prompt_dataset(4, "e"))
    trainer.train()
    train = [h for h in trainer.state.log_history if "no_eos_fraction" in h][0]
    assert train["no_eos_fraction"] > 0 and train["reward"] < 0  # 8-token completions: most never reach EOS
    metrics = trainer.evaluate()
    assert metrics["eval_no_eos_fraction"] > 0 and 0 <= metrics["eval_reward"] < 1


def test_scheduled_resets_count_from_the_previous_reset(tiny_model, tmp_path):
    """reset_every_steps=3 after another reset at step 1: the next scheduled one is at step 4, not at step 3 (two
    resets two steps apart)."""

    class ResetAtStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                trainer.resets.reset("manual", {}, control)

    args = fast_config(tmp_path, max_steps=4, beta=0.1, reset_every_steps=3, dynamic_sampling=False)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                           callbacks=[ResetAtStep1()])
    trainer.train()
    events = [json.loads(line) for line in (tmp_path / "resets.jsonl").read_text().splitlines()]
    assert [(e["step"], e["trigger"]) for e in events] == [(1, "manual"), (4, "every_steps")]

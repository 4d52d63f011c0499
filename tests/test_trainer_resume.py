"""A run SIGKILLed after a reset and resumed from its checkpoint continues with the same reset count, stage and
step, and its metric files are neither truncated nor duplicated. Training runs in subprocesses (tests/trainer_utils.py
`_subprocess_main`: 6 steps, reset every 3, checkpoint every 2, stages=[{temperature: 0.9}])."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_utils import REPLAYED, fast_config, prompt_dataset, text_hash_reward, tiny_model  # noqa: F401

from prorl.trainer import ProRLTrainer

HERE = Path(__file__).resolve().parent


def _run(out, model, *extra):
    env = dict(os.environ, PRORL_SCORE_WORKERS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(HERE / "trainer_utils.py"), str(out), model, *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def _probe(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("PROBE "))[6:])


@pytest.mark.slow
def test_sigkill_after_reset_then_resume(tiny_model, tmp_path):
    out = tmp_path / "run"
    killed = _run(out, tiny_model, "--kill-at-step", "5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert [json.loads(x)["step"] for x in (out / "resets.jsonl").read_text().splitlines()] == [3]
    before = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5]  # step 5 was logged after the last checkpoint

    resumed = _run(out, tiny_model, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _probe(resumed.stdout) == {"step": 4, "resets": 1, "stage": 1, "temperature": 0.9}

    events = [json.loads(x) for x in (out / "resets.jsonl").read_text().splitlines()]
    assert [(e["step"], e["reset"], e["stage"]) for e in events] == [(3, 1, 1), (6, 2, 1)]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]  # step 5 replaced, not duplicated
    assert [r["resets"] for r in train_rows] == [0, 0, 1, 1, 1, 2]
    assert [r["stage"] for r in train_rows] == [0, 0, 1, 1, 1, 1]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]
    prorl_state = json.loads((out / "checkpoint-6" / "prorl_state.json").read_text())
    assert prorl_state["reset_count"] == 2 and prorl_state["stage"] == 1


@pytest.mark.slow
def test_restart_stage_stops_and_applies_on_resume(tiny_model, tmp_path):
    """With restart_stages_in_process=False a stage that reshapes the generation batch saves a checkpoint and
    stops; resuming applies it."""
    args = fast_config(tmp_path, max_steps=4, beta=0.1, reset_every_steps=2, dynamic_sampling=False,
                       save_strategy="steps", save_steps=10, stages=[{"num_generations": 2}],
                       restart_stages_in_process=False)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert trainer.state.global_step == 2 and (tmp_path / "checkpoint-2").is_dir()
    event = json.loads((tmp_path / "resets.jsonl").read_text())
    assert event["restart_required"] and event["stage_overrides"] == {"num_generations": 2}

    args = fast_config(tmp_path, max_steps=4, beta=0.1, reset_every_steps=2, dynamic_sampling=False,
                       save_strategy="no", stages=[{"num_generations": 2}])
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 4 and trainer.num_generations == 2
    assert trainer.args.generation_batch_size == 8  # 4 prompts x 2 completions per step after the restart


@pytest.mark.slow
def test_restart_stage_goes_on_in_process(tiny_model, tmp_path):
    """By default one train() call runs through a stage that reshapes the generation batch: it resumes from the
    checkpoint of that reset in the same process, with the new shape, the reference of the reset and no metric
    line lost or repeated."""
    import re

    import torch

    class Recording(ProRLTrainer):
        prompts_per_batch: list[int] = []  # distinct prompts in each generation batch

        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            if self.model.training:
                texts = self.processing_class.batch_decode(out["prompt_ids"], skip_special_tokens=True)
                self.prompts_per_batch.append(len({re.search(r"q(\d+):", t).group(1) for t in texts}))
            return out

    args = fast_config(tmp_path, max_steps=4, beta=0.1, reset_every_steps=2, dynamic_sampling=False,
                       save_strategy="no", stages=[{"num_generations": 2}])
    trainer = Recording(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert trainer.state.global_step == 4 and trainer.num_generations == 2
    assert trainer.accelerator._optimizers == [trainer.optimizer]  # the first run's optimizer is not kept there
    assert (tmp_path / "checkpoint-2" / "reference.safetensors").exists()
    assert trainer.prompts_per_batch == [2, 2, 4, 4]  # 2 prompts x 4 completions, then 4 x 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [r["stage"] for r in rows if "loss" in r] == [0, 1, 1, 1]
    events = [json.loads(x) for x in (tmp_path / "resets.jsonl").read_text().splitlines()]
    assert [(e["step"], e["restart_required"]) for e in events] == [(2, True), (4, False)]
    # the reference is the policy of the reset at step 4 (a live reset, no restart)
    for (name, p), q in zip(trainer.model.named_parameters(), trainer.ref_model.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.slow
def test_restart_stage_saves_its_checkpoint_under_save_strategy_best(tiny_model, tmp_path):
    """save_strategy="best" overrules a save that is not a new best; the restart checkpoint is still written."""
    from trainer_utils import constant_reward

    args = fast_config(tmp_path, max_steps=4, stages=[{"num_generations": 2}], dynamic_sampling=False, beta=0.0,
                       eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=8, save_strategy="best",
                       metric_for_best_model="eval_reward", greater_is_better=True, reset_on_plateau="eval_reward",
                       reset_plateau_patience=1)
    trainer = ProRLTrainer(tiny_model, reward_funcs=constant_reward, args=args, train_dataset=prompt_dataset(),
                           eval_dataset=prompt_dataset(4, "e"))
    trainer.train()
    event = json.loads((tmp_path / "resets.jsonl").read_text().splitlines()[0])
    assert event["restart_required"] and (tmp_path / f"checkpoint-{event['step']}" / "trainer_state.json").exists()
    assert trainer.state.global_step == 4 and trainer.num_generations == 2


def test_restart_stage_with_save_only_model_stops_at_its_checkpoint(tiny_model, tmp_path):
    """A save_only_model checkpoint has no optimizer or schedule to go on from: no in-process restart (it would
    restart the LR schedule), the run stops there as with restart_stages_in_process=False."""
    args = fast_config(tmp_path, max_steps=6, reset_every_steps=3, lr_scheduler_type="cosine", dynamic_sampling=False,
                       beta=0.0, stages=[{"num_generations": 2}], save_only_model=True)
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert trainer.state.global_step == 3 and (tmp_path / "checkpoint-3" / "model.safetensors").exists()


def test_resume_replays_the_reset_hooks(tiny_model, tmp_path):
    """A ResetCallback's change to the trainer survives a resume in a new process: the hook is called again for
    each past reset with replay=True (and not again on an in-process restart)."""
    from transformers import TrainerCallback

    from prorl.trainer import ResetCallback

    class Hook(ResetCallback):
        def __init__(self):
            self.calls = []

        def on_reset(self, args, state, control, event, trainer, replay=False, **kwargs):
            self.calls.append((event.step, replay))
            if event.stage >= 1:
                trainer.args.no_eos_penalty = -1.0

    class Probe(TrainerCallback):
        def __init__(self, trainer_ref):
            self.trainer_ref, self.seen = trainer_ref, []

        def on_step_begin(self, args, state, control, **kwargs):
            self.seen.append((state.global_step + 1, self.trainer_ref[0].args.no_eos_penalty))

    runs = []
    for max_steps, resume in ((2, None), (4, True)):
        hook, ref = Hook(), []
        probe = Probe(ref)
        args = fast_config(tmp_path, max_steps=max_steps, reset_every_steps=2, stages=[{"temperature": 1.0}],
                           dynamic_sampling=False, beta=0.0, save_strategy="steps", save_steps=2)
        trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(),
                               callbacks=[hook, probe])
        ref.append(trainer)
        trainer.train(resume_from_checkpoint=resume)
        runs.append((hook.calls, probe.seen))
    (first_calls, first_seen), (calls, seen) = runs
    assert first_calls == [(2, False)] and first_seen == [(1, None), (2, None)]
    assert calls == [(2, True), (4, False)] and seen == [(3, -1.0), (4, -1.0)]


def test_resume_skips_a_half_written_checkpoint(tmp_path):
    from prorl.trainer.trainer import latest_complete_checkpoint

    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert latest_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
    with pytest.raises(ValueError, match="no complete checkpoint"):
        latest_complete_checkpoint(str(tmp_path / "checkpoint-6"))


@pytest.mark.slow
def test_resume_after_a_reset_restores_the_reference(tiny_model, tmp_path):
    """The KL anchor of a run resumed after a reset is the policy of that reset (saved with each checkpoint), not
    the initial model TRL loads the reference from."""
    import torch
    from transformers import AutoModelForCausalLM

    def config(**overrides):
        return fast_config(tmp_path, **{"max_steps": 3, "beta": 0.1, "reset_every_steps": 2, "dynamic_sampling": False,
                                        "save_strategy": "steps", "save_steps": 3, **overrides})

    first = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=config(), train_dataset=prompt_dataset())
    first.train()
    anchor = {name: p.detach().clone() for name, p in first.ref_model.named_parameters()}
    policy = dict(first.model.named_parameters())
    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_model).named_parameters())
    assert any(not torch.equal(anchor[n], initial[n]) for n in anchor)  # the reset at step 2 moved the anchor
    assert any(not torch.equal(anchor[n], policy[n]) for n in anchor)  # and step 3 moved the policy past it

    finished = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=config(), train_dataset=prompt_dataset())
    with pytest.raises(ValueError, match="is at step 3, max_steps is 3: nothing to train"):
        finished.train(resume_from_checkpoint=True)
    # one more step, without a reset at step 4: the anchor must still be the policy of step 2
    second = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=config(max_steps=4, reset_every_steps=None),
                          train_dataset=prompt_dataset())
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 4 and second.resets.state.reset_count == 1
    for name, p in second.ref_model.named_parameters():
        assert torch.equal(p, anchor[name]), name


def test_restart_stage_logs_the_steps_before_it(tiny_model, tmp_path):
    """logging_steps=3 and a restart stage at the reset after step 2: steps 1-2 are logged at step 2 (into the
    restart checkpoint's log history), not dropped with the metrics the restart forgets."""
    args = fast_config(tmp_path, max_steps=4, logging_steps=3, reset_every_steps=2, beta=0.1, dynamic_sampling=False,
                       stages=[{"per_device_train_batch_size": 4}])
    trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
    trainer.train()
    assert [(h["step"], h["stage"]) for h in trainer.state.log_history if "loss" in h] == [(2, 1.0), (3, 1.0)]
    saved = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in saved if "reward" in h] == [2]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 3]


def test_resume_with_the_generation_budget_spent_trains_nothing(tiny_model, tmp_path):
    """A checkpoint taken when max_generated_tokens was reached: resuming it trained one more step (the budget is
    checked at a step's end); it is refused like a checkpoint at max_steps."""
    def run(resume):
        args = fast_config(tmp_path, max_steps=6, dynamic_sampling=False, max_generated_tokens=100,
                           save_strategy="steps", save_steps=2)  # 64 tokens per step: the budget ends step 2
        trainer = ProRLTrainer(tiny_model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset())
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    trainer = run(None)
    assert trainer.state.global_step == 2 and (tmp_path / "checkpoint-2").exists()
    lines = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="max_generated_tokens is 100: nothing to train"):
        run(True)
    assert (tmp_path / "metrics.jsonl").read_text() == lines


def _interrupted_and_uninterrupted(model, tmp_path, resume_at: int, **overrides):
    """Train `max_steps` in one go (checkpoints every `save_steps`), and again from its checkpoint-`resume_at` copied
    into a fresh output_dir: the per-step train metrics and the final weights of both."""
    import shutil

    from trainer_utils import half_constant_reward

    def train(out, resume=None):
        args = fast_config(out, save_strategy="steps", **overrides)
        trainer = ProRLTrainer(model, reward_funcs=half_constant_reward, args=args, train_dataset=prompt_dataset(8))
        trainer.train(resume_from_checkpoint=resume)
        rows = {h["step"]: {k: h.get(k) for k in REPLAYED} for h in trainer.state.log_history if "loss" in h}
        return rows, {name: p.detach().clone() for name, p in trainer.model.named_parameters()}

    full = train(tmp_path / "full")
    shutil.copytree(tmp_path / "full" / f"checkpoint-{resume_at}", tmp_path / "resumed" / f"checkpoint-{resume_at}")
    return full, train(tmp_path / "resumed", resume=True)


def _assert_replayed(full, resumed, steps):
    (rows, weights), (resumed_rows, resumed_weights) = full, resumed
    assert sorted(resumed_rows) == sorted(rows)
    for step in steps:
        assert resumed_rows[step] == pytest.approx(rows[step], abs=1e-6, nan_ok=True), step
    assert max((weights[n] - resumed_weights[n]).abs().max().item() for n in weights) <= 1e-6


def test_resume_replays_the_run_with_dynamic_sampling_resets_and_epochs(tiny_model, tmp_path):
    """Resumed at step 4 (the end of the first epoch: 8 prompts, 2 per step), after a reset with a temperature
    stage, with dynamic sampling refilling: steps 5-6 and the final weights are the uninterrupted run's. Before:
    the refill stream's DataLoader took its base seed from torch's RNG when the resumed run opened it, so the
    resumed run sampled other completions from the first refill on; and TRL's RepeatSampler shuffled the resumed
    epoch 1 as epoch 0 (it draws each epoch's order from a generator seeded once per process)."""
    full, resumed = _interrupted_and_uninterrupted(
        tiny_model, tmp_path, resume_at=4, max_steps=6, save_steps=2, beta=0.05, reset_every_steps=3,
        stages=[{"temperature": 0.9}])
    assert full[0][4]["resets"] == 1 and full[0][6]["dynamic_sampling/rounds"] > 1  # a reset, refills after resume
    _assert_replayed(full, resumed, steps=(5, 6))


def test_resume_inside_a_generation_buffer_replays_the_run(tiny_model, tmp_path):
    """steps_per_generation=2: the checkpoint at step 3, taken after a reset whose stage changes the temperature,
    lies inside a generation buffer (step 4 trains on completions generated at step 3, at the old temperature).
    Before: TRL's buffer was not checkpointed, so the resumed run generated anew at step 4 and every later
    generation came one step late."""
    full, resumed = _interrupted_and_uninterrupted(
        tiny_model, tmp_path, resume_at=3, max_steps=5, save_steps=3, steps_per_generation=2, beta=0.05,
        reset_every_steps=3, stages=[{"temperature": 0.9}])
    assert full[0][4]["reward"] is None  # step 4 did not generate
    _assert_replayed(full, resumed, steps=(4, 5))
    assert (tmp_path / "full" / "checkpoint-3" / "generation_buffer_0.pt").exists()


class _PromptOrder(ProRLTrainer):
    """Records the prompts (qid, in the sampler's order) of each training generation."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training:
            qids = []
            for q in inputs:
                if q["qid"] not in qids:
                    qids.append(q["qid"])
            self.generations.append(qids)
        return out


def _prompt_run(model, out, resume=None, **overrides):
    args = fast_config(out, beta=0.0, dynamic_sampling=False, max_completion_length=4, **overrides)
    trainer = _PromptOrder(model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(8))
    trainer.generations = []
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _epoch_orders(n: int = 8, epochs: int = 3) -> list[int]:
    """The prompts of `epochs` epochs in the order TRL's RepeatSampler (seed 0) shuffles them: each once per epoch."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return [i for _ in range(epochs) for i in torch.randperm(n, generator=generator).tolist()]


@pytest.mark.slow
def test_a_stage_changing_the_prompts_per_step_goes_on_from_the_next_prompt(tiny_model, tmp_path):
    """8 prompts; a stage at a reset changes the prompts per step (num_generations with the same rows per step).
    Every prompt of an epoch is trained on once, in the sampler's order, across the restart (in process and
    relaunched) and across a resume from a checkpoint of the new stage; the logged epoch only grows. Before: Trainer
    positioned the data by global_step in the new shape: 2 -> 4 prompts per step at step 2 skipped the 4 prompts
    left in epoch 0 (epoch 0.5 -> 1.5); 4 -> 2 at step 3 trained the last 2 of epoch 0 and all of epoch 1 again
    (epoch 1.5 -> 1.0)."""
    import shutil

    # in process, 2 -> 4 prompts per step after step 2 (checkpoints at 2, the restart's, and 4, in the new shape)
    run = dict(max_steps=6, num_generations=4, reset_every_steps=2, stages=[{"num_generations": 2}],
               save_strategy="steps", save_steps=2)
    trainer = _prompt_run(tiny_model, tmp_path / "a", **run)
    assert [len(g) for g in trainer.generations] == [2, 2, 4, 4, 4, 4]
    assert sum(trainer.generations, []) == _epoch_orders()[:20]
    epochs = [h["epoch"] for h in trainer.state.log_history if "loss" in h]
    assert epochs == [0.25, 0.5, 1.0, 1.5, 2.0, 2.5]
    # relaunched from the checkpoint at step 4: the same prompts as the run that went on
    shutil.copytree(tmp_path / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4")
    resumed = _prompt_run(tiny_model, tmp_path / "b", resume=True, **run)
    assert resumed.generations == trainer.generations[4:]

    # relaunched at the restart, 4 -> 2 prompts per step after step 3 (inside epoch 1)
    run = dict(max_steps=6, num_generations=2, reset_every_steps=3, stages=[{"num_generations": 4}])
    stopped = _prompt_run(tiny_model, tmp_path / "c", restart_stages_in_process=False, **run)
    assert stopped.state.global_step == 3
    relaunched = _prompt_run(tiny_model, tmp_path / "c", resume=True, **run)
    generations = stopped.generations + relaunched.generations
    assert [len(g) for g in generations] == [4, 4, 4, 2, 2, 2]
    assert sum(generations, []) == _epoch_orders()[:18]
    epochs = [h["epoch"] for h in relaunched.state.log_history if "loss" in h]
    assert epochs == [0.5, 1.0, 1.5, 1.75, 2.0, 2.25]

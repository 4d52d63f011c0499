"""What a resumed run needs beyond Trainer's checkpoint to replay the uninterrupted run exactly (same prompts, same
samples, same updates), where TRL 1.16 keeps state that a checkpoint does not hold:

  - the prompt order of later epochs: TRL's `RepeatSampler` draws each epoch's permutation from one generator seeded
    once, so epoch e's order depends on the e passes this process made before. A run resumed in epoch e >= 1 made
    none: it replayed epoch 0's order. `ResumableRepeatSampler.set_epoch` (Trainer calls it before every epoch)
    fast-forwards the generator instead; an uninterrupted run draws exactly what TRL's sampler draws.
  - the generation buffer: with steps_per_generation > gradient_accumulation_steps (or num_iterations > 1) a step
    can train on completions generated at an earlier step. TRL keeps them in `_buffered_inputs` and counts micro-
    steps in `_step`, neither checkpointed: a run resumed at a checkpoint inside a buffer generated anew from the
    resumed policy and shifted every later generation. `ResumeMixin` saves the rest of the buffer with
    each checkpoint taken inside one (`generation_buffer_<process>.pt`, one per process) and restores it.

Dynamic sampling's refill stream is resumable on its own (prorl/trainer/dynamic_sampling.py `_refill_batch`).
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate.utils import send_to_device
from trl.trainer.utils import RepeatSampler

log = logging.getLogger(__name__)

BUFFER_FILE = "generation_buffer_{}.pt"  # per process: each holds its own share of the generation batch


class ResumableRepeatSampler(RepeatSampler):
    """TRL's `RepeatSampler` with `set_epoch`: epoch e is shuffled as the e-th pass of a generator seeded with `seed`,
    whether or not this process made the passes before it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes = 0  # permutations drawn from self.generator since it was seeded

    @classmethod
    def like(cls, sampler: RepeatSampler) -> "ResumableRepeatSampler":
        return cls(sampler.data_source, mini_repeat_count=sampler.mini_repeat_count, batch_size=sampler.batch_size,
                   repeat_count=sampler.repeat_count, shuffle=sampler.shuffle, seed=sampler.seed)

    def set_epoch(self, epoch: int) -> None:
        if not self.shuffle or self.seed is None or epoch == self.passes:
            return  # unseeded: nothing to replay
        self.generator.manual_seed(self.seed)
        for _ in range(epoch):  # once per resume; each pass is one randperm, as in RepeatSampler.__iter__
            torch.randperm(self.num_samples, generator=self.generator)
        self.passes = epoch

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


class ResumeMixin:
    """Mixed into `ProRLTrainer` before `GRPOTrainer`: the train sampler above, and the generation buffer saved with a
    checkpoint taken inside it (`_save_generation_buffer`) and restored on resume (`_load_generation_buffer`)."""

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        return ResumableRepeatSampler.like(sampler) if type(sampler) is RepeatSampler else sampler

    def _save_generation_buffer(self, folder: str) -> None:
        """Every process: inside a generation buffer, its buffered batches and what goes with them. Not at a
        restart stage's checkpoint: the stage reshapes the generation batch, which starts anew after it (in process
        and on a relaunch alike)."""
        if not self._mid_generation_buffer() or self.resets.restart_pending:
            return
        os.makedirs(folder, exist_ok=True)
        torch.save({"step": self._step, "batches": self._buffered_inputs, "temperature": self.temperature,
                    "pending_temperature": self._pending_temperature, "generation_metrics": self.generation_metrics},
                   os.path.join(folder, BUFFER_FILE.format(self.accelerator.process_index)))

    def _load_generation_buffer(self, checkpoint: str) -> None:
        """After the reset state (its stages set the temperature of the latest reset; a temperature that waited for
        the next generation waits again)."""
        path = os.path.join(checkpoint, BUFFER_FILE.format(self.accelerator.process_index))
        if not os.path.exists(path):
            return
        # Loaded on the CPU, then moved: torch.load cannot map to accelerate's device of a multi-process CPU run,
        # torch.device("cpu", 0) (str "cpu:0", a location torch.load does not know)
        saved = torch.load(path, map_location="cpu", weights_only=True)
        batches, spg = send_to_device(saved["batches"], self.accelerator.device), self.args.steps_per_generation
        rows = {len(batch["completion_ids"]) for batch in batches}
        if len(batches) != spg or rows != {self.args.per_device_train_batch_size}:
            log.warning("%s: the generation buffer of %d batches of %s rows does not fit steps_per_generation %d x "
                        "per_device_train_batch_size %d: generating anew at the first step (not the uninterrupted "
                        "run's completions)", path, len(batches), sorted(rows), spg,
                        self.args.per_device_train_batch_size)
            return
        self._buffered_inputs, self._step = batches, saved["step"]
        self.generation_metrics = saved["generation_metrics"]
        if saved["temperature"] != self.temperature:
            self._set_sampling("temperature", saved["temperature"])
        self._pending_temperature = saved["pending_temperature"]

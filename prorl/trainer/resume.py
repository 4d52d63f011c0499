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
import math
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
        self.start: tuple[int, int, int] | None = None  # (epoch, first prompt, placeholder chunks): `start_at`

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

    def start_at(self, epoch: int, prompts: int) -> tuple[int, int]:
        """Start epoch `epoch` at prompt `prompts` of its order (the next epoch if no whole generation of prompts is
        left). That epoch's first chunks are placeholders, as many as make it as long as a whole epoch, for Trainer
        to skip: returns (epoch, placeholder chunks). Also sets the generator to that epoch, which Trainer's
        `set_epoch` does not reach past accelerate's skipping batch sampler of a multi-process run."""
        if self.num_samples - prompts < self.batch_size:
            epoch, prompts = epoch + 1, 0
        placeholders = self.num_samples // self.batch_size - (self.num_samples - prompts) // self.batch_size
        self.start = (epoch, prompts, placeholders)
        self.set_epoch(epoch)
        return epoch, placeholders

    def __iter__(self):
        self.passes += 1
        if self.start is None or self.start[0] != self.passes - 1 or not self.start[1]:
            return super().__iter__()
        return self._iter_from(*self.start[1:])

    def _iter_from(self, first: int, placeholders: int):
        """RepeatSampler.__iter__ from prompt `first` of the order, after `placeholders` chunks (never loaded)."""
        if self.shuffle:
            indexes = torch.randperm(self.num_samples, generator=self.generator).tolist()
        else:
            indexes = list(range(self.num_samples))
        chunks = [[indexes[0]] * self.batch_size] * placeholders
        chunks += [indexes[i: i + self.batch_size] for i in range(first, self.num_samples, self.batch_size)]
        for chunk in chunks:
            if len(chunk) == self.batch_size:
                for _ in range(self.repeat_count):
                    for index in chunk:
                        yield from [index] * self.mini_repeat_count


class ResumeMixin:
    """Mixed into `ProRLTrainer` before `GRPOTrainer`: the train sampler above, and the generation buffer saved with a
    checkpoint taken inside it (`_save_generation_buffer`) and restored on resume (`_load_generation_buffer`)."""

    def _get_train_sampler(self, dataset=None):
        sampler = super()._get_train_sampler(dataset)
        if type(sampler) is RepeatSampler:
            sampler = ResumableRepeatSampler.like(sampler)
        resume, self._data_resume, self._data_skip, self._data_start = self._data_resume, None, None, None
        if resume and isinstance(sampler, ResumableRepeatSampler) and not self.args.ignore_data_skip:
            position, self._data_step = resume
            prompts, batches = position["prompts"], position["batches"]
            if (position["chunk"], position["repeat"]) != (sampler.batch_size, sampler.repeat_count):
                # a stage reshaped the batch: a generation the checkpoint was inside counts as done (a restart
                # drops the rest of its buffer); the new shape starts at the next prompt
                prompts, batches = prompts + position["chunk"] * bool(batches), 0
            epoch, placeholders = sampler.start_at(position["epoch"], min(prompts, sampler.num_samples))
            self._data_start = sampler.start
            self._data_skip = (epoch, placeholders * sampler.repeat_count + batches * (epoch == position["epoch"]))
        return sampler

    def set_initial_training_values(self, args, dataloader):
        values = list(super().set_initial_training_values(args, dataloader))
        if self._data_skip is not None and args.max_steps > 0:  # enough epochs from the resumed one to max_steps
            epoch, skip = self._data_skip
            steps = skip // args.gradient_accumulation_steps + args.max_steps - self._data_step
            values[0] = max(values[0], epoch + math.ceil(steps / values[1]))
        return tuple(values)

    def _init_training_state(self, *args, **kwargs):
        """Trainer's (epoch, micro-batches to skip) counted in the resumed shape; the checkpoint's data position
        instead, when it has one."""
        epochs, skip = super()._init_training_state(*args, **kwargs)
        return self._data_skip if self._data_skip is not None else (epochs, skip)

    def _run_epoch(self, *args, **kwargs):
        epoch, resumed = kwargs["epoch"], kwargs["resume_from_checkpoint"] is not None
        resumed = resumed and epoch == kwargs["epochs_trained"]
        self._data_batches = kwargs["steps_trained_in_current_epoch"] if resumed else 0
        start = self._data_start if resumed and self._data_start and self._data_start[0] == epoch else None
        self._data_epoch = start or (epoch, 0, 0)
        return super()._run_epoch(*args, **kwargs)

    def data_position(self) -> dict | None:
        """Where the prompt stream stands: the epoch, the prompts of its order whose generation was made (a whole
        number of generations), the micro-batches trained since the last one, and the shape (prompts per
        generation, micro-batches per generation)."""
        if self._data_epoch is None:
            return None
        chunk = self.args.generation_batch_size // self.num_generations
        repeat = self.num_iterations * self.args.steps_per_generation
        epoch, first, placeholders = self._data_epoch
        batches = self._data_batches - placeholders * repeat
        return {"epoch": epoch, "prompts": first + batches // repeat * chunk, "batches": batches % repeat,
                "chunk": chunk, "repeat": repeat}

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

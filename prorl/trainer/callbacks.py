"""Hard resets of the reference policy and the optimizer, training stages, and the user hook `ResetCallback`.

A reset (ProRL, Section 3.2) makes the current policy the new KL anchor (reference := policy weights), clears the
optimizer state (AdamW moments and step counts; the learning-rate schedule continues), and may start the next
stage of the run (`ProRLConfig.stages`). Triggers: every N steps, a plateau of a logged metric, or the KL to the
reference exceeding a threshold. Every reset is appended to `output_dir/resets.jsonl` and kept in each checkpoint
(`prorl_state.json`), so a resumed run has the same reset count, stage and plateau tracker.

Users react to resets by subclassing `ResetCallback`:

    class LongerTimeouts(ResetCallback):
        def on_reset(self, args, state, control, event, trainer, **kwargs):
            if event.stage >= 2:
                trainer.reward_funcs[0].timeout_s = 20.0  # the EnvReward: slower verifiers from stage 2 on
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

if TYPE_CHECKING:
    from prorl.trainer.trainer import ProRLTrainer

log = logging.getLogger(__name__)

RESETS_FILE = "resets.jsonl"
STATE_FILE = "prorl_state.json"


@dataclass
class ResetEvent:
    """One reset: when, why, with which metric values, and which stage it started."""

    step: int
    reset: int  # 1 for the first reset of the run
    trigger: str  # "every_steps", "plateau", "kl" or "manual"
    metrics: dict[str, float] = field(default_factory=dict)
    stage: int = 0  # the stage in effect after the reset (0: the base config)
    stage_overrides: dict[str, Any] = field(default_factory=dict)
    restart_required: bool = False
    time: float = 0.0


class ResetCallback(TrainerCallback):
    """Base class for user hooks called right after each reset (weights copied, optimizer cleared, stage applied)."""

    def on_reset(self, args, state, control, event: ResetEvent, trainer: "ProRLTrainer", **kwargs):
        """Override to change data, reward shaping or anything else of `trainer` at a reset. A run resumed in a new
        process calls it again for every past reset, in order, with `replay=True` (and `control=None`), so changes
        to the trainer are made again; a hook with effects outside the trainer should skip those on replay."""


@dataclass
class ResetState:
    """What a resumed run must continue from; saved in every checkpoint."""

    reset_count: int = 0
    stage: int = 0
    last_reset_step: int = 0
    plateau_best: float | None = None
    plateau_bad: int = 0
    refill_batches: int = 0  # generation batches drawn by dynamic sampling's refill stream
    generated_tokens: int = 0  # completion tokens sampled in training, all processes and rounds
    data_position: dict[str, int] | None = None  # where the prompt stream stands (ProRLTrainer.data_position)
    events: list[dict[str, Any]] = field(default_factory=list)


def shards_registered_(model: torch.nn.Module) -> None:
    """Refuse FSDP1; under FSDP2 make the sharded DTensors the registered parameters again. A root FSDP2 module
    with reshard_after_forward=False keeps its parameters unsharded after a forward, and the reference model (no
    backward to reshard it) keeps them until its next forward, whose all-gather would overwrite a copy into them
    (and a copy from a policy shard into a whole tensor raises). Local, no collective."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    for module in model.modules():
        if isinstance(module, FullyShardedDataParallel):  # flat parameters: rank-local pieces of many tensors
            raise NotImplementedError("FSDP1 is not supported by resets and the saved reference (its flat "
                                      "parameters would be copied and saved as one rank's shard): use FSDP2 "
                                      "(fsdp_config fsdp_version 2) or DeepSpeed")
        if isinstance(module, FSDPModule):
            module.reshard()


def copy_weights_(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """dst's parameters := src's, matched by name. Under DeepSpeed ZeRO-3 each pair of partitioned parameters is
    gathered, copied on rank 0 and re-partitioned, one pair at a time: both models are gathered (TRL #1971 gathered
    only the policy and crashed), and never a whole model at once (memory stays at one layer's weights)."""
    shards_registered_(src)
    shards_registered_(dst)
    src_params, dst_params = dict(src.named_parameters()), dict(dst.named_parameters())
    if src_params.keys() != dst_params.keys():
        missing = sorted(src_params.keys() ^ dst_params.keys())[:5]
        raise RuntimeError(f"policy and reference parameters differ by name (e.g. {missing})")
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = is_deepspeed_zero3_enabled()
    with torch.no_grad():
        for name, p in src_params.items():
            q = dst_params[name]
            if zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([p, q], modifier_rank=0):
                    if deepspeed.comm.get_rank() == 0:
                        q.data.copy_(p.data)
            else:  # plain tensors, or FSDP2 DTensors with identical sharding: a local shard copy
                if p.data.shape != q.data.shape:
                    raise RuntimeError(f"{name}: policy shard {tuple(p.data.shape)} != reference shard "
                                       f"{tuple(q.data.shape)}")
                q.data.copy_(p.data)


def full_weights(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """The parameters of `model` as whole CPU tensors, by name (ZeRO-3: gathered one at a time, a collective every
    process joins; FSDP2: `full_tensor()`, likewise). Tied parameters appear once, as in `named_parameters()`. With
    `keep=False` a process only takes part in the gathers and returns nothing (no CPU copy of the model)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    shards_registered_(model)
    zero3, out = is_deepspeed_zero3_enabled(), {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([p]):
                    if keep:
                        out[name] = p.data.detach().cpu().clone()
            else:
                t = p.data.full_tensor() if hasattr(p.data, "full_tensor") else p.data
                if keep:
                    out[name] = t.detach().cpu().clone()
    return out


def load_weights_(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """model's parameters := `weights` (as `full_weights` returns them), matched by name; ZeRO-3 and FSDP2 aware."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    shards_registered_(model)
    params = dict(model.named_parameters())
    if params.keys() != weights.keys():
        differ = sorted(params.keys() ^ weights.keys())[:5]
        raise RuntimeError(f"saved reference weights do not match the model's parameters (e.g. {differ})")
    zero3 = is_deepspeed_zero3_enabled()
    with torch.no_grad():
        for name, q in params.items():
            t = weights[name]
            if zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([q], modifier_rank=0):
                    if deepspeed.comm.get_rank() == 0:
                        q.data.copy_(t)
            elif hasattr(q.data, "device_mesh"):  # an FSDP2 shard
                from torch.distributed.tensor import distribute_tensor

                q.data.copy_(distribute_tensor(t.to(q.device), q.data.device_mesh, q.data.placements))
            else:
                q.data.copy_(t)


def innermost_optimizers(optimizer: torch.optim.Optimizer | Any) -> tuple[list[torch.optim.Optimizer], bool]:
    """The torch optimizers under accelerate's and DeepSpeed's wrappers (each holds the next as `.optimizer`), and
    whether a DeepSpeed wrapper was among them. Usually one; ZeRO-3 with partial optimizer offload
    (`offload_optimizer.ratio` < 1) also steps the sub-groups it keeps on the accelerator with its own AdamW, the
    wrapper's `backup_optimizer`, which comes second."""
    base, wrapped_by_deepspeed, backups = optimizer, False, []
    while getattr(base, "optimizer", None) is not None:
        wrapped_by_deepspeed |= "deepspeed" in type(base).__module__
        if isinstance(getattr(base, "backup_optimizer", None), torch.optim.Optimizer):
            backups.append(base.backup_optimizer)
        base = base.optimizer
    return [base, *backups], wrapped_by_deepspeed


def reset_optimizer_state(optimizer: torch.optim.Optimizer | Any) -> None:
    """Clear the optimizer state (AdamW moments, step counts). Torch optimizers rebuild it lazily on the next step.
    Under DeepSpeed, whose ZeRO optimizers pre-allocate their state, it is zeroed in place instead
    (`zero_optimizer_state_`), which gives the same next update as a fresh optimizer."""
    optimizers, wrapped_by_deepspeed = innermost_optimizers(optimizer)
    for base in optimizers:
        if wrapped_by_deepspeed:
            zero_optimizer_state_(base)
        else:
            base.state.clear()


def zero_optimizer_state_(optimizer: torch.optim.Optimizer) -> None:
    """Adam(W) state as if new, keeping its tensors: moments and step counts set to 0."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                value.zero_()
            elif key == "step":
                state[key] = 0
    for group in optimizer.param_groups:  # DeepSpeed's FusedAdam keeps its step count in the param group
        if "step" in group:
            group["step"] = group["step"].zero_() if torch.is_tensor(group["step"]) else 0


class ResetController(TrainerCallback):
    """Decides when to reset, performs resets through the trainer, and keeps the run's reset state.

    Added to every `ProRLTrainer`; it needs the trainer (reference model, optimizer), which plain callbacks lack.
    """

    def __init__(self, trainer: "ProRLTrainer"):
        self.trainer = trainer
        if trainer.ref_model is not None and (trainer.args.wants_resets or trainer.args.stages):
            shards_registered_(trainer.ref_model)  # FSDP1 refused at the start, not at the first reset
        self.state = ResetState()
        self.restart_pending = False  # a stage that reshapes the batch stopped the run at its checkpoint
        self.step_metrics: dict[str, float] = {}  # of the latest step, for reset events (a log clears TRL's lists)
        self._unlogged_warned = False  # reset_on_plateau's metric was missing from a log of its kind (warned once)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.decide_update()
        return control

    # -- Triggers ----------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        self.step_metrics = {k: v for k in ("reward", "kl", "entropy")
                             if (v := self.trainer.step_metric(k)) is not None}
        if args.max_generated_tokens and self.state.generated_tokens >= args.max_generated_tokens:
            log.info("generation budget reached at step %d: %d >= max_generated_tokens %d", step,
                     self.state.generated_tokens, args.max_generated_tokens)
            control.should_training_stop = True
            if args.save_strategy not in ("no", "best"):  # as Trainer saves at max_steps: a later, larger budget
                control.should_save = True                # goes on from here
        if args.reset_every_steps and step - self.state.last_reset_step >= args.reset_every_steps:
            self.reset("every_steps", {}, control)
        elif args.reset_on_kl is not None and self._interval_ok(step):
            kl = self.trainer.step_metric("kl")
            if kl is not None and kl > args.reset_on_kl:
                self.reset("kl", {"kl": kl}, control)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        name = args.reset_on_plateau
        # Trainer's end-of-training summary (train_runtime, ...) carries TRL's unlogged metrics: not an observation
        # (a reset there would come after the final or restart checkpoint, its stage and hooks outliving it)
        if not name or not logs or logs.get(name) is None or "train_runtime" in logs:
            self._warn_unlogged(name, logs, state.global_step)
            return control
        value = float(logs[name])
        if math.isnan(value):
            return control
        s = self.state
        better = (s.plateau_best is None
                  or (value > s.plateau_best + args.reset_plateau_min_delta if args.reset_plateau_mode == "max"
                      else value < s.plateau_best - args.reset_plateau_min_delta))
        if better:
            s.plateau_best, s.plateau_bad = value, 0
        else:
            s.plateau_bad += 1
        if s.plateau_bad >= args.reset_plateau_patience and self._interval_ok(state.global_step):
            self.reset("plateau", {name: value, f"{name}/best": s.plateau_best}, control)
        return control

    def _warn_unlogged(self, name: str | None, logs: dict | None, step: int) -> None:
        """Once per run: the plateau metric is missing from a log of its kind (evaluation for `eval_` names, else
        training), so a misspelt name (`reward_eval`) does not go on silently never resetting."""
        if (not name or not logs or name in logs or "train_runtime" in logs or self._unlogged_warned
                or not (any(k.startswith("eval_") for k in logs) if name.startswith("eval_") else "loss" in logs)):
            return
        self._unlogged_warned = True
        close = difflib.get_close_matches(name, logs, n=1)
        log.warning("reset_on_plateau: %r is not among the metrics logged at step %d%s; no plateau reset can happen "
                    "while it is missing", name, step, f" (did you mean {close[0]!r}?)" if close else "")

    def _interval_ok(self, step: int) -> bool:
        return step - self.state.last_reset_step >= self.trainer.args.reset_min_interval

    # -- The reset -----------------------------------------------------------------------------------------------
    def reset(self, trigger: str, metrics: dict[str, float], control=None) -> ResetEvent:
        """Reference := policy, optimizer state cleared, next stage applied; returns the recorded event."""
        tr, args, s = self.trainer, self.trainer.args, self.state
        overrides = args.stages[s.reset_count] if s.reset_count < len(args.stages) else {}
        restart = tr.apply_stage(overrides, live=True)  # first: a new beta decides the buffered batches' refresh
        tr.sync_reference_to_policy()
        if args.reset_optimizer and tr.optimizer is not None:
            reset_optimizer_state(tr.optimizer)
        s.reset_count += 1
        s.stage = min(s.reset_count, len(args.stages))
        s.last_reset_step = tr.state.global_step
        s.plateau_best, s.plateau_bad = None, 0
        # a plateau of an eval metric resets after the step's log, which cleared the kl and entropy lists
        metrics = {**(self.step_metrics or {k: v for k in ("reward", "kl", "entropy")
                                            if (v := tr.step_metric(k)) is not None}), **metrics}
        event = ResetEvent(step=tr.state.global_step, reset=s.reset_count, trigger=trigger,
                           metrics={k: float(v) for k, v in metrics.items()}, stage=s.stage,
                           stage_overrides=dict(overrides), restart_required=restart, time=time.time())
        s.events.append(asdict(event))
        if tr.accelerator.is_main_process:
            with open(os.path.join(args.output_dir, RESETS_FILE), "a") as f:
                f.write(json.dumps(asdict(event)) + "\n")
                f.flush()
                os.fsync(f.fileno())
        log.info("reset %d at step %d (%s): stage %d %s", event.reset, event.step, trigger, event.stage, overrides)
        if restart and control is not None:
            log.warning("stage %d changes the generation batch shape (%s): saving a checkpoint and %s", s.stage,
                        sorted(overrides), "resuming from it" if tr.restarts_in_process else
                        "stopping; resume from it to continue with the new stage")
            control.should_save = True
            control.should_log = True  # the steps since the last log, before the restart forgets their metrics
            control.should_training_stop = True
            self.restart_pending = True
        for cb in tr.callback_handler.callbacks:
            if isinstance(cb, ResetCallback):
                cb.on_reset(args, tr.state, control, event=event, trainer=tr)
        return event

    # -- Persistence -------------------------------------------------------------------------------------------
    def save(self, checkpoint_dir: str) -> None:
        with open(os.path.join(checkpoint_dir, STATE_FILE), "w") as f:
            json.dump(asdict(self.state), f, indent=1)

    def load(self, checkpoint_dir: str, replay_hooks: bool = True) -> bool:
        """Restore the reset state of a checkpoint, re-apply its stages and (`replay_hooks`) replay the reset hooks.
        False if it has none (not a ProRL run)."""
        path = os.path.join(checkpoint_dir, STATE_FILE)
        if not os.path.exists(path):
            return False
        with open(path) as f:
            state = ResetState(**json.load(f))
        tr = self.trainer
        budget = tr.args.max_generated_tokens
        if budget is not None and state.generated_tokens >= budget:  # on_step_end would stop only after a step
            raise ValueError(f"resume_from_checkpoint: {checkpoint_dir} has generated {state.generated_tokens} "
                             f"tokens, max_generated_tokens is {budget}: nothing to train (raise it to go on)")
        self.state = state
        for overrides in tr.args.stages[: self.state.stage]:
            tr.apply_stage(overrides, live=False)
        hooks = [cb for cb in tr.callback_handler.callbacks if isinstance(cb, ResetCallback)] if replay_hooks else []
        for event in self.state.events:
            for cb in hooks:
                cb.on_reset(tr.args, tr.state, None, event=ResetEvent(**event), trainer=tr, replay=True)
        if tr.accelerator.is_main_process:
            lines = [json.dumps(e) + "\n" for e in self.state.events]
            atomic_write(os.path.join(tr.args.output_dir, RESETS_FILE), "".join(lines))
        return True


def atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_jsonl(path: str, max_step: int) -> None:
    """Keep the well-formed lines of a metrics file whose `step` <= max_step (used on resume: the lines a killed
    run wrote after its last checkpoint are replayed by the resumed run)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the half-written last line of a killed run
            if row.get("step", 0) <= max_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write(path, "".join(kept))

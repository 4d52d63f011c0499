"""`ProRLTrainer`: TRL's `GRPOTrainer` plus dynamic sampling, hard resets, stages, the no-EOS penalty and the
environment reward. Everything else (generation, vLLM, the DAPO loss, KL, logging, checkpointing) is TRL's.

Extension points used (all methods of `GRPOTrainer`/`Trainer`, called with `super()`):
  - `_generate_and_score_completions`: called repeatedly per step for dynamic sampling; the kept rows are merged
    (prorl/trainer/dynamic_sampling.py, which also defers the log-prob passes to the kept rows).
  - `_compute_loss`: a step completed with dynamic sampling's filler rows is rescaled to the update of its kept
    rows (prorl/trainer/fillers.py).
  - `_get_per_token_logps_and_entropies`: with `padding_free`, packed rows of real tokens only
    (prorl/trainer/packing.py).
  - `_calculate_rewards`: the no-EOS penalty, and the rewards that dynamic sampling filters on.
  - `compute_loss` / `create_optimizer`: an update whose batch has no loss token is skipped
    (prorl/trainer/update_guard.py).
  - `log`: the ProRL metrics, and `output_dir/metrics.jsonl`.
  - `_save_checkpoint` / `train`: the reset state travels with checkpoints and is restored on resume.
  - `_get_train_sampler`, and the generation buffer in checkpoints: a resumed run replays the uninterrupted one
    (prorl/trainer/resume.py).
Resets' reference sync and stages' overrides: prorl/trainer/stages.py.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from accelerate.utils import gather, is_peft_model
from datasets import IterableDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from prorl.trainer.callbacks import ResetController, full_weights, load_weights_, truncate_jsonl
from prorl.trainer.checkpointing import keep_selective_checkpointing
from prorl.trainer.generation import trainer_generate
from prorl.trainer.config import ProRLConfig
from prorl.trainer.dynamic_sampling import DynamicSamplingMixin
from prorl.trainer.fillers import FillerScalingMixin
from prorl.trainer.packing import PaddingFreeMixin
from prorl.trainer.resume import ResumeMixin
from prorl.trainer.rewards import EnvReward
from prorl.trainer.sampling import mixture_view
from prorl.trainer.stages import StagesMixin
from prorl.trainer.update_guard import SkipEmptyUpdatesMixin

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
REFERENCE_FILE = "reference.safetensors"  # in checkpoints after the first reset: the KL anchor
# The metric names for values TRL already logs under its own names (both are kept).
METRIC_ALIASES = {
    "completion_length/mean": "completions/mean_length",
    "completion_length/max": "completions/max_length",
    "clip_ratio/low": "clip_ratio/low_mean",
    "clip_ratio/high": "clip_ratio/high_mean",
}


class ProRLTrainer(StagesMixin, DynamicSamplingMixin, FillerScalingMixin, PaddingFreeMixin, SkipEmptyUpdatesMixin,
                   ResumeMixin, GRPOTrainer):
    """GRPO with the ProRL recipe. `reward_funcs` defaults to `EnvReward` (route each row to its `env`)."""

    _tag_names = ["trl", "grpo", "prorl"]

    def __init__(self, model, reward_funcs=None, args: ProRLConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_processing_classes=None, callbacks=None, **kwargs):
        # GRPOTrainer's order of arguments, so that a call written for it passes each one to the same parameter
        if not isinstance(args, ProRLConfig):
            raise TypeError(f"ProRLTrainer needs a ProRLConfig, got {type(args).__name__}")
        if reward_funcs is None:
            reward_funcs = EnvReward(workers=args.reward_workers, timeout_s=args.reward_timeout_s)
        if args.dynamic_sampling and isinstance(train_dataset, IterableDataset):
            raise ValueError("dynamic_sampling needs a map-style train_dataset (refill prompts are drawn by index)")
        if args.dynamic_sampling and args.scale_rewards == "batch":
            log.warning("scale_rewards='batch' with dynamic sampling: each round is scaled by its own batch std, "
                        "dropped groups included, so merged rows from different rounds carry differently scaled "
                        "advantages; 'group' or 'none' do not have this problem")
        super().__init__(model, reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, reward_processing_classes=reward_processing_classes,
                         callbacks=callbacks, **kwargs)
        self._check_fsdp()
        keep_selective_checkpointing(self.model)  # every_n_layers survives TRL's re-enable after each generation
        self._check_length_grouping()
        self._check_padding_free()
        if args.beta != 0 and is_peft_model(self.model) and (args.wants_resets or args.stages):
            raise NotImplementedError("resets with a PEFT model are not supported (its reference is the base "
                                      "model with adapters disabled); train without peft_config")
        self.source_dataset = train_dataset  # env_weights resample it into self.train_dataset
        mixtures = [("env_weights", args.env_weights)] + [
            (f"stages[{i}].env_weights", stage["env_weights"]) for i, stage in enumerate(args.stages)
            if "env_weights" in stage]
        mixtures = [(name, weights) for name, weights in mixtures if weights]
        if mixtures and train_dataset is not None and not isinstance(train_dataset, IterableDataset):
            # checked now, not at the restart that applies them; the env column is read once for all of them
            have = set(train_dataset["env"]) if "env" in train_dataset.column_names else set()
            for name, weights in mixtures:
                if missing := sorted(set(weights) - have):
                    raise ValueError(f"{name}: no rows for {missing} in the train dataset (it has {sorted(have)})")
        for func in self.reward_funcs:  # unknown envs fail now; an R1-style template's open <think> is read
            if isinstance(func, EnvReward):
                # one built by the caller without these takes the config's reward_workers / reward_timeout_s
                func.workers = args.reward_workers if func.workers is None else func.workers
                func.timeout_s = args.reward_timeout_s if func.timeout_s is None else func.timeout_s
                func.attach(self.processing_class, None if isinstance(train_dataset, IterableDataset) else train_dataset)
        self.resets = ResetController(self)
        self.add_callback(self.resets)
        self._round_rewards: torch.Tensor | None = None  # the latest round: per function, after the no-EOS penalty
        self._round_verdicts: torch.Tensor | None = None  # and its weighted totals before the penalty
        self.generation_metrics: dict[str, float] = {}  # what the latest training generation logged (step_metric)
        self._refill_iter = None
        self._refill_epoch = 0
        self._refill_skip = 0
        self._step_loss_tokens = 0  # loss tokens of the micro-batches since the last optimizer step (this process)
        self._skip_update = False  # set before an optimizer step whose batch has no loss token anywhere
        self._pending_temperature: float | None = None  # a stage's temperature, waiting for the next generation
        self._saved_step = -1  # global step of the latest checkpoint this process took part in
        # the prompt stream's position (prorl/trainer/resume.py): from a checkpoint, and in the running epoch
        self._data_resume = self._data_skip = self._data_start = self._data_epoch = None
        self._data_batches = self._data_step = 0

    # -- Generation ------------------------------------------------------------------------------------------
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """TRL's generation, or with `generation_backend='static'` prorl's static-cache decode loop (text prompts
        on the regular path; vLLM, paged generation and images stay TRL's)."""
        if (self.args.generation_backend == "hf" or self.use_vllm or self.use_transformers_continuous_batching
                or images is not None or multimodal_fields):
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        completion_ids = trainer_generate(self, prompt_ids, backend=self.args.generation_backend,
                                          **(self.args.generation_backend_kwargs or {}))
        return completion_ids, None

    def _prepare_inputs(self, generation_batch):
        if self.model.training:
            self._data_batches += 1  # micro-batches drawn from the data loader in this epoch
        if self._pending_temperature is not None and self.model.training and not self._mid_generation_buffer():
            value, self._pending_temperature = self._pending_temperature, None
            self._set_sampling("temperature", value)
        fresh = self.model.training and not self._mid_generation_buffer()  # TRL generates in this call
        inputs = super()._prepare_inputs(generation_batch)
        if fresh and self.args.group_micro_batches_by_length:
            self._regroup_buffer()
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        if fresh:
            self._scale_fillers()
        return inputs

    # -- Rewards ---------------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        device = rewards_per_func.device
        stop_ids = {*self.eos_token_ids, self._tokenizer.pad_token_id}
        no_eos = gather(torch.tensor([not ids or ids[-1] not in stop_ids for ids in completion_ids_list],
                                     device=device))
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["no_eos_fraction"].append(no_eos.float().mean().item())
        if mode == "train":  # every round of dynamic sampling, dropped groups too: what generation cost
            self.resets.state.generated_tokens += int(gather(torch.tensor(
                [sum(len(ids) for ids in completion_ids_list)], device=device)).sum().item())
        self._round_verdicts = self._total_rewards(rewards_per_func)  # before shaping: dynamic sampling's accuracy
        # training shapes the reward; evaluation (eval_reward, a reset_on_plateau trigger) reports the env's verdict
        if self.args.no_eos_penalty is not None and mode == "train":  # every function the same value: total == it
            total_weight = float(self.reward_weights.sum())
            rewards_per_func[no_eos] = float(self.args.no_eos_penalty) / (total_weight or 1.0)
        self._round_rewards = rewards_per_func
        return rewards_per_func

    def _check_fsdp(self) -> None:
        if self.args.fsdp and not self.is_fsdp_enabled:  # accelerate shards only on accelerators (MULTI_CPU: DDP)
            log.warning("fsdp is set but accelerate did not enable FSDP on %s (%s): every process holds a whole "
                        "replica of the policy, the reference and the optimizer state", self.accelerator.device,
                        self.accelerator.distributed_type)

    def step_metric(self, name: str) -> float | None:
        """A train metric of the latest optimizer step (None if not logged): a metric of the generation (reward,
        completion lengths: mean over its dynamic-sampling rounds) from the generation this step trained on, any
        other (kl, entropy) the mean over the step's micro-batches."""
        if name in self.generation_metrics:
            return self.generation_metrics[name]
        values = self._metrics["train"].get(name) or []
        values = [v for v in values[-self.args.gradient_accumulation_steps:] if v == v]  # not NaN (no token)
        return sum(values) / len(values) if values else None

    # -- Logging and checkpoints ------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            metrics = self._metrics["train"]
            for alias, source in METRIC_ALIASES.items():
                if source in metrics:
                    metrics[alias] = list(metrics[source])
            if metrics:
                metrics["resets"] = [float(self.resets.state.reset_count)]
                metrics["stage"] = [float(self.resets.state.stage)]
                metrics["tokens/generated"] = [float(self.resets.state.generated_tokens)]
        super().log(logs, start_time)
        if self.accelerator.is_main_process and self.state.log_history:
            with open(os.path.join(self.args.output_dir, METRICS_FILE), "a") as f:
                f.write(json.dumps(self.state.log_history[-1]) + "\n")

    def _save_checkpoint(self, model, trial):
        self._saved_step = self.state.global_step
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:  # first, so that a checkpoint with a trainer_state.json always has it
            os.makedirs(folder, exist_ok=True)
            self.resets.state.data_position = self.data_position()
            self.resets.save(folder)
        self._save_reference(folder)
        self._save_generation_buffer(folder)
        super()._save_checkpoint(model, trial)

    def _save_reference(self, folder: str) -> None:
        """After a reset the reference is no longer the model TRL loads at start: save its weights with the
        checkpoint (`reference.safetensors`), so that a resumed run keeps its KL anchor."""
        if self.ref_model is None or self.resets.state.reset_count == 0:
            return
        from transformers.integrations import is_deepspeed_zero3_enabled

        # ZeRO-3 gathers and FSDP2's full_tensor() are collectives: every process joins; otherwise only the saver
        if not (self.args.should_save or is_deepspeed_zero3_enabled() or self.is_fsdp_enabled):
            return
        weights = full_weights(self.accelerator.unwrap_model(self.ref_model), keep=self.args.should_save)
        if self.args.should_save:
            from safetensors.torch import save_file

            os.makedirs(folder, exist_ok=True)
            save_file(weights, os.path.join(folder, REFERENCE_FILE), metadata={"format": "pt"})

    @property
    def restarts_in_process(self) -> bool:
        """DeepSpeed/FSDP engines are not re-entrant; a save_only_model checkpoint has no optimizer, schedule or RNG
        state to go on from: those runs stop at the restart checkpoint instead."""
        return self.args.restart_stages_in_process and not (self.is_deepspeed_enabled or self.is_fsdp_enabled
                                                            or self.args.save_only_model)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        in_process = False  # an in-process restart: the reset hooks' changes are already made
        while True:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint:
                self._restore_run_state(resume_from_checkpoint, replay_hooks=not in_process)
            if self.args.env_weights:
                self.train_dataset = mixture_view(self.source_dataset, self.args.env_weights, seed=self.args.seed)
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            budget = self.args.max_generated_tokens
            finished = self.state.global_step >= self.state.max_steps or (
                budget is not None and self.resets.state.generated_tokens >= budget)
            if not (self.resets.restart_pending and self.restarts_in_process) or finished:
                self.resets.restart_pending = False
                return output
            # A stage reshaped the generation batch: TRL's data loader is built for the old shape, so go on as a
            # relaunch would, from the checkpoint saved at the reset (same weights, reference and reset state).
            resume_from_checkpoint = self._restart_checkpoint()
            self.accelerator.wait_for_everyone()  # the main process writes the checkpoint
            if not os.path.exists(os.path.join(resume_from_checkpoint, "trainer_state.json")):
                raise RuntimeError(f"stage {self.resets.state.stage}: no checkpoint {resume_from_checkpoint} to "
                                   "restart from")
            log.info("stage %d: resuming in process from %s", self.resets.state.stage, resume_from_checkpoint)
            self._forget_generation_state()
            in_process = True

    def _restart_checkpoint(self) -> str:
        return os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, trial, *args, **kwargs):
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, trial, *args, **kwargs)
        # A restart stage asked for a checkpoint; save_strategy="best" overrules should_save with "is a new best".
        # (Decided from what this process did, the same on every process: not from files the main one writes.)
        if self.resets.restart_pending and self._saved_step != self.state.global_step:
            self._save_checkpoint(model, trial)
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _forget_generation_state(self) -> None:
        """What a fresh process would not have: buffered generation batches, the refill stream, unlogged metrics,
        the optimizer and its schedule (rebuilt by Trainer.train and loaded from the checkpoint)."""
        self.resets.restart_pending = False
        self.optimizer, self.lr_scheduler = None, None
        self._step, self._buffered_inputs = 0, None
        self._refill_iter, self._refill_epoch = None, 0
        self._step_loss_tokens, self._skip_update, self._pending_temperature = 0, False, None
        self.generation_metrics = {}
        for metrics in self._metrics.values():
            metrics.clear()

    def _restore_run_state(self, checkpoint: str, replay_hooks: bool = True) -> None:
        """Before the data loader is built: reset state and stages from the checkpoint, and the run's metric files
        rolled back to the checkpoint's step (what a killed run logged after it will be logged again)."""
        with open(os.path.join(checkpoint, "trainer_state.json")) as f:
            step = json.load(f)["global_step"]
        if 0 < self.args.max_steps <= step:  # Trainer would train one step past max_steps, mid-epoch
            raise ValueError(f"resume_from_checkpoint: {checkpoint} is at step {step}, max_steps is "
                             f"{self.args.max_steps}: nothing to train (raise max_steps to go on)")
        self.resets.load(checkpoint, replay_hooks)
        position = self.resets.state.data_position  # None in an older prorl's checkpoint: Trainer's positioning
        self._data_resume = (position, step) if position else None
        self._refill_skip = self.resets.state.refill_batches
        reference = os.path.join(checkpoint, REFERENCE_FILE)
        if self.ref_model is not None and os.path.exists(reference):
            from safetensors.torch import load_file

            load_weights_(self.accelerator.unwrap_model(self.ref_model), load_file(reference))
        elif self.ref_model is not None and self.resets.state.reset_count:
            log.warning("checkpoint %s has no %s (saved by an older prorl?): the reference stays the initial model, "
                        "not the policy of reset %d", checkpoint, REFERENCE_FILE, self.resets.state.reset_count)
        self._load_generation_buffer(checkpoint)
        if self.accelerator.is_main_process:
            truncate_jsonl(os.path.join(self.args.output_dir, METRICS_FILE), step)


def latest_complete_checkpoint(output_dir: str) -> str:
    """The newest `checkpoint-N` of `output_dir` that was completely written (its trainer_state.json, saved last,
    exists): a run killed while saving leaves a partial folder that must not be resumed from."""
    steps = []
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and name.split("-")[-1].isdigit():
            if os.path.exists(os.path.join(output_dir, name, "trainer_state.json")):
                steps.append(int(name.split("-")[-1]))
    if not steps:
        raise ValueError(f"no complete checkpoint in output_dir {output_dir} to resume from")
    return os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}")

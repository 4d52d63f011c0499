"""`ProRLConfig`: TRL's `GRPOConfig` with the ProRL recipe's defaults and the fields for dynamic sampling, hard
resets of the reference policy and optimizer, training stages and the no-EOS penalty.

Paper: "Scaling Up RL: Unlocking Diverse Reasoning in LLMs via Prolonged Training" (NVIDIA, the ProRL recipe),
arXiv 2507.12507. Defaults below follow its Section 4 (DAPO decoupled clipping 0.2/0.4, temperature 1.2, 16 samples
per prompt, constant learning rate 2e-6, a KL penalty, dynamic sampling, periodic reference/optimizer resets).
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from trl import GRPOConfig

from prorl.trainer.values import (NUMBER_RULES, RANGE_CHECKED, check_choices, check_ranges, field_value, require,
                                  whole_number)

# Stage overrides applied in place, at the reset that starts the stage (no restart needed).
LIVE_STAGE_FIELDS = frozenset({
    "max_completion_length", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "no_eos_penalty",
    "beta", "epsilon", "epsilon_high", "learning_rate", "mask_truncated_completions",
    "dynamic_sampling", "dynamic_sampling_accuracy_window", "dynamic_sampling_std_tol",
    "dynamic_sampling_max_rounds", "dynamic_sampling_refill", "reset_every_steps", "reset_on_plateau",
    "reset_plateau_patience", "reset_plateau_min_delta", "reset_on_kl", "reset_optimizer", "reset_min_interval",
})
# Stage overrides that change the shape of a generation batch: the data loader is built from them when training
# starts, so the trainer saves a checkpoint at that reset and resumes from it (in process, or at the next launch).
RESTART_STAGE_FIELDS = frozenset({"num_generations", "per_device_train_batch_size", "steps_per_generation",
                                  "env_weights"})
BATCH_SHAPE_FIELDS = ("num_generations", "per_device_train_batch_size", "steps_per_generation")  # may be "x2"


@dataclass
class ProRLConfig(GRPOConfig):
    r"""Configuration of [`ProRLTrainer`]: every [`~trl.GRPOConfig`] field plus the ProRL ones below.

    Changed defaults (the paper's): `loss_type="dapo"`, `epsilon=0.2`, `epsilon_high=0.4`, `beta=1e-4`,
    `temperature=1.2`, `num_generations=16`, `learning_rate=2e-6` with a constant schedule.
    """

    # -- The paper's defaults for existing GRPOConfig fields ------------------------------------------------
    learning_rate: float = field(default=2e-6, metadata={"help": "AdamW learning rate (ProRL: 2e-6, constant)."})
    lr_scheduler_type: str = field(
        default="constant", metadata={"help": "Learning-rate schedule; ProRL keeps the rate constant."})
    loss_type: str = field(
        default="dapo", metadata={"help": "Policy loss aggregation (see GRPOConfig); ProRL uses DAPO's token-level "
                                          "'dapo' loss."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clipping range of the ratio (ProRL/DAPO: 0.2)."})
    epsilon_high: float | None = field(
        default=0.4, metadata={"help": "Upper clipping range (DAPO clip-higher; ProRL: 0.4)."})
    beta: float = field(
        default=1e-4,
        metadata={"help": "KL coefficient against the reference policy. ProRL uses a KL penalty but the paper does "
                          "not state its coefficient: 1e-4 is this library's choice, not the paper's."})
    temperature: float = field(default=1.2, metadata={"help": "Sampling temperature (ProRL: 1.2)."})
    num_generations: int | None = field(
        default=16, metadata={"help": "Completions sampled per prompt (ProRL: 16, later 32)."})
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Completions per device per optimizer micro-step; with the default "
                                      "steps_per_generation (1) one whole group of 16, so the defaults are valid "
                                      "(TrainingArguments' 8 is not a multiple of 16)."})

    # -- Dynamic sampling (DAPO) ----------------------------------------------------------------------------
    dynamic_sampling: bool = field(
        default=True,
        metadata={"help": "Drop prompt groups that carry no learning signal (accuracy outside the window or reward "
                          "std below the tolerance) and refill the batch with freshly sampled prompts."})
    dynamic_sampling_accuracy_window: list[float] | None = field(
        default=None,
        metadata={"help": "Optional extra filter: keep a group only if its accuracy (mean total reward of its scored "
                          "completions before the no-EOS penalty; the pass rate for binary rewards) is strictly "
                          "between these two values, e.g. [0, 0.9] to drop nearly solved prompts too. DAPO's filter "
                          "(accuracy 0 or 1) is the std criterion below, whatever the reward range."})
    dynamic_sampling_std_tol: float = field(
        default=1e-6,
        metadata={"help": "Drop a group whose reward standard deviation is <= this tolerance (a tolerance, not "
                          "`== 0`: rounding leaves tiny non-zero std on constant groups)."})
    dynamic_sampling_max_rounds: int = field(
        default=4,
        metadata={"help": "Most extra generation rounds per step. When reached, the step trains on the groups it "
                          "has (the batch is completed with dropped rows whose loss is masked, left out of the "
                          "loss's normaliser whatever the loss_type: the update of the kept groups alone) and logs "
                          "a warning."})

    dynamic_sampling_refill: str = field(
        default="full",
        metadata={"help": "Size of a refill round. 'full': a whole generation batch, as DAPO and verl sample (the "
                          "surplus of kept groups is discarded). 'adaptive': only as many prompts as the missing "
                          "groups need at the keep rate seen so far in the step (at least the missing groups, at most "
                          "a whole batch), which spends fewer generated tokens per kept group. Needs whole groups "
                          "on each process (per_device_train_batch_size x steps_per_generation a multiple of "
                          "num_generations); otherwise full batches are used, with a warning."})
    max_generated_tokens: int | None = field(
        default=None,
        metadata={"help": "Stop training once this many completion tokens have been generated (all processes, every "
                          "dynamic-sampling round, dropped groups included; logged as `tokens/generated`): a "
                          "generation budget for comparing runs at equal sampling cost. None: no budget (max_steps "
                          "or the epochs end the run)."})

    # -- Hard resets of the reference policy and the optimizer --------------------------------------------------
    reset_every_steps: int | None = field(
        default=None, metadata={"help": "Reset N optimizer steps after the previous reset of any trigger (or the "
                                        "start): a plateau reset at step 150 moves the next scheduled one from 200 "
                                        "to 350 (None: no scheduled reset)."})
    reset_on_plateau: str | None = field(
        default=None,
        metadata={"help": "Name of a logged metric (e.g. 'eval_reward'); reset when it has not improved by "
                          "`reset_plateau_min_delta` for `reset_plateau_patience` observations."})
    reset_plateau_patience: int = field(
        default=3, metadata={"help": "Observations without improvement before a plateau reset."})
    reset_plateau_min_delta: float = field(
        default=0.0, metadata={"help": "Smallest change of the plateau metric that counts as an improvement."})
    reset_plateau_mode: str = field(
        default="max", metadata={"help": "'max' if a higher plateau metric is better, 'min' otherwise."})
    reset_on_kl: float | None = field(
        default=None, metadata={"help": "Reset when the KL to the reference (mean over the step) exceeds this."})
    reset_optimizer: bool = field(
        default=True,
        metadata={"help": "At a reset also clear the optimizer state (AdamW moments and step counts); the "
                          "learning-rate schedule continues."})
    reset_min_interval: int = field(
        default=0, metadata={"help": "Fewest optimizer steps between two triggered (plateau or KL) resets."})
    stages: list[dict[str, Any]] | str | None = field(
        default=None,
        metadata={"help": "Overrides applied at successive resets: stages[0] at the first reset, stages[1] at the "
                          "second, ... (a JSON list on the command line). Example: "
                          "[{'max_completion_length': 16384}, {'num_generations': 32, 'temperature': 1.0}]. Keys "
                          f"applied in place: {sorted(LIVE_STAGE_FIELDS)}. Keys that reshape the generation batch "
                          f"({sorted(RESTART_STAGE_FIELDS)}) save a checkpoint at that reset, from which the run "
                          "goes on with them (see restart_stages_in_process); their value may be 'x2' (twice the "
                          "value before that stage, e.g. the one set for this GPU count)."})
    restart_stages_in_process: bool = field(
        default=True,
        metadata={"help": "When a stage reshapes the generation batch: resume from the checkpoint saved at that "
                          "reset in the same process and go on (True), or stop there and let the next launch "
                          "resume (False; always so under DeepSpeed and FSDP, whose engines are not "
                          "re-entrant, and with save_only_model, whose checkpoints lack the optimizer and schedule)."})

    env_weights: dict[str, float] | str | None = field(
        default=None,
        metadata={"help": "Share of each environment's prompts (by the dataset's `env` column) in the training "
                          "stream, e.g. {'math': 0.4, 'code': 0.24}; environments not listed are left out. None: the "
                          "dataset as it is. A JSON object on the command line."})

    # -- Reward shaping and scoring -------------------------------------------------------------------------
    no_eos_penalty: float | None = field(
        default=None,
        metadata={"help": "Reward given to a completion cut at `max_completion_length` without an EOS token, in "
                          "place of its environment reward (ProRL penalises such runaway completions; the paper "
                          "gives no value). In training only: evaluation reports the environment reward. None: "
                          "no penalty."})
    reward_workers: int | None = field(
        default=None,
        metadata={"help": "Scoring worker processes for the environment reward (None: PRORL_SCORE_WORKERS or the "
                          "number of CPUs)."})
    reward_timeout_s: float | None = field(
        default=None,
        metadata={"help": "Per-sample scoring timeout in seconds (None: each environment's own): a verifier past it is "
                          "killed and the sample masked, neither rewarded nor penalised. The code sandbox keeps its "
                          "own budget (5 s, the paper's; a program past it scores 0)."})

    # -- Generation ------------------------------------------------------------------------------------------
    generation_backend: str = field(
        default="hf",
        metadata={"help": "Decode loop of the regular (no vLLM) generation path: 'hf' (transformers' generate, TRL's "
                          "default) or 'static' (prorl.trainer.generation: reused static KV cache, decode step compiled"
                          " into CUDA graphs on GPU (eager for sliding-window models), a host sync every few steps; "
                          "same tokens as 'hf' under greedy decoding (in bf16: as 'hf' with a static cache); under a "
                          "fixed seed the same draws within a call, but the random stream after it differs (it samples "
                          "up to stop_check_every - 1 steps past the last EOS), so later calls draw other samples of "
                          "the same distribution). Text prompts only; ignored with use_vllm or paged generation. A GPU "
                          "feature: on CPU (no CUDA graphs) it measured 0.74-0.89x "
                          "the speed of 'hf' on the demo model."})
    generation_backend_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Options of the 'static' backend: compile (None: on CUDA only), compile_mode "
                          "('reduce-overhead'), pack_gqa (True), stop_check_every (16), cache_len_multiple (256). A "
                          "JSON object on the command line."})

    # -- Training forwards ----------------------------------------------------------------------------------
    group_micro_batches_by_length: bool = field(
        default=False,
        metadata={"help": "Within each optimizer step's rows (per process), deal them into micro-batches by "
                          "completion length and cut each micro-batch to its own longest completion: TRL pads "
                          "every row to the generation's longest and shuffles, so with lengths that vary most "
                          "training forwards compute padding. The old-policy/reference log-prob passes then run per "
                          "micro-batch at its width too. The step's rows and normalizer are unchanged: the "
                          "same update for loss_type dapo, grpo, dr_grpo and cispo (others refused); needs "
                          "steps_per_generation a multiple of gradient_accumulation_steps and "
                          "top_entropy_quantile 1.0 and entropy_coef 0 (per-micro-batch quantile and entropy mean)."})
    padding_free: bool = field(
        default=False,
        metadata={"help": "Forward only real tokens in the log-prob passes (training, old policy, reference): each "
                          "micro-batch's sequences (prompt + completion, no padding) are packed first-fit-decreasing "
                          "into rows of at most padding_free_max_tokens, position ids restarting per sequence. A probe "
                          "when the trainer is built refuses a model that lets packed sequences see each other (mask "
                          "not built from position ids: OPT, Bloom, GPT-OSS; recurrent layers: Qwen3.5, LFM2) and "
                          "packs one row per forward where only that keeps them apart (flash attention). Same "
                          "log-probs and update as the padded pass up to float rounding for RoPE models. Text-only "
                          "models; refused with a router load-balancing loss."})
    padding_free_max_tokens: int | None = field(
        default=None,
        metadata={"help": "Longest packed row under padding_free (a sequence is never split). None: the micro-batch's "
                          "padded width, so no packed row costs more attention than a padded one with a mask-based "
                          "attention (sdpa, eager: the mask and its cost grow with the square of the row). Not used "
                          "with flash attention, which gets one row per forward."})

    def __post_init__(self):
        if isinstance(self.generation_backend_kwargs, str):
            try:
                self.generation_backend_kwargs = json.loads(self.generation_backend_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"generation_backend_kwargs: not valid JSON ({exc})") from None
        if isinstance(self.env_weights, str):
            try:
                self.env_weights = json.loads(self.env_weights)
            except json.JSONDecodeError as exc:
                raise ValueError(f"env_weights: not valid JSON ({exc}): {self.env_weights!r}") from None
        if isinstance(self.stages, str):
            try:
                self.stages = json.loads(self.stages)
            except json.JSONDecodeError as exc:
                raise ValueError(f"stages: not valid JSON ({exc}): {self.stages!r}") from None
        try:
            super().__post_init__()
        except ValueError as exc:  # TRL names generation_batch_size, which configs rarely set: say what makes it
            if "must be divisible by num_generations" not in str(exc) or self.steps_per_generation is None:
                raise
            raise ValueError(f"{exc} The generation batch is per_device_train_batch_size "
                             f"{self.per_device_train_batch_size} x {self.world_size} processes x steps_per_generation "
                             f"{self.steps_per_generation} rollouts: change one of them or num_generations") from None
        self._validate_prorl()

    def _validate_prorl(self) -> None:
        require(self.generation_backend in ("hf", "static"), "generation_backend", "must be 'hf' or 'static'")
        check_choices(self)
        deepspeed = self.deepspeed_plugin.deepspeed_config if self.deepspeed_plugin is not None else {}
        if (deepspeed.get("zero_optimization") or {}).get("zenflow") is not None:  # `deepspeed` or accelerate's file
            raise ValueError(
                "deepspeed: zero_optimization.zenflow is not supported: ZenFlow steps the optimizer outside the torch "
                "optimizer that a hard reset re-initialises and that an empty update skips (with overlap_step its "
                "CPU Adam and that Adam's state live in a separate process; its selective AdamW, outside the "
                "`.optimizer` chain, keeps moments of its own), so a reset could not clear the optimizer state and a "
                "skipped update would still move the weights; remove `zenflow` from the DeepSpeed config")
        if self.group_micro_batches_by_length:
            require(self.loss_type in LENGTH_GROUPING_LOSSES, "group_micro_batches_by_length",
                    f"needs loss_type in {LENGTH_GROUPING_LOSSES} (per-micro-batch normalisers of "
                    f"{self.loss_type!r} would change the update)")
            require(self.top_entropy_quantile == 1.0, "group_micro_batches_by_length",
                    "needs top_entropy_quantile 1.0 (the entropy quantile is taken per micro-batch)")
            require(self.entropy_coef == 0 and not self.use_adaptive_entropy, "group_micro_batches_by_length",
                    "needs entropy_coef 0 and use_adaptive_entropy off (the entropy bonus is a per-micro-batch "
                    "token mean)")
            require(self.steps_per_generation % self.gradient_accumulation_steps == 0,
                    "group_micro_batches_by_length", "needs steps_per_generation a multiple of "
                    "gradient_accumulation_steps (an optimizer step must not span two generations)")
        for name in ("max_generated_tokens", "padding_free_max_tokens", "reward_workers"):
            if getattr(self, name) is not None:
                setattr(self, name, whole_number(name, getattr(self, name)))
        for name in NUMBER_RULES:  # typed as stage values are (YAML values reach here unconverted: [1], 2.5, "x")
            setattr(self, name, field_value(name, getattr(self, name), field_types()[name]))
        if self.dynamic_sampling_accuracy_window is not None:
            self.dynamic_sampling_accuracy_window = _accuracy_window(self.dynamic_sampling_accuracy_window,
                                                                     "dynamic_sampling_accuracy_window")
        require(self.padding_free_max_tokens is None or self.padding_free_max_tokens >= 1,
                "padding_free_max_tokens", "must be >= 1 (or None: the micro-batch's padded width)")
        in_force = {name: getattr(self, name) for name in RANGE_CHECKED}
        check_ranges(in_force, "")
        require(self.reset_plateau_mode in ("max", "min"), "reset_plateau_mode", "must be 'max' or 'min'")
        require(self.max_generated_tokens is None or self.max_generated_tokens > 0, "max_generated_tokens",
                "must be > 0")
        require(self.reward_workers is None or self.reward_workers >= 0, "reward_workers", "must be >= 0")
        require(self.reward_timeout_s is None or self.reward_timeout_s > 0, "reward_timeout_s",
                "must be > 0 (None: each environment's own); at <= 0 every sample would time out and be masked")
        if self.env_weights is not None:
            _check_env_weights(self.env_weights, "env_weights")
        if self.stages is None:
            self.stages = []
        if not isinstance(self.stages, list):
            raise ValueError(f"stages must be a list of mappings, got {type(self.stages).__name__}")
        known = {f.name for f in fields(self)}
        for i, stage in enumerate(self.stages):
            if not isinstance(stage, dict):
                raise ValueError(f"stages[{i}] must be a mapping of field -> value, got {stage!r}")
            for key in stage:
                if key not in known:
                    close = difflib.get_close_matches(key, LIVE_STAGE_FIELDS | RESTART_STAGE_FIELDS, n=1)
                    raise ValueError(f"stages[{i}]: {key!r} is not a ProRLConfig field"
                                     + (f" (did you mean {close[0]!r}?)" if close else ""))
                if key not in LIVE_STAGE_FIELDS | RESTART_STAGE_FIELDS:
                    raise ValueError(f"stages[{i}]: {key!r} cannot change during a run; stage keys are "
                                     f"{sorted(LIVE_STAGE_FIELDS | RESTART_STAGE_FIELDS)}")
            self.stages[i] = stage = {key: field_value(f"stages[{i}].{key}", value, field_types()[key],
                                                        multiple_ok=key in BATCH_SHAPE_FIELDS)
                                      for key, value in stage.items()}
            if "env_weights" in stage:
                _check_env_weights(stage["env_weights"], f"stages[{i}].env_weights")
            if stage.get("dynamic_sampling_accuracy_window") is not None:
                stage["dynamic_sampling_accuracy_window"] = _accuracy_window(
                    stage["dynamic_sampling_accuracy_window"], f"stages[{i}].dynamic_sampling_accuracy_window")
            # the values in force from this stage on get the checks the config's own got (not at the reset, hours in)
            in_force.update((k, v) for k, v in stage.items() if k in in_force)
            check_ranges(in_force, f"stages[{i}]: ")
            if "beta" in stage and self.beta == 0 and stage["beta"] != 0:
                raise ValueError(f"stages[{i}]: beta cannot become non-zero when the run starts with beta = 0 "
                                 "(no reference model is built)")
        self._check_stage_batch_shapes()
        penalties = [self.no_eos_penalty] + [stage.get("no_eos_penalty") for stage in self.stages]
        if self.reward_weights and sum(self.reward_weights) == 0 and any(p is not None for p in penalties):
            raise ValueError(f"no_eos_penalty: reward_weights {self.reward_weights} sum to 0, so no reward per "
                             "function gives a weighted total equal to the penalty (each function gets penalty / "
                             "sum of weights); rescale reward_weights or leave no_eos_penalty None")

    def _check_stage_batch_shapes(self) -> None:
        """Each batch shape the stages reach (they apply in turn) holds whole groups: checked now rather than at
        the reset that reaches it, hours into the run."""
        shape = {k: getattr(self, k) for k in BATCH_SHAPE_FIELDS}
        for i, stage in enumerate(self.stages):
            if not shape.keys() & stage.keys():
                continue
            for k in shape.keys() & stage.keys():  # "x2": twice the value before this stage, whatever it was set to
                if isinstance(stage[k], str) and (m := re.fullmatch(r"\s*x\s*(\d+)\s*", stage[k])):
                    self.stages[i] = stage = {**stage, k: shape[k] * int(m.group(1))}
            shape.update((k, v) for k, v in stage.items() if k in shape)
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape.values()):
                raise ValueError(f"stages[{i}]: {sorted(shape)} must be positive integers, got {shape}")
            if shape["num_generations"] < 2:  # TRL's rule for the config's own (GRPOConfig.__post_init__)
                raise ValueError(f"stages[{i}]: num_generations must be >= 2 (GRPO's advantages compare the "
                                 f"completions of a prompt), got {shape['num_generations']}")
            rollouts = shape["per_device_train_batch_size"] * self.world_size * shape["steps_per_generation"]
            if rollouts % shape["num_generations"]:
                raise ValueError(f"stages[{i}]: its generation batch of {rollouts} rollouts "
                                 f"(per_device_train_batch_size {shape['per_device_train_batch_size']} x "
                                 f"{self.world_size} processes x "
                                 f"steps_per_generation {shape['steps_per_generation']}) is not divisible by "
                                 f"num_generations {shape['num_generations']}")
            if self.group_micro_batches_by_length and shape["steps_per_generation"] % self.gradient_accumulation_steps:
                raise ValueError(f"stages[{i}]: steps_per_generation {shape['steps_per_generation']} is not a "
                                 f"multiple of gradient_accumulation_steps {self.gradient_accumulation_steps}, "
                                 "which group_micro_batches_by_length needs")

    @property
    def wants_resets(self) -> bool:
        return bool(self.reset_every_steps or self.reset_on_plateau or self.reset_on_kl)


LENGTH_GROUPING_LOSSES = ("dapo", "grpo", "dr_grpo", "cispo")


def _accuracy_window(window: Any, name: str) -> list[float]:
    if (not isinstance(window, (list, tuple)) or len(window) != 2
            or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in window)
            or not window[0] < window[1]):
        raise ValueError(f"{name} must be [low, high] with low < high, got {window!r}")
    return [float(window[0]), float(window[1])]


def _check_env_weights(weights: Any, name: str) -> None:
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{name} must be a non-empty mapping of env id -> weight, got {weights!r}")
    for env, w in weights.items():
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w < float("inf"):  # NaN too
            raise ValueError(f"{name}[{env!r}] must be a number >= 0, got {w!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"{name}: the weights sum to 0")


@lru_cache(maxsize=1)
def field_types() -> dict[str, Any]:
    return typing.get_type_hints(ProRLConfig)

"""Values of ProRLConfig fields that bypass argparse (YAML values, stage overrides, the demo recipe's `rl` section),
converted as argparse converts flags, with errors that name the field; the range checks of the fields stages may
change."""

from __future__ import annotations

import math
import re
import typing
from typing import Any


def whole_number(name: str, value: Any) -> int:
    """`value` as an int: YAML values reach the dataclasses unconverted (argparse converts only strings), so a
    count written 2.0e+6 becomes 2000000 and 2.5, true or "x" are errors naming the field."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def field_value(name: str, value: Any, hint: Any, multiple_ok: bool = False) -> Any:
    """`value` converted to the scalar type `hint` of a ProRLConfig field, as argparse converts flags; `name` (e.g.
    `stages[1].learning_rate`) is named in the error. For values that bypass argparse: stage overrides (YAML reads
    5e-6 as a string, which would otherwise fail at the reset applying the stage, hours into the run) and the
    demo recipe's `rl` section."""
    allowed = set(typing.get_args(hint)) or {hint}
    if value is None:
        if type(None) in allowed:
            return None
        raise ValueError(f"{name} cannot be null")
    if bool in allowed:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if int in allowed and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if multiple_ok and isinstance(value, str) and re.fullmatch(r"\s*x\s*\d+\s*", value):
            return value  # "x2": a multiple of the value before the stage (batch-shape fields)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if float in allowed and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    if str in allowed and not isinstance(value, str) and not (dict in {typing.get_origin(a) for a in allowed}):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


# Ranges of the numeric fields that stages may change: checked on the config's own values and, from each stage on,
# on the values in force, so that a stage is refused when the config would refuse the same value (TRL checks none of
# these; generation raised on a temperature 0 or top_p 1.5, hours into the run for a stage). None: not set.
NUMBER_RULES = {
    "temperature": (lambda x: x > 0, "must be > 0 (completions are sampled at it, their log-probs divided by it)"),
    "top_p": (lambda x: 0 < x <= 1, "must be in (0, 1]"),
    "top_k": (lambda x: x >= 0, "must be >= 0 (0: no top-k filtering)"),
    "min_p": (lambda x: 0 <= x <= 1, "must be in [0, 1]"),
    "repetition_penalty": (lambda x: x > 0, "must be > 0"),
    "max_completion_length": (lambda x: x >= 1, "must be >= 1"),
    "learning_rate": (lambda x: x >= 0, "must be >= 0"),
    "beta": (lambda x: x >= 0, "must be >= 0 (0: no KL penalty)"),
    "epsilon": (lambda x: x >= 0, "must be >= 0"),
    "epsilon_high": (lambda x: x >= 0, "must be >= 0"),
    "no_eos_penalty": (math.isfinite, "must be a finite number"),
    "dynamic_sampling_std_tol": (lambda x: x >= 0, "must be >= 0"),
    "dynamic_sampling_max_rounds": (lambda x: x >= 0, "must be >= 0"),
    "reset_every_steps": (lambda x: x > 0, "must be > 0"),
    "reset_plateau_patience": (lambda x: x >= 1, "must be >= 1"),
    "reset_on_kl": (lambda x: x > 0, "must be > 0"),
    "reset_min_interval": (lambda x: x >= 0, "must be >= 0"),
}
RANGE_CHECKED = (*NUMBER_RULES, "dynamic_sampling_refill", "reset_on_plateau", "eval_strategy")


def check_ranges(v: dict[str, Any], where: str) -> None:
    """The range checks of the fields stages may change (RANGE_CHECKED), on values converted by `field_value`: the
    config's own (`where` '') or those in force from a stage on (`where` 'stages[i]: ')."""
    for name, (ok, message) in NUMBER_RULES.items():
        require(v[name] is None or ok(v[name]), where + name, f"{message}, got {v[name]!r}")
    plateau = str(v["reset_on_plateau"] or "")
    for ok, name, message in (
            (v["dynamic_sampling_refill"] in ("full", "adaptive"), "dynamic_sampling_refill",
             "must be 'full' or 'adaptive'"),
            (v["reset_on_kl"] is None or v["beta"] > 0, "reset_on_kl",
             "needs beta > 0 (with beta = 0 there is no reference model and no KL)"),
            (not plateau.startswith("eval_") or v["eval_strategy"] != "no", "reset_on_plateau",
             f"{plateau!r} is an evaluation metric: it needs eval_strategy 'steps' or 'epoch' (with 'no' it is "
             "never logged and the reset never happens)")):
        require(ok, where + name, message)


# TRL 1.16's string fields with a fixed set of values, which it reads only inside the training step: a typo there
# raised "Unknown loss type: dapoo" after the model was loaded and the first batch generated (a traceback).
TRL_CHOICES = {
    "loss_type": ("dapo", "grpo", "bnpo", "dr_grpo", "luspo", "cispo", "sapo", "vespo"),
    "scale_rewards": ("group", "batch", "none"),
    "importance_sampling_level": ("token", "sequence"),
    "multi_objective_aggregation": ("sum_then_normalize", "normalize_then_sum"),
    "vllm_mode": ("server", "colocate"),
}


def check_choices(config: Any) -> None:
    """Each TRL_CHOICES field of `config` holds one of its values; the error names the field and the close one."""
    import difflib

    for name, choices in TRL_CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            close = difflib.get_close_matches(str(value).lower(), choices, n=1)
            require(False, name, f"must be one of {list(choices)}, got {value!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else ""))


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name} {message}")

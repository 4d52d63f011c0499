"""Values of ProRLConfig fields that bypass argparse (YAML values, stage overrides, the demo recipe's `rl` section),
converted as argparse converts flags, with errors that name the field; and the YAML loader of `prorl train` configs."""

from __future__ import annotations

import re
import typing
from typing import IO, Any

import yaml


class Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float rule added: PyYAML follows YAML 1.1, whose floats need a dot, so
    `1e-1` or `2e-6` were strings (a list value such as `dynamic_sampling_accuracy_window: [0, 1e-1]` refused, a
    learning rate left to argparse to convert). Ints, YAML 1.1 floats and quoted scalars resolve as before."""


Yaml12FloatLoader.add_implicit_resolver(  # tried after PyYAML's own int and float rules, for the same first characters
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(stream: str | IO[str]) -> Any:
    """A YAML document read with `Yaml12FloatLoader` (safe: plain data only)."""
    return yaml.load(stream, Loader=Yaml12FloatLoader)


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

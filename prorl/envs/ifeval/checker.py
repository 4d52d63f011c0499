"""The checker base class, the registry of instruction ids, and the validation of an instruction's kwargs.

A checker is a frozen dataclass whose fields are the instruction's kwargs, exactly as named in IFEval's
`input_data.jsonl`; `Checker.from_kwargs` checks names, types and values, so a task with a missing or wrong kwarg
fails loudly instead of being scored against a random default (what the official `build_description` does).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any, ClassVar, Literal

Relation = Literal["less than", "at least"]


class InstructionError(ValueError):
    """An instruction that cannot be checked: unknown id, or missing, unknown or invalid kwargs."""


INSTRUCTIONS: dict[str, type["Checker"]] = {}


def instruction(instruction_id: str):
    """Class decorator: make the class a frozen dataclass and register it under `instruction_id`."""

    def wrap(cls: type[Checker]) -> type[Checker]:
        if instruction_id in INSTRUCTIONS:
            raise ValueError(f"instruction id {instruction_id!r} is registered twice")
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.instruction_id = instruction_id
        INSTRUCTIONS[instruction_id] = cls
        return cls

    return wrap


class Checker:
    """One verifiable instruction. Subclasses declare their kwargs as dataclass fields and implement `check`."""

    instruction_id: ClassVar[str] = ""

    def check(self, response: str) -> bool:
        raise NotImplementedError

    def validate(self) -> None:
        """Value checks beyond the types (ranges, non-empty strings); raise `InstructionError`."""

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any] | None) -> "Checker":
        """Build the checker from an instruction's kwargs. Keys whose value is None are ignored (the Hugging Face
        copy of IFEval lists every kwarg of every instruction, with None for those that do not apply)."""
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, dict):
            raise InstructionError(f"{cls.instruction_id}: kwargs must be an object, got {type(kwargs).__name__}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        hints = _kwarg_types(cls)
        names = list(hints)
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InstructionError(f"{cls.instruction_id}: unknown kwargs {unknown}; expected {names or 'none'}")
        missing = [n for n in names if n not in given]
        if missing:
            raise InstructionError(f"{cls.instruction_id}: missing kwargs {missing}")
        values = {n: _coerce(cls.instruction_id, n, given[n], hints[n]) for n in names}
        checker = cls(**values)
        checker.validate()
        return checker


@functools.cache
def _kwarg_types(cls: type[Checker]) -> dict[str, Any]:
    """The checker's kwargs (its dataclass fields, in order) and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(instruction_id: str, name: str, value: Any, hint: Any) -> Any:
    where = f"{instruction_id}: kwarg {name!r}"
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise InstructionError(f"{where} must be one of {list(allowed)}, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InstructionError(f"{where} must be an integer, got {value!r}")
        if value < 0:
            raise InstructionError(f"{where} must be >= 0, got {value}")
        return value
    if hint is str:
        if not isinstance(value, str) or not value.strip():
            raise InstructionError(f"{where} must be a non-empty string, got {value!r}")
        return value
    if origin is tuple:  # tuple[str, ...]: a non-empty list of non-empty strings
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise InstructionError(f"{where} must be a non-empty list of strings, got {value!r}")
        if not all(isinstance(v, str) and v.strip() for v in value):
            raise InstructionError(f"{where} must hold non-empty strings, got {value!r}")
        return tuple(value)
    raise TypeError(f"{where}: unsupported kwarg type {hint!r}")  # a bug in a checker class, not in the task


def compare(count: int, relation: Relation, threshold: int) -> bool:
    """IFEval's two relations: `less than` is count < threshold, `at least` is count >= threshold."""
    return count < threshold if relation == "less than" else count >= threshold


def build_checkers(instruction_ids: Any, kwargs_list: Any) -> list[Checker]:
    """Checkers for one prompt, in order (a repeated id gives two checkers, each with its own kwargs)."""
    if not isinstance(instruction_ids, list) or not all(isinstance(i, str) for i in instruction_ids):
        raise InstructionError(f"instruction_id_list must be a list of strings, got {instruction_ids!r}")
    if not instruction_ids:
        raise InstructionError("instruction_id_list is empty")
    if kwargs_list is None:
        kwargs_list = [{}] * len(instruction_ids)
    if not isinstance(kwargs_list, list) or len(kwargs_list) != len(instruction_ids):
        raise InstructionError(
            f"kwargs must be a list with one object per instruction ({len(instruction_ids)}), got {kwargs_list!r}")
    checkers = []
    for index, (instruction_id, kwargs) in enumerate(zip(instruction_ids, kwargs_list)):
        cls = INSTRUCTIONS.get(instruction_id)
        if cls is None:
            close = difflib.get_close_matches(instruction_id, INSTRUCTIONS, n=3)
            hint = f"did you mean {close}?" if close else f"known ids: {sorted(INSTRUCTIONS)}"
            raise InstructionError(f"unknown instruction id {instruction_id!r} (instruction {index}); {hint}")
        checkers.append(cls.from_kwargs(kwargs))
    return checkers

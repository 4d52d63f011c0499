"""The recipe of `prorl demo` (datasets/tiny.yaml): loaded with its `--set section.key=value` overrides and checked
as a whole before any step. An error names the recipe file, the field and the --set that gave the field its value:

    datasets/tiny.yaml: rl.max_steps must be an integer, got 'abc' (set by --set 'rl.max_steps=abc')
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from prorl.yaml_io import load_yaml

SECTIONS = {"seed", "model", "tasks", "envs", "sft", "rl", "eval"}
# RL settings the demo owns (paths, devices, logging): a recipe may not set them.
_RL_FIXED = {"output_dir", "use_cpu", "bf16", "report_to", "save_strategy", "logging_steps", "disable_tqdm", "seed",
             "gradient_checkpointing"}
# Settings of the sections the demo reads itself (the others: TaskConfig, Qwen2Config, ProRLConfig fields).
_SECTION_KEYS = {"sft": {"teacher_error", "steps", "batch_size", "learning_rate"},
                 "eval": {"prompts_per_env", "n", "temperature", "top_p", "max_new_tokens"}}


class RecipeError(ValueError):
    """A recipe, override or output folder the demo cannot run with (found before any work)."""


class FieldError(ValueError):
    """A recipe value `check_recipe` rejects; `field` is the section or section.key it is about."""

    def __init__(self, field: str, message: str):
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


@contextmanager
def _field(name: str):
    """Errors of the checks run inside name the recipe field `name` (a FieldError from within keeps its own)."""
    try:
        yield
    except FieldError:
        raise
    except (ValueError, TypeError) as exc:
        raise FieldError(name, str(exc)) from exc


def set_by(field: str, overrides: list[str] | tuple[str, ...]) -> str:
    """" (set by --set 'KEY=VALUE')" naming the --set that gave `field` its value (the field itself or a section
    above it), or " (with --set ..., --set ...)" the ones that changed fields below it; "" if none did: errors add it,
    as the recipe file does not hold these values."""
    above, below = {}, {}
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == field or field.startswith(key + "."):
            above[key] = item
        elif key.startswith(field + "."):
            below[key] = item
    if above:
        return f" (set by --set {list(above.values())[-1]!r})"
    return f" (with {', '.join(f'--set {i!r}' for i in below.values())})" if below else ""


# ---------------------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe YAML with `section.key=value` overrides applied (values parsed as YAML), checked as a whole
    (`check_recipe`). A RecipeError names the file, the field and the --set that gave it its value, if one did."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist (the default is datasets/tiny.yaml of the repository; "
                                f"pass --recipe PATH)")
    try:
        recipe = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: the recipe must be a mapping, got {type(recipe).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"{path}: --set {item!r}: expected section.key=value")
        *parents, leaf = key.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{path}: --set {item!r}: {part!r} is not a section")
        try:
            node[leaf] = load_yaml(value)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: --set {item!r}: the value is not valid YAML: {exc}") from None

    def fail(field: str, message: str):
        raise RecipeError(f"{path}: {field}: {message}{set_by(field, overrides)}")

    unknown = sorted(set(recipe) - SECTIONS)
    if unknown:
        fail(unknown[0], f"unknown recipe section(s) {unknown} (known: {sorted(SECTIONS)})")
    for section in ("model", "tasks", "envs", "sft", "rl", "eval"):
        if not isinstance(recipe.get(section) or {}, dict):
            fail(section, f"must be a mapping (`key: value` lines), got {recipe[section]!r}")
    fixed = sorted(set(recipe.get("rl") or {}) & _RL_FIXED)
    if fixed:
        by = set_by(f"rl.{fixed[0]}", overrides)
        fail(f"rl.{fixed[0]}", "the demo sets it itself; " + ("leave that --set out" if by else
                                                              "remove it from the recipe"))
    if not recipe.get("envs"):
        fail("envs", "must list at least one environment with its weight")
    recipe.setdefault("seed", 0)
    for section in ("model", "tasks", "sft", "rl", "eval"):
        recipe[section] = dict(recipe.get(section) or {})
    for section, known in _SECTION_KEYS.items():
        unknown = sorted(set(recipe[section]) - known)
        if unknown:
            fail(f"{section}.{unknown[0]}", f"unknown {section} setting(s) {unknown} (known: {sorted(known)})")
    try:
        check_recipe(recipe)
    except FieldError as exc:
        raise RecipeError(f"{path}: {exc}{set_by(exc.field, overrides)}") from None
    return recipe


def check_recipe(recipe: dict[str, Any]) -> None:
    """Every value of the recipe checked before any work: a typo must not surface after minutes of SFT. Raises
    FieldError naming the field."""
    from transformers import Qwen2Config

    from prorl.demo.tasks import GENERATORS, TaskConfig

    for env_id, weight in recipe["envs"].items():
        if env_id not in GENERATORS:
            raise FieldError(f"envs.{env_id}", f"no demo task generator for {env_id!r} (have {sorted(GENERATORS)})")
        with _field(f"envs.{env_id}"):
            if not float(weight) > 0:
                raise ValueError(f"the weight must be > 0, got {weight}")
    known = set(TaskConfig.__dataclass_fields__)
    for key, value in recipe["tasks"].items():
        if key not in known:
            raise FieldError(f"tasks.{key}", f"unknown task setting (known: {sorted(known)})")
        with _field(f"tasks.{key}"):
            TaskConfig(**{key: value})
    unknown = sorted(set(recipe["model"]) - set(Qwen2Config().to_dict()))
    if unknown:
        raise FieldError(f"model.{unknown[0]}", f"unknown model setting(s) {unknown} (use Qwen2Config field names)")
    try:
        int(recipe["seed"])
    except (TypeError, ValueError):
        raise FieldError("seed", f"must be an integer, got {recipe['seed']!r}") from None
    for section in _SECTION_KEYS:  # all numbers
        for key, value in recipe[section].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise FieldError(f"{section}.{key}", f"{section}.{key} must be a number, got {value!r}")
    if not 0.0 <= float(recipe["sft"].get("teacher_error", 0.0)) <= 1.0:
        raise FieldError("sft.teacher_error", f"sft.teacher_error must be in [0, 1], got "
                                              f"{recipe['sft']['teacher_error']}")
    from prorl.demo.run import eval_sampling, rl_config

    with _field("eval"):
        eval_sampling(recipe, int(recipe["seed"]))
    with _field("rl"):
        rl_config(recipe, "unused")  # ProRLConfig's own checks (unknown fields, batch shapes)

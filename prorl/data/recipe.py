"""Data recipes: a YAML file naming each source of a training mixture, its environment, prompt template and size.

A recipe is parsed into dataclasses and validated as a whole before anything is read, so a typo in the last
source fails in a second, not after an hour of generation. Every error names the recipe file and the field:

    datasets/prorl-mix.yaml: sources.math.size: must be an integer >= 1, got -3

`load_recipe(path, overrides=["sources.math.path=/data/deepscaler.json"])` applies `--set` style overrides (dotted
keys, YAML-parsed values) before validation; an error in a value a `--set` gave names it too (`... got 'abc' (set by
--set 'sources.math.size=abc')`), and a `--set` that cannot apply is named after the recipe file. The file and the
values are read with `prorl.yaml_io.load_yaml`: a key given twice in one mapping (two sources of one name) is an error
naming both lines, not the last one silently winning.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prorl.yaml_io import load_yaml

ON_ERROR = ("skip", "fail")
DEDUP = ("none", "exact", "normalized")
SHORTFALL = ("scale", "take", "error")
GENERATORS = ("reasoning_gym", "env")  # env: the source environment's own generate() (e.g. ifeval)


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


@dataclass
class GenerateConfig:
    """A procedurally generated source: rows are generated at build time with fixed seeds, by reasoning-gym tasks
    or (`generator: env`) by the source environment's own `generate()`, e.g. ifeval's procedural tasks."""

    tasks: list[str] = field(default_factory=list, metadata={
        "help": "reasoning-gym task names; the source's size is split evenly, rows left over going to tasks drawn "
                "with the recipe's seed (not used by generator env)"})
    seed: int = field(default=0, metadata={"help": "base seed; task t uses seed + crc32(t) so tasks differ"})
    holdout_per_task: int = field(
        default=0, metadata={"help": "entries per task kept out of training (the first ones generated), saved as "
                                     "the held-out split"})
    generator: str = field(default="reasoning_gym", metadata={"help": f"one of {GENERATORS}"})


@dataclass
class SourceConfig:
    """One source of the mixture: where its rows come from and how they become tasks of an environment."""

    name: str = field(metadata={"help": "the key under `sources:`; prefixes row ids"})
    env: str = field(metadata={"help": "environment id (`prorl envs`) whose task_from_dict reads the rows"})
    path: str | None = field(default=None, metadata={
        "help": "local file or glob of the public data (.jsonl, .json, .parquet); `~` and ${VAR} are expanded, "
                "relative paths resolve against --root (default: the recipe's folder)"})
    sample: str | None = field(default=None, metadata={
        "help": "a small file in the same format (datasets/samples/), read instead of `path` with --sample-data"})
    generate: GenerateConfig | None = field(default=None, metadata={"help": "generate rows instead of reading"})
    where: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keep only rows whose (dotted) columns equal these values, e.g. {ability: code}; the others are "
                "counted as `not_selected`, not reported as errors"})
    adapter: str | None = field(default=None, metadata={
        "help": "name of a row converter in prorl.data.adapters for public formats the env does not read as is"})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "renames applied to each row before the adapter: {new_name: column, ...}; dotted columns reach "
                "into nested fields (reward_model.ground_truth)"})
    question_field: str | None = field(default=None, metadata={
        "help": "row field holding the question text (dedup key and {question} in the template); default: the "
                "first of question/problem/prompt that is a string"})
    template: str | None = field(default=None, metadata={
        "help": "user message template; {field} placeholders are filled from the row ({question} = the question "
                "text). Unset: the environment's own prompt"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "system message to put before the user message (replaces the environment's)"})
    size: int | None = field(default=None, metadata={"help": "rows of this source in the mixture"})
    weight: float | None = field(default=None, metadata={"help": "share of `total` (used when size is unset)"})
    holdout: int = field(default=0, metadata={
        "help": "rows kept out of training at random (seeded), saved in the held-out split; a generated source is "
                "made with them on top of its size (`generate.holdout_per_task` holds out the first of each task)"})
    metadata: dict[str, Any] = field(default_factory=dict, metadata={"help": "constant metadata added to each row"})


@dataclass
class Recipe:
    """A training mixture: its sources plus how to validate, de-duplicate and mix them."""

    name: str = field(metadata={"help": "name of the mixture (written in the card)"})
    sources: list[SourceConfig] = field(metadata={"help": "the sources, in priority order for de-duplication"})
    description: str = field(default="", metadata={"help": "free text for the card"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, hold-out and shuffling"})
    total: int | None = field(default=None, metadata={"help": "rows in the mixture when sources give weights"})
    on_error: str = field(default="skip", metadata={
        "help": "a row that fails validation: `skip` (report it with file:line, keep going) or `fail` (stop)"})
    dedup: str = field(default="normalized", metadata={
        "help": "`exact` (same question text), `normalized` (also the same after case and spacing folding, for "
                "prose questions; laid-out grids and ASCII art stay exact) across domains, the first source listed "
                "keeping the row; or `none`"})
    shortfall: str = field(default="scale", metadata={
        "help": "when a source has fewer valid rows than its size: `scale` every source down by the same factor "
                "(proportions kept; generated sources are then made only for the share the file sources leave "
                "them, unless a difficulty filter runs, and the filter estimates each source only for that share), "
                "`take` what there is, or `error` (a short file source fails the build before any source is "
                "generated or filtered)"})
    path: Path | None = field(default=None, metadata={"help": "the YAML file (set by load_recipe)"})
    overrides: list[str] = field(default_factory=list, metadata={
        "help": "the `--set KEY=VALUE` overrides applied to the file (set by load_recipe; the data card lists them)"})

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path is not None else Path.cwd()

    def wanted(self) -> dict[str, int]:
        """Rows wanted from each source: its `size`, or `total` shared by the weights with the largest-remainder
        rule (the counts add up to `total`; rounding each share alone can miss it by one per source)."""
        if all(s.size is not None for s in self.sources):
            return {s.name: s.size for s in self.sources}
        weight = sum(s.weight for s in self.sources)
        exact = {s.name: self.total * s.weight / weight for s in self.sources}
        counts = {name: int(x) for name, x in exact.items()}
        by_remainder = sorted(exact, key=lambda name: (counts[name] - exact[name], name))
        for name in by_remainder[:self.total - sum(counts.values())]:
            counts[name] += 1
        return counts

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"recipe {self.name!r} has no source {name!r} (sources: {[s.name for s in self.sources]})")


# -- parsing ---------------------------------------------------------------------------------------------------
_NOT_IN_YAML = {Recipe: ("path", "overrides"), SourceConfig: ("name",), GenerateConfig: ()}


def _keys(cls) -> dict[str, Any]:
    return {f.name: f for f in fields(cls) if f.name not in _NOT_IN_YAML[cls]}


def _check_keys(raw: dict, cls, where: str, fail) -> None:
    known = _keys(cls)
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            fail(f"{where}.{key}" if where else str(key),
                 "unknown field" + (f" (did you mean {close[0]!r}?)" if close else f"; known: {sorted(known)}"))
    for name, f in known.items():
        if f.default is MISSING and f.default_factory is MISSING and name not in raw:
            fail(f"{where}.{name}" if where else name, "required field is missing")


def _int(value, where: str, fail, minimum: int = 0, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        fail(where, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _str(value, where: str, fail, allow_none: bool = True) -> str | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        braces = isinstance(value, dict) and value and all(v is None for v in value.values())  # `{question}` unquoted
        fail(where, f"must be a non-empty string, got {value!r}" + (
            f" (YAML reads an unquoted {{{next(iter(value))}}} as a mapping: quote the text, e.g. "
            f"\"{{{next(iter(value))}}} ...\")" if braces else ""))
    return value


def _choice(value, choices, where: str, fail) -> str:
    if value not in choices:
        fail(where, f"must be one of {list(choices)}, got {value!r}")
    return value


def set_by(where: str, overrides: list[str] | tuple[str, ...]) -> str:
    """" (set by --set 'KEY=VALUE')" when the last `--set` that reached the field `where` (the field itself, a
    mapping above it or a field below it) gave it its value; else "". Errors add it: the file does not hold that
    value."""
    for item in reversed(overrides):
        key = item.partition("=")[0].strip()
        if key == where or where.startswith(key + ".") or key.startswith(where + "."):
            return f" (set by --set {item!r})"
    return ""


def parse_recipe(raw: Any, path: Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Validate a recipe given as a dict (the parsed YAML). Raises RecipeError naming the file and field (and the
    `--set` of `overrides` that gave the field its value, if one did)."""
    label = str(path) if path is not None else "<recipe>"

    def fail(where: str, message: str):
        raise RecipeError(f"{label}: {where}: {message}{set_by(where, overrides)}")

    if not isinstance(raw, dict):
        fail("(top level)", f"a recipe is a mapping of fields, got {type(raw).__name__}")
    _check_keys(raw, Recipe, "", fail)
    srcs = raw["sources"]
    if isinstance(srcs, dict):  # `--set sources.NAME=null` leaves a source out
        srcs = {k: v for k, v in srcs.items() if v is not None}
    if not isinstance(srcs, dict) or not srcs:
        fail("sources", "must be a non-empty mapping {name: {env: ..., ...}}")
    sources = [_parse_source(name, spec, f"sources.{name}", fail) for name, spec in srcs.items()]
    recipe = Recipe(
        name=_str(raw["name"], "name", fail, allow_none=False),
        sources=sources,
        description=str(raw.get("description") or ""),
        seed=_int(raw.get("seed", 0), "seed", fail),
        total=_int(raw.get("total"), "total", fail, minimum=1, allow_none=True),
        on_error=_choice(raw.get("on_error", "skip"), ON_ERROR, "on_error", fail),
        dedup=_choice(raw.get("dedup", "normalized"), DEDUP, "dedup", fail),
        shortfall=_choice(raw.get("shortfall", "scale"), SHORTFALL, "shortfall", fail),
        path=path,
    )
    sized = [s.size is not None for s in sources]
    if any(sized) and not all(sized):
        fail("sources", "give every source a `size`, or every source a `weight` and the recipe a `total`")
    if all(sized):  # sizes decide: a total or weight here would be ignored
        if recipe.total is not None:
            fail("total", f"used only when sources are given by `weight` (these have a `size`), got {recipe.total}")
        for s in sources:
            if s.weight is not None:
                fail(f"sources.{s.name}.weight", "used only when sources have no `size` (give one or the other)")
    if not any(sized):
        for s in sources:
            if s.weight is None:
                fail(f"sources.{s.name}.weight", "required when sources have no `size`")
        if recipe.total is None:
            fail("total", "required when sources are given by `weight`")
    return recipe


def _parse_source(name, spec, where: str, fail) -> SourceConfig:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        fail(where, "a source name is letters, digits, '_', '-', '.'")
    if not isinstance(spec, dict):
        fail(where, f"must be a mapping, got {type(spec).__name__}")
    _check_keys(spec, SourceConfig, where, fail)
    gen = spec.get("generate")
    if gen is not None:
        if not isinstance(gen, dict):
            fail(f"{where}.generate", "must be a mapping")
        _check_keys(gen, GenerateConfig, f"{where}.generate", fail)
        generator = _choice(gen.get("generator", "reasoning_gym"), GENERATORS, f"{where}.generate.generator", fail)
        tasks = gen.get("tasks", [])
        if generator == "env":
            if tasks:
                fail(f"{where}.generate.tasks", "generator env draws from the source's env: give no tasks")
            tasks = [str(spec.get("env"))]
        elif not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) for t in tasks):
            fail(f"{where}.generate.tasks", "must be a non-empty list of task names")
        if len(set(tasks)) != len(tasks):
            dup = sorted({t for t in tasks if tasks.count(t) > 1})
            fail(f"{where}.generate.tasks", f"lists tasks twice: {dup}")
        gen = GenerateConfig(
            tasks=list(tasks), seed=_int(gen.get("seed", 0), f"{where}.generate.seed", fail),
            holdout_per_task=_int(gen.get("holdout_per_task", 0), f"{where}.generate.holdout_per_task", fail),
            generator=generator,
        )
    path, sample = _str(spec.get("path"), f"{where}.path", fail), _str(spec.get("sample"), f"{where}.sample", fail)
    if gen is None and path is None and sample is None:
        fail(where, "needs `path` (and/or `sample`) or `generate`")
    if gen is not None and path is not None:
        fail(where, "give either `path` or `generate`, not both")
    columns = spec.get("columns") or {}
    if not isinstance(columns, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in columns.items()):
        fail(f"{where}.columns", "must be a mapping {new_name: column}")
    where_ = spec.get("where") or {}
    if not isinstance(where_, dict) or not all(isinstance(k, str) for k in where_):
        fail(f"{where}.where", "must be a mapping {column: value}")
    weight = spec.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not math.isfinite(weight) or weight <= 0):  # YAML's .nan, .inf, 1e400
        fail(f"{where}.weight", f"must be a positive number, got {weight!r}")
    adapter = _str(spec.get("adapter"), f"{where}.adapter", fail)
    if adapter is not None:
        from prorl.data.adapters import ADAPTERS

        if adapter not in ADAPTERS:
            fail(f"{where}.adapter", f"unknown adapter {adapter!r}; known: {sorted(ADAPTERS)}")
    meta = spec.get("metadata") or {}
    if not isinstance(meta, dict):
        fail(f"{where}.metadata", "must be a mapping")
    return SourceConfig(
        name=name, env=_str(spec["env"], f"{where}.env", fail, allow_none=False), path=path, sample=sample,
        generate=gen, where=dict(where_), adapter=adapter, columns=dict(columns),
        question_field=_str(spec.get("question_field"), f"{where}.question_field", fail),
        template=_str(spec.get("template"), f"{where}.template", fail),
        system_prompt=_str(spec.get("system_prompt"), f"{where}.system_prompt", fail),
        size=_int(spec.get("size"), f"{where}.size", fail, minimum=1, allow_none=True),
        weight=None if weight is None else float(weight),
        holdout=_int(spec.get("holdout", 0), f"{where}.holdout", fail), metadata=dict(meta),
    )


# -- loading ---------------------------------------------------------------------------------------------------
def _unknown_source(item: str, name: str, known: list[str], what: str = "", hint: str = "") -> RecipeError:
    close = difflib.get_close_matches(name, known, n=1)
    return RecipeError(f"--set {item!r}: the recipe has no source {name!r}{what}"
                       + (f" (did you mean {close[0]!r}?)" if close else "") + f"; sources: {sorted(known)}{hint}")


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw recipe dict, creating mappings as needed.

    A source the recipe does not have may be added (`--set sources.new.env=math --set sources.new.path=...`), but
    one left without an `env` is taken for a misspelt name: an error naming it and the recipe's sources."""
    srcs = raw.get("sources")
    known = [str(k) for k in srcs] if isinstance(srcs, dict) else []
    added: dict[str, str] = {}  # source name -> the first --set that made it
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. sources.math.path=/data/deepscaler.json")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"--set {item!r}: {part!r} is not a mapping")
            node = child
        try:
            parsed = load_yaml(value) if value.strip() else None
        except yaml.YAMLError as exc:
            # a template's `{question} ...`: YAML's flow mapping followed by text, a syntax error
            quote = value.lstrip()[:1] in ("{", "[") and isinstance(exc, (yaml.parser.ParserError,
                                                                          yaml.scanner.ScannerError))
            raise RecipeError(f"--set {item!r}: the value is not valid YAML" + (
                f" (for text that starts with {value.lstrip()[0]}, quote it: --set '{key.strip()}=\"...\"')"
                if quote else "") + f": {exc}") from None
        if parsed is None and parts[:-1] == ["sources"] and parts[-1] not in node:  # else a typo leaves it in
            raise _unknown_source(item, parts[-1], [str(k) for k in node], " to leave out")
        if len(parts) >= 2 and parts[0] == "sources" and parts[1] not in known:
            added.setdefault(parts[1], item)
        node[parts[-1]] = parsed
    srcs = raw.get("sources")
    for name, item in added.items():
        spec = srcs.get(name) if isinstance(srcs, dict) else None
        if isinstance(spec, dict) and "env" not in spec:  # `sources.mth.path=...`: not a new source of no env
            raise _unknown_source(item, name, known, hint=f" (to add a source, give its env too: --set "
                                                          f"sources.{name}.env=ENV)")
    return raw


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):  # an empty file, a list, ...: the error names the file before any --set applies
        return parse_recipe(raw, path)
    try:
        raw = apply_overrides(raw, overrides)
    except RecipeError as exc:  # a bad --set: the recipe it was applied to, then the --set itself
        raise RecipeError(f"{path}: {exc}") from None
    recipe = parse_recipe(raw, path, overrides)
    recipe.overrides = list(overrides)
    return recipe


def expand_path(pattern: str, base_dir: Path, where: str) -> str:
    """`~` and ${VAR} expanded; relative patterns resolved against base_dir. An unset variable is an error."""
    names = [a or b for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", pattern)]
    missing = [n for n in names if n not in os.environ]
    if missing:
        error = RecipeError(f"{where}: {pattern!r} uses ${{{missing[0]}}}, which is not set: export {missing[0]}=DIR "
                            f"(the folder where you put the public files), set the path with --set, or build from "
                            f"the bundled samples with --sample-data")
        error.variable = missing[0]  # one export fixes every path that uses it: the build reports it once
        raise error
    expanded = os.path.expanduser(os.path.expandvars(pattern))
    return expanded if os.path.isabs(expanded) else str(base_dir / expanded)

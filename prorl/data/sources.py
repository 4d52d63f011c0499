"""Reading the rows of a source: local files through Hugging Face `datasets`, or reasoning-gym generation.

Every row comes with its location, so a bad row is reported as `file:line` (JSON Lines) or `file row N` (a JSON
array or a Parquet file, 0-based). JSON Lines are read line by line (the `text` builder) and parsed here rather
than by the `json` builder: a malformed line is then one bad row with its line number instead of a failed file,
and heterogeneous rows (IFEval kwargs, reasoning-gym metadata) keep exactly their own keys instead of being
unified into one Arrow schema with nulls.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import io
import json
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from prorl.data.recipe import GenerateConfig, Recipe, RecipeError, SourceConfig, expand_path

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)


@dataclass
class RawRow:
    """One row as read, before normalisation."""

    data: dict | None  # None when the line could not be parsed
    where: str  # "datasets/samples/math.jsonl:17", "train.parquet row 3", "reasoning_gym:acre#120"
    error: str | None = None  # why `data` is None
    stratum: str | None = None  # the generator task (reasoning-gym), for per-task counts
    holdout: bool = False


def display_path(path: str) -> str:
    """The path relative to the working directory when it is below it, else absolute (so it can be opened)."""
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else os.path.abspath(path)


def source_files(source: SourceConfig, recipe: Recipe, sample_data: bool, root: str | None) -> list[str]:
    """The files a file source reads: its `sample` with sample_data, else its `path`; globs expanded, sorted."""
    use_sample = sample_data and source.sample is not None
    pattern = source.sample if use_sample else source.path
    key = "sample" if use_sample else "path"
    where = f"{recipe.path or '<recipe>'}: sources.{source.name}.{key}"
    if pattern is None:
        raise RecipeError(f"{where}: the source has no `path`; give one (--set sources.{source.name}.path=FILE) "
                          f"or build with --sample-data")
    base = Path(root) if root else recipe.base_dir
    full = expand_path(pattern, base, where)
    files = sorted(glob.glob(full, recursive=True)) if glob.has_magic(full) else ([full] if os.path.exists(full) else [])
    if not files:
        raise RecipeError(f"{where}: no file matches {full!r}. Put the public file there (see the comment in the "
                          f"recipe), point to it with --set sources.{source.name}.{key}=PATH, or use --sample-data")
    bad = [f for f in files if not f.endswith(JSON_SUFFIXES + PARQUET_SUFFIXES)]
    if bad:
        raise RecipeError(f"{where}: {bad[0]!r} is not .jsonl/.json/.parquet (optionally .gz)")
    return files


def _first_char(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def read_file(path: str) -> Iterator[RawRow]:
    """Rows of one local file, each with its location."""
    import datasets

    shown = display_path(path)
    if path.endswith(PARQUET_SUFFIXES):
        table = datasets.Dataset.from_parquet(path)
        for i, row in enumerate(table):
            yield RawRow(row, f"{shown} row {i}")
        return
    if _first_char(path) == "[":  # a JSON array (e.g. DeepScaleR's deepscaler.json)
        table = datasets.Dataset.from_json(path)
        for i, row in enumerate(table):
            yield RawRow(row, f"{shown} row {i}")
        return
    lines = datasets.load_dataset("text", data_files=path, split="train")["text"]
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{shown}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield RawRow(None, where, f"not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(row, dict):
            yield RawRow(None, where, f"a row must be a JSON object, got {type(row).__name__}")
            continue
        yield RawRow(row, where)


def task_seed(base: int, task: str) -> int:
    """A fixed per-task seed: tasks generated with one base seed do not share their random streams."""
    return base + zlib.crc32(task.encode()) % 1_000_000


def generate_reasoning_gym(gen: GenerateConfig, size: int, margin: float = 0.05,
                           progress: Callable[[str, int, int], None] | None = None) -> list[RawRow]:
    """Held-out and training entries of every task, generated with fixed seeds.

    The first `holdout_per_task` entries of each task are held out (reasoning-gym derives entry i from seed + i,
    so the held-out set does not change with `size`). Training quotas split `size` (plus `margin` to absorb
    de-duplication) evenly; a task that cannot produce its quota of distinct questions (e.g. few possible
    questions) passes the rest of its quota on to the others.
    """
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    unknown = [t for t in gen.tasks if t not in DATASETS]
    if unknown:
        raise RecipeError(f"generate.tasks: {unknown} are not reasoning-gym tasks (installed: {len(DATASETS)} tasks)")
    want = math.ceil(size * (1 + margin)) if size else 0
    rows: list[RawRow] = []
    quota = {t: 0 for t in gen.tasks}
    for i in range(want):
        quota[gen.tasks[i % len(gen.tasks)]] += 1
    h = gen.holdout_per_task
    for t_index, task in enumerate(gen.tasks):
        if progress:
            progress(task, t_index, len(gen.tasks))
        need = quota[task]
        cap = h + max(4 * need, need + 50)  # entries to try before giving up on finding distinct questions
        dataset = reasoning_gym.create_dataset(task, size=cap, seed=task_seed(gen.seed, task))
        seen: set[str] = set()
        kept = 0
        for idx in range(cap):
            if idx >= h and kept >= need:
                break
            with contextlib.redirect_stdout(io.StringIO()):  # some generators print progress dots
                item = dataset[idx]
            entry = json.loads(json.dumps(item, default=_json_default))
            if idx >= h and entry.get("question") in seen:
                continue
            seen.add(entry.get("question"))
            rows.append(RawRow(entry, f"reasoning_gym:{task}#{idx}", stratum=task, holdout=idx < h))
            kept += idx >= h
        later = gen.tasks[t_index + 1:]
        for j in range(need - kept):  # a task short of distinct questions passes its deficit on
            if later:
                quota[later[j % len(later)]] += 1
    return rows


def _json_default(obj):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    return str(obj)

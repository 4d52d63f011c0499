"""Reading the rows of a source: local files through Hugging Face `datasets`, or reasoning-gym generation.

Every row comes with its location, so a bad row is reported as `file:line` (JSON Lines) or `file row N` (a JSON
array or a Parquet file, 0-based). JSON Lines are read line by line by `prorl.envs.jsonl` rather than by the `json`
builder: a malformed line (bad JSON, or bytes that are not UTF-8) is then one bad row with its line number instead
of a failed file, and heterogeneous rows (IFEval kwargs, reasoning-gym metadata) keep exactly their own keys
instead of being unified into one Arrow schema with nulls. A JSON array or Parquet file that cannot be read at all
is a `DataError` naming the file (and the line, for JSON).
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

from prorl.data.recipe import GenerateConfig, Recipe, RecipeError, SourceConfig, expand_path, set_by
from prorl.envs.jsonl import open_bytes, read_jsonl


class DataError(ValueError):
    """The build cannot go on (an unreadable file, a bad row with on_error="fail", or too few rows with
    shortfall="error")."""


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
    where = f"{recipe.path or '<recipe>'}: sources.{source.name}.{key}" + set_by(f"sources.{source.name}.{key}",
                                                                                 recipe.overrides)
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


def _open_text(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    # utf-8-sig: a byte-order mark is not text (else it hides the '[' of a JSON array from _first_char)
    return opener(path, "rt", encoding="utf-8-sig", errors="replace")


def _first_char(path: str) -> str:
    with _open_text(path) as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0]


def _table(path: str, shown: str, load: Callable):
    """`load(path)` (a datasets.Dataset); a file it cannot read is a DataError naming the file (and, for JSON, the
    line)."""
    try:
        return load(path)
    except Exception as exc:  # datasets wraps the parser's error in DatasetGenerationError; pyarrow raises its own
        if not path.endswith(PARQUET_SUFFIXES):
            try:
                with _open_text(path) as f:
                    json.load(f)
            except json.JSONDecodeError as bad:
                raise DataError(f"{shown}:{bad.lineno}: not valid JSON ({bad.msg} at column {bad.colno})") from None
            except Exception:
                pass
        cause = exc.__cause__ or exc
        raise DataError(f"{shown}: cannot read the file: {type(cause).__name__}: {cause}") from None


def read_file(path: str) -> Iterator[RawRow]:
    """Rows of one local file, each with its location."""
    import datasets

    shown = display_path(path)
    if path.endswith(PARQUET_SUFFIXES):
        for i, row in enumerate(_table(path, shown, datasets.Dataset.from_parquet)):
            yield RawRow(row, f"{shown} row {i} (0-based)")
        return
    if _first_char(path) == "[":  # a JSON array (deepscaler.json), parsed as JSON: Arrow would merge a column of
        try:                      # ints and floats into float64 (answer 12 -> "12.0", 2**60 - 1 rounded)
            with open_bytes(path) as f:
                rows = json.load(f)
        except json.JSONDecodeError as bad:
            raise DataError(f"{shown}:{bad.lineno}: not valid JSON ({bad.msg} at column {bad.colno})") from None
        except UnicodeDecodeError as bad:
            raise DataError(f"{shown}: not valid UTF-8 (byte 0x{bad.object[bad.start]:02x} at offset "
                            f"{bad.start})") from None
        for i, row in enumerate(rows):
            ok = isinstance(row, dict)
            yield RawRow(row if ok else None, f"{shown} element {i} (0-based)",
                         None if ok else f"a row must be a JSON object, got {type(row).__name__}")
        return
    bad: list[RawRow] = []  # the bad lines read before the next good one: rows stay in file order

    def bad_line(lineno: int, message: str) -> None:
        bad.append(RawRow(None, f"{shown}:{lineno}", message))

    for lineno, row in read_jsonl(path, on_error=bad_line):
        yield from bad
        bad.clear()
        yield RawRow(row, f"{shown}:{lineno}")
    yield from bad


def task_seed(base: int, task: str) -> int:
    """A fixed per-task seed: tasks generated with one base seed do not share their random streams."""
    return base + zlib.crc32(task.encode()) % 1_000_000


class _TaskStream:
    """Entries of one reasoning-gym task: the held-out ones (entries 0..holdout-1 of a dataset of exactly that size),
    then training entries from index `holdout` on whose question was not seen before. Exhausted after `patience`
    draws in a row brought nothing new.

    Most reasoning-gym datasets make entry i from seed + i whatever their size; a few (acre) generate every entry
    up front, so their entries depend on the size. Sizing the held-out dataset by `holdout` alone keeps the
    held-out set fixed whatever the recipe's size; the training dataset grows (doubling) as more is taken.
    """

    def __init__(self, task: str, seed: int, holdout: int, expected: int, patience: int = 200):
        self.task, self.seed, self.holdout, self.patience = task, seed, holdout, patience
        self.size = holdout + 2 * expected + 100
        self.dataset = self._create(self.size)
        self.next_index = holdout
        self.seen: set[str] = set()
        self.exhausted = False

    def _create(self, size: int):
        import reasoning_gym

        with contextlib.redirect_stdout(io.StringIO()):  # some generators print progress dots
            return reasoning_gym.create_dataset(self.task, size=size, seed=self.seed)

    @staticmethod
    def _entry(dataset, idx: int) -> dict:
        with contextlib.redirect_stdout(io.StringIO()):
            item = dataset[idx]
        return json.loads(json.dumps(item, default=_json_default))

    def heldout_rows(self) -> list[RawRow]:
        if not self.holdout:
            return []
        dataset = self._create(self.holdout)
        rows = []
        for idx in range(self.holdout):
            entry = self._entry(dataset, idx)
            self.seen.add(entry.get("question"))
            rows.append(RawRow(entry, f"reasoning_gym:{self.task}#h{idx}", stratum=self.task, holdout=True))
        return rows

    def take(self, count: int) -> list[RawRow]:
        rows, misses = [], 0
        while len(rows) < count and not self.exhausted:
            idx = self.next_index
            if idx >= self.size:
                self.size *= 2
                self.dataset = self._create(self.size)
            self.next_index += 1
            entry = self._entry(self.dataset, idx)
            if entry.get("question") in self.seen:
                misses += 1
                self.exhausted = misses >= self.patience
                continue
            misses = 0
            self.seen.add(entry.get("question"))
            rows.append(RawRow(entry, f"reasoning_gym:{self.task}#{idx}", stratum=self.task))
        return rows


def check_generator(gen: GenerateConfig, where: str, env=None) -> None:
    """Checks a `generate:` source can generate, before anything is generated: its reasoning-gym tasks exist, or
    (`generator: env`) its environment `env` has a generator. `where` prefixes the error (recipe file and source)."""
    if gen.generator == "env":
        from prorl.envs import Env

        if env is not None and type(env).generate is Env.generate:
            raise RecipeError(f"{where}.generator: env: {env.id} has no generator (give the source a `path`)")
        return
    from reasoning_gym.factory import DATASETS

    unknown = [t for t in gen.tasks if t not in DATASETS]
    if unknown:
        raise RecipeError(f"{where}.tasks: {unknown} are not reasoning-gym tasks (installed: {len(DATASETS)} tasks)")


def generate_reasoning_gym(gen: GenerateConfig, size: int, margin: float = 0.05,
                           progress: Callable[[str, int, int], None] | None = None) -> list[RawRow]:
    """Held-out and training entries of every task, generated with fixed seeds.

    The first `holdout_per_task` entries of each task are held out; they do not change with `size`. `size` training
    entries (plus `margin` to absorb later de-duplication) are split evenly over the tasks, each task generating the
    rounded-up share (a few rows more than asked, so that any task can take a leftover row when the mixture is
    drawn; see mix.pick); training questions are distinct within a task and from its held-out ones. A task with
    too few distinct questions leaves its shortfall to the others, spread evenly (each gets the rounded-up share of
    it, not the first tasks listed).
    """
    check_generator(gen, "generate")
    want = math.ceil(size * (1 + margin)) if size else 0
    n = len(gen.tasks)
    rows: list[RawRow] = []
    streams = []
    for i, task in enumerate(gen.tasks):
        if progress:
            progress(task, i, n)
        quota = -(-want // n)
        stream = _TaskStream(task, task_seed(gen.seed, task), gen.holdout_per_task, quota)
        rows += stream.heldout_rows()
        rows += stream.take(quota)
        streams.append(stream)
    missing = want - sum(not r.holdout for r in rows)
    while missing > 0:  # top up from the tasks that still have new questions, round robin
        active = [s for s in streams if not s.exhausted]
        if not active:
            break
        share = -(-missing // len(active))
        for stream in active:
            got = stream.take(share)
            rows += got
            missing -= len(got)
    return rows


def generated_rows(source: SourceConfig, size: int, log: Callable[..., None]) -> tuple[list[RawRow], str]:
    """The rows of a `generate:` source, and what made them (for the data card)."""
    gen = source.generate
    if gen.generator == "env":
        log(f"{source.name}: generating {size} rows with {source.env}'s generator")
        try:
            rows = generate_env_rows(source.env, gen, size)
        except TimeoutError as exc:  # a hang in a custom env's generate(): named, not a stalled build
            raise DataError(f"sources.{source.name}: {source.env}: {exc}") from None
        return rows, f"{source.env} generator (seed {gen.seed})"
    log(f"{source.name}: generating {size} rows over {len(gen.tasks)} reasoning-gym tasks")

    def progress(task: str, i: int, n: int) -> None:
        log(f"{source.name}: generating {task} ({i + 1}/{n})", transient=True)

    return generate_reasoning_gym(gen, size, progress=progress), f"reasoning_gym (seed {gen.seed})"


def generate_env_rows(env_id: str, gen: GenerateConfig, size: int, margin: float = 0.05) -> list[RawRow]:
    """`generator: env`: rows from the environment's own `generate()`, seeded with `gen.seed`; the first
    `holdout_per_task` are held out. Repeated prompts are drawn again (up to 20 tries per row). Each `generate` call
    is stopped after the env's `timeout_s` (a TimeoutError naming it)."""
    import random

    from prorl.envs import make
    from prorl.envs.base import Deadline

    env = make(env_id)
    rng = random.Random(gen.seed)
    want = gen.holdout_per_task + (math.ceil(size * (1 + margin)) if size else 0)
    rows: list[RawRow] = []
    seen: set[str] = set()
    with Deadline(env.timeout_s, "the env's timeout_s") as deadline:
        for tries in range(20 * want + 100):
            if len(rows) == want:
                break
            try:
                data = deadline.call(env, "generate", env.generate, rng)
            except NotImplementedError as exc:
                raise RecipeError(f"generate.generator env: {exc}") from None
            key = json.dumps(data.get("prompt", data), sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            rows.append(RawRow(data, f"{env_id}:generate#{tries}", stratum=env_id,
                               holdout=len(rows) < gen.holdout_per_task))
    return rows


def _json_default(obj):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    return str(obj)

"""`build(recipe)`: read every source, normalise each row to one schema (prorl.data.rows), validate, de-duplicate,
mix, save.

The schema (one row per prompt), read by the trainer's reward function and by `prorl eval`:

    id        str                 "<source>/<task id or file:line>", unique
    env       str                 environment id that scores the row (`prorl.make(env)`)
    source    str                 recipe source name (for per-source mixture weights)
    prompt    list[{role, content}]  chat messages, ending with the user message
    reference dict (JSON column)  what the environment needs to score (`Task.reference`)
    metadata  dict (JSON column)  `Task.metadata` + the recipe's constants + `origin` (file:line of the row)

Bad rows are reported with file:line and field, then skipped (or stop the build, with `on_error="fail"`, before
any generation, as missing files and unknown tasks do); with `shortfall="error"` a file source short of its size
stops it before any generation too. Duplicates and filtered rows are counted in the card. prorl.data.mix chooses
the rows from the de-duplicated pools (the difficulty filter, each source's target, the seeded draw).
"""

from __future__ import annotations

import copy
import math
import random
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from prorl.data.adapters import FieldError, get_dotted
from prorl.data.mix import filter_pools, pick, short_error, targets
from prorl.data.recipe import Recipe, RecipeError, SourceConfig
from prorl.data.rows import Candidate, normalize_row
from prorl.data.sources import DataError, RawRow, check_generator, generated_rows, read_file, source_files
from prorl.data.stats import Issue, SourceStats, report
from prorl.envs import Env, make


@dataclass
class BuildResult:
    recipe: Recipe
    train: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    stats: dict[str, SourceStats]
    issues: list[Issue]
    scale: float
    options: dict[str, Any]


# -- de-duplication keys ---------------------------------------------------------------------------------------
_SPACE_AROUND_SYMBOL = re.compile(r"\s*([^\w\s])\s*")


def normalize_text(text: str) -> str:
    """The loose de-duplication key: NFKC, case-folded, whitespace runs collapsed to one space and dropped next to
    punctuation or symbols ("What is 1+1 ?" == "what is 1 + 1?"). Symbols themselves are kept: in board and
    emoji puzzles they are the question."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return _SPACE_AROUND_SYMBOL.sub(r"\1", text)


def is_prose(text: str) -> bool:
    """Whether the loose key is safe: letters and digits are at least half of the visible characters and no line
    lays things out with runs of spaces. Grids, ASCII art and programs in symbols are de-duplicated exactly only."""
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalnum() for c in visible) < 0.5 * len(visible):
        return False
    return not any("   " in line.strip() for line in text.splitlines())


# -- reading ---------------------------------------------------------------------------------------------------
def _raw_rows(source: SourceConfig, files: list[str] | None, stats: SourceStats, size: int,
              log: Callable[..., None]) -> list[RawRow]:
    if files is None:  # made with its `holdout` on top: holding rows out must not leave it short of `size`
        rows, label = generated_rows(source, size + source.holdout, log)
        stats.files = [label]
        return rows
    stats.files = files
    rows: list[RawRow] = []
    for path in files:
        log(f"{source.name}: reading {path}")
        rows.extend(read_file(path))
    return rows


def _make_env(source: SourceConfig, recipe: Recipe) -> Env:
    try:
        return make(source.env)
    except Exception as exc:
        raise RecipeError(f"{recipe.path}: sources.{source.name}.env: cannot make {source.env!r}: {exc}") from exc


def _normalize_source(source: SourceConfig, env: Env, raws: list[RawRow], recipe: Recipe, st: SourceStats,
                      issues: list[Issue], on_error: str) -> tuple[list[Candidate], list[Candidate]]:
    """Validated rows of one source, split into (training pool, held-out rows)."""
    st.read = len(raws)
    first_issue = len(issues)
    pool: list[Candidate] = []
    heldout: list[Candidate] = []
    used_ids: set[str] = set()
    for raw in raws:
        if source.where and raw.data is not None and not _selected(raw.data, source.where):
            st.dropped["not_selected"] += 1
            continue
        try:
            cand = normalize_row(raw, source, env)
        except FieldError as exc:
            report(Issue(raw.where, "invalid", exc.message, exc.field), issues, st, on_error == "fail")
            continue
        if not cand.row["id"] or cand.row["id"] in used_ids:  # no id, or not unique: the row's location
            cand.row["id"] = f"{source.name}/{Path(raw.where).name}"
        used_ids.add(cand.row["id"])
        (heldout if raw.holdout else pool).append(cand)
    if source.holdout:
        if source.holdout >= len(pool):
            # the rows it lost are the likelier mistake (a template's {typo}, a `where` no row matches): say so
            lost = "".join(f", {k}: {v}" for k, v in sorted(st.dropped.items()))
            first = f"; the first invalid one: {issues[first_issue]}" if len(issues) > first_issue else ""
            raise DataError(f"{recipe.path or '<recipe>'}: sources.{source.name}.holdout: {source.holdout} leaves no "
                            f"training rows (the source has {len(pool)} valid rows of {st.read} read{lost}{first}); "
                            f"hold out fewer" + (", or fix what drops its rows" if lost else ""))
        picked = set(random.Random(f"{recipe.seed}:holdout:{source.name}").sample(range(len(pool)), source.holdout))
        heldout.extend(c for i, c in enumerate(pool) if i in picked)
        pool = [c for i, c in enumerate(pool) if i not in picked]
    st.heldout = len(heldout)
    return pool, heldout


# -- the build -------------------------------------------------------------------------------------------------
def build(recipe: Recipe, out_dir: str | Path | None = None, *, sample_data: bool = False, root: str | None = None,
          on_error: str | None = None, difficulty: Any = None, log: Callable[..., None] | None = None) -> BuildResult:
    """Build the mixture of `recipe`; save it to `out_dir` when given (see `save`).

    difficulty: a `prorl.data.filter.DifficultyFilter` (`low`, `high`, `chunk`, `pass_rates`); rows whose estimated
    pass rate is not strictly inside (low, high) are dropped before mixing, and each pool is estimated only as far
    as its part of the mixture needs (prorl.data.mix.filter_pools).
    log: called as log(message) for each stage, and log(message, transient=True) for progress updates.
    """
    import datasets

    datasets.disable_progress_bars()  # one line per source from `log` instead of a bar per file
    log = log or (lambda msg, transient=False: None)
    if out_dir is not None:  # what builds into out_dir that were killed left beside it (a SIGKILL: no clean-up ran)
        from prorl.data.card import remove_stale_stages

        remove_stale_stages(out_dir, log)
    on_error = on_error or recipe.on_error
    rng = random.Random(recipe.seed)
    wanted = recipe.wanted()
    stats = {s.name: SourceStats(s.name, s.env) for s in recipe.sources}
    issues: list[Issue] = []
    pools: dict[str, list[Candidate]] = {}
    # Whatever can fail without reading (env ids, files, generators) fails before anything is read or generated;
    # file sources (where a bad row may stop the build) are read before the slower generated ones.
    envs = {s.name: _make_env(s, recipe) for s in recipe.sources}
    files, missing = {}, []
    for s in recipe.sources:  # every source's files, so that one error lists all that are missing, not the first
        try:
            files[s.name] = None if s.generate is not None and not (sample_data and s.sample) \
                else source_files(s, recipe, sample_data, root)
        except RecipeError as exc:
            unset = getattr(exc, "variable", None)
            if unset is None or not any(f"uses ${{{unset}}}, which is not set" in m for m in missing):
                missing.append(str(exc))
    if missing:
        raise RecipeError(missing[0] + "".join(f"\nalso {m}" for m in missing[1:]))
    for s in [s for s in recipe.sources if files[s.name] is None]:
        check_generator(s.generate, f"{recipe.path or '<recipe>'}: sources.{s.name}.generate", envs[s.name])
    held_by_source: dict[str, list[Candidate]] = {}
    # With shortfall=scale no source can end above `bound` times its size: a pool only loses rows from here on
    # (de-duplication, the filter). Generated sources, made after the file sources, are then made at that share of
    # their size instead of in full. Not with a difficulty filter: how much of a generated source it keeps is
    # unknown until it has run.
    bound, bounding = 1.0, recipe.shortfall == "scale" and difficulty is None
    # With shortfall=error, for the same reason, a source with fewer usable rows than its size stops the build
    # before the next generated source is made (the pools are checked again before the filter samples any).
    counting = bounding or recipe.shortfall == "error"
    usable: dict[str, int] = {}
    for source in sorted(recipe.sources, key=lambda s: files[s.name] is None):
        name, size = source.name, wanted[source.name]
        short = {n: (u, wanted[n]) for n, u in usable.items() if u < wanted[n]}
        if recipe.shortfall == "error" and files[name] is None and short:
            raise short_error(recipe, short, f", found before generating sources.{name}")
        scaled = files[name] is None and bound < 1.0
        if scaled:
            size = math.ceil(size * bound)
            log(f"{name}: {size} of {wanted[name]} rows needed (shortfall=scale: the sources read so far give at "
                f"most {bound:.4g} of their sizes)")
            before = copy.deepcopy(stats[name]), len(issues)
        raws = _raw_rows(source, files[name], stats[name], size, log)
        pools[name], held_by_source[name] = _normalize_source(source, envs[name], raws, recipe, stats[name], issues,
                                                              on_error)
        if counting:
            usable[name] = _usable(pools[name], held_by_source[name], recipe.dedup)
        if scaled and usable[name] < wanted[name] * bound:
            # Invalid rows, duplicates or copies of held-out rows ate more than the generator's margin: the smaller
            # source would lower the scale of the whole mixture, so it is made in full after all (as without the
            # bound).
            log(f"{name}: {usable[name]} usable rows of the {size} made; making all {wanted[name]}")
            stats[name], issues[before[1]:] = before[0], []
            raws = _raw_rows(source, files[name], stats[name], wanted[name], log)
            pools[name], held_by_source[name] = _normalize_source(source, envs[name], raws, recipe, stats[name],
                                                                  issues, on_error)
            usable[name] = _usable(pools[name], held_by_source[name], recipe.dedup)
        elif scaled:
            stats[name].needed = size
        if bounding and wanted[name] > 0:
            bound = min(bound, usable[name] / wanted[name])
    pools = {s.name: pools[s.name] for s in recipe.sources}  # de-duplication: the first source listed wins
    heldout = [c for s in recipe.sources for c in held_by_source[s.name]]
    heldout = _dedup(heldout, recipe.dedup, {}, issues, stats, holdout=True)
    held_keys = {k: "held-out" for c in heldout for k in _keys(c.question, "held-out")}
    seen: dict[str, str] = {}
    for name in pools:
        pools[name] = _dedup(pools[name], recipe.dedup, seen, issues, stats, held=held_keys)
    if difficulty is not None:
        short = {n: (len(p), wanted[n]) for n, p in pools.items() if len(p) < wanted[n]}
        if short and recipe.shortfall == "error":
            raise short_error(recipe, short, ", found before the difficulty filter")
        pools = filter_pools(recipe, wanted, pools, difficulty, issues, stats, log)
    scale = targets(recipe, wanted, pools, stats)
    train: list[dict[str, Any]] = []
    for source in recipe.sources:
        pool, st = pools[source.name], stats[source.name]
        picked = pick(pool, st.target, random.Random(f"{recipe.seed}:mix:{source.name}"))
        for i in picked:
            train.append(pool[i].row)
            st.per_task[pool[i].stratum or source.env] += 1
        st.selected = st.target
    rng.shuffle(train)
    _unique_ids(train + [c.row for c in heldout])
    result = BuildResult(recipe, train, [c.row for c in heldout], stats, issues, scale,
                         {"sample_data": sample_data, "root": root, "on_error": on_error,
                          "difficulty": difficulty.describe() if difficulty is not None else None})
    if out_dir is not None:
        from prorl.data.card import save

        save(result, Path(out_dir))
    return result


def _selected(data: dict, where: dict[str, Any]) -> bool:
    try:
        return all(get_dotted(data, key) == value for key, value in where.items())
    except FieldError:
        return False


def _keys(question: str, mode: str) -> list[str]:
    """De-duplication keys; mode "held-out" (the train/held-out leak check, whatever `dedup` is) is loose for
    every row: a train row that may be a re-spaced copy of a held-out one is dropped."""
    if mode == "none":
        return []
    exact = "x:" + question.strip()
    if mode == "exact" or (mode != "held-out" and not is_prose(question)):
        return [exact]
    return [exact, "n:" + normalize_text(question)]


def _usable(pool: list[Candidate], held: list[Candidate], mode: str) -> int:
    """How many rows of one source's `pool` its own de-duplication leaves (no two with the same question, none the
    copy of one of its `held` rows): an upper bound on what it can give the mixture."""
    held_keys = {k for c in held for k in _keys(c.question, "held-out")}
    seen: set[str] = set()
    n = 0
    for c in pool:
        keys = _keys(c.question, mode)
        if any(k in held_keys for k in _keys(c.question, "held-out")) or any(k in seen for k in keys):
            continue
        seen.update(keys)
        n += 1
    return n


def _dedup(cands: list[Candidate], mode: str, seen: dict[str, str], issues: list[Issue],
           stats: dict[str, SourceStats], held: dict[str, str] | None = None, holdout: bool = False) -> list[Candidate]:
    kept = []
    for c in cands:
        keys = _keys(c.question, mode)
        hit = next((k for k in _keys(c.question, "held-out") if k in held), None) if held else None
        st = stats[c.row["source"]]
        if hit is not None:
            report(Issue(c.where, "heldout_overlap", "same question as a held-out row"), issues, st, False)
            continue
        hit = next((k for k in keys if k in seen), None)
        if hit is not None:
            reason = "duplicate_exact" if hit.startswith("x:") else "duplicate_normalized"
            report(Issue(c.where, reason, f"same question as {seen[hit]}"), issues, st, False)
            if holdout:
                st.heldout -= 1
            continue
        for k in keys:
            seen[k] = c.row["id"]
        kept.append(c)
    return kept


def _unique_ids(rows: Sequence[dict[str, Any]]) -> None:
    counts: Counter = Counter()
    for row in rows:
        counts[row["id"]] += 1
        if counts[row["id"]] > 1:
            row["id"] = f"{row['id']}~{counts[row['id']] - 1}"

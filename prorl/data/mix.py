"""Choosing the mixture's rows from the de-duplicated pools of `prorl data build` (prorl.data.build): the difficulty
filter, run only as far as the mixture needs; each source's target by the recipe's shortfall policy; the seeded draw.

The filter is lazy. Sampling K completions per prompt is by far the slowest step of a build, and a source's size is
often a small part of its pool (5,000 rows wanted of a 40,000-row file), so `filter_pools` goes through each pool in
a seeded random order (the recipe's seed and the source's name), estimating pass rates a chunk of prompts at a time,
and stops as soon as the rows kept so far decide the mixture: enough of them for what the source needs (for a
generated source, for every task's share of it, as `pick` shares rows out) or the pool exhausted. What a source needs
follows the shortfall policy:

- `take`, `error`: its size (`error` stops the build at the first source that runs out short, before the others are
  estimated);
- `scale`: its size times the smallest share of its size any source is known to give: the pools' own sizes bound it
  before anything is sampled, and a source that runs out short lowers it. Sources are estimated smallest share of
  pool first, so that a short source lowers what the others need before they are estimated.

The scale and targets are then those of a filter over whole pools: a source stopped early keeps at least what its
target can be, one that ran out keeps all it has. The rows drawn are a seeded draw (`pick`) from the kept rows, which
are fewer than a filter over the whole pool would keep. Rows whose pass rate is cached (the filter's `cache`) are
taken in the same order and cost no sampling: a cache changes what is sampled, not which rows are estimated.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable

from prorl.data.recipe import Recipe, set_by
from prorl.data.rows import Candidate
from prorl.data.sources import DataError
from prorl.data.stats import Issue, SourceStats, report


def short_error(recipe: Recipe, short: dict[str, tuple[int, int]], when: str = "") -> DataError:
    """shortfall=error: `short` maps each short source to (rows it can give, its size). The error names the recipe
    file and the fields to change: the short sources' `size` (or the recipe's `total`), or `shortfall`."""
    listing = ", ".join(f"{n}: {a} of {w}" for n, (a, w) in short.items())
    sizes = ", ".join(f"sources.{n}.size" if recipe.source(n).size is not None else "total" for n in short)
    return DataError(f"{recipe.path or '<recipe>'}: shortfall: error{set_by('shortfall', recipe.overrides)}: too few "
                     f"valid rows ({listing}){when}; lower {sizes}, or set shortfall: scale (keeps the proportions "
                     f"with fewer rows) or take")


def filter_pools(recipe: Recipe, wanted: dict[str, int], pools: dict[str, list[Candidate]], difficulty: Any,
                 issues: list[Issue], stats: dict[str, SourceStats],
                 log: Callable[..., None]) -> dict[str, list[Candidate]]:
    """The rows of each pool the filter keeps, estimating no more of them than the mixture needs (see above)."""
    share = 1.0  # shortfall=scale: no source can give more than this share of its size
    if recipe.shortfall == "scale":
        share = min([1.0] + [len(pools[n]) / wanted[n] for n in pools if wanted[n] > 0])
    kept: dict[str, list[Candidate]] = {}
    order = sorted(pools, key=lambda n: len(pools[n]) / wanted[n] if wanted[n] else math.inf)
    for k, name in enumerate(order, 1):
        need = math.ceil(wanted[name] * share) if recipe.shortfall == "scale" else wanted[name]
        pool, st = pools[name], stats[name]
        if getattr(difficulty, "on_source", None):  # progress counts per source: say which one it counts
            difficulty.on_source(name, k, len(order))
        log(f"{name}: estimating pass rates until {need} rows are kept (of {len(pool)} prompts, in a seeded order)")
        kept[name], exhausted = _scan(pool, need, difficulty, random.Random(f"{recipe.seed}:filter:{name}"), issues,
                                      st)
        st.candidates = len(pool)
        log(f"{name}: {len(kept[name])} kept of the {st.estimated} prompts estimated ({len(pool)} in the pool)")
        if exhausted and len(kept[name]) < wanted[name]:
            if recipe.shortfall == "error":
                raise short_error(recipe, {name: (len(kept[name]), wanted[name])}, " kept by the difficulty filter")
            share = min(share, len(kept[name]) / wanted[name])
    return {n: kept[n] for n in pools}


def _scan(pool: list[Candidate], need: int, difficulty: Any, rng: random.Random, issues: list[Issue],
          st: SourceStats) -> tuple[list[Candidate], bool]:
    """Kept rows of `pool` (in pool order) once they decide a draw of `need` rows, and whether the pool ran out."""
    groups: dict[str | None, list[int]] = {}
    for i, c in enumerate(pool):
        groups.setdefault(c.stratum, []).append(i)
    for idx in groups.values():
        rng.shuffle(idx)
    seen = {g: 0 for g in groups}  # rows of each group estimated so far (the first ones of its seeded order)
    kept: dict[str | None, list[int]] = {g: [] for g in groups}
    estimated = 0
    while deficits := _deficits(groups, seen, kept, need):
        # as many rows as the keep rate so far says the deficits take, the groups taking turns, a chunk at most
        rate = sum(map(len, kept.values())) / estimated if estimated else 1.0
        takes = {g: min(len(groups[g]) - seen[g], math.ceil(d / rate) if rate else len(groups[g]))
                 for g, d in deficits.items()}
        batch: list[int] = []
        while len(batch) < difficulty.chunk and any(takes.values()):
            for g in takes:
                if takes[g] and len(batch) < difficulty.chunk:
                    batch.append(groups[g][seen[g]])
                    seen[g] += 1
                    takes[g] -= 1
        rates = difficulty.pass_rates([pool[i].row for i in batch], done=estimated, total=len(pool))
        estimated += len(batch)
        for i, p in zip(batch, rates):
            c = pool[i]
            if p is None:  # every sample timed out or met an infra error: no estimate (and none cached)
                report(Issue(c.where, "unscored", "no sample could be scored to estimate its pass rate"), issues, st,
                       False)
            elif difficulty.low < p < difficulty.high:
                c.row["metadata"]["pass_rate"] = p
                kept[c.stratum].append(i)
            else:
                reason = "too_easy" if p >= difficulty.high else "too_hard"
                report(Issue(c.where, reason, f"estimated pass rate {p:.3f} outside ({difficulty.low}, "
                                              f"{difficulty.high})"), issues, st, False)
    st.estimated = estimated
    exhausted = all(seen[g] == len(groups[g]) for g in groups)
    return [pool[i] for i in sorted(i for idx in kept.values() for i in idx)], exhausted


def _deficits(groups: dict, seen: dict, kept: dict, need: int) -> dict:
    """How many more kept rows each group not yet exhausted needs before `pick`'s share of `need` rows (or of any
    fewer) comes out as it would from all its rows: a group exhausted gives what it kept, the others are taken as
    having rows to spare, and each of those needs its share plus one when rows are left over."""
    exhausted = {g for g in groups if seen[g] == len(groups[g])}
    quota, left, open_groups = quotas({g: len(kept[g]) if g in exhausted else need for g in groups}, need)
    wants = {g: quota[g] + (1 if left and g in open_groups else 0) for g in groups if g not in exhausted}
    return {g: w - len(kept[g]) for g, w in wants.items() if w > len(kept[g])}


def targets(recipe: Recipe, wanted: dict[str, int], pools: dict[str, list], stats: dict[str, SourceStats]) -> float:
    """Set each source's target count by the shortfall policy; returns the scale factor applied."""
    avail = {n: len(p) for n, p in pools.items()}
    for n in pools:
        stats[n].available = avail[n]
    short = {n: (avail[n], wanted[n]) for n in pools if avail[n] < wanted[n]}
    scale = 1.0
    if short and recipe.shortfall == "error":
        raise short_error(recipe, short)
    if short and recipe.shortfall == "scale":
        scale = min(avail[n] / wanted[n] for n in short)
    for n in pools:
        stats[n].target = min(avail[n], round(wanted[n] * scale))
    return scale


def quotas(sizes: dict, target: int) -> tuple[dict, int, list]:
    """How many of `target` rows each group (of `sizes[group]` rows) gives when every group gets the same share and
    one with too few rows gives what it lacks to the others; and the rows left over when the count does not divide
    evenly (fewer than the groups that still have room, listed last: `pick` gives them one each)."""
    quota = {g: 0 for g in sizes}
    left = target
    while left > 0:
        open_groups = [g for g in sizes if quota[g] < sizes[g]]
        if not open_groups:
            break
        share = left // len(open_groups)
        if share == 0:
            return quota, left, open_groups
        for g in open_groups:
            quota[g] += min(share, sizes[g] - quota[g])
        left = target - sum(quota.values())
    return quota, 0, []


def pick(pool: list[Candidate], target: int, rng: random.Random) -> list[int]:
    """Indices of `target` rows drawn at random with `rng` (the build seeds one per source).

    Rows of a generated source are drawn evenly across its tasks: every task gets the same share, a task with too
    few rows gives what it lacks to the others, and the rows left over when the count does not divide evenly (fewer
    than the tasks that still have rows) go one each to tasks drawn with `rng`, not to the first tasks listed. The
    counts are the same for a seed, and over seeds every task is equally likely to get a leftover row."""
    groups: dict[str | None, list[int]] = {}
    for i, c in enumerate(pool):
        groups.setdefault(c.stratum, []).append(i)
    quota, left, open_groups = quotas({g: len(idx) for g, idx in groups.items()}, target)
    if left:
        for g in rng.sample(open_groups, left):
            quota[g] += 1
    return sorted(i for g, idx in groups.items() for i in rng.sample(idx, quota[g]))

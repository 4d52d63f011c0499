"""What `prorl data build` records as it goes: each row left out (`Issue`) and each source's counts (`SourceStats`),
both written to the data card (prorl.data.card)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from prorl.data.sources import DataError


@dataclass
class Issue:
    """A row left out, with where it came from and why."""

    where: str
    reason: str  # "invalid", "duplicate_exact", "duplicate_normalized", "heldout_overlap", "too_easy", "too_hard",
    #              "unscored" (the difficulty filter could score none of its samples)
    message: str
    field: str | None = None

    def __str__(self) -> str:
        fld = f"field '{self.field}': " if self.field else ""
        return f"{self.where}: {fld}{self.message}"


@dataclass
class SourceStats:
    name: str
    env: str
    files: list[str] = field(default_factory=list)
    read: int = 0
    dropped: Counter = field(default_factory=Counter)
    heldout: int = 0
    available: int = 0
    target: int = 0
    selected: int = 0
    per_task: Counter = field(default_factory=Counter)
    needed: int | None = None  # a generated source made for this many rows, not its size (shortfall=scale)
    candidates: int | None = None  # with a difficulty filter: the rows it could estimate (the de-duplicated pool)
    estimated: int | None = None  # ... and those whose pass rate it did estimate (it stops once the target is met)


def report(issue: Issue, issues: list[Issue], stats: SourceStats, fatal: bool) -> None:
    issues.append(issue)
    stats.dropped[issue.reason] += 1
    if fatal:
        raise DataError(f"{issue} (on_error=fail; use --on-error skip to report and skip bad rows)")

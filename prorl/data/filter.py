"""The difficulty filter of `prorl data build --filter-model DIR --samples K --keep 'LOW<p<HIGH'`.

ProRL (like DAPO and DeepScaleR before it) trains only on prompts the starting model sometimes, but not always,
solves: a prompt it always solves or never solves gives a group of identical rewards, hence no gradient. The filter
samples K completions per prompt with the model, scores them with the gym, and keeps a prompt when its pass rate
p (mean reward over the scored samples) is strictly inside (LOW, HIGH). Samples whose scoring timed out or failed
for infrastructure reasons are left out of p; a prompt with none scored is dropped as too hard (p = 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from prorl.data.sampling import Sampler, SamplingConfig

_KEEP = re.compile(r"^\s*([0-9.]+)\s*<\s*p\s*<\s*([0-9.]+)\s*$")


def parse_keep(text: str) -> tuple[float, float]:
    """'0.0<p<1.0' (or '0.1,0.9') -> (low, high), checked."""
    m = _KEEP.match(text) or re.match(r"^\s*([0-9.]+)\s*,\s*([0-9.]+)\s*$", text)
    if not m:
        raise ValueError(f"--keep {text!r}: expected LOW<p<HIGH, e.g. 0.0<p<1.0")
    low, high = float(m.group(1)), float(m.group(2))
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"--keep {text!r}: need 0 <= LOW < HIGH <= 1")
    return low, high


@dataclass
class DifficultyFilter:
    """Estimates pass rates with a local model; `build()` keeps rows with low < p < high."""

    model_dir: str
    samples: int = 8
    low: float = 0.0
    high: float = 1.0
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=1.0))
    workers: int | None = None
    progress: Callable[[int, int], None] | None = None  # (done, total) sequences
    _sampler: Sampler | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_dir, "samples": self.samples, "keep": f"{self.low}<p<{self.high}",
                "sampling": self.sampling.to_dict()}

    def pass_rates(self, rows: list[dict[str, Any]]) -> list[float]:
        from prorl.envs import make
        from prorl.envs.workers import score_many

        if not rows:
            return []
        if self._sampler is None:
            self._sampler = Sampler(self.model_dir, self.sampling)
        total, done = len(rows) * self.samples, 0

        def step(k: int) -> None:
            nonlocal done
            done += k
            if self.progress:
                self.progress(done, total)

        completions = self._sampler.sample([r["prompt"] for r in rows], self.samples, progress=step)
        envs = {e: make(e) for e in {r["env"] for r in rows}}
        flat_rows = [r for r in rows for _ in range(self.samples)]
        scores = score_many([envs[r["env"]] for r in flat_rows], [c for cs in completions for c in cs], flat_rows,
                            workers=self.workers)
        rates = []
        for i in range(len(rows)):
            mine = [s for s in scores[i * self.samples:(i + 1) * self.samples] if not s.masked]
            rates.append(sum(s.reward for s in mine) / len(mine) if mine else 0.0)
        return rates

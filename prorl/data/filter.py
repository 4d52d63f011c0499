"""The difficulty filter of `prorl data build --filter-model DIR --samples K --keep 'LOW<p<HIGH'`.

ProRL (like DAPO and DeepScaleR before it) trains only on prompts the starting model sometimes, but not always,
solves: a prompt it always solves or never solves gives a group of identical rewards, hence no gradient. The filter
samples K completions per prompt with the model, scores them with the gym, and keeps a prompt when its pass rate
p (the fraction of scored samples that are fully right, status `ok`) is strictly inside (LOW, HIGH). A mean reward
would keep what the model never solves wherever rewards are continuous (reasoning-gym pays 0.01-0.05 for a
well-formed wrong answer, IFEval the fraction of instructions followed). Samples whose scoring timed out or failed
for infrastructure reasons are left out of p; a prompt with none scored has no p (None): it is dropped from this
build as `unscored` and not cached, so a re-run after the outage estimates it again. Completions
are scored as the trainer scores them: after a chat template that opens `<think>` (DeepSeek-R1-Distill), one cut
off mid-thought answers nothing.

`prorl data build` does not estimate whole sources: it goes through each de-duplicated pool in a seeded order, a
`chunk` of prompts at a time, and stops once the rows kept are enough for the source's part of the mixture
(prorl.data.mix.filter_pools); the data card counts the prompts estimated of each pool.

With a `cache` file (`prorl data build` keeps it in the output folder: `pass_rates.jsonl`), each chunk of prompts'
pass rates is appended as soon as it is estimated, and a re-run with the same model folder (its files unchanged:
a model saved again there is another model), samples and sampling settings reuses them: a build stopped after hours
of sampling goes on where it stopped (cached prompts are taken in the same order and cost nothing).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prorl.data.sampling import Sampler, SamplingConfig, render

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
    progress: Callable[[int, int], None] | None = None  # (done, total) sequences of the source being estimated
    on_source: Callable[[str, int, int], None] | None = None  # (name, k, n): the build starts on its k-th of n sources
    cache: str | Path | None = None  # JSON Lines of pass rates, appended per chunk and reused (see the docstring)
    chunk: int = 256  # prompts per sampling call (and at most per step of the build's scan of a pool)
    _sampler: Sampler | None = field(default=None, repr=False)
    _fingerprint: list | None = field(default=None, repr=False)
    _known: dict[str, float] | None = field(default=None, repr=False)  # the cache's rates (see _cached)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_dir, "samples": self.samples, "keep": f"{self.low}<p<{self.high}",
                "sampling": self.sampling.to_dict()}

    def _model_files(self) -> list:
        """Name, size and modification time of each file of the model folder: a model saved again into the same
        folder (re-trained) does not reuse the pass rates of the one before."""
        if self._fingerprint is None:
            folder = Path(self.model_dir)
            self._fingerprint = sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                       for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        return self._fingerprint

    def _key(self, row: dict[str, Any]) -> str:
        settings = {"model": str(self.model_dir), "files": self._model_files(), "samples": self.samples,
                    "sampling": self.sampling.to_dict(),
                    "p": "solved fraction"}  # (rates cached as mean rewards by earlier versions are not reused)
        what = [settings, row["env"], row["prompt"], row.get("reference")]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    def _cached(self) -> dict[str, float]:
        """The cache file's pass rates, read once (a build asks for them a chunk at a time) and kept in step with
        what `pass_rates` appends."""
        if self._known is None:
            self._known = {}
            if self.cache is not None and Path(self.cache).exists():
                with open(self.cache) as f:
                    for line in f:
                        try:
                            entry = json.loads(line)
                            self._known[entry["key"]] = float(entry["p"])
                        except (ValueError, KeyError, TypeError):
                            continue  # a line cut short by the interruption
        return self._known

    def pass_rates(self, rows: list[dict[str, Any]], done: int = 0, total: int | None = None) -> list[float | None]:
        """The pass rate of each row (None: no sample could be scored). `done` and `total` count prompts for
        `progress` when these rows are part of a longer scan: prompts estimated before them, and the most there may
        be (default: these rows)."""
        keys = [self._key(r) for r in rows]
        known = self._cached()
        found = {k: known[k] for k in keys if k in known}
        todo = [i for i, k in enumerate(keys) if k not in known]
        total = (len(rows) if total is None else total) * self.samples
        done = (done + len(rows) - len(todo)) * self.samples
        for start in range(0, len(todo), self.chunk):
            part = todo[start:start + self.chunk]

            def step(k: int) -> None:
                nonlocal done
                done += k
                if self.progress:
                    self.progress(done, total)

            rates = self._estimate([rows[i] for i in part], step)
            found.update((keys[i], p) for i, p in zip(part, rates))
            if self.cache is not None:
                known.update((keys[i], p) for i, p in zip(part, rates) if p is not None)
                Path(self.cache).parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache, "a") as f:
                    f.writelines(json.dumps({"key": keys[i], "p": p}) + "\n" for i, p in zip(part, rates)
                                 if p is not None)
        return [found[k] for k in keys]

    def _estimate(self, rows: list[dict[str, Any]], step: Callable[[int], None]) -> list[float | None]:
        from prorl.envs import make, split_think
        from prorl.envs.workers import score_many

        if not rows:
            return []
        if self._sampler is None:
            self._sampler = Sampler(self.model_dir, self.sampling)
        completions = self._sampler.sample([r["prompt"] for r in rows], self.samples, progress=step)
        envs = {e: make(e) for e in {r["env"] for r in rows}}
        flat_rows = [r for r in rows for _ in range(self.samples)]
        tokenizer = self._sampler.tokenizer
        opens = [split_think(render(tokenizer, r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"])[0]
                 is None for r in rows]
        flat = [("<think>" if opens[i] else "") + c for i, cs in enumerate(completions) for c in cs]
        scores = score_many([envs[r["env"]] for r in flat_rows], flat, flat_rows, workers=self.workers)
        rates = []
        for i in range(len(rows)):
            mine = [s for s in scores[i * self.samples:(i + 1) * self.samples] if not s.masked]
            rates.append(sum(s.status == "ok" for s in mine) / len(mine) if mine else None)
        return rates

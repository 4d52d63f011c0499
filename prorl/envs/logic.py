"""Procedural reasoning tasks from reasoning-gym: `logic/<task>` for every task, and `logic`, a weighted mixture.

Tasks are generated with `reasoning_gym.create_dataset(name, size=..., seed=...)`; the prompt is reasoning-gym's
default system prompt (answer inside `<answer></answer>`) plus the question; the answer is taken with
`reasoning_gym.utils.extract_answer` and scored by the task's own `score_answer` (continuous reward in [0, 1]).
A task dict is a reasoning-gym entry `{"question", "answer", "metadata": {"source_dataset": <task>, ...}}`.

Known quirks of reasoning-gym 0.1.25, handled here:
  - `composite` needs explicit sub-datasets: `logic/composite` defaults to a small mixture (override `config=`);
    its entries name their sub-dataset in `metadata.source_dataset` and are scored by that task's scorer.
  - `arc_agi` / `rearc` compare answer boards with tuples in `metadata`; a JSON round trip turns them into
    lists, so they are turned back into tuples before scoring.
  - `boxnet`, `graph_color`, `propositional_logic`, `rubiks_cube`, `rush_hour` entries have `answer=None`: they are
    scored by checking/simulating the proposed answer, so there is no gold string to show.
reasoning_gym is imported only here, on first use, so `import prorl` stays fast.
"""

from __future__ import annotations

import difflib
import json
import logging
import random
import re
from functools import lru_cache
from typing import Any, Callable

from prorl.envs.base import Env, Score, Task
from prorl.envs.registry import register

log = logging.getLogger(__name__)

# A small default for `composite`, which reasoning-gym cannot build without sub-datasets.
COMPOSITE_DEFAULT = {"datasets": [
    {"name": "chain_sum", "weight": 1.0, "config": {}},
    {"name": "basic_arithmetic", "weight": 1.0, "config": {}},
    {"name": "word_sorting", "weight": 1.0, "config": {}},
]}
_TUPLE_BOARD_TASKS = ("arc_agi", "rearc")


def _registry() -> dict:
    from reasoning_gym.factory import DATASETS

    return DATASETS


def task_names() -> list[str]:
    """Every task registered in reasoning-gym, sorted."""
    return sorted(_registry())


def system_prompt() -> str:
    from reasoning_gym.utils import SYSTEM_PROMPTS

    return SYSTEM_PROMPTS["default"]


def _create(name: str, size: int, seed: int, config: dict | None):
    config = dict(config or {})
    if name == "composite":
        from reasoning_gym.composite import DatasetSpec

        specs = config.pop("datasets", None) or COMPOSITE_DEFAULT["datasets"]
        config["datasets"] = [s if isinstance(s, DatasetSpec) else DatasetSpec(**s) for s in specs]
    from reasoning_gym import create_dataset

    return create_dataset(name, size=size, seed=seed, **config)


@lru_cache(maxsize=None)
def _scorer(name: str, config_json: str = "{}") -> Callable[[str | None, dict], float]:
    """`score_answer` of a one-entry instance of the task with this config (scoring needs the config, not the
    data; some tasks precompute their whole dataset, which costs seconds at generation sizes)."""
    return _create(name, size=1, seed=0, config=json.loads(config_json)).score_answer


def scorer_for(name: str, config: dict | None = None) -> Callable[[str | None, dict], float]:
    return _scorer(name, json.dumps(config or {}, sort_keys=True, default=str))


def _restore_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_restore_tuples(v) for v in value)
    return value


def entry_source(entry: dict) -> str:
    meta = entry.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("source_dataset"), str):
        raise KeyError("metadata.source_dataset")
    return meta["source_dataset"]


class LogicTaskEnv(Env):
    """One reasoning-gym task (`logic/<task>`): continuous reward from the task's own `score_answer`."""

    description = "A reasoning-gym task; continuous reward from its own score_answer"
    timeout_s = 10.0

    def __init__(self, task: str, dataset=None, seed: int | None = None, size: int = 10_000,
                 config: dict | None = None, **kwargs):
        super().__init__(dataset=dataset, seed=seed, **kwargs)
        self.task = task
        self.size = size
        self.data_seed = 0 if seed is None else seed
        self.config = dict(config or (COMPOSITE_DEFAULT if task == "composite" else {}))
        self._procedural = None  # the reasoning-gym dataset, built on first use (not pickled)

    def __getstate__(self):
        return {**self.__dict__, "_procedural": None}

    def procedural(self):
        if self._procedural is None:
            self._procedural = _create(self.task, self.size, self.data_seed, self.config)
        return self._procedural

    def generate(self, rng: random.Random) -> dict:
        try:
            return self.procedural()[rng.randrange(self.size)]
        except Exception as exc:
            raise RuntimeError(f"reasoning-gym task {self.task!r}: generator failed: {exc!r}") from exc

    def task_from_dict(self, row: dict) -> Task:
        for key in ("question", "answer"):
            if key not in row:
                raise KeyError(key)
        if not isinstance(row.get("metadata") or {}, dict):
            raise ValueError(f"field 'metadata' must be an object, got {type(row['metadata']).__name__}")
        meta = dict(row.get("metadata") or {})
        meta.setdefault("source_dataset", self.task)
        name = meta["source_dataset"]
        if not isinstance(name, str) or name not in _registry():  # else every sample of it scores infra_error
            close = difflib.get_close_matches(str(name), task_names(), n=1)
            raise ValueError(f"field 'metadata.source_dataset': {name!r} is not a reasoning-gym task"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))
        answer = row["answer"]
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # reasoning-gym answers are strings; its scorers fail on a number from a JSON file
        entry = {"question": row["question"], "answer": answer, "metadata": meta}
        prompt = [{"role": "system", "content": system_prompt()}, {"role": "user", "content": row["question"]}]
        task_id = f"{meta['source_dataset']}/{meta.get('source_index', meta.get('source_idx', ''))}"
        return Task(id=task_id, env=self.id, prompt=prompt, reference={"entry": entry},
                    metadata={"source_dataset": meta["source_dataset"]})

    def scorer(self, name: str) -> Callable[[str | None, dict], float]:
        """The scorer of task `name`, with the config this env generates it with (if any)."""
        if self.task == "composite":  # entries are scored by their sub-dataset, with its config
            subs = {d["name"]: d.get("config") for d in self.config.get("datasets", []) if isinstance(d, dict)}
            return scorer_for(name, subs.get(name))
        return scorer_for(name, self.config if name == self.task else None)

    def verify(self, answer: str, task: Task) -> Score:
        from reasoning_gym.utils import extract_answer

        entry = task.reference["entry"]
        name = entry_source(entry)
        extracted = extract_answer(answer, tag_name="answer")
        if extracted is None:
            return Score(0.0, "format_error", {"task": name, "error": "no <answer></answer> block"})
        if name in _TUPLE_BOARD_TASKS:  # undo the JSON round trip (lists -> tuples) their scorer relies on
            meta = dict(entry["metadata"])
            for key in ("input", "output"):
                if key in meta:
                    meta[key] = _restore_tuples(meta[key])
            entry = {**entry, "metadata": meta}
        try:
            reward = float(self.scorer(name)(extracted, entry))
        except Exception as exc:
            return Score(0.0, "infra_error", {"task": name, "error": f"reasoning-gym scorer raised {exc!r}"})
        if reward != reward:
            return Score(0.0, "infra_error", {"task": name, "error": "scorer returned NaN"})
        return Score.graded(min(1.0, max(0.0, reward)), task=name, extracted=extracted[:200])


class LogicMixEnv(LogicTaskEnv):
    """A weighted mixture of reasoning-gym tasks (`tasks=[...]` or `{name: weight}`; default: every task).

    Each draw picks a task by weight, then an entry of it. Any reasoning-gym entry scores, whatever task it is
    from (`metadata.source_dataset` selects the scorer). A task whose generator raises is skipped for this
    draw and recorded in `generator_failures`; a scorer that raises gives `infra_error` naming the task.
    """

    description = "A weighted mixture of reasoning-gym tasks; continuous reward"

    def __init__(self, tasks: list[str] | dict[str, float] | None = None, dataset=None, seed: int | None = None,
                 size: int = 10_000, configs: dict[str, dict] | None = None, **kwargs):
        super().__init__(task="mixture", dataset=dataset, seed=seed, size=size, **kwargs)
        known = task_names()
        if tasks is None:
            tasks = [t for t in known if t != "composite"]
        weights = dict(tasks) if isinstance(tasks, dict) else {t: 1.0 for t in tasks}
        unknown = sorted(set(weights) - set(known))
        if unknown:
            raise ValueError(f"logic: unknown reasoning-gym tasks {unknown} (see `prorl envs`)")
        if not weights or any(not (w > 0) for w in weights.values()):
            raise ValueError(f"logic: tasks need positive weights, got {weights}")
        self.weights = {k: float(v) for k, v in weights.items()}
        self.configs = dict(configs or {})
        self._subs: dict[str, LogicTaskEnv] = {}
        self.generator_failures: dict[str, str] = {}

    def __getstate__(self):
        return {**self.__dict__, "_procedural": None, "_subs": {}}

    def sub(self, name: str) -> LogicTaskEnv:
        if name not in self._subs:
            self._subs[name] = LogicTaskEnv(name, seed=self.data_seed, size=self.size, config=self.configs.get(name))
        return self._subs[name]

    def generate(self, rng: random.Random) -> dict:
        names = [n for n in self.weights if n not in self.generator_failures]
        while names:
            name = rng.choices(names, weights=[self.weights[n] for n in names])[0]
            try:
                return self.sub(name).generate(rng)
            except RuntimeError as exc:
                log.warning("%s", exc)
                self.generator_failures[name] = str(exc)
                names.remove(name)
        raise RuntimeError(f"logic: every task's generator failed: {self.generator_failures}")

    def task_from_dict(self, row: dict) -> Task:
        entry_source(row)  # a mixture needs to know which task an entry is from
        return super().task_from_dict(row)

    def scorer(self, name: str) -> Callable[[str | None, dict], float]:
        return scorer_for(name, self.configs.get(name))


def _describe(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    line = doc.splitlines()[0].strip() if doc else ""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)  # markdown links -> their text


def register_reasoning_gym_tasks() -> None:
    """Register `logic/<task>` for every reasoning-gym task (called lazily by the registry)."""
    for name, desc in task_index():
        register(f"logic/{name}", LogicTaskEnv, description=desc, override=True, task=name)


def task_index() -> list[tuple[str, str]]:
    """(name, one-line description) of every reasoning-gym task. Listing them imports reasoning_gym whole (about 2 s
    and 100 MB: sympy, matplotlib...), which `make("math")` should not pay for: the list is kept in
    `$PRORL_CACHE_DIR` (default `~/.cache/prorl`) per installed reasoning-gym (its version and the path and mtime of
    its package), and built again when that changes or the file is unreadable."""
    import importlib.metadata
    import importlib.util
    import os
    from pathlib import Path

    spec = importlib.util.find_spec("reasoning_gym")  # finds the package without running it
    if spec is None or not spec.origin:
        raise ImportError("reasoning_gym is not installed: the logic environments need it (pip install reasoning-gym)")
    stamp = f"{importlib.metadata.version('reasoning_gym')}|{spec.origin}|{os.stat(spec.origin).st_mtime_ns}"
    folder = Path(os.environ.get("PRORL_CACHE_DIR") or Path.home() / ".cache" / "prorl")
    path = folder / "reasoning-gym-tasks.json"
    try:
        cached = json.loads(path.read_text())
        if cached["stamp"] == stamp and all(isinstance(n, str) and isinstance(d, str) for n, d in cached["tasks"]):
            return [(n, d) for n, d in cached["tasks"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from reasoning_gym.factory import DATASETS

    tasks = []
    for name, (dataset_cls, _config_cls) in sorted(DATASETS.items()):
        desc = _describe(dataset_cls)
        tasks.append((name, f"reasoning-gym: {desc}" if desc else f"reasoning-gym task {name}"))
    try:  # written whole, then renamed: a reader never sees half a file
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp, "tasks": tasks}))
        tmp.replace(path)
    except OSError as exc:  # a read-only home: list them again next time
        log.debug("could not cache the reasoning-gym task list in %s: %r", folder, exc)
    return tasks

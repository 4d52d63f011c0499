"""The environment reward: one TRL reward function that routes every sample to its environment.

Dataset rows name their environment in an `env` column (`math`, `logic/chain_sum`, ...). The task a completion is
scored against comes from, per row:
  1. a `task` column: a `prorl.Task` as a dict or a JSON string (what `gym_dataset` writes), else
  2. the row's own columns (what `prorl data build` writes: `id`, `env`, `prompt`, `reference`, `metadata`, with
     `reference`/`metadata` as dicts or JSON strings), else the environment's public row format (e.g. a MATH row
     with `problem`/`answer`), read by the environment's `task_from_dict`.

All samples of a batch are scored together by `prorl.envs.workers.score_many` (parallel worker processes with a
killable per-sample timeout). Samples whose status is `timeout` or `infra_error` say nothing about the model: the
function returns `None` for them, which TRL turns into NaN, leaves out of the group mean/std, and gives an advantage
of 0 (neither rewarded nor penalised). Each call logs `reward/<env>` (mean reward of that environment's scored
samples) and `masked/<status>` (fraction of the batch masked for that status) through TRL's `log_metric` hook, and
a `status` column for the completions table through `log_extra`.

Works with a plain `trl.GRPOTrainer` as well as with `ProRLTrainer`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Callable, Sequence

from prorl.envs import UNSCORED_STATUSES, Env, Score, make
from prorl.envs.workers import score_many

# Keyword arguments TRL passes to reward functions that are not dataset columns.
_TRL_KWARGS = {"trainer_state", "log_extra", "log_metric", "completion_ids", "environments"}
_JSON_COLUMNS = ("reference", "metadata")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the content of the last message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # content blocks
            return "".join(block.get("text", "") for block in content if isinstance(block, dict))
        return content if isinstance(content, str) else str(content)
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}: {completion!r:.200}")


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def row_task(row: dict[str, Any], prompt: Any = None) -> dict[str, Any]:
    """The task dict of one dataset row (see the module docstring for the accepted schemas)."""
    task = row.get("task")
    if task is not None:
        task = _maybe_json(task)
        if not isinstance(task, dict):
            raise ValueError(f"row {row.get('id', '?')}: the `task` column must be a dict or a JSON object, "
                             f"got {type(task).__name__}")
        return task
    out = {k: v for k, v in row.items() if k != "task" and v is not None}
    for key in _JSON_COLUMNS:
        if key in out:
            out[key] = _maybe_json(out[key])
    if "prompt" not in out and prompt is not None:
        out["prompt"] = prompt
    return out


class EnvReward:
    """A TRL reward function scoring each completion with the environment named in its row's `env` column.

    Args:
        workers: scoring worker processes (None: `PRORL_SCORE_WORKERS` or the CPU count; 0: inline, no timeout).
        timeout_s: per-sample timeout (None: each environment's `timeout_s`).
        env_kwargs: keyword arguments for `prorl.make`, per environment id.
        env_column: the dataset column naming the environment.
    """

    __name__ = "env"  # TRL names the reward's metrics after it: rewards/env/mean, rewards/env/std

    def __init__(self, workers: int | None = None, timeout_s: float | None = None,
                 env_kwargs: dict[str, dict[str, Any]] | None = None, env_column: str = "env"):
        self.workers = workers
        self.timeout_s = timeout_s
        self.env_kwargs = dict(env_kwargs or {})
        self.env_column = env_column
        self._envs: dict[str, Env] = {}
        self.last_scores: list[Score] = []  # the scores of the latest call, for inspection

    def env(self, env_id: str) -> Env:
        if env_id not in self._envs:
            self._envs[env_id] = make(env_id, **self.env_kwargs.get(env_id, {}))
        return self._envs[env_id]

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, list]) -> list[Score]:
        """Score a batch. `columns` maps dataset column names to per-sample values (TRL's reward kwargs)."""
        n = len(completions)
        if self.env_column not in columns:
            raise KeyError(f"EnvReward: the dataset has no {self.env_column!r} column naming each row's "
                           f"environment (columns: {sorted(columns)})")
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
        envs = [self.env(row[self.env_column]) for row in rows]
        tasks = [row_task(row, prompts[i] if i < len(prompts) else None) for i, row in enumerate(rows)]
        texts = [completion_text(c) for c in completions]
        return score_many(envs, texts, tasks, workers=self.workers, timeout_s=self.timeout_s)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], log_metric: Callable | None = None,
                 log_extra: Callable | None = None, **kwargs) -> list[float | None]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_KWARGS}
        scores = self.score(prompts, completions, columns)
        self.last_scores = scores
        env_ids = columns[self.env_column]
        if log_metric is not None:
            per_env: dict[str, list[float]] = defaultdict(list)
            for env_id, s in zip(env_ids, scores):
                if not s.masked:
                    per_env[env_id].append(s.reward)
            for env_id, values in sorted(per_env.items()):
                log_metric(f"reward/{env_id}", sum(values) / len(values))
            for status in UNSCORED_STATUSES:
                log_metric(f"masked/{status}", sum(s.status == status for s in scores) / max(1, len(scores)))
        if log_extra is not None:
            log_extra("status", [s.status for s in scores])
        return [None if s.masked else s.reward for s in scores]

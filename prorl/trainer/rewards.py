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
samples), `masked/<status>` (fraction of the samples masked for that status) and, when a batch ran sandboxed tests,
`sandbox/<status>` (fraction of those tests that ended so: ok, runtime_error, timeout, memory, ...) through TRL's
`log_metric` hook, one value per sample (per test) so that TRL's average over processes weighs every sample alike,
and a `status` column for the completions table through `log_extra`.

With a prompt or chat template that opens `<think>` (DeepSeek-R1-Distill's, read from the tokenizer by
`ProRLTrainer`), a completion is scored as if it began with `<think>`: one that never closes it answers nothing
(`format_error`).

Works with a plain `trl.GRPOTrainer` as well as with `ProRLTrainer`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Sequence

from prorl.envs import UNSCORED_STATUSES, Env, Score, make, split_think
from prorl.envs.base import task_error
from prorl.envs.workers import score_many

log = logging.getLogger(__name__)

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
            named = f"id {row['id']!r}: " if row.get("id") is not None else ""
            raise ValueError(f"{named}the `task` column must be a dict or a JSON object, got {type(task).__name__}")
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
        prompt_opens_think: whether the prompt ends inside a `<think>` block the completion continues (the chat
            template of DeepSeek-R1-Distill models, ProRL's base, ends with `<think>\n`). The completion is then
            scored as if it began with `<think>`, so one that never closes the block (cut off while reasoning) has
            no answer, as when the model opens the block itself. None: read from each plain-text prompt, and for
            conversational prompts from the chat template once `attach(tokenizer)` has run (ProRLTrainer calls it;
            with a plain GRPOTrainer call it yourself or pass True for such a model).
    """

    __name__ = "env"  # TRL names the reward's metrics after it: rewards/env/mean, rewards/env/std

    def __init__(self, workers: int | None = None, timeout_s: float | None = None,
                 env_kwargs: dict[str, dict[str, Any]] | None = None, env_column: str = "env",
                 prompt_opens_think: bool | None = None):
        self.workers = workers
        self.prompt_opens_think = prompt_opens_think
        self.template_opens_think = False  # conversational prompts, when prompt_opens_think is None (see attach)
        self.timeout_s = timeout_s
        self.env_kwargs = dict(env_kwargs or {})
        self.env_column = env_column
        self._envs: dict[str, Env] = {}
        self.last_scores: list[Score] = []  # the scores of the latest call, for inspection
        self._warned: set[tuple[str, str]] = set()  # (env, error) of the infra errors already logged
        self._checked: Any = None  # the latest dataset check_dataset passed (attach does not check it again)

    def env(self, env_id: str) -> Env:
        if env_id not in self._envs:
            self._envs[env_id] = make(env_id, **self.env_kwargs.get(env_id, {}))
        return self._envs[env_id]

    def row_env(self, row: dict[str, Any], where: str) -> Env:
        """The environment a row names; an unknown or missing one is an error naming the row (`where`, its id)."""
        env_id = row.get(self.env_column)
        where += f" (id {row['id']!r})" if row.get("id") is not None else ""
        if not isinstance(env_id, str) or not env_id:
            raise KeyError(f"EnvReward: {where} names no environment in its {self.env_column!r} column "
                           f"(got {env_id!r})")
        try:
            return self.env(env_id)
        except KeyError as exc:
            raise KeyError(f"EnvReward: {where}: {exc.args[0]}") from None

    def attach(self, tokenizer: Any, dataset: Any = None) -> None:
        """Before training: read from `tokenizer`'s chat template whether it leaves the completion inside an open
        `<think>` block, and check the environments `dataset` names (when it is map-style)."""
        if getattr(tokenizer, "chat_template", None):
            try:
                rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False,
                                                         add_generation_prompt=True)
            except Exception as exc:  # a template that needs more than one user turn: assume no open block
                log.warning("EnvReward: could not render the chat template (%r); completions are scored as they "
                            "are (pass prompt_opens_think=True if the template opens <think>)", exc)
            else:
                self.template_opens_think = isinstance(rendered, str) and split_think(rendered)[0] is None
        if dataset is not None and dataset is not self._checked and (hasattr(dataset, "column_names")
                                                                     or isinstance(dataset, list)):
            self.check_dataset(dataset)

    def check_dataset(self, dataset: Any, row_names: Sequence[str] | None = None) -> None:
        """Before training, check every row of a dataset (a `datasets.Dataset` or a list of row dicts): its
        environment exists and its task is one that environment reads. A misspelt `env` or a row without its
        answer then fails at once, naming the row, instead of being scored 0 (a format error charged to the
        model) whenever a batch samples it. A row is named `row_names[i]` (`prorl train` passes `FILE:LINE` for a
        .jsonl file, the line an editor shows), else `row i (0-based)`, its index in the dataset, as
        `dataset[i]` reads it; and its `id` when it has one. Then each environment the rows name runs its
        `preflight` (the code sandbox starts and runs a program): an `EnvNotReady` stops the run before training."""
        if hasattr(dataset, "column_names") and self.env_column not in dataset.column_names:
            raise KeyError(f"EnvReward: the dataset has no {self.env_column!r} column naming each row's "
                           f"environment (columns: {dataset.column_names})")
        for i, row in enumerate(dataset):
            row = dict(row)
            name = row_names[i] if row_names is not None else f"row {i} (0-based)"
            where = name + (f" (id {row['id']!r})" if row.get("id") is not None else "")
            env = self.row_env(row, name)
            try:
                env.as_task(row_task(row))
            except Exception as exc:  # any error of the environment's task_from_dict, named with the row
                raise ValueError(f"EnvReward: {where} ({env.id}){task_error(exc)}") from exc
        for env in self._envs.values():  # one per id, each built once
            env.preflight()
        self._checked = dataset

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, list]) -> list[Score]:
        """Score a batch. `columns` maps dataset column names to per-sample values (TRL's reward kwargs)."""
        n = len(completions)
        if self.env_column not in columns:
            raise KeyError(f"EnvReward: the dataset has no {self.env_column!r} column naming each row's "
                           f"environment (columns: {sorted(columns)})")
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
        envs = [self.row_env(row, f"sample {i} of the batch") for i, row in enumerate(rows)]
        tasks = [row_task(row, prompts[i] if i < len(prompts) else None) for i, row in enumerate(rows)]
        texts = [completion_text(c) for c in completions]
        for i, text in enumerate(texts):
            opens, prompt = self.prompt_opens_think, prompts[i] if i < len(prompts) else None
            if opens is None:  # a plain-text prompt whose last think block is still open, or such a chat template
                opens = split_think(prompt)[0] is None if isinstance(prompt, str) else self.template_opens_think
            if opens:
                texts[i] = "<think>" + text
        scores = score_many(envs, texts, tasks, workers=self.workers, timeout_s=self.timeout_s)
        self._warn_infra_errors(envs, scores)
        return scores

    def _warn_infra_errors(self, envs: Sequence[Env], scores: Sequence[Score]) -> None:
        """Log each distinct error behind `infra_error` verdicts once (the first 20): masked samples are only
        counted in `masked/infra_error`, and a verifier bug (an exception, a non-Score return) would otherwise
        mask every sample of a run without its message ever being shown."""
        for env, s in zip(envs, scores):
            if s.status != "infra_error" or len(self._warned) >= 20:
                continue
            key = (env.id, str(s.details.get("error", s.details) if isinstance(s.details, dict) else s.details))
            if key not in self._warned:
                self._warned.add(key)
                log.warning("EnvReward: %s could not score a sample (infra_error, masked): %.500s", *key)

    @staticmethod
    def _log_sandbox_statuses(scores: Sequence[Score], log_metric: Callable) -> None:
        """`sandbox/<status>`: the fraction of the sandboxed tests (`details.statuses` of `code`) that ended so, one
        value per test: how many time out or run out of memory, to tune the sandbox's limits."""
        from prorl.sandbox.base import status_order

        tests = [str(t) for s in scores if isinstance(s.details.get("statuses"), list) for t in s.details["statuses"]]
        for status in status_order(tests) if tests else ():
            for t in tests:
                log_metric(f"sandbox/{status}", float(t == status))

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], log_metric: Callable | None = None,
                 log_extra: Callable | None = None, **kwargs) -> list[float | None]:
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_KWARGS}
        scores = self.score(prompts, completions, columns)
        self.last_scores = scores
        env_ids = columns[self.env_column]
        if log_metric is not None:
            # One value per sample: TRL averages a metric's values over the calls of all processes (their sum over
            # their count), so this gives each environment's mean over all its samples. One mean per call would
            # weigh a process holding 2 samples of an environment as much as one holding 60.
            for env_id, s in zip(env_ids, scores):
                if not s.masked:
                    log_metric(f"reward/{env_id}", s.reward)
            for status in UNSCORED_STATUSES:
                for s in scores:
                    log_metric(f"masked/{status}", float(s.status == status))
            self._log_sandbox_statuses(scores, log_metric)
        if log_extra is not None:
            log_extra("status", [s.status for s in scores])
        return [None if s.masked else s.reward for s in scores]

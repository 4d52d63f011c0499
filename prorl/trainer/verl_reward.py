"""prorl's environments as verl's custom reward function (`custom_reward_function.path` / `.name` in verl's config).

verl (volcengine/verl) loads this file by its path (`importlib.util.spec_from_file_location`, in
`verl/trainer/ppo/reward.py:get_custom_reward_fn`) and calls, per sample (reward manager `naive`, verl's default):

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=...)

or, with `reward_model.reward_manager=batch`, once per batch:

    compute_score_batch(data_sources=..., solution_strs=..., ground_truths=..., extra_infos=...)

each plus the keys of `custom_reward_function.reward_kwargs`. The rows come from `prorl data export BUILD -o OUT
--format verl` (prorl.data.export): `data_source` is the environment id, `reward_model.ground_truth` the JSON text of
the task's reference, `extra_info` the row's `id`, `env`, `source` and `metadata` (JSON text). Only the environment
and the reference are needed to score (`extra_info` may be None); `extra_info["env"]` wins over `data_source`, so a
run with another `data.reward_fn_key` still scores each row with its own environment. A row whose environment is
unknown, or whose ground truth is not a JSON object, raises an error naming the row: a data or set-up mistake, not
the model's.

Each sample is scored in a prorl scoring worker process with a killable timeout (`prorl.envs.workers.score_many`:
one worker per process for `compute_score`, `workers` of them for `compute_score_batch`); the code environment runs
programs in its sandbox, whose own limits are part of the reward. The result is a dict, the same keys for every
sample (verl collects each key over the batch and averages it per data source in its validation metrics; `acc` is
its core one):

    score        the environment's reward in [0, 1] (what verl trains on)
    acc          1.0 when the answer is fully right (status ok), else 0.0
    format_error 1.0 when the completion gave no answer (status format_error)
    timeout      1.0 when the verifier ran past its timeout and was killed
    infra_error  1.0 when the verifier failed (an exception; the error is logged once)

verl has no per-sample mask: TRL's NaN reward (what prorl's EnvReward returns for these) would turn the whole GRPO
group's mean and std into NaN. A `timeout` or `infra_error` sample therefore gets `score = unscored_score` (0.0 by
default, as verl's own math_verify `timeout_score`): it counts as a wrong answer, and `timeout`/`infra_error` show
how often that happened.

Keyword arguments (set them under `custom_reward_function.reward_kwargs`):
    timeout_s           per-sample verifier timeout in seconds (default: each environment's own `timeout_s`)
    workers             scoring processes of `compute_score_batch` (default: PRORL_SCORE_WORKERS or the CPU count)
    prompt_opens_think  True when the chat template ends inside `<think>` (DeepSeek-R1-Distill's): the completion
                        is scored as if it began with `<think>`, so one that never closes it has no answer
    unscored_score      the score of a timeout / infra_error sample (default 0.0)
Other keyword arguments are ignored with a warning (once).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Sequence

# Absolute imports only: verl runs this file as a module of its own ("custom_module"), outside the prorl package.
from prorl.envs import Env, Score, make
from prorl.envs.workers import score_many

log = logging.getLogger("prorl.trainer.verl_reward")

EXTRA_KEYS = ("acc", "format_error", "timeout", "infra_error")
_OPTIONS = ("timeout_s", "workers", "prompt_opens_think", "unscored_score")
_ENVS: dict[str, Env] = {}
_LOCK = threading.Lock()
_WARNED: set[Any] = set()


def _warn_once(key: Any, msg: str, *args: Any) -> None:
    if key not in _WARNED and len(_WARNED) < 50:
        _WARNED.add(key)
        log.warning(msg, *args)


def _env(env_id: str, where: str) -> Env:
    with _LOCK:
        if env_id not in _ENVS:
            try:
                _ENVS[env_id] = make(env_id)
            except KeyError as exc:
                raise KeyError(f"prorl compute_score: {where}: data_source names no prorl environment: "
                               f"{exc.args[0] if exc.args else env_id}") from None
        return _ENVS[env_id]


def row_task(data_source: Any, ground_truth: Any, extra_info: Any) -> tuple[Env, dict[str, Any]]:
    """The environment and the task dict of one verl row (as `prorl data export --format verl` writes it)."""
    info = extra_info if isinstance(extra_info, dict) else {}
    env_id = info.get("env") or data_source
    where = f"row {info['id']!r}" if info.get("id") else f"a row of data_source {data_source!r}"
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"prorl compute_score: {where} names no environment (data_source {data_source!r})")
    env = _env(env_id, where)
    reference = ground_truth
    if isinstance(reference, (str, bytes)):
        try:
            reference = json.loads(reference)
        except json.JSONDecodeError:
            reference = None
    if not isinstance(reference, dict):
        raise ValueError(f"prorl compute_score: {where} ({env_id}): reward_model.ground_truth must be the JSON text "
                         f"of the task's reference, as `prorl data export --format verl` writes it; got "
                         f"{ground_truth!r:.120}")
    metadata = info.get("metadata")
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            metadata = None
    task = {"id": str(info.get("id") or ""), "env": env_id, "prompt": [], "reference": reference,
            "metadata": metadata if isinstance(metadata, dict) else {}}
    return env, task


def result(score: Score, unscored_score: float = 0.0) -> dict[str, float]:
    """verl's result of one prorl Score: `score` (the reward; `unscored_score` when masked) and the EXTRA_KEYS."""
    return {"score": float(unscored_score) if score.masked else float(score.reward),
            "acc": float(score.status == "ok"), "format_error": float(score.status == "format_error"),
            "timeout": float(score.status == "timeout"), "infra_error": float(score.status == "infra_error")}


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - set(_OPTIONS))
    if unknown:
        _warn_once(("kwargs", tuple(unknown)), "prorl compute_score: ignoring unknown keyword argument(s) %s "
                   "(known: %s)", unknown, list(_OPTIONS))
    return {k: kwargs[k] for k in _OPTIONS if k in kwargs}


def _score(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
           extra_infos: Sequence[Any] | None, workers: int | None, timeout_s: float | None = None,
           prompt_opens_think: bool = False, unscored_score: float = 0.0) -> list[dict[str, float]]:
    n = len(solution_strs)
    if extra_infos is None:
        extra_infos = [None] * n
    if not (len(data_sources) == len(ground_truths) == len(extra_infos) == n):
        raise ValueError(f"prorl compute_score_batch: {len(data_sources)} data_sources, {n} solution_strs, "
                         f"{len(ground_truths)} ground_truths, {len(extra_infos)} extra_infos")
    rows = [row_task(d, g, e) for d, g, e in zip(data_sources, ground_truths, extra_infos)]
    texts = [("<think>" + s) if prompt_opens_think and isinstance(s, str) else s for s in solution_strs]
    scores = score_many([env for env, _ in rows], texts, [task for _, task in rows], workers=workers,
                        timeout_s=timeout_s)
    for (env, _), s in zip(rows, scores):
        if s.status == "infra_error":
            error = str(s.details.get("error", s.details)) if isinstance(s.details, dict) else str(s.details)
            _warn_once((env.id, error), "prorl compute_score: %s could not score a sample (infra_error, scored "
                       "%s): %.500s", env.id, unscored_score, error)
    return [result(s, unscored_score) for s in scores]


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, float]:
    """verl's per-sample reward function (reward manager `naive`, verl's default): one sample, scored in a
    scoring worker process with a killable timeout. See the module docstring for the row and the result."""
    opts = _options(kwargs)
    opts.pop("workers", None)  # one sample: one worker
    return _score([data_source], [solution_str], [ground_truth], [extra_info], workers=1, **opts)[0]


def compute_score_batch(data_sources: Sequence[Any], solution_strs: Sequence[str], ground_truths: Sequence[Any],
                        extra_infos: Sequence[Any] | None = None, **kwargs: Any) -> list[dict[str, float]]:
    """verl's batched reward function (`reward_model.reward_manager=batch`): every sample of the batch scored in
    parallel in `workers` scoring processes, each with a killable timeout. One result per sample, in order."""
    opts = _options(kwargs)
    workers = opts.pop("workers", None)
    return _score(data_sources, solution_strs, ground_truths, extra_infos, workers=workers, **opts)

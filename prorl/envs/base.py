"""The environment API: `Task`, `Score` and the single-turn `Env` base class.

Conventions follow Gymnasium (`reset` / `step`) with text observations: an observation is a list of chat
messages, an action is the model's completion (a string). Every environment can also score standalone:
`env.score(completion, task_dict)` takes a task in its public format (e.g. a MATH row, a reasoning-gym entry)
and needs no `reset`.
"""

from __future__ import annotations

import numbers
import random
import re
import signal
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

STATUSES = ("ok", "wrong", "format_error", "timeout", "infra_error")
# Statuses that say nothing about the model's answer: trainers mask them, reports count them separately.
UNSCORED_STATUSES = ("timeout", "infra_error")

Messages = list[dict[str, str]]


@dataclass
class Task:
    """One prompt of an environment, with what is needed to score an answer to it."""

    id: str
    env: str
    prompt: Messages
    reference: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_REWARD_SLACK = 1e-9  # floating-point rounding of a reward computed as a sum, clipped to [0, 1]


@dataclass
class Score:
    """The verdict on one completion. `reward` is a real number in [0, 1] (int, float, bool, numpy numbers; stored
    as a float, so `Score.graded(answer == gold)` gives 1.0 / 0.0): anything else, a string ("1") included, is a
    TypeError; `status` is one of `STATUSES`."""

    reward: float
    status: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"Score.status must be one of {STATUSES}, got {self.status!r}")
        if not isinstance(self.reward, numbers.Real) and getattr(self.reward, "dtype", None) != bool:  # numpy bool
            raise TypeError(f"Score.reward must be a real number (int, float or bool), got "
                            f"{type(self.reward).__name__} {self.reward!r}")
        reward = float(self.reward)
        if not -_REWARD_SLACK <= reward <= 1.0 + _REWARD_SLACK or reward != reward:
            raise ValueError(f"Score.reward must be in [0, 1], got {self.reward!r}")
        self.reward = min(max(reward, 0.0), 1.0)  # a sum of fractions (0.2 + 0.4 + 0.3 + 0.1) may round just past 1

    @property
    def masked(self) -> bool:
        """True when the verdict is not about the model (timeout, infrastructure): do not train on it."""
        return self.status in UNSCORED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def graded(cls, reward: float, **details) -> "Score":
        """`ok` for a full reward, `wrong` otherwise (partial credit keeps its reward)."""
        score = cls(reward, "wrong", details)  # the reward checked before it is compared
        if score.reward >= 1.0:
            score.status = "ok"
        return score


def missing_field(exc: KeyError) -> str | None:
    """The field a KeyError from `task_from_dict` names, or None when it carries a sentence instead (the code env's
    "no known code task format: ...", ifeval's "ifeval task is missing field ... (have ...)"): callers print that
    sentence as it is rather than as a field name."""
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, str) and arg and " " not in arg else None


def key_error_message(exc: KeyError) -> str:
    """`is missing field 'x'` for a KeyError naming a field, else `: <its sentence>`, to follow a row's name."""
    field = missing_field(exc)
    return f" is missing field {field!r}" if field else f": {exc.args[0] if exc.args else 'missing field'}"


def task_error(exc: Exception) -> str:
    """What follows a row's name when `task_from_dict` raised `exc`: the missing field or the env's sentence (a
    KeyError), the message (TypeError, ValueError), else the exception's repr (a bug in the env: its type says
    more than its text)."""
    if isinstance(exc, KeyError):
        return key_error_message(exc)
    return f": {exc}" if isinstance(exc, (TypeError, ValueError, TimeoutError)) else f": {exc!r}"


class EnvNotReady(RuntimeError):
    """An environment cannot score yet (`Env.preflight`): the message says what is missing and how to fix it."""


class _Deadline(BaseException):
    """Raised by SIGALRM inside an env's method (a BaseException: an `except Exception` there does not swallow it)."""


def _alarm(signum, frame):
    raise _Deadline


class Deadline:
    """A deadline of `seconds` on each call of an env's method made through `call`, which raises a TimeoutError naming
    `<env class>.<method>` and the deadline (and where it comes from, `budget`): prorl calls an environment's code in
    its own process (`task_from_dict` in `prorl score` / `eval` / `data build`, `generate` in `prorl data build` and
    `sample_tasks`, so `prorl train --gym_envs`), where a hang would otherwise stall the command without a word. Only
    in the main thread of a POSIX process with no interval timer of its own (SIGALRM); elsewhere, and with `seconds`
    None or 0, no deadline. The handler is installed once for the `with` block: a loop of calls pays only the timer,
    about 5 us a call (25 us for a lone `as_task_within`)."""

    def __init__(self, seconds: float | None, budget: str = ""):
        self.seconds, self.budget, self.armed = seconds, budget, False

    def __enter__(self) -> "Deadline":
        self.armed = bool(self.seconds and threading.current_thread() is threading.main_thread()
                          and hasattr(signal, "setitimer") and not signal.getitimer(signal.ITIMER_REAL)[0])
        if self.armed:
            self._previous = signal.signal(signal.SIGALRM, _alarm)
        return self

    def __exit__(self, *exc) -> None:
        if self.armed:
            self.armed = False
            signal.signal(signal.SIGALRM, self._previous)

    def call(self, env: "Env", method: str, fn, *args):
        if not self.armed:
            return fn(*args)
        try:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            return fn(*args)
        except _Deadline:
            raise TimeoutError(f"{type(env).__name__}.{method} did not return within {self.seconds:g} s"
                               + (f" ({self.budget})" if self.budget else "")) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def as_task_within(env: "Env", row: Task | dict, seconds: float | None, public: bool = False) -> Task:
    """`env.as_task(row)` (`public`: the row read by `env.task_from_dict` only), stopped after `seconds` with a
    TimeoutError naming `task_from_dict` (`Deadline`)."""
    with Deadline(seconds) as deadline:
        return deadline.call(env, "task_from_dict", env._checked_task_from_dict if public else env.as_task, row)


_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def split_think(completion: str) -> tuple[str | None, bool]:
    """Return (the text to score, whether a think block was present).

    Only the text after the last `</think>` is scored, without the whitespace that follows the tag (R1-style
    templates emit `</think>\n\n`; left in, IFEval's paragraph and loose first-line checks would read that blank
    line as the answer's first). A completion that opens `<think>` and never closes it has no answer: returns
    (None, True).
    """
    last = None
    for last in _THINK_CLOSE.finditer(completion):
        pass
    if last is not None:
        return completion[last.end():].lstrip(), True
    if _THINK_OPEN.search(completion):
        return None, True
    return completion, False


class Env:
    """Base class of single-turn verifiable-reward environments.

    Subclasses set `id`/`description` (the registry fills `id`), and implement:
      - `task_from_dict(row) -> Task`: accept the environment's public task format(s);
      - `verify(answer_text, task) -> Score`: score the text after the think block;
      - optionally `generate(rng) -> dict` for procedurally generated sources.
    An `__init__` of your own takes its parameters (`make(id, **kwargs)` passes them) and must call
    `super().__init__(dataset=..., seed=...)` (or `super().__init__(**kwargs)`): it sets the dataset and the random
    generator `reset` draws from.
    """

    id: str = "base"
    description: ClassVar[str] = ""
    timeout_s: ClassVar[float] = 5.0
    # Score in killable worker processes (pure-Python verifiers that may hang). Environments whose verifier
    # already isolates and times out its own work (the code sandbox) score in threads instead.
    score_in_subprocess: ClassVar[bool] = True

    def __init__(self, dataset: Iterable[dict] | None = None, seed: int | None = None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unknown arguments: {sorted(kwargs)}")
        self.dataset = list(dataset) if dataset is not None else None
        self._rng = random.Random(seed)
        self._task: Task | None = None
        self._count = 0

    # -- Gymnasium-style interaction -------------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Messages, dict]:
        """Draw a task (from the given dataset, else the generator; `options={"task": ...}` sets it: a public row, a
        Task or a Task's dict). Returns (messages, {"task": Task})."""
        self._check_init()
        if seed is not None:
            self._rng = random.Random(seed)
        options = options or {}
        if "task" in options:
            row = options["task"]
        elif self.dataset is not None:
            if not self.dataset:
                raise ValueError(f"{self.id}: the dataset given to the environment is empty")
            row = self.dataset[self._rng.randrange(len(self.dataset))]
        else:
            row = self.generate(self._rng)
        task = self.as_task(row)  # a public row, a Task, or a Task as a dict (Task.to_dict(), as `score` takes)
        self._task = task
        return task.prompt, {"task": task}

    def step(self, completion: str) -> tuple[Messages, float, bool, bool, dict]:
        """Score `completion` against the task of the last `reset` (as `score`: in this thread, no timeout);
        single-turn, so the episode always ends (terminated=True)."""
        self._check_init()
        if self._task is None:
            raise RuntimeError(f"{self.id}: call reset() before step()")
        score = self.score(completion, self._task)
        info = {"task": self._task, "score": score}
        return [], score.reward, True, False, info

    def _check_init(self) -> None:
        if not hasattr(self, "_rng"):  # else an AttributeError on `dataset` or `_rng` that names neither cause nor fix
            raise TypeError(f"{type(self).__name__}.__init__ does not call super().__init__(): add "
                            "`super().__init__(**kwargs)` (dataset=..., seed=...) to it; Env.__init__ sets the dataset "
                            "and the random generator that reset(), step() and sample_tasks() use")

    def preflight(self) -> None:
        """Before a run: check what scoring needs besides the rows (a sandbox, a service) and raise `EnvNotReady`
        saying what is missing and how to fix it. `EnvReward.check_dataset` (so `ProRLTrainer` and `prorl train` at
        start) calls it once per environment the data names: a broken dependency then stops the run at once instead
        of masking every sample of that environment as `infra_error` for the whole run. Default: nothing to check."""

    def generate(self, rng: random.Random) -> dict:
        raise NotImplementedError(f"{self.id} has no generator: pass dataset=[...] to make()")

    def sample_tasks(self, n: int, seed: int = 0) -> list[Task]:
        """`n` tasks from the dataset (cycled) or the generator, deterministic for a seed. Each `generate` and
        `task_from_dict` call is stopped after the env's `timeout_s` (a TimeoutError naming it; `Deadline`)."""
        self._check_init()
        rng = random.Random(seed)
        if self.dataset is not None and not self.dataset and n > 0:
            raise ValueError(f"{self.id}: the dataset given to the environment is empty")
        with Deadline(self.timeout_s, "the env's timeout_s") as deadline:
            if self.dataset is not None:
                return [deadline.call(self, "task_from_dict", self.as_task, self.dataset[i % len(self.dataset)])
                        for i in range(n)]
            return [deadline.call(self, "task_from_dict", self._checked_task_from_dict,
                                  deadline.call(self, "generate", self.generate, rng)) for _ in range(n)]

    # -- Scoring ---------------------------------------------------------------------------------------
    def task_from_dict(self, row: dict) -> Task:
        raise NotImplementedError

    def verify(self, answer: str, task: Task) -> Score:
        raise NotImplementedError

    def _checked_task_from_dict(self, row: dict) -> Task:
        """`task_from_dict(row)`, checked to be a Task (else a TypeError naming the env, not an AttributeError in
        `verify` or `reset`)."""
        task = self.task_from_dict(row)
        if not isinstance(task, Task):
            raise TypeError(f"{type(self).__name__}.task_from_dict returned {type(task).__name__}, not a Task (e.g. "
                            "prorl.Task(id=..., env=self.id, prompt=[...], reference={...}))")
        return task

    def as_task(self, task: Task | dict) -> Task:
        if isinstance(task, Task):
            return task
        if not isinstance(task, dict):
            raise TypeError(f"{self.id}: a task must be a Task or a dict, got {type(task).__name__}")
        if {"prompt", "reference"} <= task.keys() and isinstance(task.get("reference"), dict):
            return Task(
                id=str(task.get("id", "")), env=task.get("env", self.id), prompt=task["prompt"],
                reference=task["reference"], metadata=task.get("metadata") or {},
            )
        return self._checked_task_from_dict(task)

    def score(self, completion: str, task: Task | dict) -> Score:
        """Score one completion, in this thread and without a timeout (`score_batch` kills a verifier that hangs).
        Only the text after the last `</think>` is looked at."""
        if not isinstance(completion, str):
            return Score(0.0, "format_error", {"error": f"completion is {type(completion).__name__}, not str"})
        try:
            task = self.as_task(task)
        except (KeyError, TypeError, ValueError) as exc:
            return Score(0.0, "format_error", {"error": f"bad task: {exc!r}"})
        answer, had_think = split_think(completion)
        if answer is None:
            return Score(0.0, "format_error", {"error": "unterminated <think> block"})
        try:
            score = self.verify(answer, task)
        except KeyError as exc:  # a task dict in Task shape whose reference lacks a field: the task, not the model
            if not (exc.args and isinstance(task.reference, dict) and exc.args[0] not in task.reference):
                raise
            return Score(0.0, "format_error", {"error": f"bad task: reference has no field {exc.args[0]!r} "
                                                        f"(have {sorted(map(str, task.reference))})"})
        if not isinstance(score, Score):
            raise TypeError(f"{type(self).__name__}.verify returned {type(score).__name__}, not a Score (e.g. "
                            "Score.graded(reward))")
        if had_think:
            score.details.setdefault("think", True)
        return score

    def score_batch(self, completions: Sequence[str], tasks: Sequence[Task | dict], workers: int | None = None,
                    timeout_s: float | None = None) -> list[Score]:
        """Score many completions in parallel; a sample whose verifier runs past `timeout_s` (None: the env's own) is
        killed and gets status `timeout`. An env that times its own work (`score_in_subprocess = False`: the code
        sandbox, whose budget is part of its reward) keeps its own `timeout_s`."""
        from prorl.envs.workers import score_many

        if len(completions) != len(tasks):
            raise ValueError(f"score_batch: {len(completions)} completions but {len(tasks)} tasks")
        return score_many([self] * len(tasks), completions, tasks, workers=workers, timeout_s=timeout_s)

    # Environments hold only picklable state so worker processes can receive them.
    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r}>"

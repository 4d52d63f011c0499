"""Small picklable environments used by the gym tests (importable by the scoring workers)."""

import os
import time

from prorl.envs.base import Env, Score, Task


class EchoEnv(Env):
    """Reward 1 when the answer equals the task's `answer` field, after stripping."""

    description = "test: exact match"

    def task_from_dict(self, row):
        return Task(id=str(row.get("id", "")), env=self.id, prompt=[{"role": "user", "content": row["q"]}],
                    reference={"answer": row["answer"]})

    def generate(self, rng):
        a = rng.randint(0, 9)
        return {"q": f"say {a}", "answer": str(a)}

    def verify(self, answer, task):
        text = answer.strip()
        if text == "HANG":
            while True:
                pass
        if text == "SLEEP":
            time.sleep(60)
        if text == "DIE":
            os._exit(3)
        if text == "RAISE":
            raise RuntimeError("verifier bug")
        return Score.graded(1.0 if text == task.reference["answer"] else 0.0)


class ThreadEcho(EchoEnv):
    """EchoEnv scored in threads (as environments that isolate their own work do)."""

    score_in_subprocess = False


class HalfCreditEcho(EchoEnv):
    """Half the reward for a wrong answer that is a digit (a continuous score, as reasoning-gym's or IFEval's)."""

    def verify(self, answer, task):
        text = answer.strip()
        if text == task.reference["answer"]:
            return Score.graded(1.0)
        return Score.graded(0.5 if text.isdigit() else 0.0)


class OutageEcho(EchoEnv):
    """Every sample unscored, as during a sandbox outage."""

    def verify(self, answer, task):
        return Score(0.0, "infra_error", {"error": "sandbox unreachable (test)"})


class MatchDetailsEcho(EchoEnv):
    """Keeps the `re.Match` of the answer in the score's details: a value that cannot be pickled."""

    def verify(self, answer, task):
        import re

        match = re.fullmatch(re.escape(task.reference["answer"]), answer.strip())
        return Score.graded(float(match is not None), match=match, answer=answer.strip())


class SloppyEcho(EchoEnv):
    """Reads `answer` as text without checking it, as a quick custom env may: a number is an AttributeError."""

    def task_from_dict(self, row):
        task = super().task_from_dict(row)
        task.reference["answer"] = row["answer"].strip()
        return task


class BrokenGeneratorEcho(EchoEnv):
    """A generator that forgets a field its task_from_dict reads (a bug in a custom env): KeyError 'answer'."""

    def generate(self, rng):
        return {"q": "say 1"}


class CaseEcho(EchoEnv):
    """A generator of 256 prompts that are only 2 questions written in different case: distinct to the generator,
    duplicates to the data build's loose de-duplication."""

    def generate(self, rng):
        a, case = rng.randint(0, 1), rng.getrandbits(7)
        words = "".join(c.upper() if case >> i & 1 else c for i, c in enumerate("please say"))
        return {"q": f"{words} the number {a}", "answer": str(a)}


class HangingTaskEcho(EchoEnv):
    """A task_from_dict that never returns on the question "HANG" (a loop bug in a custom env's parsing), with a short
    budget of its own."""

    timeout_s = 1.0

    def task_from_dict(self, row):
        while row.get("q") == "HANG":
            try:
                pass
            except Exception:  # a broad except in the loop must not swallow the deadline
                pass
        return super().task_from_dict(row)


class NoSuperInitEcho(EchoEnv):
    """A parameter of its own, and an `__init__` that forgets `super().__init__()` (a newcomer's first try)."""

    def __init__(self, digits=9):
        self.digits = digits


class DictTaskEcho(EchoEnv):
    """A task_from_dict that returns the task as a dict, not a Task (a newcomer's "task dict")."""

    def task_from_dict(self, row):
        return super().task_from_dict(row).to_dict()


class HangingGeneratorEcho(EchoEnv):
    """A generator that never returns after its first two tasks (a loop bug in a custom env's generate), with a short
    budget of its own."""

    timeout_s = 1.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def generate(self, rng):
        self.calls += 1
        while self.calls > 2:
            try:
                pass
            except Exception:  # a broad except in the loop must not swallow the deadline
                pass
        return super().generate(rng)

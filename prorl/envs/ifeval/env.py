"""The `ifeval` environment: IFEval prompts, reward = fraction of the verifiable instructions followed."""

from __future__ import annotations

from typing import Any, Sequence

from prorl.envs.base import Env, Score, Task
from prorl.envs.ifeval.checker import Checker, InstructionError, build_checkers
from prorl.envs.ifeval.generator import generate_task, instruction_range

MODES = ("strict", "loose")


def loose_variants(response: str) -> list[str]:
    """The eight texts the official loose evaluation tries: the response, without its first line, without its last
    line, without both, and each of these with every `*` removed."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(text.replace("*", "") for text in cut)]


def check_all(checkers: Sequence[Checker], response: str, mode: str = "strict") -> list[bool]:
    """One verdict per checker. A blank response follows nothing; in loose mode an instruction is followed when any
    non-blank loose variant follows it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    texts = [response] if mode == "strict" else loose_variants(response)
    texts = [t for t in texts if t.strip()]
    return [any(checker.check(t) for t in texts) for checker in checkers]


class IFEvalEnv(Env):
    """IFEval verifiable instructions (Zhou et al. 2023): all 25 instruction ids of the official checker.

    Tasks are the official `input_data.jsonl` rows, `{"key", "prompt", "instruction_id_list", "kwargs"}`. The
    reward is the fraction of instructions followed (ProRL's continuous reward) or, with `all_or_nothing=True`, 1
    only when all are. `mode="loose"` applies the official loose evaluation (first/last line dropped, `*` removed).
    A task with an unknown instruction id or a bad kwarg gets status `format_error`, never a pass. Without a
    dataset, `reset()`/`sample_tasks()` draw procedural tasks (`generator.py`: a writing request and `instructions`
    = (fewest, most) compatible instructions, IFEval's phrasing).
    """

    id = "ifeval"
    description = "IFEval verifiable instructions; reward = fraction followed"

    def __init__(self, dataset=None, seed: int | None = None, mode: str = "strict", all_or_nothing: bool = False,
                 instructions: tuple[int, int] = (1, 3)):
        super().__init__(dataset=dataset, seed=seed)
        if mode not in MODES:
            raise ValueError(f"ifeval: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.all_or_nothing = bool(all_or_nothing)
        self.instructions = instruction_range(instructions)  # at make(), not at the first generate()

    def generate(self, rng) -> dict[str, Any]:
        return generate_task(rng, self.instructions)

    def task_from_dict(self, row: dict[str, Any]) -> Task:
        for field in ("prompt", "instruction_id_list"):
            if field not in row:
                raise KeyError(f"ifeval task is missing field {field!r} (have {sorted(row)})")
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"ifeval task field 'prompt' must be a non-empty string, got {prompt!r}")
        instruction_ids, kwargs = row["instruction_id_list"], row.get("kwargs")
        build_checkers(instruction_ids, kwargs)  # fail now, naming the instruction, not at scoring time
        if kwargs is None:
            kwargs = [{} for _ in instruction_ids]
        key = row.get("key", row.get("id", ""))
        return Task(
            id=str(key), env=self.id, prompt=[{"role": "user", "content": prompt}],
            reference={"instruction_id_list": list(instruction_ids), "kwargs": [dict(k or {}) for k in kwargs]},
            metadata={"key": key},
        )

    def verify(self, answer: str, task: Task) -> Score:
        try:  # checked again here: a Task built elsewhere, or edited, may hold anything
            checkers = build_checkers(task.reference.get("instruction_id_list"), task.reference.get("kwargs"))
        except InstructionError as exc:
            return Score(0.0, "format_error", {"error": str(exc)})
        followed = check_all(checkers, answer, self.mode)
        fraction = sum(followed) / len(followed)
        reward = float(all(followed)) if self.all_or_nothing else fraction
        details = {"mode": self.mode, "followed": followed, "fraction_followed": fraction,
                   "instruction_id_list": [c.instruction_id for c in checkers]}
        return Score(reward, "ok" if all(followed) else "wrong", details)

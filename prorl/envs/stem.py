"""STEM questions: multiple choice (options A-J, the model's final letter) or free-form answers via math-verify.

Task rows: `{"question" (or "problem"), "answer", "options"?}`. With `options` (a list, or a dict keyed by
letters A-J; MMLU's `choices` list counts as `options`) the task is multiple choice: the gold is a letter (or an
index, or the text of an option) and the model's final choice is read from, by priority: the last `\\boxed{C}` (or
a boxed option text), the last "answer is/Answer: C" (or an option's text), and otherwise the last standalone
"(C)" on the last line; letters that are not options never count. Without `options` the answer is graded like `math`
(last `\\boxed{}`, math-verify with our guards). Binary reward.
"""

from __future__ import annotations

import re
import string
from typing import Any

from prorl.envs.base import Env, Score, Task
from prorl.envs.math import PROMPT_SUFFIX, gold_answer, grade, last_boxed

LETTERS = string.ascii_uppercase[:10]  # A-J
MC_SUFFIX = ("Think step by step, then give the letter of the correct option on the last line as "
             "\"Answer: X\" (or \\boxed{X}).")

_LETTER = r"\(?\s*([A-J])\s*\)?"
# "answer" in any case, the letter itself upper-case only ("the answer is a prime" names no option)
_ANSWER_RE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*[:\-]?\s*(?:(?i:option)\s*)?\**\s*" + _LETTER + r"(?![A-Za-z])")
_ANSWER_TEXT_RE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)\s*:?\s*([^\n]+)")
_PAREN_RE = re.compile(r"\(([A-J])\)")
_BOXED_LETTER_RE = re.compile(r"^(?:\\text(?:bf)?\{)?\s*\(?\s*([A-J])\s*\)?\s*\}?(?:[.:)]|\s|$)")
_BOXED_LOWER_RE = re.compile(r"^\(?([a-j])\)?\.?$")  # \boxed{c}: a lone lower-case letter names an option too
_PRONOUN_I_RE = re.compile(r"(?:'|\u2019|\s+[a-z])")  # "Answer: I think it's C": the pronoun, not option I


def normalize_options(options: Any) -> dict[str, str]:
    """`["x", "y"]` or `{"A": "x", "B": "y"}` -> `{"A": "x", "B": "y"}` (at most 10 options, A-J)."""
    if isinstance(options, dict):
        opts = {str(k).strip().upper(): str(v) for k, v in options.items()}
        if not set(opts) <= set(LETTERS):
            raise ValueError(f"field 'options' keys must be letters A-J, got {sorted(opts)}")
        return dict(sorted(opts.items()))
    if isinstance(options, (list, tuple)):
        if not 2 <= len(options) <= len(LETTERS):
            raise ValueError(f"field 'options' must have 2 to 10 entries, got {len(options)}")
        return {LETTERS[i]: str(o) for i, o in enumerate(options)}
    raise TypeError(f"field 'options' must be a list or a dict, got {type(options).__name__}")


def gold_letter(answer: Any, options: dict[str, str]) -> str:
    """The gold option letter from a letter, an index (0-based int), or the exact text of an option."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        letter = LETTERS[answer] if 0 <= answer < len(LETTERS) else ""
    else:
        text = str(answer).strip()
        letter = text.strip("()").upper()
        if letter not in options:
            letter = next((k for k, v in options.items() if v.strip() == text), "")
    if letter not in options:
        raise ValueError(f"field 'answer' {answer!r} is not one of the options {list(options)}")
    return letter


def extract_choice(text: str, options: dict[str, str] | None = None) -> str | None:
    """The model's final option letter, or None. Rules by priority: the last `\\boxed{}` if it names an option
    (its text or its letter), the last "answer is/Answer:" followed by an option's text or a letter, otherwise
    the last standalone "(C)" on the last non-blank line (a model listing "(A) ... (D)" while reasoning has not
    chosen D). With `options`, letters that are not among them never count."""
    allowed = set(options) if options else set(LETTERS)
    boxed = last_boxed(text)
    if boxed is not None:
        m = _BOXED_LETTER_RE.match(boxed.strip()) or _BOXED_LOWER_RE.match(boxed.strip())
        letter = _option_by_text(boxed, options) or (m.group(1).upper() if m else None)
        if letter in allowed:
            return letter
        # a box that names no option (a value, a unit): the rules below may still find the choice
    said = list(_ANSWER_TEXT_RE.finditer(text))
    if said and (letter := _option_by_text(said[-1].group(1), options)):
        return letter
    found = [m for m in _ANSWER_RE.finditer(text) if m.group(1) in allowed
             and not (m.group(1) == "I" and "(" not in m.group(0) and _PRONOUN_I_RE.match(text, m.end()))]
    if found:
        return found[-1].group(1).upper()
    last_line = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    found = [m for m in _PAREN_RE.finditer(last_line) if m.group(1) in allowed]
    return found[-1].group(1) if found else None


def _option_by_text(text: str, options: dict[str, str] | None) -> str | None:
    norm = lambda s: re.sub(r"\\text\{([^{}]*)\}", r"\1", s).strip().strip(".*").strip().lower()  # noqa: E731
    return next((k for k, v in (options or {}).items() if norm(v) == norm(text)), None)


class StemEnv(Env):
    """STEM questions: multiple choice (A-J) or free-form via math-verify; binary reward."""

    description = "STEM questions: multiple choice (A-J) or free-form via math-verify; binary"
    timeout_s = 5.0

    def task_from_dict(self, row: dict) -> Task:
        question = row.get("question", row.get("problem"))
        task_id = str(row.get("id", ""))
        meta = {k: row[k] for k in ("subject", "source", "category") if k in row}
        # MMLU (cais/mmlu) names them `choices` (its answer a 0-based index): the same multiple choice, not free form
        choices = row.get("options") if row.get("options") is not None else row.get("choices")
        if choices is not None:
            if "answer" not in row:
                raise KeyError("answer")
            options = normalize_options(choices)
            gold = gold_letter(row["answer"], options)
            listing = "\n".join(f"{k}. {v}" for k, v in options.items())
            prompt = [{"role": "user", "content": f"{question}\n\n{listing}\n\n{MC_SUFFIX}"}] if question else []
            return Task(id=task_id, env=self.id, prompt=prompt,
                        reference={"answer": gold, "options": options}, metadata=meta)
        gold = gold_answer(row)
        prompt = [{"role": "user", "content": f"{question}\n{PROMPT_SUFFIX}"}] if question else []
        return Task(id=task_id, env=self.id, prompt=prompt, reference={"answer": gold}, metadata=meta)

    def verify(self, answer: str, task: Task) -> Score:
        gold = str(task.reference["answer"])
        if task.reference.get("options"):
            choice = extract_choice(answer, task.reference["options"])
            if choice is None:
                return Score(0.0, "format_error", {"gold": gold, "error": "no option letter found"})
            ok = choice == gold
            return Score(float(ok), "ok" if ok else "wrong", {"gold": gold, "extracted": choice})
        boxed = last_boxed(answer)
        if boxed is None:
            return Score(0.0, "format_error", {"gold": gold, "error": "no \\boxed{} answer"})
        return grade(gold, boxed)

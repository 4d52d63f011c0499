"""Competition math (MATH, DeepScaleR, GSM8K): binary reward on the last `\\boxed{}` answer, via math-verify.

Scoring rule, in order (each step is decisive when it applies):
  1. The answer is the content of the LAST `\\boxed{...}` (or `\\fbox{...}`) after the think block. With no box the
     completion is a `format_error` (reward 0): a bare answer never outscores a worked, boxed solution. Pass
     `require_boxed=False` to fall back to math-verify's own extraction (`$...$`, "final answer is ...") instead;
     the text it extracts is then graded by the steps below, as a boxed answer is.
  2. Identical answers after whitespace/LaTeX-spacing normalisation are `ok` without calling math-verify.
  3. When gold and answer are both plain numbers (`-12`, `3.50`, `1,234`) they are compared exactly as decimals.
  4. Otherwise math-verify decides, gold first: `verify(parse(gold), parse(answer))`, with its signal timeouts
     off (the scoring workers kill a hung verifier instead). Guards against its known false positives and
     negatives (Math-Verify issues #14, #37, #41, #60, #69; cases and our verdicts, including the one known
     remaining false negative, in tests/math_verify_regressions.jsonl):
       - exact numbers are compared exactly (math-verify rounds to 6 decimals: `1/2^99 == 1/2^98` for it);
       - sequences with an ellipsis (`1, 2, \\ldots, n`) must match literally (it parses them to one number);
       - a parse that stopped half-way (unbalanced braces, e.g. at `\\mathrm{e}`) is not trusted;
       - both sides are parsed from a `\\boxed{}` wrapper, so equations and lists are read as LaTeX, not as the
         bare expressions that made `3x-y+13=0` equal `3x+4y+14=0` (issue #60);
       - plain-text notation in a box (`pi/2`, `exp(16)`, `sqrt(2)`, `2**10`, `\\mathrm{e}`) is rewritten to
         LaTeX first (issues #41, #69: `pi` was read as p*i).
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from prorl.envs.base import Env, Score, Task

PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*(\{)?")
_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_ELLIPSIS_RE = re.compile(r"\\[lc]?dots|\.\.\.|…")
_SPACING_RE = re.compile(r"\\[,;:!]|\\quad|\\qquad|\\left|\\right|\s+|\$")
_EDGE_SPACE_RE = re.compile(r"^(?:\s|\\[ ,;:!])+|(?:\s|(?<!\\)\\[ ,;:!])+$")  # blanks and \, \  ... at either end


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}` (braces matched), or None.

    `\\boxed 5` also counts. An unclosed last box (a truncated completion) is no answer: None.
    """
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    match = matches[-1]
    if match.group(1) is None:  # "\boxed 5": the next token
        token = re.match(r"\s*([^\s$]+)", text[match.end():])
        return token.group(1) if token else None
    depth, start, i = 1, match.end(), match.end()
    while i < len(text):
        if text[i] == "\\":  # \{ and \} are literal braces (\left\{ ... \right.), "\ " a space: skip the pair
            i += 1
        elif text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return _EDGE_SPACE_RE.sub("", text[start:i])
        i += 1
    return None


def gold_answer(row: dict[str, Any]) -> str:
    """The gold answer of a MATH/DeepScaleR row (`answer`) or a GSM8K row (`answer` ending in `#### 42`)."""
    if "answer" not in row:
        raise KeyError("answer")
    answer = row["answer"]
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"field 'answer' must be a non-empty string, got {answer!r}")
    if "####" in answer:  # GSM8K: the solution, then "#### <integer with thousands commas>"
        return answer.rsplit("####", 1)[1].strip().replace(",", "")
    return answer.strip()


def _canon(s: str) -> str:
    s = _SPACING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    return s.rstrip(".")


def _as_number(s: str, allow_thousands: bool) -> Decimal | None:
    s = _canon(s)
    if allow_thousands and _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if not _NUMBER_RE.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


_PLAIN_TO_LATEX = [  # plain-text / sympy notation inside a box -> LaTeX (Math-Verify #41, #69)
    (re.compile(r"\\math(?:rm|it)\{\s*([A-Za-z])\s*\}"), r"\1"),  # \mathrm{e} -> e
    (re.compile(r"(?<![A-Za-z])\\?sqrt\(([^()]*)\)"), r"\\sqrt{\1}"),  # sqrt(2), \sqrt(2) -> \sqrt{2}
    (re.compile(r"(?<![\\A-Za-z])exp\(([^()]*)\)"), r"e^{\1}"),  # exp(16) -> e^{16}
    (re.compile(r"(?<![\\A-Za-z])pi(?![A-Za-z])"), r"\\pi"),  # pi -> \pi
    (re.compile(r"\*\*\s*(\([^()]*\)|[\w.]+)"), r"^{\1}"),  # 2**10 -> 2^{10}
    (re.compile(r"\+\s*-"), "-"),  # 14 + -1i -> 14 - 1i
]


def _prenormalize(s: str) -> str:
    """Rewrite notation that math-verify's LaTeX parser misreads or reads only partially."""
    for pattern, repl in _PLAIN_TO_LATEX:
        s = pattern.sub(repl, s)
    return s


def _quiet_math_verify() -> None:
    # It warns on every call that its timeouts are off (we enforce time in killable workers) and logs a full
    # traceback for every comparison sympy cannot do; both are noise in a reward loop.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)


@lru_cache(maxsize=1)
def _extraction_config():
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    _quiet_math_verify()
    return [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]


def _parse_boxed(content: str) -> list:
    from math_verify import parse

    parsed = parse("\\boxed{" + _prenormalize(content) + "}", extraction_config=_extraction_config(),
                   parsing_timeout=None)
    # A parse that stopped half-way (e.g. at an unknown macro) leaves unbalanced braces in its string form;
    # its sympy value is then a fragment of the answer and must not be compared.
    if len(parsed) == 2 and isinstance(parsed[1], str) and parsed[1].count("{") != parsed[1].count("}"):
        return []
    return parsed


@lru_cache(maxsize=8192)
def _parse_gold(gold: str) -> list:
    return _parse_boxed(gold)


def _exact_numbers_differ(gold: list, pred: list) -> bool:
    """True when both sides are exact numbers (no floats, no symbols) that differ, however small the gap."""
    import sympy

    g = next((x for x in gold if isinstance(x, sympy.Basic)), None)
    p = next((x for x in pred if isinstance(x, sympy.Basic)), None)
    if g is None or p is None or not (getattr(g, "is_number", False) and getattr(p, "is_number", False)):
        return False
    if g.has(sympy.Float) or p.has(sympy.Float):
        return False
    if g.is_Rational and p.is_Rational:
        return g != p
    try:  # an unevaluated factor (a percent, `10\%` -> 10*(1/100)) leaves relations sympy cannot decide
        diff = sympy.N(g - p, 50)
        scale = max(abs(sympy.N(g, 50)), abs(sympy.N(p, 50)))
        if not (diff.is_real and scale.is_real):
            return False
        return bool(abs(diff) > scale * sympy.Float("1e-30", 50))
    except TypeError:  # undecidable: math-verify's verdict stands
        return False


def grade(gold: str, answer: str) -> Score:
    """Binary verdict of an extracted `answer` against the `gold` answer (see the module docstring)."""
    details: dict[str, Any] = {"gold": gold, "extracted": answer[:200]}
    if not answer.strip():
        return Score(0.0, "format_error", {**details, "error": "empty \\boxed{}"})
    if _canon(gold) == _canon(answer):
        return Score(1.0, "ok", {**details, "match": "exact"})
    g_num = _as_number(gold, allow_thousands=True)
    if g_num is not None:
        a_num = _as_number(answer, allow_thousands=True)
        if a_num is not None:
            ok = g_num == a_num
            return Score(float(ok), "ok" if ok else "wrong", {**details, "match": "numeric"})
    if _ELLIPSIS_RE.search(gold) or _ELLIPSIS_RE.search(answer):
        return Score(0.0, "wrong", {**details, "guard": "ellipsis: sequences must match literally"})
    from math_verify import verify

    gold_parsed = _parse_gold(gold)
    pred_parsed = _parse_boxed(answer)
    if not pred_parsed:
        return Score(0.0, "format_error", {**details, "error": "math-verify could not parse the answer"})
    if not gold_parsed:
        return Score(0.0, "wrong", {**details, "warning": "math-verify could not parse the gold answer"})
    if not verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return Score(0.0, "wrong", {**details, "match": "math_verify"})
    if _exact_numbers_differ(gold_parsed, pred_parsed):
        return Score(0.0, "wrong", {**details, "guard": "exact numbers differ beyond math-verify's rounding"})
    return Score(1.0, "ok", {**details, "match": "math_verify"})


class MathEnv(Env):
    """Competition math; binary reward via math-verify on the last \\boxed{} answer.

    Task rows: MATH / DeepScaleR `{"problem", "answer"}` or GSM8K `{"question", "answer": "... #### 42"}`.
    `require_boxed=False` accepts answers found by math-verify's fallback extraction when nothing is boxed.
    """

    description = "Competition math; binary reward via math-verify on the last \\boxed{}"
    timeout_s = 5.0

    def __init__(self, dataset=None, seed: int | None = None, require_boxed: bool = True, **kwargs):
        super().__init__(dataset=dataset, seed=seed, **kwargs)
        self.require_boxed = require_boxed

    def task_from_dict(self, row: dict) -> Task:
        gold = gold_answer(row)
        problem = row.get("problem", row.get("question"))
        prompt = [{"role": "user", "content": f"{problem}\n{PROMPT_SUFFIX}"}] if problem else []
        meta = {k: row[k] for k in ("subject", "level", "source") if k in row}
        task_id = str(row.get("id", row.get("unique_id", "")))
        return Task(id=task_id, env=self.id, prompt=prompt, reference={"answer": gold}, metadata=meta)

    def verify(self, answer: str, task: Task) -> Score:
        gold = str(task.reference["answer"])
        boxed = last_boxed(answer)
        if boxed is not None:
            return grade(gold, boxed)
        if self.require_boxed:
            return Score(0.0, "format_error", {"gold": gold, "error": "no \\boxed{} answer"})
        return self._grade_unboxed(gold, answer)

    @staticmethod
    def _grade_unboxed(gold: str, text: str) -> Score:
        from math_verify import parse

        _extraction_config()  # silences math-verify's logging
        pred = parse(text, parsing_timeout=None)
        if not pred or not isinstance(pred[-1], str) or not pred[-1].strip():
            return Score(0.0, "format_error", {"gold": gold, "error": "no answer found"})
        # the text math-verify found, graded as a boxed answer is: the same fast paths and guards against its false
        # positives (its bare verify on `1/2^{98}` said it equals `1/2^{99}`)
        score = grade(gold, pred[-1])
        score.details["unboxed"] = True
        return score

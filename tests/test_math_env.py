"""The math environment: extraction, the boxed-answer rule, guards against math-verify's known false positives
(regression file), killable LaTeX bombs, and the acceptance check on GSM8K / MATH-500 golds."""

import json
import threading
import time
from pathlib import Path

import pytest

from prorl.envs import make
from prorl.envs.math import PROMPT_SUFFIX, _canon, gold_answer, grade, last_boxed

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0].parent / "shared" / "data"
REGRESSIONS = [json.loads(line) for line in (HERE / "math_verify_regressions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", REGRESSIONS, ids=[f"{c['issue'] or 'sanity'}:{c['gold']}|{c['answer']}"
                                                   for c in REGRESSIONS])
def test_math_verify_regressions(case):
    score = grade(case["gold"], case["answer"])
    assert score.reward == case["expected_reward"], (case["why"], score.details)
    assert score.status in ("ok", "wrong")


def test_unboxed_answers_get_the_same_guards_under_require_boxed_false():
    """make("math", require_boxed=False) grades the answer math-verify extracts from unboxed text as a boxed one is.
    Before: by math-verify's bare verify, so "The final answer is $\\frac{1}{2^{98}}$" scored 1 against 1/2^99 (4
    false positives of the regression file, and 5 false negatives such as `pi/2` for \\dfrac{\\pi}{2}). Sequences
    with an ellipsis are left out: math-verify's extracted text drops `\\ldots`, so they cannot match literally."""
    lenient = make("math", require_boxed=False)
    cases = [c for c in REGRESSIONS if not any(e in c["gold"] + c["answer"] for e in ("dots", "..."))]
    verdicts = [(c["gold"], c["answer"], lenient.score(f"The final answer is ${c['answer']}$.", {"answer": c["gold"]}))
                for c in cases]
    assert [(g, a, s.status) for (g, a, s), c in zip(verdicts, cases) if s.reward != c["expected_reward"]] == []
    assert all(s.details["unboxed"] for *_, s in verdicts)
    assert len(cases) >= 30


def test_regression_file_covers_the_reported_issues():
    issues = {c["issue"] for c in REGRESSIONS}
    assert {"huggingface/Math-Verify#14", "huggingface/Math-Verify#37", "huggingface/Math-Verify#60",
            "huggingface/Math-Verify#69"} <= issues
    # the guards matter: raw math-verify accepts some of these wrong answers
    assert any(c["raw_verify_dollar_wrapped"] and c["expected_reward"] == 0 for c in REGRESSIONS)


def test_last_boxed_extraction():
    assert last_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"so \boxed 5") == "5"
    assert last_boxed(r"\boxed{3} then \boxed{4") is None  # a truncated final box is no answer
    assert last_boxed("no box") is None
    # escaped braces are literal: a piecewise answer opens \left\{ and never closes it
    piecewise = r"\boxed{\left\{\begin{array}{ll} x & x>0 \\ 0 & x\le 0\end{array}\right.} so"
    assert last_boxed(piecewise) == piecewise[len(r"\boxed{"):-len("} so")]
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\boxed{ \,12\ }") == "12"  # LaTeX spaces at the ends are not part of the answer
    assert last_boxed(r"\boxed{a \\ }") == r"a \\"  # a line break before the brace stays whole


def test_gold_formats():
    assert gold_answer({"problem": "p", "answer": r"\frac{3}{4}"}) == r"\frac{3}{4}"
    assert gold_answer({"question": "q", "answer": "work...\n#### 1,234"}) == "1234"
    assert gold_answer({"answer": 7}) == "7"
    with pytest.raises(KeyError):
        gold_answer({"problem": "p"})
    with pytest.raises(ValueError):
        gold_answer({"answer": ""})
    task = make("math").task_from_dict({"problem": "What is 1+1?", "answer": "2", "unique_id": "x/1.json"})
    assert task.prompt == [{"role": "user", "content": f"What is 1+1?\n{PROMPT_SUFFIX}"}]
    assert task.id == "x/1.json" and task.reference == {"answer": "2"}


def test_statuses_and_the_boxed_answer_rule():
    env = make("math")
    task = {"problem": "What is 6*7?", "answer": "42"}
    worked = "6*7 = 42 because 6*7 = 6*6 + 6 = 36 + 6.\n\n\\boxed{42}"
    assert env.score(worked, task).status == "ok"
    bare = env.score("42", task)
    assert (bare.status, bare.reward) == ("format_error", 0.0)  # a bare answer never outscores a boxed one
    assert env.score("The final answer is $42$.", task).status == "format_error"
    assert env.score(r"\boxed{41}", task).status == "wrong"
    assert env.score(r"\boxed{}", task).status == "format_error"
    assert env.score(r"<think>\boxed{41}</think>so \boxed{42.0}", task).status == "ok"
    # opt-in fallback to math-verify's extraction; still never above the worked boxed answer
    lenient = make("math", require_boxed=False)
    assert lenient.score("The final answer is $42$.", task).reward <= env.score(worked, task).reward
    assert lenient.score("The final answer is $42$.", task).status == "ok"
    assert lenient.score("I do not know.", task).status == "format_error"


def test_fast_paths_agree_with_math_verify():
    assert grade("5", "5.00").details["match"] == "numeric"
    assert grade("5", "-5").status == "wrong"
    assert grade(r"\dfrac{1}{2}", r"\frac{1}{2}").details["match"] == "exact"
    assert _canon(r"\left( 1, 2 \right)") == "(1,2)"
    assert grade(r"\frac{1}{2}", "0.5").status == "ok"


def test_latex_bomb_times_out_within_budget_from_a_worker_thread():
    env = make("math")
    bombs = [r"\boxed{10^{10^{10^{10}}}}", r"\boxed{9^{9^{9^{9}}}}"]
    comps = [bombs[0], r"\boxed{5}", bombs[1], r"\boxed{4}"]
    tasks = [{"answer": "5"}] * 4
    budget = 2.0
    out = {}

    def run():
        t0 = time.monotonic()
        out["scores"] = env.score_batch(comps, tasks, workers=2, timeout_s=budget)
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive()
    statuses = [s.status for s in out["scores"]]
    assert statuses == ["timeout", "ok", "timeout", "wrong"]
    for s in out["scores"]:
        if s.status == "timeout":
            assert s.details["elapsed_s"] <= budget + 1.0
            assert s.reward == 0.0 and s.masked


def _load(name):
    path = DATA / name / "test.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (CI clones the repo with shared/ beside it)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_acceptance_golds_against_themselves_and_other_answers():
    """GSM8K test + MATH-500: own gold boxed -> 100%; another problem's (different) gold -> < 2%."""
    env = make("math")
    rows = _load("gsm8k") + _load("math500")
    golds = [gold_answer(r) for r in rows]
    n = len(rows)
    others = []
    for i in range(n):  # the next problem whose gold differs as a string
        j = (i + 1) % n
        while _canon(golds[j]) == _canon(golds[i]):
            j = (j + 1) % n
        others.append(golds[j])
    own = env.score_batch([f"Working...\n\\boxed{{{g}}}" for g in golds], rows, workers=2)
    cross = env.score_batch([f"Working...\n\\boxed{{{g}}}" for g in others], rows, workers=2)
    misses = [(golds[i], s.status, s.details) for i, s in enumerate(own) if s.reward != 1.0]
    assert misses == [], f"golds not matching themselves: {misses[:10]}"
    false_pos = [(golds[i], others[i]) for i, s in enumerate(cross) if s.reward == 1.0]
    assert len(false_pos) / n < 0.02, false_pos[:20]
    assert not any(s.status in ("timeout", "infra_error") for s in own + cross)


def test_percent_answers_are_graded_not_crashed():
    # `10\%` parses to an unevaluated 10*(1/100): the exact-number guard used to raise TypeError on it (an
    # exception from `score`, an infra_error in the workers); math-verify's own percent verdict stands.
    env = make("math")
    assert env.score(r"\boxed{10}", {"answer": r"10\%"}).status == "ok"
    assert env.score(r"\boxed{10\%}", {"answer": "10"}).status == "ok"
    assert env.score(r"\boxed{\frac{1}{2}}", {"answer": r"50\%"}).status == "ok"
    assert env.score(r"\boxed{51}", {"answer": r"50\%"}).status == "wrong"
    scores = env.score_batch([r"\boxed{10}", r"\boxed{11}"], [{"answer": r"10\%"}] * 2, workers=1)
    assert [s.status for s in scores] == ["ok", "wrong"]

"""The `code` environment: extraction, task formats, fail-closed scoring, HumanEval and MBPP reference solutions."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

import prorl.envs as envs
from prorl.envs.code import CodeEnv, extract_code
from prorl.sandbox.docker import DockerSandbox, engine_available

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ENGINE_OK, ENGINE_WHY = engine_available()

# MBPP rows whose reference code may not score 1.0 within the default 5 s budget (depending on the machine's load),
# with the reason. No row is broken otherwise: every reference solution scores 1.0 (test_mbpp_reference_code).
MBPP_KNOWN_SLOW = {
    123: "reference amicable_numbers_sum(9999) needs ~4 s of CPU: over the 5 s budget on a 1-CPU container "
         "(scores 1.0 with a 60 s budget)",
}


def score_all(env, completions, rows):
    """Score, then re-score with a 60 s budget what ran out of time: the machine is shared, the budget is not
    what these tests are about (timeouts are tested elsewhere). Returns (scores, ids that needed the rescore)."""
    scores = env.score_batch(completions, rows)
    slow = [i for i, sc in enumerate(scores) if sc.details.get("budget_exceeded")]
    patient = CodeEnv(sandbox=env.sandbox, timeout_s=60)
    for i in slow:
        scores[i] = patient.score(completions[i], rows[i])
    return scores, [rows[i].get("task_id") for i in slow]


@pytest.fixture(scope="module")
def env():
    if not ENGINE_OK:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have a Docker engine with the sandbox image (run `make sandbox`): {ENGINE_WHY}")
        pytest.skip(f"no Docker sandbox on this machine: {ENGINE_WHY} (run `make sandbox` as root)")
    with DockerSandbox(pool_size=3, timeout_s=5.0) as sb:
        yield envs.make("code", sandbox=sb)


STDIO_ROW = {"question": "Read two integers, print their sum.",
             "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6"},
                       {"input": "0 0\n", "output": "0\n"}]}
MBPP_ROW = {"task_id": 9000, "text": "Write a function add(a, b).", "test_setup_code": "",
            "test_list": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"]}


def reply(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


# -- no engine needed --------------------------------------------------------------------------------------
def test_extract_code_prefers_the_last_python_block():
    text = "```python\na = 1\n```\nthen\n```\nplain\n```\n```py\nb = 2\n```\ntail"
    assert extract_code(text) == ("b = 2\n", "python_block")
    assert extract_code("x\n```\nc = 3\n```") == ("c = 3\n", "plain_block")
    assert extract_code("print(1)") == ("print(1)", "whole_reply")


def test_extract_code_reads_fences_as_markdown_does():
    """A fence closes on a line of its own, by as many backticks, at the opening's indent or 0-3 spaces: a ```
    inside the code (a string, an indented docstring example) is code. Fences that are not on lines of their
    own still count where no such block is found."""
    quoted = "Here:\n```python\ns = '```'\nprint(s)\n```\n"
    assert extract_code(quoted) == ("s = '```'\nprint(s)\n", "python_block")
    doc = 'def f():\n    """\n    ```\n    f()\n    ```\n    """\n    return 1\n'
    assert extract_code(f"```python\n{doc}```\nDone.") == (doc, "python_block")
    assert extract_code("````python\nprint('```')\n```\n````") == ("print('```')\n```\n", "python_block")
    assert extract_code("1. Code:\n   ```python\n   x = 1\n   ```  \n") == ("   x = 1\n", "python_block")
    assert extract_code("Sure ```python\nx = 1```") == ("x = 1", "python_block")
    assert extract_code("<think>```python\nbad\n```</think>\n```python\nok = 1\n```") == ("ok = 1\n", "python_block")


def test_task_formats_and_errors():
    env = CodeEnv()
    stdio = env.task_from_dict(STDIO_ROW)
    assert stdio.reference["kind"] == "stdio" and len(stdio.reference["tests"]) == 3
    assert "standard input" in stdio.prompt[0]["content"]
    taco = env.task_from_dict({"question": "q", "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]})})
    assert taco.reference["tests"] == [{"input": "1\n", "output": "2\n"}]
    eurus = env.task_from_dict({"prompt": [{"role": "user", "content": "q"}], "reward_model": {
        "ground_truth": json.dumps({"inputs": ["3\n"], "outputs": ["4\n"]}), "style": "rule"}})
    assert eurus.prompt == [{"role": "user", "content": "q"}]
    assert eurus.reference["tests"] == [{"input": "3\n", "output": "4\n"}]
    he = env.task_from_dict({"task_id": "HE/0", "prompt": "def f():\n", "test": "def check(c): pass",
                             "entry_point": "f"})
    assert he.reference["kind"] == "humaneval" and he.id == "HE/0"
    assert env.task_from_dict(MBPP_ROW).reference["kind"] == "mbpp"
    with pytest.raises(ValueError, match=r"tests\[1\]"):
        env.task_from_dict({"question": "q", "tests": [{"input": "", "output": ""}, {"input": 1}]})
    for row, field in (({"question": "q", "tests": "[{"}, "'tests'"),
                       ({"question": "q", "input_output": "{inputs"}, "'input_output'"),
                       ({"prompt": "q", "reward_model": {"ground_truth": "nope"}}, "'reward_model.ground_truth'")):
        with pytest.raises(ValueError, match=f"field {field} is not valid JSON"):
            env.task_from_dict(row)
    with pytest.raises(KeyError, match="no known code task format"):
        env.task_from_dict({"question": "q"})
    assert env.score("```python\nprint(1)\n```", {"question": "q"}).status == "format_error"


def test_humaneval_rows_need_an_entry_point_a_prompt_and_a_test():
    """check(<entry_point>) is the row's only test: before the fix a null or non-name entry point was kept and
    every completion scored `wrong`. A row with a `test` beside MBPP's `test_list` and no entry point (MBPP+) is
    still MBPP; with neither it is a HumanEval row missing its entry point."""
    env = CodeEnv()
    he = {"task_id": "HE/0", "prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f"}
    assert env.task_from_dict({**he, "entry_point": "Solution.f"}).reference["entry_point"] == "Solution.f"
    for row in ({**he, "entry_point": None}, {k: v for k, v in he.items() if k != "entry_point"}):
        with pytest.raises(KeyError, match="entry_point"):
            env.task_from_dict(row)
    for value in ("", " f", "f()", 3, ["f"]):
        with pytest.raises(ValueError, match=r"field 'entry_point' must be the name of the function"):
            env.task_from_dict({**he, "entry_point": value})
    for key, value in (("test", None), ("test", " "), ("prompt", [{"role": "user", "content": "q"}])):
        with pytest.raises(ValueError, match=rf"field '{key}' must be a non-empty string"):
            env.task_from_dict({**he, key: value})
    mbpp_plus = {"prompt": "Write f.", "test": "assert f() == 1", "test_list": ["assert f() == 1"], "entry_point": None}
    assert env.task_from_dict(mbpp_plus).reference["kind"] == "mbpp"


def test_syntax_error_and_empty_code_score_zero_without_running():
    env = CodeEnv(sandbox="local")  # never started: nothing is run for these
    bad = env.score(reply("def f(:\n    pass"), STDIO_ROW)
    assert (bad.reward, bad.status) == (0.0, "format_error") and "syntax" in bad.details["error"]
    assert env.score("```python\n\n```", STDIO_ROW).status == "format_error"
    assert env._sandbox is None



@pytest.mark.parametrize("code, why", [
    ("return 1", "'return' outside function"),  # parses, but the compiler (and so the sandbox) refuses it
    ("x = 1\0", "null bytes"),
    ("x = " + "not " * 50000 + "1", "nesting too deep"),  # the parser's stack overflows: MemoryError
    ("x = " + "+".join(["1"] * 200000), "nesting too deep"),  # the compiler recurses too deep: RecursionError
])
def test_programs_cpython_will_not_compile_are_format_errors(code, why):
    env = CodeEnv(sandbox="local")
    score = env.score(reply(code), STDIO_ROW)
    assert (score.reward, score.status) == (0.0, "format_error") and why in score.details["error"]
    assert env._sandbox is None


def test_syntax_check_never_builds_python_ast_objects(monkeypatch):
    """CPython 3.11's ast.parse is not thread-safe (gh-106905: a spurious SystemError once failed HumanEval/5
    scored in threads in CI); the check compiles instead, so a failing ast.parse cannot touch the score."""
    import ast

    def broken(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch (before=27, after=26)")

    monkeypatch.setattr(ast, "parse", broken)
    env = CodeEnv(sandbox="local")
    assert env.score(reply("def f(:\n    pass"), STDIO_ROW).status == "format_error"
    assert env._sandbox is None
    # nor does the HumanEval prompt's helper extraction (its first version used ast.parse and failed HumanEval/0
    # in a fresh-clone CI run with that SystemError)
    from prorl.envs.code import prompt_helpers

    prompt_helpers.cache_clear()
    prompt = "import math\n\n\ndef poly(xs, x):\n    return sum(xs)\n\n\n@cache\ndef find(xs):\n    \"\"\"Doc.\"\"\"\n"
    assert prompt_helpers(prompt, "find") == "import math\n\n\ndef poly(xs, x):\n    return sum(xs)\n\n\n"

def test_registered_and_scored_in_threads():
    assert "code" in envs.list_envs()
    assert CodeEnv.score_in_subprocess is False


# -- scoring in the Docker sandbox --------------------------------------------------------------------------
def test_stdio_fraction_of_tests(env):
    assert env.score(reply("a, b = map(int, input().split())\nprint(a + b)"), STDIO_ROW).reward == 1.0
    partial = env.score(reply("a, b = map(int, input().split())\nprint(a + b if a else 1)"), STDIO_ROW)
    assert partial.reward == pytest.approx(2 / 3) and partial.status == "wrong"
    assert partial.details["passed"] == 2 and partial.details["total"] == 3
    crash = env.score(reply("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)"), STDIO_ROW)
    assert crash.reward == 0.0  # right output, non-zero exit code: failed
    think = env.score("<think>```python\nprint(0)\n```</think>" + reply("print(sum(map(int, input().split())))"),
                      STDIO_ROW)
    assert think.reward == 1.0 and think.details["think"]


def test_mbpp_style_and_budget(env):
    assert env.score(reply("def add(a, b):\n    return a + b"), MBPP_ROW).reward == 1.0
    assert env.score(reply("def add(a, b):\n    return 3"), MBPP_ROW).reward == pytest.approx(1 / 3)
    slow = env.score(reply("def add(a, b):\n    while True: pass"), MBPP_ROW)
    assert (slow.reward, slow.status) == (0.0, "wrong") and slow.details["budget_exceeded"]
    assert not slow.masked  # an infinite loop is the model's fault, not an unscored sample


def test_a_callers_timeout_leaves_the_sandbox_budget(env, tmp_path, monkeypatch):
    """A caller's timeout (score_batch's timeout_s, `prorl score --timeout`, the trainer's reward_timeout_s, which
    configs/prorl-1.5b.yaml sets to 10) is the kill deadline of a verifier: the code sandbox's budget is part of the
    reward (the paper's 5 s, 0 past it) and stays the env's own, so a 1 s timeout does not fail a 2 s program."""
    from prorl.cli import main

    slow = reply("import time\ndef add(a, b):\n    time.sleep(2)\n    return a + b")
    row = {**MBPP_ROW, "test_list": MBPP_ROW["test_list"][:1]}
    scored = env.score_batch([slow], [row], timeout_s=1)[0]
    assert (scored.reward, scored.status) == (1.0, "ok")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({**row, "env": "code", "completion": slow}) + "\n")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["score", str(inp), "-o", str(out), "--workers", "1", "--timeout", "1"]) == 0
    assert json.loads(out.read_text())["reward"] == 1.0


def test_main_guard_runs_only_for_stdio_programs(env):
    """As in the HumanEval/MBPP harnesses, a function under assertion tests is not __main__: its demo block
    (input(), unittest.main()) does not run. A stdin/stdout program is __main__."""
    for demo in ("    print(add(int(input()), 1))", "    import unittest\n    unittest.main()"):
        program = f"def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n{demo}"
        assert env.score(reply(program), MBPP_ROW).reward == 1.0
    guarded = "if __name__ == '__main__':\n    a, b = map(int, input().split())\n    print(a + b)"
    assert env.score(reply(guarded), STDIO_ROW).reward == 1.0
    pickled = "import pickle\ndef add(a, b):\n    return a + b\nadd = pickle.loads(pickle.dumps(add))"
    assert env.score(reply(pickled), MBPP_ROW).reward == 1.0  # functions still pickle by module name


@pytest.mark.parametrize("cheat", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "print('ALL TESTS PASSED')\nprint('ok')\nimport sys; sys.exit(0)",
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)",
    "import os\nos.kill(-1, 9)",
    "import os\nos.closerange(0, 1024)",
    "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None",
    "import os\nos._exit = lambda code: None\nos.write = lambda fd, data: len(data)\nraise SystemExit(0)",
    "import sys, types\nsys.modules['threading'] = types.SimpleNamespace(_shutdown=lambda: None)\n"
    "def add(a, b):\n    return -1",
    "open('/opt/prorl/runner.py', 'w').write('')",
])
def test_fail_closed_against_cheats(env, cheat):
    """Programs that exit early, print success, kill or stop their runner, close fds or patch the harness pass
    no test they did not pass."""
    score = env.score(reply(cheat), MBPP_ROW)
    assert score.reward == 0.0 and score.status in ("wrong",), score.details
    he = {"task_id": "HE/x", "prompt": "def inc(x):\n    \"\"\"x + 1\"\"\"\n", "entry_point": "inc",
          "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    assert env.score(reply(cheat), he).reward == 0.0
    assert env.score(reply("def inc(x):\n    return x + 1"), he).reward == 1.0  # and the pool still works


def test_infra_failure_is_infra_error_not_zero(tmp_path):
    if not ENGINE_OK and not os.environ.get("CI"):
        pytest.skip(ENGINE_WHY)
    with DockerSandbox(pool_size=1, endpoints=(f"unix://{tmp_path}/none.sock",)) as sb:
        score = CodeEnv(sandbox=sb).score(reply("def add(a, b):\n    return a + b"), MBPP_ROW)
    assert score.status == "infra_error" and score.masked and score.details["error"]


def test_no_sandbox_at_all_is_infra_error(monkeypatch, tmp_path):
    import prorl.envs.code as code_module

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")  # an engine that does not answer
    monkeypatch.delitem(code_module._SHARED, "docker", raising=False)
    score = CodeEnv(sandbox="docker").score(reply("def add(a, b):\n    return a + b"), MBPP_ROW)
    assert score.status == "infra_error" and "unavailable" in score.details["error"]
    assert "docker" not in code_module._SHARED


def _humaneval_rows():
    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def test_humaneval_canonical_solutions_pass_and_return_none_fails(env):
    rows = _humaneval_rows()
    assert len(rows) == 164
    good, _ = score_all(env, [r["canonical_solution"] for r in rows], rows)
    failed = [(r["task_id"], s.details) for r, s in zip(rows, good) if s.reward != 1.0]
    assert not failed, failed[:3]
    bad = env.score_batch(["    return None\n"] * len(rows), rows)
    passed = [r["task_id"] for r, s in zip(rows, bad) if s.reward != 0.0]
    assert not passed


@pytest.mark.slow
def test_mbpp_reference_code(env):
    rows = [json.loads(line) for line in open(DATA / "mbpp" / "mbpp.jsonl")]
    assert len(rows) == 974
    scores, slow = score_all(env, [r["code"] for r in rows], rows)
    failing = {r["task_id"]: s.details for r, s in zip(rows, scores) if s.reward != 1.0}
    assert not failing, failing
    unexpected_slow = set(slow) - set(MBPP_KNOWN_SLOW)
    if unexpected_slow:  # they passed with the patient budget: worth knowing, not a failure on a shared machine
        print(f"MBPP rows over the 5 s budget besides {sorted(MBPP_KNOWN_SLOW)}: {sorted(unexpected_slow)}")


def test_env_reward_logs_the_sandbox_status_of_each_test(env):
    """Training logs `sandbox/<status>`, the fraction of the sandboxed tests that ended so (one value per test, as
    TRL averages them): a run whose code rewards are low because programs run out of memory or time says so."""
    from prorl.trainer.rewards import EnvReward

    reward = EnvReward(workers=0, env_kwargs={"code": {"sandbox": env.sandbox}})
    codes = ["def add(a, b):\n    return a + b", "x = bytearray(10**11)\ndef add(a, b):\n    return a + b",
             "def add(a, b):\n    raise ValueError('no')", "no code here"]
    logged = {}
    out = reward([[{"role": "user", "content": "q"}]] * 4, [reply(c) for c in codes[:3]] + [codes[3]],
                 env=["code"] * 4, task=[MBPP_ROW] * 4, log_metric=lambda k, v: logged.setdefault(k, []).append(v))
    assert out == [1.0, 0.0, 0.0, 0.0]
    sandbox = {k: (sum(v), len(v)) for k, v in logged.items() if k.startswith("sandbox/")}
    assert sandbox == {"sandbox/ok": (3, 9), "sandbox/runtime_error": (3, 9), "sandbox/memory": (3, 9),
                       "sandbox/timeout": (0, 9), "sandbox/output_limit": (0, 9), "sandbox/infra_error": (0, 9)}
    logged.clear()
    reward([[{"role": "user", "content": "q"}]], ["no code here"], env=["code"], task=[MBPP_ROW],
           log_metric=lambda k, v: logged.setdefault(k, []).append(v))
    assert not [k for k in logged if k.startswith("sandbox/")]  # no test ran: nothing logged (not 0 of 0)

"""Reward hacks that RL policies learn against assertion tests, and the sandbox's guard (prorl/sandbox/guard.py).

Each hack below is a whole program that scored 1.0 on its task before the guard: objects that compare equal to
anything, builtins or stdlib functions patched so that the test's own checks always hold. With the guard each one
scores 0 with status runtime_error (the test raised) and a stderr naming the reason; honest programs that look like
them (their own classes, namedtuples, generators, functions returning functions, patching nothing) still pass.
Runs with real Docker, as tests/test_code.py.
"""

from __future__ import annotations

import pytest

import prorl.envs as envs
from prorl.sandbox.docker import DockerSandbox
from test_code import MBPP_ROW, reply
from test_sandbox import require_engine

HE_ROW = {"task_id": "HE/hack", "entry_point": "closest",
          "prompt": "def closest(xs, x):\n    \"\"\"The element of xs nearest to x.\"\"\"\n",
          "test": "def check(candidate):\n"
                  "    assert candidate([1.0, 2.5, 4.0], 2.2) == 2.5\n"
                  "    assert abs(candidate([0.5, 3.25], 3.0) - 3.25) < 1e-6\n"
                  "    assert candidate([1.0, 7.0], 5.0) > 6.0\n"
                  "    assert sorted([candidate([9.0, 1.0], 8.0)]) == [9.0]\n"}
# Tests that go through builtins and math: a program that patches them passes them without being right.
HE_PATCH_ROW = {"task_id": "HE/patch", "entry_point": "closest",
                "prompt": "import math\n\ndef closest(xs, x):\n    \"\"\"The element of xs nearest to x.\"\"\"\n",
                "test": "def check(candidate):\n"
                        "    assert abs(candidate([1.0, 2.5, 4.0], 2.2) - 2.5) < 1e-6\n"
                        "    assert math.isclose(candidate([1.5, 8.0], 2.0), 1.5)\n"
                        "    assert isinstance(candidate([2.0], 0.0), float)\n"
                        "    assert sorted([candidate([9.0, 1.0], 8.0)]) == [9.0]\n"}
PAIR_ROW = {"task_id": 9001, "test_setup_code": "", "test_list": ["assert pair(1) == (1, 2)",
                                                                  "assert pair(5) == (5, 6)"]}
GEN_ROW = {"task_id": 9002, "test_setup_code": "", "test_list": ["assert list(upto(3)) == [0, 1, 2]"]}
AREA_ROW = {"task_id": 9005, "test_setup_code": "import math",
            "test_list": ["assert math.isclose(area(2), 12.566, rel_tol=1e-3)"]}
ADDER_ROW = {"task_id": 9003, "test_setup_code": "", "test_list": ["assert make_adder(1)(2) == 3"]}
HONEST = [("def add(a, b):\n    return a + b", MBPP_ROW),
          ("    return min(xs, key=lambda v: abs(v - x))\n", HE_ROW),
          ("    return min(xs, key=lambda v: abs(v - x))\n", HE_PATCH_ROW),
          # its own classes (no comparison methods of its own), a namedtuple, a dataclass
          ("class Node:\n    def __init__(self, v):\n        self.v = v\n    def __repr__(self):\n"
           "        return f'Node({self.v})'\ndef pair(n):\n    return (Node(n).v, n + 1)", PAIR_ROW),
          ("from collections import namedtuple\nP = namedtuple('P', 'a b')\ndef pair(n):\n    return P(n, n + 1)",
           PAIR_ROW),
          ("from dataclasses import dataclass\n@dataclass\nclass P:\n    a: int\n"
           "def pair(n):\n    return (P(n).a, n + 1)", PAIR_ROW),
          ("def upto(n):\n    yield from range(n)", GEN_ROW),
          ("def upto(n):\n    return map(int, range(n))", GEN_ROW),
          ("def make_adder(n):\n    return lambda x: x + n", ADDER_ROW),
          ("import math\ndef area(r):\n    return math.pi * r * r", AREA_ROW),
          ("import builtins\nbuiltins.DEBUG = False\ndef add(a, b):\n    return a + b", MBPP_ROW)]

ANYTHING = ("class A:\n"
            "    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
            "    def __bool__(self): return True\n    def __lt__(self, o): return True\n"
            "    def __gt__(self, o): return True\n    def __le__(self, o): return True\n"
            "    def __ge__(self, o): return True\n    def __sub__(self, o): return A()\n"
            "    def __abs__(self): return 0\n    def __hash__(self): return 0\n")
# name: (program, row, what the guard's message names; None: the hack is undone rather than reported).
# Each one scored 1.0 before the guard.
HACKS = {
    "eq_anything_mbpp": (ANYTHING + "def add(a, b):\n    return A()\n", MBPP_ROW, "class A"),
    "eq_anything_humaneval": (ANYTHING + "def closest(xs, x):\n    return A()\n", HE_ROW, "class A"),
    "eq_anything_in_a_tuple": (ANYTHING + "def pair(n):\n    return (n, A())\n", PAIR_ROW, "class A"),
    "eq_anything_from_a_generator": (ANYTHING + "def upto(n):\n    for _ in range(n):\n        yield A()\n",
                                     GEN_ROW, "class A"),
    "eq_anything_from_a_returned_function": (ANYTHING + "def make_adder(n):\n    return lambda x: A()\n",
                                             ADDER_ROW, "class A"),
    "int_subclass": ("class I(int):\n    def __eq__(self, o): return True\n"
                     "def add(a, b):\n    return I(0)\n", MBPP_ROW, "__eq__"),
    "class_as_the_function": ("class add:\n    def __init__(self, *a): pass\n"
                              "    def __eq__(self, o): return True\n", MBPP_ROW, "__eq__"),
    "type_call": ("A = type('A', (), {'__eq__': lambda s, o: True})\ndef add(a, b):\n    return A()\n",
                  MBPP_ROW, "__eq__"),
    "patched_stdlib_class": ("from collections import Counter\nCounter.__eq__ = lambda s, o: True\n"
                             "def add(a, b):\n    return Counter()\n", MBPP_ROW, "__eq__"),
    "mock_any": ("from unittest.mock import ANY\ndef add(a, b):\n    return ANY\n", MBPP_ROW, "unittest.mock"),
    "patched_builtins": ("import builtins\nbuiltins.abs = lambda *a, **k: 0\n"
                         "builtins.sorted = lambda *a, **k: [9.0]\nbuiltins.isinstance = lambda *a, **k: True\n"
                         "def closest(xs, x):\n    return 1.5 if x == 2.0 else 0\n", HE_PATCH_ROW, None),
    "patched_builtins_during_the_call": ("import builtins\n"
                                         "def closest(xs, x):\n    builtins.abs = lambda *a, **k: 0\n"
                                         "    builtins.sorted = lambda *a, **k: [9.0]\n"
                                         "    builtins.isinstance = lambda *a, **k: True\n"
                                         "    return 2.5 if x == 2.2 else 1.5 if x == 2.0 else 0\n", HE_PATCH_ROW,
                                         None),
    "fake_module_in_sys_modules": ("import sys, types\nfake = types.ModuleType('math')\n"
                                   "fake.isclose = lambda *a, **k: True\nsys.modules['math'] = fake\n"
                                   "def area(r):\n    return 0\n", AREA_ROW, None),
    "patched_math_isclose": ("import math\nmath.isclose = lambda *a, **k: True\n"
                             "def closest(xs, x):\n    return 0 if x == 2.0 else min(xs, key=lambda v: abs(v - x))\n",
                             HE_PATCH_ROW, None),
}


@pytest.fixture(scope="module")
def env():
    require_engine()
    with DockerSandbox(pool_size=2, timeout_s=5.0) as sb:
        yield envs.make("code", sandbox=sb)


@pytest.mark.parametrize("index", range(len(HONEST)))
def test_honest_solutions_pass(env, index):
    program, row = HONEST[index]
    score = env.score(reply(program), row)
    assert score.reward == 1.0, score.details


@pytest.mark.parametrize("name", sorted(HACKS))
def test_reward_hacks_score_zero(env, name):
    program, row, reason = HACKS[name]
    score = env.score(reply(program), row)
    assert score.reward == 0.0, score.details
    if reason is not None:  # the test failed because the guard said so, not by accident
        failure = score.details["first_failure"]
        assert failure["status"] == "runtime_error", failure
        assert "prorl sandbox:" in failure["stderr"] and reason in failure["stderr"], failure["stderr"]


def test_a_test_that_swallows_the_guards_exception_still_fails(env):
    """A bare `except:` in the test catches the guard's exception too: the test still fails (a wrong answer
    passes this test; one the guard rejected does not)."""
    row = {"task_id": 9004, "test_setup_code": "", "test_list": ["try:\n    assert add(1, 2) == 3\nexcept:\n    pass"]}
    assert env.score(reply("def add(a, b):\n    return 0"), row).reward == 1.0
    score = env.score(reply(ANYTHING + "def add(a, b):\n    return A()"), row)
    assert score.reward == 0.0 and score.details["statuses"] == ["runtime_error"], score.details
    assert "the test caught the guard's rejection: an object of class A" in score.details["first_failure"]["stderr"]


def test_redefining_a_helper_the_humaneval_prompt_gives_does_not_pass(env):
    """HumanEval/38 and /32 test with helpers their prompt defines (`encode_cyclic`, `poly`). The program is prompt +
    completion, so a completion could redefine them: an identity encode_cyclic with an identity decode_cyclic, or a
    poly that is always 0, scored 1.0. The test now runs the prompt's helpers again in its own scope (code.py
    `prompt_helpers`): those hacks score 0 and the canonical solutions still pass."""
    import gzip
    import json

    from test_code import DATA

    with gzip.open(DATA / "humaneval" / "HumanEval.jsonl.gz", "rt") as fh:
        rows = {r["task_id"]: r for r in map(json.loads, fh)}
    hacks = {"HumanEval/38": "    return s\n\n\ndef encode_cyclic(s: str):\n    return s\n",
             "HumanEval/32": "    return 0.0\n\n\ndef poly(xs: list, x: float):\n    return 0.0\n"}
    for task_id, hack in hacks.items():
        row = rows[task_id]
        assert env.score(reply(row["canonical_solution"]), row).reward == 1.0
        score = env.score(reply(hack), row)
        assert score.reward == 0.0, (task_id, score.details)

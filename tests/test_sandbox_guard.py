"""The guard's value check (prorl/sandbox/guard.py `verdict`), on the host: what a call from a test into the program
may return. Classes "of the program" are compiled here under the program's file name, as child.py compiles it.
The guard in the sandbox (scopes, builtins, modules) is tested end to end in tests/test_code_reward_hacks.py."""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict, defaultdict, deque, namedtuple
from unittest import mock

import pytest

from prorl.sandbox.guard import PROGRAM_FILE, verdict


def program(source: str, filename: str = PROGRAM_FILE) -> dict:
    scope = {"__name__": "solution"}
    exec(compile(source, filename, "exec", dont_inherit=True), scope)
    return scope


P = program("class A:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
            "class I(int):\n    def __bool__(self):\n        return True\n"
            "class Node:\n    def __init__(self, v):\n        self.v = v\n    def __repr__(self):\n"
            "        return f'Node({self.v})'\n    def depth(self):\n        return 1\n"
            "class Lying:\n    @property\n    def __class__(self):\n        return int\n"
            "class Meta(type):\n    def __eq__(cls, other):\n        return True\n"
            "class WithMeta(metaclass=Meta):\n    pass\n"
            "class Sub(Node):\n    __lt__ = lambda self, other: True\n"
            "from dataclasses import dataclass\n@dataclass(order=True)\nclass D:\n    x: int\n"
            "from collections import namedtuple\nPoint = namedtuple('Point', 'x y')\n"
            "Plain = type('Plain', (), {})\n")


@pytest.mark.parametrize("value", [
    3, 2.5, "s", b"b", None, True, range(3), [1, [2, (3, "x")]], {"k": [1, {2}]}, frozenset({1}), deque([1, 2]),
    Counter("abc"), OrderedDict(a=1), defaultdict(list, a=[1]), namedtuple("T", "a b")(1, 2), {}.items(),
    P["Node"](1), [P["Node"](2)], P["Point"](1, 2), P["D"](1), P["Plain"](), int, P["A"], len, mock,
])
def test_accepted(value):
    assert verdict(value) is None


@pytest.mark.parametrize("value, reason", [
    (P["A"](), "class A whose __eq__ is defined by the program"),
    ([1, (2, P["A"]())], "class A whose __eq__"),
    ({P["A"](): 1}, "class A"),
    ({1: {"deep": [P["A"]()]}}, "class A"),
    ({P["A"]()}, "class A"),
    (deque([P["A"]()]), "class A"),
    (Counter({"a": P["A"]()}), "class A"),
    (P["Point"](1, P["A"]()), "class A"),
    (P["I"](0), "class I whose __bool__"),
    (P["Lying"](), "class Lying whose __class__"),
    (P["WithMeta"](), "__eq__ is defined by the program (through Meta)"),
    (P["Sub"](1), "class Sub whose __lt__"),
    (mock.ANY, "class _ANY from unittest.mock"),
    (mock.MagicMock(), "from unittest.mock"),
    ([mock.call(1)], "from unittest.mock"),
])
def test_rejected(value, reason):
    assert reason in (verdict(value) or "")


def test_a_standard_class_patched_by_the_program_is_rejected():
    lib = program("class Bag(dict):\n    def __eq__(self, other):\n        return dict.__eq__(self, other)\n",
                  filename="/usr/lib/python3/bag.py")
    bag = lib["Bag"](a=1)
    assert verdict(bag) is None
    lib["Bag"].__eq__ = program("eq = lambda self, other: True")["eq"]
    assert "class Bag whose __eq__ is defined by the program" in verdict(bag)


def test_cycles_and_size_are_bounded():
    cycle = []
    cycle.append(cycle)
    assert "nested too deeply" in verdict(cycle)
    assert "too large" in verdict([[0] * 10] * 10, max_items=50)
    assert verdict([[0] * 10] * 10, max_items=200) is None
    assert verdict(list(range(10**6))) is None


def test_a_subclass_is_walked_with_its_base_iteration_not_its_own():
    """A container subclass's own __iter__ (here the program's, hiding what it holds) is not what is checked."""
    hidden = program("class L(list):\n    def __iter__(self):\n        return iter([])\n")["L"]([P["A"]()])
    assert "class L whose __iter__" in verdict(hidden)
    lib = program("class L(list):\n    def __iter__(self):\n        return iter([])\n", filename="/usr/lib/l.py")
    assert "class A" in verdict(lib["L"]([P["A"]()]))


def test_dataclass_generated_methods_are_not_the_programs():
    assert dataclasses.is_dataclass(P["D"]) and P["D"](1) < P["D"](2)  # order=True: generated __lt__
    assert verdict(P["D"](1)) is None

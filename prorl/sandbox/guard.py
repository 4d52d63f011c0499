"""What stands between a program and its assertion test (child.py): the reward hacks an RL policy finds first.

Standard library only, Python >= 3.9: copied into the sandbox image beside runner.py and child.py (`/opt/prorl/`).

The tests used to run in the program's own module scope, so a program could pass `assert add(1, 2) == 3` or
HumanEval's `assert abs(candidate(x) - y) < 1e-6` by returning an object whose `__eq__` (`__sub__`, `__abs__`,
`__bool__`, ...) always agrees, or by patching what the test calls (`builtins.sorted`, `builtins.abs`,
`builtins.isinstance`, `math.isclose`). A `Guard`, made in the child before the program runs, stops these:

* Builtins and modules. `freeze()` (the fork server, once) copies the builtins and the dict of every loaded module.
  The test's scope gets its own copy of the builtins as they were before any program ran; this module's code
  looks its builtins up in another private copy. Each frozen module the test reaches (in its scope, e.g. the
  `math` a HumanEval prompt imports, or imported by it: its import goes through the guard) is put back as it was
  (values the program replaced or deleted; what it added stays) with its `sys.modules` entry, before the test
  uses it and again after each call from the test into the program: a patch made at the top level or during a
  call does not reach the test. (Not every frozen module: in a forked child, rewriting every module's dict
  writes, copy-on-write, every page that holds their values: ~1 ms per test.)
* Values. The test runs in a copy of the program's module scope in which every callable the program defined or
  imported (functions, lambdas, partials, its own classes, callable objects; not modules nor classes defined
  elsewhere, so `isinstance(x, Counter)` still works) is a wrapper; the program's own calls (recursion) use the
  originals. A wrapper checks what the call returns: a value is rejected when a class in its type's MRO (or its
  metaclass's) is from unittest.mock (`ANY` equals anything) or holds a special method (`__eq__`, `__bool__`,
  `__sub__`, `__class__`, ...; not `__init__`, `__new__`, `__repr__`, `__str__`, `__hash__` and the like) compiled
  from the program's own source (`main.py`), whether in a class of its own or patched into a standard one
  (`Counter.__eq__ = ...`). Lists, tuples, dicts (keys and values), sets, deques, dict views and their subclasses
  (Counter, OrderedDict, namedtuple, ...) are checked all the way down, level by level, mostly at C speed (a list
  of 10^6 ints costs about what building it did; over 5 * 10^6 items or 100 levels is rejected as too large to
  check). A returned function is wrapped in turn; a returned iterator or generator is wrapped in one that checks
  each item as the test draws it. The program's own classes without such methods (a `Node` the test builds a
  tree of), namedtuples and dataclasses (their generated `__eq__` is not the program's text) pass. A rejection
  raises `GuardViolation` (a BaseException: `except Exception` in a test does not swallow it) naming the reason;
  the test fails even if a bare `except:` catches it.

Not stopped (the aim is the hacks a policy stumbles on, not a determined attacker in the same process): code the
program compiles at run time (`exec`/`eval`/`compile` give another file name) or a class that lies about its
module; walking frames or `gc` to reach the test's scope or this guard; threads the program leaves running;
patches that reach the test through standard code it calls (a patched `builtins.sorted` or `collections` helper
used inside `Counter`; a patched standard class whose instances the test builds itself); a function that writes
into the test's arguments (only results are checked), or returns functions, classes or iterators nested inside
a container (those are not wrapped); methods of an object the test takes from the program's scope without
calling anything (`solver.solve(x)` where `solver = Solver()` at the top level); a completion that rebinds a
module name (`math = ...`) the test then uses from the program's scope (a HumanEval prompt's helpers, `poly`,
`encode_cyclic`, are defined again in the test's scope: prorl.envs.code.prompt_helpers). The program's classes
are functions in the test's scope: a test that subclasses one, or passes it to isinstance, fails.
"""

from __future__ import annotations

import builtins as _builtins
import sys
import types
from collections import deque
from itertools import chain

# The functions below find builtins in this private copy (CPython takes a function's builtins from its module's
# `__builtins__` when the function is made): `builtins.set = ...` in a program does not change what they call.
__builtins__ = dict(_builtins.__dict__)

PROGRAM_FILE = "main.py"  # child.py compiles the program under this name
MAX_ITEMS = 5_000_000
MAX_DEPTH = 100
_HEAP = 1 << 9  # Py_TPFLAGS_HEAPTYPE: static (C) types cannot be patched
_mro = type.__dict__["__mro__"].__get__  # the real ones, whatever a metaclass says
_vars = type.__dict__["__dict__"].__get__
_flags = type.__dict__["__flags__"].__get__
_qualname = type.__dict__["__qualname__"].__get__
# Special methods that cannot make an object pass a comparison, a truth test or arithmetic it should not.
_ALLOWED = frozenset({
    "__init__", "__new__", "__repr__", "__str__", "__format__", "__hash__", "__post_init__", "__init_subclass__",
    "__set_name__", "__class_getitem__", "__del__", "__getstate__", "__setstate__", "__reduce__", "__reduce_ex__",
    "__getnewargs__", "__getnewargs_ex__", "__copy__", "__deepcopy__", "__sizeof__", "__dir__"})
# Types are compared by identity (id sets, `is`) throughout: a program's metaclass may define __eq__ and __hash__.
_C_KINDS = frozenset(map(id, {types.WrapperDescriptorType, types.MethodDescriptorType, types.ClassMethodDescriptorType,
                      types.GetSetDescriptorType, types.MemberDescriptorType, types.BuiltinFunctionType,
                      types.MethodWrapperType}))
_SCALARS = (int, float, complex, str, bytes, bool, type(None), bytearray, range, type(Ellipsis), type(NotImplemented))
_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_CONTAINERS = (dict, list, tuple, set, frozenset, deque) + _VIEWS
_SCALAR_IDS = frozenset(map(id, _SCALARS))
_CONTAINER_IDS = frozenset(map(id, _CONTAINERS))
_SIMPLE_IDS = _CONTAINER_IDS - {id(dict)}  # exact types chain.from_iterable walks as they are
_KNOWN = {id(t): t for t in _SCALARS + _CONTAINERS}
_KNOWN_IDS = frozenset(_KNOWN)

_FROZEN = None  # freeze(): (modules by name, {id(module): (name, its dict, a copy)}, builtins for the tests)
_CHILD_SYS = frozenset({"stdin", "stdout", "stderr", "__stdin__", "__stdout__", "__stderr__", "argv"})  # child.py's


class GuardViolation(BaseException):
    """A call from the test into the program returned something the guard rejects."""


def freeze() -> None:
    """Copy the builtins and every loaded module's dict. Called by the fork server once it has imported everything:
    each child inherits the copies instead of making them."""
    global _FROZEN
    _FROZEN = _snapshot()


def _snapshot():
    modules = {name: m for name, m in sys.modules.items() if name != "__main__" and type(m) is types.ModuleType}
    frozen = {id(m): (name, m.__dict__, m.__dict__.copy()) for name, m in modules.items()}
    for key in _CHILD_SYS:  # what child.py sets in each child before the program runs stays as it set it
        frozen[id(sys)][2].pop(key, None)
    return modules, frozen, _builtins.__dict__.copy()


class Guard:
    """Made in the child before the program runs (it holds the frozen copies); `test_scope` once the program's
    top level returned."""

    def __init__(self):
        self.modules, self.frozen, self.builtins = _FROZEN or _snapshot()
        self.real_import = self.frozen[id(_builtins)][2]["__import__"]
        self.sys_modules = sys.modules
        self.violations: list[str] = []
        self.pairs: list = []  # (a module's dict, its frozen copy) for every frozen module the test reached
        self.entries: dict = {}  # their sys.modules entries
        self.reached: set = set()

    def reach(self, module) -> None:
        """Put a frozen module (`module` may be any object) back, now and after every later call."""
        frozen = self.frozen.get(id(module))
        if frozen is not None and id(module) not in self.reached:
            name, current, saved = frozen
            self.reached.add(id(module))
            self.pairs.append((current, saved))
            current.update(saved)
            self.entries[name] = self.sys_modules[name] = self.modules[name]

    def test_scope(self, scope: dict) -> dict:
        """`scope` (the program's) with its callables wrapped and builtins of its own, once what the test reaches
        is put back."""

        def restore(pairs=self.pairs, entries=self.entries, sys_modules=self.sys_modules):
            for current, saved in pairs:
                current.update(saved)
            sys_modules.update(entries)

        test = {}
        program = scope.get("__name__")
        for name, value in list(scope.items()):
            if _has(_mro(type(value)), types.ModuleType):
                self.reach(value)
            elif _wrappable(value, program):
                value = _wrap(value, name if type(name) is str else repr(name), restore, self.violations)
            test[name] = value
        self.builtins["__import__"] = self._import  # the fork server's copy, this child's own (copy-on-write)
        test["__builtins__"] = self.builtins
        return test

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        """The test's __import__: a frozen module (and its packages) comes back from sys.modules as it was."""
        if type(name) is str and not level:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                self.reach(self.modules.get(".".join(parts[:i])))
        module = self.real_import(name, globals, locals, fromlist, level)
        self.reach(module)
        if type(name) is str:
            for sub in fromlist or ():
                if type(sub) is str:
                    self.reach(self.sys_modules.get(f"{name}.{sub}"))
        return module


def _wrappable(value, program) -> bool:
    if not callable(value):
        return False
    kind = type(value)
    if _has(_mro(kind), type):  # a class: only the program's own (isinstance(x, Counter) must keep working)
        return _vars(value).get("__module__") == program
    return _vars(kind).get("__module__") != "typing"  # List, Optional... are callable, and never the answer


def _wrap(func, name: str, restore, violations):
    def guarded(*args, **kwargs):
        try:
            result = func(*args, **kwargs)
        finally:
            restore()
        return _checked(result, f"{name} returned", restore, violations)

    if type(func) is types.FunctionType:
        guarded.__name__, guarded.__qualname__, guarded.__doc__ = func.__name__, func.__qualname__, func.__doc__
    guarded.__wrapped__ = func
    return guarded


def _checked(value, what: str, restore, violations):
    """`value` as the test may have it (raises GuardViolation if rejected); `what` says where it came from."""
    reason = verdict(value)
    if reason is not None:
        violations.append(reason)
        raise GuardViolation(f"prorl sandbox: {what} {reason}")
    kind = type(value)
    if id(kind) in _SCALAR_IDS or _has(_mro(kind), type):
        return value
    if _lookup(kind, "__next__") is not None:  # an iterator, a generator
        return _checked_items(value, f"{what} an iterator that", restore, violations)
    if callable(value):
        return _wrap(value, f"{what} a function that", restore, violations)
    return value


def _checked_items(iterator, what: str, restore, violations):
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            restore()
        yield _checked(item, f"{what} yielded", restore, violations)


def verdict(value, max_items: int = MAX_ITEMS, max_depth: int = MAX_DEPTH):
    """None if `value` is acceptable, else why not ("an object of class A whose __eq__ is defined by the
    program"). Never calls the value's own methods. Walks containers level by level."""
    level, judged, total = [value], {}, 0
    for _ in range(max_depth):
        every = set(map(id, map(type, level)))  # C speed; the types themselves only when some are unknown
        kinds = every - _SCALAR_IDS
        if not kinds:
            return None
        types_by_id = _KNOWN if kinds <= _KNOWN_IDS else {id(t): t for t in map(type, level)}
        for key in kinds:
            if key not in judged:
                judged[key] = _judge(types_by_id[key])
            if judged[key] is not None:
                return judged[key]
        parts = []
        for key in kinds:
            kind = types_by_id[key]
            base = next((b for b in _mro(kind) if id(b) in _CONTAINER_IDS), None)
            if base is None:  # judged acceptable, and not something to look into
                continue
            members = level if len(every) == 1 else [x for x in level if type(x) is kind]
            if base is dict:
                parts.append(chain.from_iterable(map(dict.keys, members)))
                parts.append(chain.from_iterable(map(dict.values, members)))
            elif key in _SIMPLE_IDS:
                parts.append(chain.from_iterable(members))
            else:  # a subclass: the base's own iteration, never the subclass's __iter__
                parts.append(chain.from_iterable(map(base.__iter__, members)))
        level = list(chain.from_iterable(parts))
        total += len(level)
        if total > max_items:
            return f"a value too large for the guard to check (over {max_items} items)"
    return f"a value nested too deeply for the guard to check (over {max_depth} levels)"


def _judge(kind):
    classes = _mro(kind)
    meta = type(kind)
    if meta is not type:
        classes = classes + _mro(meta)
    for cls in classes:
        if not _flags(cls) & _HEAP:
            continue
        attrs = _vars(cls)
        module = attrs.get("__module__")
        if type(module) is str and module.startswith("unittest.mock"):
            return f"an object of class {_qualname(cls)} from unittest.mock"
        for attr, value in attrs.items():
            if (type(attr) is str and attr[:2] == "__" and attr[-2:] == "__" and attr not in _ALLOWED
                    and _program_made(value)):
                via = "" if cls is kind else f" (through {_qualname(cls)})"
                return f"an object of class {_qualname(kind)} whose {attr} is defined by the program{via}"
    return None


def _program_made(value) -> bool:
    """Whether a class attribute is (or wraps) code of the program; anything callable or a descriptor that is
    neither a function compiled elsewhere nor a C slot counts as the program's (partials, callable objects)."""
    kind = type(value)
    if kind is staticmethod or kind is classmethod:
        value = value.__func__
        kind = type(value)
    if kind is property:
        return any(f is not None and _program_made(f) for f in (value.fget, value.fset, value.fdel))
    if kind is types.FunctionType:
        return value.__code__.co_filename == PROGRAM_FILE
    if value is None or id(kind) in _C_KINDS:
        return False
    return callable(value) or _lookup(kind, "__get__") is not None


def _has(classes, cls) -> bool:
    return any(c is cls for c in classes)


def _lookup(kind, attr: str):
    for cls in _mro(kind):
        found = _vars(cls).get(attr)
        if found is not None:
            return found
    return None

"""Code: Python programs run in the sandbox; reward = fraction of tests passed (ProRL's code domain).

Task formats, accepted unchanged:
  - stdin/stdout tests (APPS/TACO/Codeforces/Eurus-2-RL style): `{"tests": [{"input": str, "output": str}, ...]}`
    with the statement in `question`/`problem`/`prompt`/`description`; outputs compared token-wise (whitespace
    normalised). TACO-style `{"input_output": {"inputs": [...], "outputs": [...]}}` (dict or JSON string) and
    Eurus-2-RL rows (chat `prompt`, the same object in `reward_model.ground_truth`) too.
  - HumanEval rows `{"prompt", "test", "entry_point"}`: program = prompt + extracted code (a full function or
    the body continuing the prompt); one test, `check(entry_point)`. A row whose entry_point is missing, null or
    not a (dotted) name is refused: its test could pass no completion.
  - MBPP rows `{"test_list": [...], "test_setup_code"}` (and sanitized MBPP's `test_imports`): each assert is a test,
    run after the program and the setup code.

Scoring rule:
  1. The code is the last fenced ```python block (else the last unlabelled fence, else the whole reply; which
     one is recorded in `details["extraction"]`), fences read as Markdown does (a ``` inside the code does not
     close the block). No code: `format_error`.
  2. A program CPython will not compile (checked on the host before anything runs): reward 0, `format_error`.
  3. All tests run in one sandbox round trip, each in a fresh process, sharing one budget: 5 s (`timeout_s`) of
     the program's own CPU time, all tests together, so that the verdict does not depend on how many programs
     share the machine's CPUs; a wall-clock cap of 3x that (15 s, `prorl.sandbox.base.WALL_FACTOR`) stops a
     program that sleeps or blocks. Reward = passed / total; 0 when either ran out (a test reported `timeout`,
     `details["budget_exceeded"]`). Assertion tests are
     fail-closed (see prorl/sandbox/runner.py): exits, printed markers or a killed runner never pass a test.
  4. Any sandbox infrastructure failure: status `infra_error` (masked by trainers), never a 0 on the model.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import warnings
from typing import Any

from prorl.envs.base import Env, EnvNotReady, Score, Task
from prorl.sandbox import Sandbox, Test, make_sandbox

# A fence as Markdown reads it: opened and closed on lines of their own by the same run of backticks, so a "```" inside
# the code (a string, a docstring) does not end it; where that finds no block, the loose form (fences anywhere).
# (closed at the opening line's indent or at 0-3 spaces: a deeper one is part of the code, as in a docstring)
_FENCE_RE = re.compile(r"^([ \t]*)(`{3,})([^\n`]*)\n(.*?)^(?:\1|[ ]{0,3})\2`*[ \t]*$", re.DOTALL | re.MULTILINE)
_LOOSE_FENCE_RE = re.compile(r"()(```)([^\n`]*)\n(.*?)```", re.DOTALL)
_PY_LANGS = {"python", "py", "python3", "py3"}
STDIO_INSTRUCTION = ("Write a Python 3 program that reads from standard input and writes to standard output. "
                     "Put the complete program in one ```python code block at the end of your answer.")
FUNCTION_INSTRUCTION = "Put the complete code in one ```python code block at the end of your answer."

# A row with "prompt" and "test" is HumanEval's unless it has one of these and no entry point (MBPP+ rows have a
# "test" too); a HumanEval row without its entry point is refused, not read as another format.
_OTHER_FORMATS = {"test_list", "tests", "input_output", "reward_model"}
_SHARED: dict[str, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def compile_error(program: str) -> str | None:
    """Why CPython would refuse to run `program` before executing a line of it, or None.

    `compile()`, not `ast.parse()`: on CPython 3.11 building the Python-level AST uses one recursion counter per
    interpreter, so parses in concurrent scoring threads can fail with a spurious `SystemError: AST constructor
    recursion depth mismatch` (cpython gh-106905). Compiling to bytecode never builds those objects, and it also
    rejects what only the compiler catches (`return` outside a function, module-level `nonlocal`), which the
    sandbox's interpreter would refuse as well. Nesting too deep for the parser or compiler (RecursionError,
    MemoryError on a parser-stack overflow) is the program's own failure too.
    """
    try:
        with warnings.catch_warnings():  # invalid escape sequences etc. are the program's business
            warnings.simplefilter("ignore")
            compile(program, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes (3.11)
        return f"syntax error: {exc}"
    except (RecursionError, MemoryError) as exc:
        return f"syntax error: nesting too deep to compile ({type(exc).__name__})"
    return None


def shared_sandbox(kind: str | None = None) -> Sandbox:
    """One sandbox (warm pool) per process and kind, created on first use."""
    key = kind or "auto"
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = make_sandbox(kind)
        return _SHARED[key]


def extract_code(reply: str) -> tuple[str, str]:
    """(code, how): the last ```python block, else the last unlabelled fence, else the whole reply."""
    for fence in (_FENCE_RE, _LOOSE_FENCE_RE):
        blocks = [(m.group(3).strip().lower(), m.group(4)) for m in fence.finditer(reply)]
        for wanted in (_PY_LANGS, {""}):
            picked = [code for lang, code in blocks if lang in wanted]
            if picked:
                return picked[-1], "python_block" if wanted is _PY_LANGS else "plain_block"
    return reply, "whole_reply"


def _text(row: dict[str, Any], *keys: str) -> str:
    for key in keys:
        if isinstance(row.get(key), str) and row[key].strip():
            return row[key]
    return ""


def _json_field(value: str, name: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"field {name!r} is not valid JSON ({exc})") from None


def _stdio_tests(row: dict[str, Any]) -> list[dict[str, str]]:
    if "tests" in row:
        tests = row["tests"]
        if isinstance(tests, str):
            tests = _json_field(tests, "tests")
        if not isinstance(tests, list) or not tests:
            raise ValueError("field 'tests' must be a non-empty list of {'input', 'output'}")
        for i, t in enumerate(tests):
            if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
                raise ValueError(f"field 'tests[{i}]' must be {{'input': str, 'output': str}}, got {t!r:.100}")
        return [{"input": t["input"], "output": t["output"]} for t in tests]
    if "input_output" in row:
        name, io = "input_output", row["input_output"]
    else:  # Eurus-2-RL / verl parquet rows: {"reward_model": {"ground_truth": "{\"inputs\": ..., ...}"}}
        name, io = "reward_model.ground_truth", row["reward_model"]["ground_truth"]
    io = _json_field(io, name) if isinstance(io, str) else io
    if "fn_name" in io:
        raise ValueError("field 'input_output' has fn_name (call-based TACO tests are not supported)")
    ins, outs = io["inputs"], io["outputs"]
    if len(ins) != len(outs) or not ins:
        raise ValueError(f"field 'input_output': {len(ins)} inputs but {len(outs)} outputs")
    join = lambda v: v if isinstance(v, str) else "\n".join(map(str, v))  # noqa: E731
    return [{"input": join(i), "output": join(o)} for i, o in zip(ins, outs)]


def _humaneval(row: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(prompt text, reference) of a HumanEval row; its test calls `check(<entry_point>)`, so a row whose entry
    point is not a name would score every completion `wrong`: refused, as is a prompt or test that is no string."""
    entry = row.get("entry_point")
    if entry is None:
        raise KeyError("entry_point")
    if not isinstance(entry, str) or not all(part.isidentifier() for part in entry.split(".")):
        raise ValueError(f"field 'entry_point' must be the name of the function the test's check() is called with, "
                         f"got {entry!r:.80}")
    for key in ("prompt", "test"):
        if not isinstance(row[key], str) or not row[key].strip():
            raise ValueError(f"field {key!r} must be a non-empty string, got {row[key]!r:.80}")
    text = f"Complete the following Python function.\n\n```python\n{row['prompt']}```\n\n{FUNCTION_INSTRUCTION}"
    return text, {"kind": "humaneval", "prompt": row["prompt"], "test": row["test"], "entry_point": entry}


@functools.lru_cache(maxsize=1024)
def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The HumanEval prompt minus its entry point's stub: the imports and helpers it gives (`poly`, `encode_cyclic`,
    `encode_shift`), which the test runs again in its own scope before `check`. The program (prompt + completion)
    could otherwise redefine a helper the test trusts (`encode_cyclic = lambda s: s` with an identity
    `decode_cyclic` passed HumanEval/38). "" when the stub is not found or the rest does not compile.

    Found by lines, not `ast.parse`: scoring runs in threads, and building Python AST objects in several threads at
    once fails on CPython 3.11 (gh-106905, see `syntax_ok`). The stub is the top-level `def entry_point(` line, the
    decorators right above it and the indented (or blank) lines below it."""
    lines = prompt.splitlines(keepends=True)
    head = re.compile(rf"(async\s+)?def\s+{re.escape(entry_point)}\s*\(")
    first = next((i for i, line in enumerate(lines) if head.match(line)), None)
    if first is None:
        return ""
    last = first + 1
    while last < len(lines) and (not lines[last].strip() or lines[last][:1] in " \t" or
                                 lines[last].lstrip().startswith(")")):
        last += 1
    while first > 0 and lines[first - 1].startswith("@"):
        first -= 1
    kept = "".join(lines[:first] + lines[last:])
    if not kept.strip():
        return ""
    kept += "" if kept.endswith("\n") else "\n"
    try:
        compile(kept, "<prompt>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return ""
    return kept


class CodeEnv(Env):
    """Python programs run in the sandbox; reward = fraction of tests passed."""

    description = "Python programs run in the sandbox; reward = fraction of tests passed"
    timeout_s = 5.0
    score_in_subprocess = False  # the sandbox enforces time and isolation itself

    def __init__(self, dataset=None, seed: int | None = None, sandbox: Sandbox | str | None = None,
                 timeout_s: float = 5.0, memory_mb: int | None = None):
        super().__init__(dataset, seed)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self._sandbox = sandbox if isinstance(sandbox, Sandbox) else None
        self._sandbox_kind = sandbox if isinstance(sandbox, str) else None

    def preflight(self) -> None:
        """The sandbox starts and runs a one-line program: no Docker engine and no fallback, an image built for
        another prorl (`ImageOutdated`), a runner that cannot start are an `EnvNotReady` now, not a run whose code
        samples are all masked as infra_error."""
        try:
            result = self.sandbox.run("print('ok')", timeout_s=self.timeout_s)
        except (RuntimeError, OSError) as exc:
            raise EnvNotReady(f"{self.id}: no working code sandbox: {exc}") from exc
        if result.status != "ok" or result.stdout.strip() != "ok":
            raise EnvNotReady(f"{self.id}: the code sandbox ({type(self.sandbox).__name__}) did not run a one-line "
                              f"program: {result.status} {(result.error or result.stderr)[-500:]!r}")

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = shared_sandbox(self._sandbox_kind)
        return self._sandbox

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_sandbox"] = None  # a live pool does not travel; the receiver uses its own
        return state

    # -- tasks ---------------------------------------------------------------------------------------------
    def task_from_dict(self, row: dict) -> Task:
        if not isinstance(row, dict):
            raise TypeError(f"code task must be a dict, got {type(row).__name__}")
        task_id = str(row.get("task_id", row.get("id", "")))
        if {"prompt", "test"} <= row.keys() and (row.get("entry_point") is not None
                                                 or not _OTHER_FORMATS & row.keys()):
            text, ref = _humaneval(row)
        elif "test_list" in row:
            tests = row["test_list"]
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
                raise ValueError("field 'test_list' must be a non-empty list of assert strings")
            setup = "\n".join(filter(None, [row.get("test_setup_code") or "", *(row.get("test_imports") or [])]))
            statement = _text(row, "text", "prompt", "question")
            text = f"{statement}\nYour code should pass these tests:\n\n" + "\n".join(tests) + f"\n\n{FUNCTION_INSTRUCTION}"
            ref = {"kind": "mbpp", "tests": list(tests), "setup": setup}
        elif "tests" in row or "input_output" in row or "reward_model" in row:
            statement = _text(row, "question", "problem", "prompt", "description", "text")
            if not statement and not isinstance(row.get("prompt"), list):
                raise KeyError("question")
            text = f"{statement}\n\n{STDIO_INSTRUCTION}"
            ref = {"kind": "stdio", "tests": _stdio_tests(row)}
        else:
            raise KeyError("no known code task format: need 'tests'/'input_output' (stdin/stdout), "
                           "'prompt'+'test'+'entry_point' (HumanEval) or 'test_list' (MBPP)")
        prompt = row["prompt"] if isinstance(row.get("prompt"), list) else [{"role": "user", "content": text}]
        return Task(id=task_id, env=self.id, prompt=prompt, reference=ref)

    @staticmethod
    def program_and_tests(code: str, reference: dict[str, Any]) -> tuple[str, list[Test]]:
        kind = reference["kind"]
        if kind == "humaneval":
            program = reference["prompt"] + ("" if reference["prompt"].endswith("\n") else "\n") + code
            helpers = prompt_helpers(reference["prompt"], reference["entry_point"])
            return program, [Test(code=f"{helpers}{reference['test']}\ncheck({reference['entry_point']})\n")]
        if kind == "mbpp":  # the setup may use the solution's classes (tasks 367, 927): it runs before each test
            setup = f"{reference['setup']}\n" if reference["setup"] else ""
            return code, [Test(code=setup + t) for t in reference["tests"]]
        if kind == "stdio":
            return code, [Test(stdin=t["input"], expected=t["output"]) for t in reference["tests"]]
        raise ValueError(f"reference.kind must be humaneval, mbpp or stdio, got {kind!r}")

    # -- scoring -------------------------------------------------------------------------------------------
    def score_batch(self, completions, tasks, workers: int | None = None, timeout_s: float | None = None):
        """Score in parallel; by default one thread per sandbox slot (the sandbox caps concurrency anyway)."""
        return super().score_batch(completions, tasks, workers=workers or self.sandbox.parallelism,
                                   timeout_s=timeout_s)

    def verify(self, answer: str, task: Task) -> Score:
        code, how = extract_code(answer)
        if not code.strip():
            return Score(0.0, "format_error", {"error": "no code", "extraction": how})
        program, tests = self.program_and_tests(code, task.reference)
        error = compile_error(program)
        if error is not None:
            return Score(0.0, "format_error", {"error": error, "extraction": how})
        try:
            sandbox = self.sandbox
        except (RuntimeError, OSError) as exc:  # no engine and no fallback: nothing was said about the model
            return Score(0.0, "infra_error", {"error": f"no sandbox: {exc}", "extraction": how})
        results = sandbox.run_tests(program, tests, total_timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        statuses = [r.status for r in results]
        details: dict[str, Any] = {"extraction": how, "passed": sum(r.passed for r in results),
                                   "total": len(results), "statuses": statuses}
        if "infra_error" in statuses:
            errors = [r.details.get("error", "") for r in results if r.status == "infra_error"]
            return Score(0.0, "infra_error", {**details, "error": errors[0]})
        failed = next((r for r in results if not r.passed), None)
        if failed is not None:
            details["first_failure"] = {"status": failed.status, "exit_code": failed.exit_code,
                                        "stderr": failed.stderr[-500:]}
        if "timeout" in statuses:
            return Score(0.0, "wrong", {**details, "budget_exceeded": True})
        return Score.graded(details["passed"] / len(results), **details)

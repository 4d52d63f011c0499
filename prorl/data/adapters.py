"""Converters from public dataset formats to the task dicts the environments read.

Most public rows go to their environment unchanged (a DeepScaleR row is a math task dict, a reasoning-gym entry a
logic task dict, an IFEval row an ifeval task dict). These adapters check the fields a row must have and convert
the formats an environment does not read as is. Each returns a new dict and raises `FieldError` naming the field
of a bad row; the builder reports it with the row's file:line.
"""

from __future__ import annotations

import json
from typing import Any, Callable

# The instruction Eurus-2-RL appends to every coding question (PRIME's prompt); the recipe's template adds it back.
EURUS_CODE_SUFFIX = "\n\nWrite Python code to solve the problem. Present the code in \n```python\nYour code\n```\nat the end."


class FieldError(ValueError):
    """A row whose field `field` is missing or malformed."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _text(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise FieldError(key, "missing")
    value = row[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise FieldError(key, f"must be a non-empty string, got {value!r:.80}")
    return value


def deepscaler(row: dict) -> dict:
    """DeepScaleR-Preview (`deepscaler.json`): {"problem", "answer", "solution"} -> a math task dict."""
    out = dict(row)
    out["problem"] = _text(row, "problem")
    out["answer"] = _text(row, "answer")  # a handful of public rows have no answer: reported, then skipped
    return out


def _user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    raise FieldError("prompt", "must be a string or chat messages with a user message")


def eurus_code(row: dict) -> dict:
    """Eurus-2-RL code rows (PRIME-RL/Eurus-2-RL-Data, ability == "code") -> a code task dict.

    Public row: {"data_source", "prompt": [system, user], "ability": "code", "reward_model": {"style": "rule",
    "ground_truth": '{"inputs": [...], "outputs": [...]}'}, "extra_info"}. The user message minus PRIME's coding
    instruction becomes `question`; the stdin/stdout pairs become `tests: [{"input", "output"}]`.
    """
    if row.get("ability", "code") != "code":
        raise FieldError("ability", f"is {row.get('ability')!r}, not 'code' (a math row in a code source?)")
    question = _user_text(row.get("prompt")).strip()
    if question.endswith(EURUS_CODE_SUFFIX.strip()):
        question = question[: -len(EURUS_CODE_SUFFIX.strip())].rstrip()
    if not question:
        raise FieldError("prompt", "the user message is empty")
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, dict) or reward_model.get("ground_truth") is None:
        raise FieldError("reward_model.ground_truth", "missing")
    truth = reward_model["ground_truth"]
    if isinstance(truth, str):
        try:
            truth = json.loads(truth)
        except json.JSONDecodeError as exc:
            raise FieldError("reward_model.ground_truth", f"is not valid JSON: {exc}") from None
    if not isinstance(truth, dict):
        raise FieldError("reward_model.ground_truth", "must be a JSON object {\"inputs\": [...], \"outputs\": [...]}")
    if truth.get("fn_name"):
        raise FieldError("reward_model.ground_truth", "call-based tests (fn_name) are not stdin/stdout tests")
    inputs, outputs = truth.get("inputs"), truth.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs or len(inputs) != len(outputs):
        raise FieldError("reward_model.ground_truth", "needs non-empty `inputs` and `outputs` lists of equal length")
    if not all(isinstance(x, str) for x in inputs + outputs):
        raise FieldError("reward_model.ground_truth", "stdin/stdout tests must be strings")
    return {
        "question": question,
        "tests": [{"input": i, "output": o} for i, o in zip(inputs, outputs)],
        "data_source": row.get("data_source"),
    }


def scp116k(row: dict) -> dict:
    """SCP-116K (EricLu/SCP-116K) -> a stem task dict {"question", "answer", "domain"}.

    The public file has {"domain", "problem", "matched_solution", "o1_solution", "qwq_solution",
    "is_o1_solution_same_with_matched_solution", "is_qwq_solution_same_with_matched_solution"}: the reference answer
    is inside the matched solution's prose. The answer used is `extracted_answer` when the row has one (a column
    added by answer extraction), else the last \\boxed{} of the o1, then the QwQ, solution when its flag says it
    agrees with the matched solution. Rows with neither are reported and skipped.
    """
    from prorl.envs.math import last_boxed

    question = _text(row, "problem")
    answer = row.get("extracted_answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        for model in ("o1", "qwq"):
            text = row.get(f"{model}_solution")
            if row.get(f"is_{model}_solution_same_with_matched_solution") is True and isinstance(text, str):
                answer = last_boxed(text)
                if answer:
                    break
    if answer is None or not str(answer).strip():
        raise FieldError("extracted_answer", "missing, and no agreeing o1/QwQ solution with a \\boxed{} answer")
    answer = str(answer)
    out = {"question": question, "problem": question, "answer": answer.strip()}
    for key in ("domain", "options"):
        if row.get(key) is not None:
            out[key] = row[key]
    return out


def ifeval(row: dict) -> dict:
    """IFEval-style rows, in either public layout, -> an ifeval task dict {"prompt", "instruction_id_list", "kwargs"}:

    - the official `input_data.jsonl`: {"key", "prompt", "instruction_id_list", "kwargs"};
    - nvidia/Llama-Nemotron-Post-Training-Dataset `RL/instruction_following/instruction_following.jsonl`:
      {"input": [{"role": "user", "content"}], "args": {"instruction_id_list", "instruction_kwargs", ...},
      "category", "license", "reasoning", "used_in_training", "version", "system_prompt"}.

    Hugging Face copies store kwargs with every instruction's keys (absent ones as null): nulls are dropped so each
    dict has only its own. Errors name the row's own fields (`args.instruction_kwargs` for a Nemotron row)."""
    names = {"prompt": "prompt", "ids": "instruction_id_list", "kwargs": "kwargs"}
    if "prompt" not in row and "args" in row:  # the Llama-Nemotron RL layout
        names = {"prompt": "input", "ids": "args.instruction_id_list", "kwargs": "args.instruction_kwargs"}
        args = row["args"]
        if not isinstance(args, dict):
            raise FieldError("args", "must be an object {\"instruction_id_list\", \"instruction_kwargs\"}")
        try:
            prompt = _user_text(row.get("input"))
        except FieldError:
            raise FieldError("input", "must be chat messages with a user message") from None
        row = {**{k: v for k, v in row.items() if k not in ("input", "args")}, "prompt": prompt,
               "instruction_id_list": args.get("instruction_id_list"), "kwargs": args.get("instruction_kwargs")}
    try:
        prompt = _text(row, "prompt")
    except FieldError as exc:
        raise FieldError(names["prompt"], exc.message) from None
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise FieldError(names["ids"], "must be a non-empty list of instruction ids")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
        raise FieldError(names["kwargs"], f"must be a list of {len(ids)} dicts, one per instruction id")
    kwargs = [{k: v for k, v in kw.items() if v is not None} for kw in kwargs]
    return {**row, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def reasoning_gym(row: dict) -> dict:
    """A reasoning-gym entry {"question", "answer", "metadata": {"source_dataset", ...}} (answer may be null for
    tasks scored by simulation)."""
    _text(row, "question")
    meta = row.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("source_dataset"), str):
        raise FieldError("metadata.source_dataset", "missing: a logic row must name its reasoning-gym task")
    if "answer" not in row:
        raise FieldError("answer", "missing (null is allowed for tasks scored by simulation)")
    return dict(row)


ADAPTERS: dict[str, Callable[[dict], dict]] = {
    "deepscaler": deepscaler,
    "eurus_code": eurus_code,
    "scp116k": scp116k,
    "ifeval": ifeval,
    "reasoning_gym": reasoning_gym,
}


def get_dotted(row: dict, dotted: str) -> Any:
    """row["a"]["b"] for "a.b"; FieldError when a part is missing."""
    node: Any = row
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise FieldError(dotted, "missing")
        node = node[part]
    return node

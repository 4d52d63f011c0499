"""One raw row of a source -> one schema row of the mixture (the schema: see prorl.data.build).

`normalize_row` applies the source's column renames and adapter, lets the source's environment read the row as a
task (`task_from_dict`, checked to return a Task within the env's `timeout_s`), builds the chat prompt (the
environment's own, or the recipe's template and system prompt) and checks that what the trainer and `prorl eval` will
read is well formed: chat messages ending with a user message, and a reference and metadata that survive a JSON round
trip. A bad row raises `FieldError` naming the field; the
builder reports it with the row's file:line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from prorl.data.adapters import ADAPTERS, FieldError, get_dotted
from prorl.data.recipe import SourceConfig
from prorl.data.sources import RawRow
from prorl.envs import Env, Task
from prorl.envs.base import as_task_within, missing_field, task_error

ROLES = ("system", "user", "assistant")
QUESTION_FIELDS = ("question", "problem", "prompt")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass
class Candidate:
    """A valid schema row, with its question text (the de-duplication key), origin and generator task."""

    row: dict[str, Any]
    question: str
    where: str
    stratum: str | None = None


def _fill(template: str, values: dict[str, Any]) -> str:
    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name not in values or values[name] is None:
            raise FieldError(name, f"the template's {{{name}}} has no value in this row")
        return str(values[name])

    return _PLACEHOLDER.sub(sub, template)


def _question_text(data: dict, source: SourceConfig, task: Task) -> str:
    if source.question_field:
        value = get_dotted(data, source.question_field)
        if not isinstance(value, str) or not value.strip():
            raise FieldError(source.question_field, "must be a non-empty string (the question text)")
        return value
    for key in QUESTION_FIELDS:
        if isinstance(data.get(key), str) and data[key].strip():
            return data[key]
    users = [m["content"] for m in task.prompt if isinstance(m, dict) and m.get("role") == "user"]
    if users and isinstance(users[-1], str):
        return users[-1]
    raise FieldError("question", f"no question text: none of {QUESTION_FIELDS} is a string (set question_field)")


def _check_messages(prompt: Any) -> list[dict[str, str]]:
    if not isinstance(prompt, list) or not prompt:
        raise FieldError("prompt", "the environment built no prompt (is the question field empty?)")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise FieldError(f"prompt[{i}]", f"must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}")
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise FieldError("prompt", "must end with a non-empty user message")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _json_safe(value: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise FieldError(name, f"is not JSON-serialisable: {exc}") from None


def normalize_row(raw: RawRow, source: SourceConfig, env: Env) -> Candidate:
    """One raw row -> a schema row (+ its question text). Raises FieldError for a bad row."""
    if raw.data is None:
        raise FieldError(None, raw.error or "unreadable row")
    data = dict(raw.data)
    for new, column in source.columns.items():
        data[new] = get_dotted(raw.data, column)
        if data[new] is None:
            raise FieldError(column, "missing")
    if source.adapter:
        data = ADAPTERS[source.adapter](data)
    try:  # checked to be a Task, and stopped after the env's timeout_s: a hang there would stall the build silently
        task = as_task_within(env, data, env.timeout_s, public=True)
    except KeyError as exc:
        name = missing_field(exc)
        raise FieldError(name, "missing" if name else str(exc.args[0] if exc.args else exc)) from None
    except Exception as exc:  # any other error of the environment's task_from_dict: this row, not the build
        raise FieldError(None, f"{source.env} rejected the row{task_error(exc)}") from None
    question = _question_text(data, source, task)
    prompt = task.prompt
    if source.template:
        prompt = [{"role": "user", "content": _fill(source.template, {**data, "question": question})}]
        prompt = [m for m in task.prompt if m.get("role") == "system"] + prompt
    if source.system_prompt:
        prompt = [{"role": "system", "content": source.system_prompt}] + [m for m in prompt if m.get("role") != "system"]
    if not isinstance(task.reference, dict):
        raise FieldError("reference", f"must be a dict, got {type(task.reference).__name__}")
    metadata = {**(task.metadata or {}), **source.metadata, "source": source.name, "origin": raw.where}
    row = {"id": f"{source.name}/{task.id}" if str(task.id).strip() else "", "env": source.env,
           "source": source.name, "prompt": _check_messages(prompt),
           "reference": _json_safe(task.reference, "reference"), "metadata": _json_safe(metadata, "metadata")}
    return Candidate(row, question, raw.where, raw.stratum)

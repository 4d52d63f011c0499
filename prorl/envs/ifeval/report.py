"""`prorl eval-ifeval`: the four official IFEval figures and a per-instruction table for a response file.

    prorl eval-ifeval input_response_data.jsonl --input-data input_data.jsonl
    prorl eval-ifeval scored_or_sample_lines.jsonl          # lines that carry their own instruction_id_list

A response file is JSONL. Either its lines are `{"prompt", "response"}` (the official format) and `--input-data`
names the official `input_data.jsonl`, whose prompts are paired with responses by exact prompt text; or each line
is a task row (`instruction_id_list`, `kwargs`) with its `response` (or `completion`). Only the text after the last
`</think>` is scored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from prorl.envs.base import split_think
from prorl.envs.ifeval.checker import InstructionError, build_checkers
from prorl.envs.ifeval.env import check_all
from prorl.envs.jsonl import read_jsonl


@dataclass
class PromptResult:
    key: Any
    prompt: str
    instruction_id_list: list[str]
    strict: list[bool]
    loose: list[bool]


@dataclass
class IFEvalReport:
    results: list[PromptResult] = field(default_factory=list)

    def figures(self) -> dict[str, tuple[int, int]]:
        """(followed, total) for prompt-level strict, instruction-level strict, prompt-level loose, instruction-level
        loose, in the official order."""
        out = {}
        for mode in ("strict", "loose"):
            verdicts = [getattr(r, mode) for r in self.results]
            out[f"prompt-level {mode}"] = (sum(all(v) for v in verdicts), len(verdicts))
            out[f"instruction-level {mode}"] = (sum(map(sum, verdicts)), sum(map(len, verdicts)))
        return out

    def per_instruction(self) -> dict[str, dict[str, int]]:
        """For each instruction id and each id family (`keywords`, ...): total, strict and loose counts followed."""
        table: dict[str, dict[str, int]] = defaultdict(lambda: {"total": 0, "strict": 0, "loose": 0})
        for r in self.results:
            for instruction_id, strict, loose in zip(r.instruction_id_list, r.strict, r.loose):
                for name in (instruction_id, instruction_id.split(":")[0]):
                    row = table[name]
                    row["total"] += 1
                    row["strict"] += strict
                    row["loose"] += loose
        return dict(table)


def _response_text(row: dict, where: str) -> str:
    for name in ("response", "completion"):
        if name in row:
            value = row[name]
            if not isinstance(value, str):
                raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
            answer, _ = split_think(value)
            return answer or ""  # an unterminated <think> block answers nothing: every instruction fails
    raise ValueError(f"{where}: no 'response' or 'completion' field (have {sorted(row)})")


def evaluate_rows(tasks: Iterable[tuple[str, dict]], responses: dict[str, str] | None = None) -> IFEvalReport:
    """Score `(where, row)` task rows; the response is looked up by prompt in `responses` when given, else read from
    the row itself. Errors name `where` (file and line)."""
    report = IFEvalReport()
    for where, row in tasks:
        prompt = row.get("prompt")
        if responses is not None:
            if prompt not in responses:
                raise ValueError(f"{where}: no response for the prompt of key {row.get('key')!r}")
            response = responses[prompt]
        else:
            if "instruction_id_list" not in row:  # an official {prompt, response} file given alone
                raise ValueError(f"{where}: no field 'instruction_id_list' to check the response against; pair "
                                 "{prompt, response} lines with the official input_data.jsonl (--input-data)")
            response = _response_text(row, where)
        try:
            checkers = build_checkers(row.get("instruction_id_list"), row.get("kwargs"))
        except InstructionError as exc:
            raise ValueError(f"{where}: {exc}") from None
        report.results.append(PromptResult(
            key=row.get("key", row.get("id")), prompt=prompt, instruction_id_list=list(row["instruction_id_list"]),
            strict=check_all(checkers, response, "strict"), loose=check_all(checkers, response, "loose"),
        ))
    return report


def evaluate_files(responses_path: Path, input_data: Path | None = None) -> IFEvalReport:
    response_rows = list(read_jsonl(responses_path))
    if input_data is None:
        return evaluate_rows((f"{responses_path}:{n}", row) for n, row in response_rows)
    responses = {}
    for number, row in response_rows:
        where = f"{responses_path}:{number}"
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"{where}: no string field 'prompt' to pair the response with {input_data}")
        responses[row["prompt"]] = _response_text(row, where)
    return evaluate_rows(((f"{input_data}:{n}", row) for n, row in read_jsonl(input_data)), responses)


def format_report(report: IFEvalReport) -> str:
    lines = [f"{'figure':<26} {'followed':>11} {'accuracy':>9}"]
    for name, (followed, total) in report.figures().items():
        lines.append(f"{name:<26} {f'{followed}/{total}':>11} {100 * followed / max(total, 1):>8.2f}%")
    table = report.per_instruction()
    width = max([len(k) for k in table] + [14])
    lines += ["", f"{'instruction':<{width}} {'n':>4} {'strict':>7} {'loose':>7}"]
    families = sorted(k for k in table if ":" not in k)
    for family in families:
        for name in [family] + sorted(k for k in table if k.startswith(family + ":")):
            row = table[name]
            label = name if name == family else "  " + name.split(":", 1)[1]
            lines.append(f"{label:<{width}} {row['total']:>4} {100 * row['strict'] / row['total']:>6.1f}% "
                         f"{100 * row['loose'] / row['total']:>6.1f}%")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, name: str = "eval-ifeval") -> None:
    parser.add_argument("responses", type=Path, help="JSONL of responses: {prompt, response} lines (with "
                        "--input-data), or task rows carrying their own instruction_id_list/kwargs and response")
    parser.add_argument("--input-data", type=Path, default=None,
                        help="the official input_data.jsonl; responses are paired with its prompts by exact text")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="write per-prompt verdicts (strict and loose) to this JSONL file")


def run(args: argparse.Namespace, name: str = "eval-ifeval") -> int:
    try:
        if args.output is not None and args.output.is_dir():
            raise ValueError(f"--output {args.output}: a folder; give the path of a JSONL file to write")
        report = evaluate_files(args.responses, args.input_data)
    except (OSError, ValueError) as exc:
        print(f"prorl {name}: {exc}", file=sys.stderr)
        return 2
    if not report.results:
        print(f"prorl {name}: {args.responses} holds no response", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.output is not None:
        try:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            with open(args.output, "w", encoding="utf-8") as f:
                for r in report.results:
                    f.write(json.dumps({"key": r.key, "prompt": r.prompt, "instruction_id_list": r.instruction_id_list,
                                        "follow_instruction_list_strict": r.strict,
                                        "follow_instruction_list_loose": r.loose}) + "\n")
        except OSError as exc:  # the figures are printed above; only the per-prompt file is lost
            print(f"prorl {name}: --output {args.output}: {exc}", file=sys.stderr)
            return 2
    return 0

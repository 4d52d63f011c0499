"""`prorl envs` (the registered environments) and `prorl score` (score a JSONL file of completions).

    prorl score INPUT.jsonl -o OUT.jsonl [--env ID] [--workers N] [--resume]

Each input line is a task dict in its public format plus `"completion"` (and `"env"` unless `--env` is given).
Each output line is the input plus `reward`, `status` and `details` (`details.input_line` is the 1-based input
line number, which `--resume` uses to skip lines already scored). Lines are scored in chunks through the
killable worker pool and appended to OUT as each chunk finishes, so an interrupted run loses at most one chunk.
`--resume` scores again the lines whose result was `timeout` or `infra_error` (not a verdict on the completion):
the new record is appended, then takes the old one's place when the run ends, so OUT holds one record per line.
A malformed line is reported with its line number and skipped; the others still score (exit status 1): among them a
line whose task the environment's `task_from_dict` does not build within the timeout (it runs in this process, not a
worker). An input with no line to score (empty or blank) is an error too (exit status 1), and OUT is not touched; so
is an unknown `--env` (exit status 2). A line that ended `infra_error` (a verifier that raised, a sandbox down, a
scoring worker that died: the scorer failed, not the completion) makes the exit status 1 too: under the table each
env with such lines quotes the first one's error, and a last line counts them and says to rerun with `--resume`. A
`timeout` does not: it is the verdict of the budget chosen (`--timeout`, else the env's own), which a LaTeX bomb meets
again on every run; it is counted in the table, and `--resume` scores it again (with a longer `--timeout`, say).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

from prorl.envs.base import UNSCORED_STATUSES, Env, Task, as_task_within, key_error_message
from prorl.envs.jsonl import is_blank, open_bytes, parse_line, read_jsonl


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "envs":
        parser.add_argument("--filter", default="", help="only ids containing this text")
        return
    parser.add_argument("input", type=Path, help="JSONL: task dict + 'completion' (+ 'env') per line")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSONL with reward, status, details")
    parser.add_argument("--env", default=None, help="environment id for every line (else each line's 'env')")
    parser.add_argument("--workers", type=int, default=None, help="scoring processes (default: CPU count)")
    parser.add_argument("--resume", action="store_true", help="keep OUT and skip the input lines already in it, "
                        "except those whose result was timeout or infra_error: they are scored again (a line that "
                        "ended infra_error makes the exit status 1, as a malformed line does; a timeout does not)")
    parser.add_argument("--timeout", type=float, default=None, help="per-sample timeout in seconds "
                        "of a verifier (default: each environment's own); a sample past it is reported as timeout (a "
                        "line whose task_from_dict runs past it, as a malformed line). "
                        "code keeps its sandbox budget (5 s of the program's CPU time, the paper's: a program past "
                        "it scores 0); another budget "
                        "is make('code', timeout_s=...) in Python")
    parser.add_argument("--chunk-size", type=int, default=256, help="lines scored (and written) per batch")


def run(args: argparse.Namespace, name: str) -> int:
    return list_command(args) if name == "envs" else score_command(args)


def list_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from prorl.envs.registry import list_envs

    envs = {k: v for k, v in list_envs().items() if args.filter in k}
    table = Table(title=f"prorl environments ({len(envs)})")
    table.add_column("id", style="bold cyan", no_wrap=True)
    table.add_column("description")
    for env_id, desc in envs.items():
        table.add_row(env_id, desc)
    Console().print(table)
    return 0


# -- prorl score -----------------------------------------------------------------------------------------------
class BadLine(ValueError):
    """An input line that cannot be scored (the message names the problem)."""


def _previous(path: Path) -> dict[int, tuple[bytes, dict]]:
    """The records of an earlier run's OUT by input line number, as (the line's bytes, the record): a partial or
    corrupt line (a killed run's tail) is left out, and a line scored again (an earlier timeout or infra_error)
    keeps the place of its first record with its last one."""
    records: dict[int, tuple[bytes, dict]] = {}
    for raw in path.read_bytes().split(b"\n"):
        try:
            row = json.loads(raw)
            line = row["details"]["input_line"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(line, int):
            records[line] = (raw, row)  # a key seen before keeps its place in the dict
    return records


def _rewrite(path: Path, records: dict[int, tuple[bytes, dict]]) -> None:
    """OUT rewritten (a temporary file renamed over it) to hold `records`, one per line, byte for byte."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(b"".join(raw + b"\n" for raw, _ in records.values()))
    tmp.replace(path)


def _scan_input(path: Path, previous: dict[int, dict]) -> tuple[set[int], str | None]:
    """One pass over the input: the numbers of its non-blank lines, and why the records of an earlier OUT
    (`previous`) cannot come from it as it is now (a line number it lacks, a line whose completion differs from the
    record's), or None: resuming would otherwise mix the results of two inputs. Only the lines in `previous` are
    decoded."""
    lines: set[int] = set()
    changed = None
    with open_bytes(path) as f:
        for i, raw in enumerate(f, 1):
            if is_blank(raw, i):
                continue
            lines.add(i)
            if i in previous and changed is None:
                try:
                    row = parse_line(raw, i)
                except ValueError:  # malformed: reported when it is scored
                    continue
                if row.get("completion") != previous[i].get("completion"):
                    changed = f"line {i} of {path} has another completion than OUT's record of it"
    if beyond := sorted(set(previous) - lines):
        return lines, f"OUT has a record of line {beyond[0]}, which is not a line of {path}"
    return lines, changed


class LineParser:
    """Turns input lines into (line number, row, env, Task); environments are built once per id."""

    def __init__(self, env_id: str | None, timeout_s: float | None = None):
        self.env_id = env_id
        self.timeout_s = timeout_s  # deadline of task_from_dict (None: each env's own timeout_s)
        self.envs: dict[str, Env] = {}

    def env(self, env_id: str) -> Env:
        from prorl.envs.registry import make

        if env_id not in self.envs:
            try:
                self.envs[env_id] = make(env_id)
            except KeyError as exc:
                raise BadLine(exc.args[0]) from None
            except Exception as exc:
                raise BadLine(f"environment {env_id!r} failed to build: {exc!r}") from None
        return self.envs[env_id]

    def parse(self, row: dict) -> tuple[Env, Task]:
        if not isinstance(row.get("completion"), str):
            raise BadLine("field 'completion' is missing or not a string")
        env_id = self.env_id or row.get("env")
        if not isinstance(env_id, str) or not env_id:
            raise BadLine("field 'env' is missing (or pass --env)")
        env = self.env(env_id)
        try:
            task = as_task_within(env, row, self.timeout_s or env.timeout_s)
        except TimeoutError as exc:  # a hang in the env's task_from_dict: this line, not the whole run
            raise BadLine(f"bad task for {env_id!r}: {exc}") from None
        except KeyError as exc:
            raise BadLine(f"task for {env_id!r}{key_error_message(exc)}") from None
        except (TypeError, ValueError) as exc:
            raise BadLine(f"bad task for {env_id!r}: {exc}") from None
        except Exception as exc:  # any other error of the environment's task_from_dict: this line, not the run
            raise BadLine(f"bad task for {env_id!r}: {exc!r}") from None
        return env, task

    def lines(self, path: Path, wanted: set[int],
              on_error: Callable[[int, str], None]) -> Iterator[tuple[int, dict, Env, Task]]:
        """The parsed lines of `path` whose numbers are in `wanted` (the others are not decoded); malformed ones go
        to `on_error`."""
        for i, row in read_jsonl(path, on_error=on_error, only=wanted):
            try:
                yield (i, row, *self.parse(row))
            except BadLine as exc:
                on_error(i, str(exc))


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Summary:
    """Per-env counts for the closing table (kept as counts, not rows, so big files stay cheap), and per-env counts
    of sandboxed tests by sandbox status (`details.statuses` of `code`: ok, runtime_error, timeout, memory, ...)."""

    def __init__(self):
        self.n: Counter[str] = Counter()
        self.reward: defaultdict[str, float] = defaultdict(float)
        self.status: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.tests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.first_infra_error: dict[str, tuple[int, str]] = {}  # env -> (input line, details.error)

    def add(self, env_id: str, reward: float, status: str, details: dict | None = None, line: int = 0) -> None:
        self.n[env_id] += 1
        if status == "infra_error" and env_id not in self.first_infra_error:
            self.first_infra_error[env_id] = (line, str((details or {}).get("error", "no details.error")))
        self.reward[env_id] += reward
        self.status[env_id][status] += 1
        statuses = (details or {}).get("statuses")
        if isinstance(statuses, list):
            self.tests[env_id].update(map(str, statuses))

    def test_lines(self) -> list[str]:
        """One line per env whose samples ran sandboxed tests, every sandbox status named (0 included)."""
        from prorl.sandbox.base import status_order

        return [f"{env_id} tests by sandbox status: " + ", ".join(f"{s} {counts[s]}" for s in status_order(counts))
                for env_id, counts in sorted(self.tests.items())]

    def infra_error_lines(self) -> list[str]:
        """One line per env with infra errors, quoting the first one's error: a custom env whose verify raises
        scores every line `infra_error`, and the table alone would not say why."""
        return [f"{env_id}: {self.status[env_id]['infra_error']} infra_error(s); the first, input line {line}: "
                f"{error[:300]} (see each line's details in the output)"
                for env_id, (line, error) in sorted(self.first_infra_error.items())]

    def table(self):
        from rich.table import Table

        table = Table(title="prorl score")
        for col in ("env", "n", "mean reward", "% correct", "timeouts", "format errors", "infra errors"):
            table.add_column(col, justify="left" if col == "env" else "right", no_wrap=col == "env")
        for env_id in sorted(self.n):
            n, st = self.n[env_id], self.status[env_id]
            table.add_row(env_id, str(n), f"{self.reward[env_id] / n:.3f}", f"{100 * st['ok'] / n:.1f}",
                          str(st["timeout"]), str(st["format_error"]), str(st["infra_error"]))
        return table


def score_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from prorl.envs.workers import close_pools, score_many

    out_console, err = Console(), Console(stderr=True)
    if not args.input.is_file():
        err.print(f"[red]prorl score: no such input file: {args.input}")
        return 2
    if args.output.exists() and args.output.samefile(args.input):  # opening OUT would truncate the input
        err.print(f"[red]prorl score: the output {args.output} is the input file; choose another -o")
        return 2
    if args.output.is_dir():
        err.print(f"[red]prorl score: the output {args.output} is a folder; -o takes a JSONL file path")
        return 2
    if args.workers is not None and args.workers < 0:
        err.print(f"[red]prorl score: --workers must be >= 0 (0: score in this process), got {args.workers}")
        return 2
    if args.timeout is not None and not args.timeout > 0:
        err.print(f"[red]prorl score: --timeout must be > 0 seconds, got {args.timeout}")
        return 2
    if args.chunk_size < 1:
        err.print(f"[red]prorl score: --chunk-size must be >= 1, got {args.chunk_size}")
        return 2
    parser = LineParser(args.env, args.timeout)
    if args.env:  # a typo or a plugin not installed: one error before OUT is touched, not one per line
        try:
            parser.env(args.env)
        except BadLine as exc:
            err.print(f"[red]prorl score: --env: {exc}", highlight=False, soft_wrap=True)
            return 2
    resuming = args.resume and args.output.is_file()
    records = _previous(args.output) if resuming else {}
    previous = {line: row for line, (_, row) in records.items()}
    lines, why = _scan_input(args.input, previous)
    if not lines:  # a failed export or the wrong path: say so, and leave an earlier OUT as it is
        err.print(f"[red]prorl score: {args.input}: no lines to score (the file is empty or blank)")
        return 1
    if why:
        err.print(f"[red]prorl score: --resume: {why}: OUT was written from another input (or the input changed); "
                  "score into a new OUT, or without --resume to overwrite it")
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if resuming:
        _rewrite(args.output, records)  # one record per line, a killed run's partial tail dropped
    retry = {i for i, row in previous.items() if row.get("status") in UNSCORED_STATUSES}  # not really scored
    done = set(previous) - retry
    summary = Summary()
    for i in done:
        summary.add(args.env or str(previous[i].get("env")), previous[i]["reward"], previous[i]["status"],
                    previous[i].get("details"))
    todo = lines - done
    bad: list[int] = []
    rescored = written = 0

    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err) as progress, args.output.open("a" if args.resume else "w") as out:
        bar = progress.add_task("score", total=len(todo))

        def malformed(i: int, message: str) -> None:
            bad.append(i)
            err.print(f"[red]{args.input}:{i}: {message}")
            progress.advance(bar)

        parsed = parser.lines(args.input, todo, malformed)
        try:
            for chunk in _chunks(parsed, max(1, args.chunk_size)):
                scores = score_many([c[2] for c in chunk], [c[1]["completion"] for c in chunk],
                                    [c[3] for c in chunk], workers=args.workers, timeout_s=args.timeout)
                for (i, row, env, _task), score in zip(chunk, scores):
                    res = {**row, "reward": score.reward, "status": score.status,
                           "details": {**score.details, "input_line": i}}
                    out.write(json.dumps(res, default=str) + "\n")
                    summary.add(env.id, score.reward, score.status, score.details, line=i)
                    rescored += i in retry
                    written += 1
                out.flush()  # a finished chunk is on disk: an interrupted run resumes after it
                progress.advance(bar, len(chunk))
        except KeyboardInterrupt:  # Ctrl-C: what finished is in OUT; say how to go on instead of a traceback
            progress.stop()
            close_pools()  # a worker stuck in a verifier would hold the exit until its timeout
            err.print(f"[yellow]prorl score: interrupted; {written} lines scored in this run are "
                      f"in {args.output}: rerun with --resume to score the rest")
            return 130
    if rescored:  # the new records take the place of the old ones (appended meanwhile: nothing lost if interrupted)
        _rewrite(args.output, _previous(args.output))
    out_console.print(summary.table())
    for line in summary.test_lines():
        out_console.print(line)
    for line in summary.infra_error_lines():
        err.print(line, style="yellow", highlight=False, soft_wrap=True)
    infra_errors = sum(counts["infra_error"] for counts in summary.status.values())
    if done:
        out_console.print(f"resumed: {len(done)} lines were already in {args.output}")
    if rescored:
        out_console.print(f"re-scored: {rescored} lines whose earlier result was {' or '.join(UNSCORED_STATUSES)}")
    if infra_errors:  # the scorer failed on them (not a verdict on the completion): not a clean run
        err.print(f"[red]{infra_errors} line(s) ended infra_error, with no verdict on their completion: fix the cause "
                  f"above, then rerun with --resume to score them again", highlight=False, soft_wrap=True)
    if bad:
        err.print(f"[red]{len(bad)} malformed line(s) skipped: {', '.join(map(str, bad[:20]))}"
                  + (" ..." if len(bad) > 20 else ""))
    return 1 if bad or infra_errors else 0

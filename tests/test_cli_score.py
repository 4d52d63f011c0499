"""`prorl envs` and `prorl score`: output rows, per-env summary, malformed lines named by number while the
others score, incremental output and --resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prorl.cli import main
from prorl.envs import register

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "datasets" / "samples" / "completions.jsonl"

GOOD = [
    {"env": "math", "problem": "1+1?", "answer": "2", "completion": r"so \boxed{2}"},
    {"env": "math", "problem": "1+2?", "answer": "3", "completion": r"so \boxed{4}"},
    {"env": "stem", "question": "Q?", "options": ["x", "y"], "answer": "A", "completion": "Answer: A"},
    {"env": "math", "problem": "2+2?", "answer": "4", "completion": "4"},
    {"env": "math", "problem": "bomb", "answer": "5", "completion": r"\boxed{10^{10^{10^{10}}}}"},
]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_envs_lists_builtins_and_every_logic_task(capsys):
    from reasoning_gym.factory import DATASETS

    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    for env_id in ["math", "stem", "logic", *(f"logic/{n}" for n in DATASETS)]:
        assert f" {env_id} " in out
    assert main(["envs", "--filter", "logic/sudoku"]) == 0
    assert "logic/sudoku" in capsys.readouterr().out


def test_score_writes_rows_and_a_summary(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", GOOD)
    out = tmp_path / "out" / "scored.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "2", "--timeout", "2"]) == 0
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["ok", "wrong", "ok", "format_error", "timeout"]
    assert [r["reward"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert [r["details"]["input_line"] for r in rows] == [1, 2, 3, 4, 5]
    assert all({k: r[k] for k in g} == g for r, g in zip(rows, GOOD))  # the input, plus the verdict
    summary = capsys.readouterr().out
    assert "prorl score" in summary and "math" in summary and "stem" in summary
    assert "% correct" in summary and "timeouts" in summary and "format errors" in summary


def test_output_that_is_the_input_file_is_refused_and_the_input_kept(tmp_path, capsys, monkeypatch):
    inp = write_lines(tmp_path / "in.jsonl", GOOD[:2])
    before = inp.read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["score", str(inp), "-o", "in.jsonl", "--workers", "0"]) == 2  # used to truncate it and exit 0
    assert "is the input file" in capsys.readouterr().err
    assert inp.read_text() == before


def test_malformed_lines_are_named_and_the_rest_scores(tmp_path, capsys):
    lines = [GOOD[0], "{not json", [1, 2], {"env": "math", "answer": "1"}, {"env": "nope", "completion": "x"},
             {"env": "math", "problem": "p", "completion": r"\boxed{1}"}, {"completion": "x", "answer": "1"},
             "", GOOD[2]]
    inp = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "in.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)" in err
    assert "in.jsonl:3: a row must be a JSON object, got list" in err
    assert "in.jsonl:4: field 'completion'" in err
    assert "in.jsonl:5: unknown environment 'nope'" in err
    assert "in.jsonl:6: task for 'math' is missing field 'answer'" in err
    assert "in.jsonl:7: field 'env' is missing" in err
    assert [r["details"]["input_line"] for r in read_rows(out)] == [1, 9]


def test_a_task_error_that_is_a_sentence_is_not_printed_as_a_field_name(tmp_path, capsys):
    """Before: every KeyError from an env's task_from_dict was printed as a field name, so a row in no known code
    format read `task for 'code' is missing field "no known code task format: ..."` and an ifeval row without its
    instruction list `... is missing field "ifeval task is missing field 'instruction_id_list' (have [...])"`."""
    lines = [{"env": "code", "task_id": 1, "completion": "x"}, {"env": "ifeval", "prompt": "hi", "completion": "x"},
             GOOD[0]]
    inp = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "0"]) == 1
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "in.jsonl:1: task for 'code': no known code task format: need 'tests'" in err
    assert "in.jsonl:2: task for 'ifeval': ifeval task is missing field 'instruction_id_list'" in err
    assert "missing field \"" not in err
    assert [r["details"]["input_line"] for r in read_rows(out)] == [3]


def test_a_task_from_dict_that_raises_anything_is_one_bad_line(tmp_path, capsys):
    """A custom environment whose task_from_dict raises an AttributeError on one line (`row["answer"].strip()` on a
    number). Before: the run stopped with a traceback naming no line, the chunk read so far and the later lines
    unscored."""

    register("test/sloppy", "_envs_for_tests:SloppyEcho", override=True)
    rows = [{"env": "test/sloppy", "q": "say 1", "answer": a, "completion": "1"} for a in ("1", 1, "1", "2")]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "1", "--chunk-size", "2"]) == 1
    err = capsys.readouterr().err
    assert "in.jsonl:2: bad task for 'test/sloppy': AttributeError(" in err
    assert [(r["details"]["input_line"], r["status"]) for r in read_rows(out)] == [(1, "ok"), (3, "ok"), (4, "wrong")]


def test_a_line_that_is_not_utf8_is_one_bad_line(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", GOOD[:3])
    lines = inp.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"{", b'{"note": "caf\xe9", ', 1)  # Latin-1, not UTF-8
    inp.write_bytes(b"".join(lines))
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "0"]) == 1
    assert re.search(r"in\.jsonl:2: not valid UTF-8 \(byte 0xe9 at column \d+\)", capsys.readouterr().err)
    assert [r["details"]["input_line"] for r in read_rows(out)] == [1, 3]


def test_a_byte_order_mark_before_the_first_line_is_not_a_bad_line(tmp_path):
    """Before: a UTF-8 BOM (as Windows editors write it) made line 1 'invalid JSON (Unexpected UTF-8 BOM)'."""
    inp = tmp_path / "bom.jsonl"
    inp.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(x) + "\n" for x in GOOD[:2]).encode())
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "1"]) == 0
    assert [r["status"] for r in read_rows(out)] == ["ok", "wrong"]


def test_an_empty_input_is_an_error_and_keeps_an_earlier_output(tmp_path, capsys):
    """Before: an empty (or blank, or BOM-only) input printed an empty table, exited 0 and truncated OUT."""
    out = tmp_path / "scored.jsonl"
    inp = write_lines(tmp_path / "in.jsonl", GOOD[:2])
    assert main(["score", str(inp), "-o", str(out), "--workers", "0"]) == 0
    kept = out.read_bytes()
    for content in (b"", b"\n \r\n\n", b"\xef\xbb\xbf\r\n"):
        inp.write_bytes(content)
        assert main(["score", str(inp), "-o", str(out), "--workers", "0"]) == 1
        assert "in.jsonl: no lines to score" in capsys.readouterr().err
        assert out.read_bytes() == kept


def test_bad_arguments_are_refused_before_the_output_is_touched(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", GOOD[:1])
    out = write_lines(tmp_path / "out.jsonl", ["kept"])
    for extra, message in ((["--workers", "-1"], "--workers must be >= 0"),
                           (["--chunk-size", "0"], "--chunk-size must be >= 1"),
                           (["--timeout", "-1"], "--timeout must be > 0 seconds")):  # was: every line a timeout
        assert main(["score", str(inp), "-o", str(out), *extra]) == 2
        assert message in capsys.readouterr().err
    assert out.read_text() == "kept\n"
    assert main(["score", str(inp), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_env_flag_overrides_each_line(tmp_path):
    inp = write_lines(tmp_path / "in.jsonl", [{"answer": "7", "completion": r"\boxed{7}"}])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--env", "math", "--workers", "2"]) == 0
    assert read_rows(out)[0]["status"] == "ok"


def test_resume_skips_scored_lines_and_repairs_a_partial_tail(tmp_path, capsys):
    inp = write_lines(tmp_path / "in.jsonl", GOOD[:4])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "2", "--chunk-size", "2"]) == 0
    full = read_rows(out)
    # simulate a run killed after the first two lines, mid-way through writing the third
    kept = out.read_text().splitlines()[:2]
    out.write_text("\n".join(kept) + "\n" + kept[0][:25])
    capsys.readouterr()
    assert main(["score", str(inp), "-o", str(out), "--workers", "2", "--resume"]) == 0
    rows = read_rows(out)
    assert sorted(r["details"]["input_line"] for r in rows) == [1, 2, 3, 4]
    assert rows == full
    assert "resumed: 2 lines" in capsys.readouterr().out
    # resuming a finished file scores nothing new
    assert main(["score", str(inp), "-o", str(out), "--workers", "2", "--resume"]) == 0
    assert read_rows(out) == full


def test_resume_scores_timeouts_and_infra_errors_again_in_place(tmp_path, capsys):
    """Before: --resume skipped every line already in OUT, so a line that had timed out or met an infra error (no
    verdict on the completion) stayed unscored for good."""
    inp = write_lines(tmp_path / "in.jsonl", [GOOD[0], GOOD[4], GOOD[1], GOOD[2]])  # line 2: the LaTeX bomb
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "2", "--timeout", "2"]) == 0
    first = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["status"] for x in first] == ["ok", "timeout", "wrong", "ok"]
    # line 3 met an infra error in that run, as a scoring worker that died twice writes it
    first[2] = (json.dumps({**GOOD[1], "reward": 0.0, "status": "infra_error", "details": {
        "error": "scoring worker died: EOFError()", "input_line": 3}}) + "\n").encode()
    out.write_bytes(b"".join(first))
    capsys.readouterr()
    assert main(["score", str(inp), "-o", str(out), "--workers", "2", "--timeout", "3", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "resumed: 2 lines" in printed and "re-scored: 2 lines whose earlier result was timeout or infra_error" \
        in printed
    again = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["details"]["input_line"] for x in again] == [1, 2, 3, 4]  # one record per line, in place
    assert again[0] == first[0] and again[3] == first[3]  # the scored lines are kept byte for byte
    bomb, wrong = json.loads(again[1]), json.loads(again[2])
    assert (bomb["status"], bomb["details"]["timeout_s"]) == ("timeout", 3.0)  # scored again, with this run's budget
    assert (wrong["status"], wrong["reward"], {k: wrong[k] for k in GOOD[1]}) == ("wrong", 0.0, GOOD[1])
    assert "timeouts" in printed and not (tmp_path / "out.jsonl.tmp").exists()


def test_a_resume_interrupted_while_scoring_again_loses_nothing(tmp_path, capsys):
    """A resume killed after appending a new record for a timed-out line leaves both records in OUT: the next resume
    keeps the new one, in the old one's place, and scores nothing again."""
    inp = write_lines(tmp_path / "in.jsonl", GOOD[:3])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "0"]) == 0
    full = out.read_bytes()
    lines = full.splitlines(keepends=True)
    timed_out = (json.dumps({**GOOD[1], "reward": 0.0, "status": "timeout", "details": {
        "timeout_s": 10.0, "elapsed_s": 10.004, "input_line": 2}}) + "\n").encode()
    out.write_bytes(lines[0] + timed_out + lines[2] + lines[1] + lines[0][:30])  # and a partial tail
    capsys.readouterr()
    assert main(["score", str(inp), "-o", str(out), "--workers", "0", "--resume"]) == 0
    assert out.read_bytes() == full
    printed = capsys.readouterr().out
    assert "resumed: 3 lines" in printed and "re-scored" not in printed


def test_ctrl_c_says_how_to_go_on_and_resume_finishes(tmp_path):
    """Before: Ctrl-C printed a KeyboardInterrupt traceback. Now the lines scored so far stay in OUT, the message says
    how many and to rerun with --resume (exit status 130), and the resume scores the rest, each line once."""
    # line 3's verifier sleeps 60 s (a test environment, so that the interrupt always finds it scoring: math-verify's
    # LaTeX bomb of GOOD[4] was once scored at once in CI, and the run ended before the Ctrl-C)
    stuck = {"env": "test/echo", "q": "say 5", "answer": "5", "completion": "SLEEP"}
    inp = write_lines(tmp_path / "in.jsonl", [GOOD[0], GOOD[1], stuck, GOOD[2], GOOD[3]])
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), COLUMNS="200")
    register_then_main = ("import sys, prorl; prorl.register('test/echo', '_envs_for_tests:EchoEnv', override=True); "
                          "from prorl.cli import main; sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", register_then_main,
                             "score", str(inp), "-o", str(out), "--workers", "1", "--chunk-size", "1",
                             "--timeout", "20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.1)  # lines 1-2 are scored; the worker is now stuck in the bomb of line 3
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted; 2 lines scored in this run" in stderr and "rerun with --resume" in stderr
    assert [r["details"]["input_line"] for r in read_rows(out)] == [1, 2]
    register("test/echo", "_envs_for_tests:EchoEnv", override=True)
    assert main(["score", str(inp), "-o", str(out), "--workers", "1", "--timeout", "2", "--resume"]) == 0
    rows = read_rows(out)
    assert [r["details"]["input_line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["status"] for r in rows] == ["ok", "wrong", "timeout", "ok", "format_error"]


def test_resume_against_an_output_of_another_input_is_refused(tmp_path, capsys):
    """Before: --resume trusted OUT's line numbers, so resuming with another input (or an edited one) kept results
    of completions that are not in it and scored only the lines beyond them: a silent mix of two files."""
    out = tmp_path / "out.jsonl"
    assert main(["score", str(write_lines(tmp_path / "a.jsonl", GOOD[:3])), "-o", str(out), "--workers", "0"]) == 0
    before = out.read_bytes()
    edited = write_lines(tmp_path / "b.jsonl", [GOOD[0], {**GOOD[1], "completion": r"so \boxed{3}"}, GOOD[2], GOOD[3]])
    shorter = write_lines(tmp_path / "c.jsonl", GOOD[:2])
    capsys.readouterr()
    for other, why in ((edited, "line 2 of"), (shorter, "OUT has a record of line 3, which is not a line of")):
        assert main(["score", str(other), "-o", str(out), "--workers", "0", "--resume"]) == 2
        assert why in " ".join(capsys.readouterr().err.split())
        assert out.read_bytes() == before
    longer = write_lines(tmp_path / "d.jsonl", GOOD[:4])  # the same lines and more: a resume
    assert main(["score", str(longer), "-o", str(out), "--workers", "0", "--resume"]) == 0
    assert [r["details"]["input_line"] for r in read_rows(out)] == [1, 2, 3, 4]


def test_resume_reads_the_input_once_before_scoring(tmp_path, monkeypatch):
    """Before the fix --resume read the input three times: counting its lines, checking OUT's records against it,
    then scoring. The check is now made while counting: two reads, as a run without --resume."""
    import prorl.envs.cli as score_cli
    import prorl.envs.jsonl as jsonl

    inp = write_lines(tmp_path / "in.jsonl", GOOD[:4])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(write_lines(tmp_path / "first.jsonl", GOOD[:2])), "-o", str(out), "--workers", "0"]) == 0
    opened = []
    for module in (score_cli, jsonl):
        real = module.open_bytes
        monkeypatch.setattr(module, "open_bytes", lambda path, real=real: opened.append(Path(path)) or real(path))
    assert main(["score", str(inp), "-o", str(out), "--workers", "0", "--resume"]) == 0
    assert opened.count(inp) == 2
    assert [r["details"]["input_line"] for r in read_rows(out)] == [1, 2, 3, 4]
    # a partial record alone in OUT (a run killed while writing its first line) is still dropped, not appended to
    out.write_text(out.read_text().splitlines()[0][:30])
    assert main(["score", str(inp), "-o", str(out), "--workers", "0", "--resume"]) == 0
    assert [r["details"]["input_line"] for r in read_rows(out)] == [1, 2, 3, 4]


def test_sample_completions_score_cleanly(tmp_path):
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(SAMPLES), "-o", str(out), "--workers", "2"]) == 0
    rows = read_rows(out)
    envs = {r["env"].split("/")[0] for r in rows}
    assert {"math", "stem", "logic"} <= envs
    assert {"ok", "wrong", "format_error"} <= {r["status"] for r in rows}
    assert not any(r["status"] in ("timeout", "infra_error") for r in rows)


def test_a_logic_line_naming_an_unknown_task_is_a_malformed_line(tmp_path, capsys):
    """Before the fix the line scored `infra_error` (reasoning-gym's KeyError in the scorer), an outage's status for
    a typo in the input."""
    entry = {"env": "logic", "question": "2 + 3?", "answer": "5", "completion": "<answer>5</answer>"}
    inp = write_lines(tmp_path / "in.jsonl", [{**entry, "metadata": {"source_dataset": "chain_sum"}},
                                              {**entry, "metadata": {"source_dataset": "chain-sum"}}])
    out = tmp_path / "out.jsonl"
    assert main(["score", str(inp), "-o", str(out), "--workers", "0"]) == 1
    assert "in.jsonl:2: bad task for 'logic': " in capsys.readouterr().err
    assert [(r["details"]["input_line"], r["status"]) for r in read_rows(out)] == [(1, "ok")]


def test_code_lines_count_their_tests_by_sandbox_status(tmp_path, capsys):
    """The summary names every sandbox status of the code tests, `memory` included: a memory limit set too low
    shows as many `memory` tests, not as crashes."""
    from test_sandbox import require_engine

    require_engine()
    row = {"env": "code", "question": "Echo n.",
           "tests": [{"input": "1", "output": "1"}, {"input": "2", "output": "2"}]}
    inp = write_lines(tmp_path / "in.jsonl", [
        {**row, "completion": "```python\nprint(input())\n```"},
        {**row, "completion": "```python\nn = input()\nif n == '2':\n    x = bytearray(10**10)\nprint(n)\n```"}])
    assert main(["score", str(inp), "-o", str(tmp_path / "out.jsonl"), "--workers", "0"]) == 0
    assert [r["details"]["statuses"] for r in read_rows(tmp_path / "out.jsonl")] == [["ok", "ok"], ["ok", "memory"]]
    printed = " ".join(capsys.readouterr().out.split())
    assert ("code tests by sandbox status: ok 3, runtime_error 0, timeout 0, memory 1, output_limit 0, "
            "infra_error 0") in printed


def test_an_unknown_env_flag_is_one_error_before_the_output_is_touched(tmp_path, capsys):
    """Before: `--env my/ech0` (a typo, or a user's env registered only in a script) printed the same `unknown
    environment` error once per input line, each line counted as malformed, and OUT was truncated to nothing."""
    inp = write_lines(tmp_path / "in.jsonl", [GOOD[0]] * 3)
    out = write_lines(tmp_path / "out.jsonl", ["earlier"])
    assert main(["score", str(inp), "-o", str(out), "--env", "mathh", "--workers", "0"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("unknown environment") == 1 and "--env: unknown environment 'mathh': did you mean 'math'?" in err
    assert out.read_text() == "earlier\n"


def test_a_verifier_that_raises_is_explained_under_the_table(tmp_path, capsys):
    """A custom env whose verify raises scores every such line `infra_error`. Before: the table counted them and
    nothing said why (the error only in each output line's details), exit status 0, as for a clean run: a pipeline
    `prorl score ... && next` went on with lines that have no verdict. Now exit status 1 and a line to rerun with
    --resume (which scores those lines again: here, once the verifier is fixed, they score and the exit is 0)."""
    register("test/echo-cli", "_envs_for_tests:EchoEnv", override=True)
    rows = [{"env": "test/echo-cli", "q": "say 1", "answer": "1", "completion": c} for c in ("1", "RAISE", "RAISE")]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    for workers in ("0", "2"):
        assert main(["score", str(inp), "-o", str(out), "--workers", workers]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert "test/echo-cli: 2 infra_error(s); the first, input line 2: RuntimeError('verifier bug')" in err
        assert "2 line(s) ended infra_error, with no verdict on their completion: fix the cause above, then rerun " \
               "with --resume to score them again" in err and "malformed" not in err
    register("test/echo-cli", "_envs_for_tests:HalfCreditEcho", override=True)  # a verifier that does not raise
    assert main(["score", str(inp), "-o", str(out), "--workers", "0", "--resume"]) == 0
    assert [r["status"] for r in read_rows(out)] == ["ok", "wrong", "wrong"]


def test_a_task_from_dict_that_hangs_is_one_bad_line_not_a_silent_stall(tmp_path, capsys):
    """Rows are read into Tasks in the parent process, outside the killable workers. Before: a custom env's
    task_from_dict that never returned stalled `prorl score` for ever, with no line number and nothing written."""
    register("test/hang-task", "_envs_for_tests:HangingTaskEcho", override=True)
    rows = [{"env": "test/hang-task", "q": q, "answer": "1", "completion": "1"} for q in ("say 1", "HANG", "say 1")]
    inp = write_lines(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    assert main(["score", str(inp), "-o", str(out), "--workers", "1"]) == 1
    assert time.monotonic() - t0 < 30
    err = " ".join(capsys.readouterr().err.split())
    assert "in.jsonl:2: bad task for 'test/hang-task': HangingTaskEcho.task_from_dict did not return within 1 s" in err
    assert [(r["details"]["input_line"], r["status"]) for r in read_rows(out)] == [(1, "ok"), (3, "ok")]
    assert main(["score", str(inp), "-o", str(out), "--workers", "0", "--timeout", "0.5"]) == 1  # --timeout is its budget
    assert "did not return within 0.5 s" in " ".join(capsys.readouterr().err.split())

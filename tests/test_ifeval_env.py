"""The `ifeval` environment (rewards, modes, think blocks, bad tasks), the eval-ifeval report against the official
figures, and the offline guarantee."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import prorl
from prorl.cli import main as cli_main
from prorl.envs.ifeval import IFEvalEnv, loose_variants

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ifeval"

# The official checker's verdict on each of the 834 instructions of the GPT-4 response file (1 = followed), in the
# order of input_data.jsonl. Produced once, outside this repository, by running the official checker code (the
# verbatim copy of google-research `instructions.py` in lm-eval 0.4.13, its letter check set back to the 2025
# official behaviour) through the official strict and loose functions, with NLTK's `english.pickle` and langdetect
# seeded with 0 (the conditions of OFFICIAL.md); they sum to the official 698 and 714.
OFFICIAL_STRICT = (
    "11001011101011010011110111111101111011111111111110011111010111110111111011111111011111111110111101111111"
    "10111111111111111110111101011111111111111100111111010111111110101110111111111111111110111100011101011111"
    "11101111111111111111111101011110011001100010111110101001111111001011101111111110001111101011011111101111"
    "11011111111001111111111111111011111111101111111111111111011111111111101101010011111111111111111111111111"
    "11111101110011111101101111011111011110111110111111111111101111101111111011011111011111111111111111111011"
    "11100111111111110111111111111111111101111111111111111111111011101111110101111001110111011101111111111011"
    "11110111111110111011101111111101011111110111110111111101011111111111111110011110101111111101110111101101"
    "11101111100111111111111111111011011101101111110111111111111111111111110011111111111011111100111111111111"
    "00"
)
OFFICIAL_LOOSE = (
    "11001011101011110011111111111101111011111111111110011111010111110111111011111111011111111110111111111111"
    "10111111111111111110111101011111111111111100111111010111111110101110111111111111111111111110011101011111"
    "11101111111111111111111101011111011011100010111110101001111111001011101111111110001111111011011111101111"
    "11011111111001111111111111111011111111101111111111111111111111111111101101010011111111111111111111111111"
    "11111101110011111101101111011111111110111110111111111111101111101111111011011111011111111111111111111011"
    "11100111111111110111111111111111111101111111111111111111111011101111110101111001110111011101111111111011"
    "11110111111110111011101111111111111111110111110111111101011111111111111110111111101111111101110111101101"
    "11101111100111111111111111111011011101101111110111111111111111111111110011111111111111111101111111111111"
    "00"
)

ROW = {
    "key": 7, "prompt": "Describe Paris without commas, mentioning the river at least twice.",
    "instruction_id_list": ["punctuation:no_comma", "keywords:frequency"],
    "kwargs": [{}, {"keyword": "river", "frequency": 2, "relation": "at least"}],
}


def test_reward_is_the_fraction_followed():
    env = prorl.make("ifeval")
    both = env.score("Paris sits on a river and the river is the Seine.", ROW)
    assert (both.reward, both.status, both.details["followed"]) == (1.0, "ok", [True, True])
    half = env.score("Paris, on a river.", ROW)
    assert (half.reward, half.status, half.details["followed"]) == (0.0, "wrong", [False, False])
    one = env.score("Paris is on a river.", ROW)
    assert (one.reward, one.status) == (0.5, "wrong")
    assert prorl.make("ifeval", all_or_nothing=True).score("Paris is on a river.", ROW).reward == 0.0


def test_only_the_text_after_the_last_think_is_scored():
    env = prorl.make("ifeval")
    completion = "<think>Commas, commas, river.</think>The river and the river again."
    assert env.score(completion, ROW).reward == 1.0
    unterminated = env.score("<think>still thinking, river river", ROW)
    assert unterminated.status == "format_error" and "think" in unterminated.details["error"]
    assert env.score("   \n", ROW).reward == 0.0  # a blank answer follows nothing, even no_comma


def test_loose_mode_drops_first_and_last_lines_and_stars():
    row = {"prompt": "p", "instruction_id_list": ["startend:quotation"], "kwargs": [{}]}
    response = 'Sure, here it is:\n"All wrapped."'
    assert prorl.make("ifeval").score(response, row).reward == 0.0
    assert prorl.make("ifeval", mode="loose").score(response, row).reward == 1.0
    assert loose_variants("a*\nb\nc*") == ["a*\nb\nc*", "a\nb\nc", "b\nc*", "a*\nb", "b", "b\nc", "a\nb", "b"]
    with pytest.raises(ValueError, match="mode must be one of"):
        IFEvalEnv(mode="lenient")


def test_repeated_instruction_ids_are_all_checked():
    row = {"prompt": "p", "instruction_id_list": ["keywords:frequency", "keywords:frequency"],
           "kwargs": [{"keyword": "war", "frequency": 2, "relation": "at least"},
                      {"keyword": "war", "frequency": 3, "relation": "less than"}]}
    env = prorl.make("ifeval")
    assert env.score("war and war", row).details["followed"] == [True, True]
    assert env.score("war war war", row).details["followed"] == [True, False]


def test_bad_tasks_are_format_errors_never_passes():
    env = prorl.make("ifeval")
    unknown = dict(ROW, instruction_id_list=["punctuation:no_comma", "keywords:made_up"])
    score = env.score("no commas here", unknown)
    assert score.status == "format_error" and score.reward == 0.0
    assert "unknown instruction id 'keywords:made_up'" in score.details["error"]
    missing = dict(ROW, kwargs=[{}, {"keyword": "river"}])
    assert "missing kwargs" in env.score("river", missing).details["error"]
    assert env.score("x", {"prompt": "p"}).status == "format_error"  # no instruction_id_list
    with pytest.raises(ValueError, match="unknown instruction id"):
        env.task_from_dict(unknown)
    # a Task whose reference was edited after conversion is checked again at scoring time
    task = env.task_from_dict(ROW)
    task.reference["instruction_id_list"][1] = "keywords:made_up"
    assert env.score("river river", task).status == "format_error"


def test_task_round_trip_reset_and_workers():
    env = prorl.make("ifeval", dataset=[ROW])
    messages, info = env.reset(seed=0)
    assert messages == [{"role": "user", "content": ROW["prompt"]}] and info["task"].id == "7"
    _, reward, terminated, _, _ = env.step("river river")
    assert reward == 1.0 and terminated
    as_dict = info["task"].to_dict()  # the gym's own task format scores the same
    assert env.score("river, river", as_dict).details["followed"] == [False, True]
    clone = pickle.loads(pickle.dumps(prorl.make("ifeval", mode="loose")))
    assert clone.mode == "loose"
    scores = env.score_batch(["river river", "river, river", "<think>"], [ROW] * 3, workers=2)
    assert [(s.reward, s.status) for s in scores] == [(1.0, "ok"), (0.5, "wrong"), (0.0, "format_error")]


def _official_rows():
    assert DATA.is_dir(), f"peer data missing: {DATA} (CI clones the repo with shared/ beside it)"
    return DATA / "input_data.jsonl", DATA / "input_response_data_gpt4_20231107_145030.jsonl"


def test_eval_ifeval_matches_the_official_figures(tmp_path, capsys):
    """OFFICIAL.md: 417/541, 698/834, 431/541, 714/834 for the GPT-4 responses (official checker, same data)."""
    inputs, responses = _official_rows()
    out = tmp_path / "verdicts.jsonl"
    assert cli_main(["eval-ifeval", str(responses), "--input-data", str(inputs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for line in ("prompt-level strict            417/541    77.08%",
                 "instruction-level strict       698/834    83.69%",
                 "prompt-level loose             431/541    79.67%",
                 "instruction-level loose        714/834    85.61%"):
        assert line in printed
    assert "  nth_paragraph_first_word" in printed
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(verdicts) == 541 and verdicts[0]["key"] == 1000
    for mode, official in (("strict", OFFICIAL_STRICT), ("loose", OFFICIAL_LOOSE)):
        ours = "".join("1" if v else "0" for row in verdicts for v in row[f"follow_instruction_list_{mode}"])
        disagreements = [i for i, (a, b) in enumerate(zip(ours, official)) if a != b]
        assert len(ours) == len(official) == 834 and not disagreements, (mode, disagreements)


def test_think_separator_does_not_change_official_verdicts():
    """R1-style templates put `</think>\n\n` before the answer: the verdicts on the official GPT-4 responses
    must be the official ones with that prefix too (the blank line once broke nth_paragraph_first_word in strict
    mode and the first-line drop of loose mode on 9 and 10 prompts)."""
    inputs, responses = _official_rows()
    by_prompt = {row["prompt"]: row["response"]
                 for row in map(json.loads, responses.read_text().splitlines())}
    rows = [json.loads(line) for line in inputs.read_text().splitlines()]
    for mode, official in (("strict", OFFICIAL_STRICT), ("loose", OFFICIAL_LOOSE)):
        env = prorl.make("ifeval", mode=mode)
        ours = "".join("1" if v else "0" for row in rows
                       for v in env.score("<think>plan</think>\n\n" + by_prompt[row["prompt"]], row)
                       .details["followed"])
        assert ours == official, (mode, [i for i, (a, b) in enumerate(zip(ours, official)) if a != b])


def test_eval_ifeval_on_self_contained_lines_and_bad_input(tmp_path, capsys):
    lines = tmp_path / "lines.jsonl"
    rows = [dict(ROW, completion="<think>, , ,</think>river river", env="ifeval"),
            dict(ROW, key=8, response="river, once")]
    lines.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert cli_main(["eval-ifeval", str(lines)]) == 0
    printed = capsys.readouterr().out
    assert "prompt-level strict                1/2    50.00%" in printed
    assert "instruction-level strict           2/4    50.00%" in printed

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROW) + "\n{not json\n")
    assert cli_main(["eval-ifeval", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    latin1 = json.dumps(dict(ROW, response="caf")).encode()[:-1] + b'\xe9"}\n'  # "café" in Latin-1
    bad.write_bytes(json.dumps(ROW).encode() + b"\n" + latin1)
    assert cli_main(["eval-ifeval", str(bad)]) == 2
    assert f"{bad}:2: not valid UTF-8 (byte 0xe9" in capsys.readouterr().err
    bad.write_text(json.dumps(dict(ROW, response="x", instruction_id_list=["nope:nope"], kwargs=[{}])) + "\n")
    assert cli_main(["eval-ifeval", str(bad)]) == 2
    assert f"{bad}:1: unknown instruction id 'nope:nope'" in capsys.readouterr().err
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps(ROW) + "\n")
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"prompt": "another prompt", "response": "x"}) + "\n")
    assert cli_main(["eval-ifeval", str(responses), "--input-data", str(inputs)]) == 2
    assert f"{inputs}:1: no response for the prompt of key 7" in capsys.readouterr().err


def test_eval_ifeval_reads_a_byte_order_mark_and_refuses_a_folder_as_output(tmp_path, capsys):
    """Before: a UTF-8 BOM made line 1 'not valid JSON' (prorl data build reads such files), and `-o FOLDER` printed
    the figures, then ended in an IsADirectoryError traceback."""
    lines = tmp_path / "bom.jsonl"
    lines.write_bytes(b"\xef\xbb\xbf" + json.dumps(dict(ROW, key=8, response="river, once")).encode() + b"\n")
    assert cli_main(["eval-ifeval", str(lines)]) == 0
    assert "prompt-level strict                0/1     0.00%" in capsys.readouterr().out
    folder = tmp_path / "verdicts"
    folder.mkdir()
    assert cli_main(["eval-ifeval", str(lines), "-o", str(folder)]) == 2
    captured = capsys.readouterr()
    assert f"--output {folder}: a folder" in captured.err and not captured.out and not any(folder.iterdir())


def test_eval_ifeval_on_an_official_response_file_alone_says_to_pass_input_data(capsys):
    _, responses = _official_rows()  # the README's `prorl eval-ifeval RESPONSES.jsonl` on the official file
    assert cli_main(["eval-ifeval", str(responses)]) == 2
    err = capsys.readouterr().err
    assert f"{responses}:1: no field 'instruction_id_list'" in err and "--input-data" in err


def test_no_nltk_data_is_ever_looked_up():
    """Sentence and word tokens work with NLTK's data loading and downloader disabled (fresh interpreter)."""
    code = """
import nltk, nltk.data
def refuse(*args, **kwargs):
    raise AssertionError("nltk data access: %r" % (args,))
nltk.download = nltk.data.find = nltk.data.load = refuse
from prorl.envs.ifeval.text import count_sentences, word_tokens
assert count_sentences("One. Two! Three?") == 3
assert word_tokens("HELLO there.") == ["HELLO", "there", "."]
print("offline ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "offline ok" in done.stdout


def test_prorl_score_handles_ifeval_lines(tmp_path):
    lines = tmp_path / "in.jsonl"
    rows = [dict(ROW, env="ifeval", completion="<think>a, b</think>The river and the river."),
            dict(ROW, env="ifeval", completion="A river, once.")]
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert cli_main(["score", str(lines), "-o", str(out), "--workers", "1"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(s["reward"], s["status"], s["details"]["followed"]) for s in scored] == [
        (1.0, "ok", [True, True]), (0.0, "wrong", [False, False])]


def test_eval_ifeval_into_a_closed_pipe_stops_quietly(tmp_path):
    """`prorl eval-ifeval FILE | head -1`: the reader is gone before the report is printed: no traceback."""
    import os
    import subprocess
    import sys

    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps(dict(ROW, key=8, response="river, once")) + "\n")
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    proc = subprocess.run([sys.executable, "-m", "prorl.cli", "eval-ifeval", str(lines)], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr

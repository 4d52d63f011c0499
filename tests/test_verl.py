"""prorl's gym from verl: `prorl data export --format verl` writes verl's Parquet rows from a built mixture, and
prorl/trainer/verl_reward.py, loaded by its file path as verl loads a custom reward function, scores them. No verl
import: verl's interface is plain Python (verl/trainer/ppo/reward.py:get_custom_reward_fn loads the file;
verl/workers/reward_manager/naive.py calls compute_score(data_source=, solution_str=, ground_truth=, extra_info=),
batch.py calls compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=))."""

import importlib.util
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from _envs_for_tests import EchoEnv  # noqa: F401  (importable by the scoring workers)

from prorl.cli import main as cli_main
from prorl.envs import register
from prorl.sandbox.docker import engine_available

register("test/verl-echo", "_envs_for_tests:EchoEnv", description="test: exact match", override=True)
ROOT = Path(__file__).resolve().parents[1]
VERL_COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def load_like_verl(path: Path, monkeypatch):
    """What verl's get_custom_reward_fn does with custom_reward_function.path: exec the file as `custom_module`."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(__import__("sys").modules, "custom_module", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def verl_reward(monkeypatch):
    return load_like_verl(ROOT / "prorl" / "trainer" / "verl_reward.py", monkeypatch)


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A mixture of math (file), logic (generated, one held out), ifeval (file) and code (file) rows, built by
    `prorl data build` and exported by `prorl data export --format verl`."""
    tmp = tmp_path_factory.mktemp("verl")
    sources = {
        "math": {"env": "math", "path": _jsonl(tmp / "math.jsonl", [
            {"problem": "What is 2 + 2?", "answer": "4"}, {"problem": "What is 3 * 5?", "answer": "15"}]), "size": 2},
        "logic": {"env": "logic", "size": 2, "holdout": 1, "generate": {"tasks": ["chain_sum"], "seed": 1}},
        "ifeval": {"env": "ifeval", "adapter": "ifeval", "size": 1, "path": _jsonl(tmp / "ifeval.jsonl", [
            {"key": 1, "prompt": "Write two sentences about tea. Do not use any commas in your response.",
             "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}])},
        "code": {"env": "code", "size": 1, "path": _jsonl(tmp / "code.jsonl", [
            {"question": "Read two integers from one line of stdin and print their sum.",
             "tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}]}])},
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump({"name": "verl-mix", "seed": 0, "shortfall": "take",
                                                     "sources": sources}))
    assert cli_main(["data", "build", str(tmp / "recipe.yaml"), "-o", str(tmp / "build"), "-q"]) == 0
    assert cli_main(["data", "export", str(tmp / "build"), "-o", str(tmp / "verl"), "--format", "verl"]) == 0
    return tmp / "verl"


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# Per environment: a completion that is right for a row, and one that is wrong.
def right(row) -> str:
    ref = json.loads(row["reward_model"]["ground_truth"])
    env = row["data_source"]
    if env == "math":
        return f"So the answer is \\boxed{{{ref['answer']}}}."
    if env == "logic":
        return f"<answer>{ref['entry']['answer']}</answer>"
    if env == "ifeval":
        return "Tea is a calm drink. It warms the hands and the heart."
    assert env == "code"
    return "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


WRONG = {"math": "So the answer is \\boxed{12345}.", "logic": "<answer>-987654</answer>",
         "ifeval": "Tea, coffee, and milk are drinks.", "code": "```python\nprint(0)\n```"}


def test_export_writes_verl_parquet_rows(exported):
    """Before: `prorl data` had no export subcommand (argparse: invalid choice 'export')."""
    train, heldout = rows_of(exported / "train.parquet"), rows_of(exported / "heldout.parquet")
    assert pq.read_schema(exported / "train.parquet").names == VERL_COLUMNS
    assert sorted(r["data_source"] for r in train) == ["code", "ifeval", "logic", "logic", "math", "math"]
    assert [r["data_source"] for r in heldout] == ["logic"]
    for split, rows in (("train", train), ("heldout", heldout)):
        assert [r["extra_info"]["index"] for r in rows] == list(range(len(rows)))
        for r in rows:
            assert r["ability"] == r["data_source"] and r["reward_model"]["style"] == "rule"
            assert r["prompt"][-1]["role"] == "user" and r["prompt"][-1]["content"]
            assert isinstance(json.loads(r["reward_model"]["ground_truth"]), dict)
            info = r["extra_info"]
            assert info["split"] == split and info["env"] == r["data_source"] and info["id"].startswith(info["source"])
            assert json.loads(info["metadata"])["source"] == info["source"]


def test_compute_score_scores_exported_rows_right_and_wrong(exported, verl_reward):
    rows = [r for r in rows_of(exported / "train.parquet") + rows_of(exported / "heldout.parquet")
            if r["data_source"] != "code"]
    assert {r["data_source"] for r in rows} == {"math", "logic", "ifeval"}
    for r in rows:
        args = dict(data_source=r["data_source"], ground_truth=r["reward_model"]["ground_truth"],
                    extra_info=dict(r["extra_info"], num_turns=None))  # verl's naive manager adds num_turns
        good = verl_reward.compute_score(solution_str=right(r), **args)
        bad = verl_reward.compute_score(solution_str=WRONG[r["data_source"]], **args)
        assert good == {"score": 1.0, "acc": 1.0, "format_error": 0.0, "timeout": 0.0, "infra_error": 0.0}, r
        assert bad["score"] < 1.0 and bad["acc"] == 0.0 and bad.keys() == good.keys(), (r, bad)
    # the batched function (reward_manager=batch) gives the same results; extra_info may be absent there
    sols = [right(r) for r in rows] + [WRONG[r["data_source"]] for r in rows]
    batch = verl_reward.compute_score_batch(
        data_sources=[r["data_source"] for r in rows] * 2, solution_strs=sols,
        ground_truths=[r["reward_model"]["ground_truth"] for r in rows] * 2, extra_infos=[None] * len(sols),
        workers=2)
    assert [b["acc"] for b in batch] == [1.0] * len(rows) + [0.0] * len(rows)


def test_code_rows_score_through_the_docker_sandbox(exported, verl_reward, monkeypatch):
    ok, why = engine_available()
    if not ok:
        pytest.skip(f"no Docker sandbox on this machine: {why} (run `make sandbox` as root)")
    monkeypatch.setenv("PRORL_SANDBOX", "docker")
    row = next(r for r in rows_of(exported / "train.parquet") if r["data_source"] == "code")
    args = dict(data_source="code", ground_truth=row["reward_model"]["ground_truth"], extra_info=row["extra_info"])
    assert verl_reward.compute_score(solution_str=right(row), **args)["score"] == 1.0
    assert verl_reward.compute_score(solution_str=WRONG["code"], **args)["score"] == 0.0


def _echo(verl_reward, solution, **kwargs):
    return verl_reward.compute_score("test/verl-echo", solution, json.dumps({"answer": "3"}), None, **kwargs)


def test_timeouts_and_infra_errors_score_unscored_score_and_are_flagged(verl_reward, caplog):
    """verl has no mask: a killed verifier (timeout) or a failing one (infra_error) gets `unscored_score` (0.0 by
    default) and its own flag, the same keys as every other sample."""
    assert _echo(verl_reward, "3") == {"score": 1.0, "acc": 1.0, "format_error": 0.0, "timeout": 0.0,
                                       "infra_error": 0.0}
    slept = _echo(verl_reward, "SLEEP", timeout_s=1.0)  # the worker is killed after 1 s, not after the 60 s sleep
    assert slept == {"score": 0.0, "acc": 0.0, "format_error": 0.0, "timeout": 1.0, "infra_error": 0.0}
    raised = _echo(verl_reward, "RAISE", unscored_score=0.5)
    assert raised == {"score": 0.5, "acc": 0.0, "format_error": 0.0, "timeout": 0.0, "infra_error": 1.0}
    assert any("RuntimeError('verifier bug')" in r.getMessage() for r in caplog.records)
    assert _echo(verl_reward, "3", no_such_option=1)["score"] == 1.0
    assert any("no_such_option" in r.getMessage() for r in caplog.records)


def test_prompt_opens_think(verl_reward):
    """R1-Distill's chat template opens <think> in the prompt: the completion starts inside the block."""
    assert _echo(verl_reward, "hmm</think>3", prompt_opens_think=True)["acc"] == 1.0
    assert _echo(verl_reward, "still thinking 3", prompt_opens_think=True)["format_error"] == 1.0
    assert _echo(verl_reward, "still thinking 3")["format_error"] == 0.0


def test_bad_rows_are_errors_naming_the_row(verl_reward):
    with pytest.raises(KeyError, match="row 'm/1'.*no-such-env"):
        verl_reward.compute_score("no-such-env", "x", "{}", {"id": "m/1"})
    with pytest.raises(ValueError, match=r"openai/gsm8k.*ground_truth must be the JSON text"):
        verl_reward.compute_score("openai/gsm8k", "x", "42", {"env": "math"})


def test_export_of_a_missing_build_names_it(tmp_path, capsys):
    assert cli_main(["data", "export", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'nope'}: no such build folder or file" in capsys.readouterr().err.replace("\n", "")


def test_the_reward_file_loads_without_trl_or_torch(tmp_path):
    """verl's environment need not hold TRL (nor pay for importing torch here): the file imports prorl.envs only."""
    import subprocess
    import sys

    path = str(ROOT / "prorl" / "trainer" / "verl_reward.py")
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('custom_module', {path!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['custom_module'] = m; spec.loader.exec_module(m)\n"
            "print(sorted({k.split('.')[0] for k in sys.modules} & {'trl', 'torch', 'transformers'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

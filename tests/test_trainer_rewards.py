"""EnvReward: routing by the `env` column, the three row schemas, masking of timeouts and infrastructure errors."""

import json

from _envs_for_tests import EchoEnv  # noqa: F401  (importable by the scoring workers)

from prorl.envs import register
from prorl.trainer import EnvReward
from prorl.trainer.rewards import completion_text, row_task

register("test/trainer-echo", "_envs_for_tests:EchoEnv", description="test: exact match", override=True)


def _task(answer):
    return {"id": "t", "env": "test/trainer-echo", "prompt": [{"role": "user", "content": "q"}],
            "reference": {"answer": answer}, "metadata": {}}


def test_row_schemas():
    prompt = [{"role": "user", "content": "say 3"}]
    # 1. a `task` column, as a dict or as JSON
    assert row_task({"env": "x", "task": _task("3")})["reference"] == {"answer": "3"}
    assert row_task({"env": "x", "task": json.dumps(_task("3"))})["reference"] == {"answer": "3"}
    # 2. `prorl data build` rows: reference/metadata as dicts or JSON strings; the prompt comes from the row
    row = row_task({"id": "a", "env": "x", "prompt": prompt, "reference": '{"answer": "3"}', "metadata": "{}"})
    assert row["reference"] == {"answer": "3"} and row["metadata"] == {} and row["prompt"] == prompt
    # 3. an environment's public format (here EchoEnv's {q, answer}), with the prompt TRL passes separately
    assert row_task({"env": "x", "q": "say 3", "answer": "3"}, prompt)["q"] == "say 3"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi" and completion_text("hi") == "hi"


def test_env_reward_masks_timeouts_and_infra_errors(caplog):
    logged, extra = {}, {}
    reward = EnvReward(workers=2, timeout_s=2.0)
    completions = [[{"role": "assistant", "content": c}] for c in ("3", "4", "SLEEP", "RAISE", "<think>x</think>5")]
    rows = {
        "env": ["test/trainer-echo"] * 5,
        "task": [_task("3"), None, None, json.dumps(_task("3")), None],
        "reference": [None, {"answer": "3"}, {"answer": "3"}, None, None],
        "q": [None, None, None, None, "say 5"],
        "answer": [None, None, None, None, "5"],
    }
    prompts = [[{"role": "user", "content": "q"}]] * 5
    out = reward(prompts, completions, log_metric=lambda k, v: logged.setdefault(k, []).append(v),
                 log_extra=extra.__setitem__, trainer_state=None, completion_ids=[[1]] * 5, **rows)
    assert out == [1.0, 0.0, None, None, 1.0]
    assert [s.status for s in reward.last_scores] == ["ok", "wrong", "timeout", "infra_error", "ok"]
    assert extra["status"] == ["ok", "wrong", "timeout", "infra_error", "ok"]
    assert {k: sum(v) / len(v) for k, v in logged.items()} == {
        "reward/test/trainer-echo": 2 / 3, "masked/timeout": 0.2, "masked/infra_error": 0.2}
    # the verifier's error is shown once (before: only counted, so a broken verifier masked a whole run unseen)
    assert [r.getMessage() for r in caplog.records if r.name == "prorl.trainer.rewards"] == [
        "EnvReward: test/trainer-echo could not score a sample (infra_error, masked): RuntimeError('verifier bug')"]
    reward(prompts[3:4], completions[3:4], **{k: v[3:4] for k, v in rows.items()})
    assert len([r for r in caplog.records if r.name == "prorl.trainer.rewards"]) == 1


def test_per_env_metrics_weigh_every_sample_alike_across_processes():
    """TRL averages a `log_metric` metric over all processes' values (sum of values / number of values): a process
    with 1 sample of an env must not weigh as much as one with 3 (logged 0.5 instead of 0.75)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from trl import GRPOTrainer

    reward = EnvReward(workers=0)
    processes = []
    for answers in (["0"], ["3", "3", "3"]):  # process 0: 1 wrong sample; process 1: 3 right ones (and 1 masked)
        proc = SimpleNamespace(_pending_metrics=defaultdict(list))
        comps = answers + (["RAISE"] if len(answers) > 1 else [])
        reward([[{"role": "user", "content": "q"}]] * len(comps), comps, env=["test/trainer-echo"] * len(comps),
               task=[_task("3")] * len(comps), log_metric=lambda k, v, p=proc: GRPOTrainer._log_metric(p, k, v))
        processes.append(proc._pending_metrics)
    # TRL's flush (GRPOTrainer._generate_and_score_completions): gather [sum, count] per process, sum, divide
    aggregated = {name: sum(sum(p.get(name, [])) for p in processes) / sum(len(p.get(name, [])) for p in processes)
                  for name in set().union(*processes)}
    assert aggregated["reward/test/trainer-echo"] == 0.75
    assert aggregated["masked/infra_error"] == 0.2 and aggregated["masked/timeout"] == 0.0


def test_env_reward_names_the_missing_column():
    reward = EnvReward(workers=0)
    try:
        reward([[]], ["x"], task=[_task("3")])
    except KeyError as exc:
        assert "'env' column" in str(exc)
    else:
        raise AssertionError("expected a KeyError")


def test_unknown_or_missing_env_is_named_with_its_row_before_training():
    """A misspelt `env` in one row used to fail only when a batch first sampled that row (step 8 of a 30-row run),
    with no row named; `check_dataset` finds it before training, and a batch names the row too."""
    import pytest
    from datasets import Dataset

    reward = EnvReward(workers=0)
    rows = [{"id": f"r{i}", "env": "test/trainer-echo", "task": json.dumps(_task("3"))} for i in range(4)]
    rows[2]["env"] = "test/trainer-ecoh"
    with pytest.raises(KeyError, match=r"row 2 \(0-based\) \(id 'r2'\): unknown environment 'test/trainer-ecoh'"):
        reward.check_dataset(Dataset.from_list(rows))
    with pytest.raises(KeyError, match=r"row 2 \(0-based\) \(id 'r2'\): unknown environment"):
        reward.check_dataset(rows)
    reward.check_dataset(Dataset.from_list(rows[:2]))  # every env known: no error
    # a row its environment cannot read (no answer) was scored 0 as the model's format error in every batch
    math_rows = [{"id": "m0", "env": "math", "problem": "1+1", "answer": "2"},
                 {"id": "m1", "env": "math", "problem": "2+2"}]
    with pytest.raises(ValueError, match=r"row 1 \(0-based\) \(id 'm1'\) \(math\) is missing field 'answer'"):
        reward.check_dataset(Dataset.from_list(math_rows))
    with pytest.raises(ValueError, match=r"row 0 \(0-based\) \(stem\): field 'answer' 'E' is not one of the options"):
        reward.check_dataset([{"env": "stem", "question": "q", "options": ["a", "b"], "answer": "E"}])
    with pytest.raises(KeyError, match="has no 'env' column"):
        reward.check_dataset(Dataset.from_list([{"id": "x", "task": "{}"}]))
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    with pytest.raises(KeyError, match=r"sample 2 of the batch \(id 'r2'\): unknown environment"):
        reward([[]] * 4, ["3"] * 4, **columns)
    with pytest.raises(KeyError, match=r"sample 0 of the batch names no environment .*None"):
        reward([[]], ["3"], env=[None], task=[_task("3")])


def test_a_task_from_dict_that_raises_anything_is_named_with_its_row_before_training():
    """A custom environment whose task_from_dict raises an AttributeError on one row. Before: `prorl train` ended
    in a traceback from inside the environment naming no row (only KeyError/TypeError/ValueError were named)."""
    import pytest

    register("test/trainer-sloppy", "_envs_for_tests:SloppyEcho", override=True)
    rows = [{"id": f"r{i}", "env": "test/trainer-sloppy", "q": "say 1", "answer": a} for i, a in enumerate(["1", 1])]
    reward = EnvReward(workers=0)
    reward.check_dataset(rows[:1])
    with pytest.raises(ValueError, match=r"row 1 \(0-based\) \(id 'r1'\) \(test/trainer-sloppy\): AttributeError\("):
        reward.check_dataset(rows)


def test_a_prompt_that_opens_think_makes_an_unclosed_completion_answer_nothing():
    """R1-distill templates end the prompt with `<think>\\n`: a completion cut off while reasoning has no `</think>`
    and was scored as an answer (its last \\boxed{} of a passing thought won), unlike the same text with the
    model's own `<think>`, which the gym calls an unterminated block."""
    reward = EnvReward(workers=0)
    cut = "1 + 2 is 3, so maybe \\boxed{3}. Wait, let me check by"
    done = "1 + 2 is 3.\n</think>\n\nThe answer is \\boxed{3}."
    text_prompt = "<|User|>What is 1 + 2?<|Assistant|><think>\n"
    ref = ['{"answer": "3"}'] * 3
    # a plain-text prompt shows the open block
    assert reward([text_prompt] * 3, [cut, done, "<think>" + cut], env=["math"] * 3, reference=ref) == [0.0, 1.0, 0.0]
    assert [s.status for s in reward.last_scores] == ["format_error", "ok", "format_error"]
    # a conversational prompt does not: prompt_opens_think says it; without it the text is scored as it is
    chat = [[{"role": "user", "content": "What is 1 + 2?"}]] * 2
    assistant = [[{"role": "assistant", "content": c}] for c in (cut, done)]
    assert EnvReward(workers=0, prompt_opens_think=True)(chat, assistant, env=["math"] * 2, reference=ref[:2]) == [
        0.0, 1.0]
    assert reward(chat, assistant, env=["math"] * 2, reference=ref[:2]) == [1.0, 1.0]
    # a prompt whose think block is closed (or absent) changes nothing
    closed = "<|User|>What is 1 + 2?<|Assistant|><think>\n</think>\n"
    assert reward([closed] * 2, [cut, done], env=["math"] * 2, reference=ref[:2]) == [1.0, 1.0]


def test_an_env_that_cannot_score_stops_the_run_before_training(tmp_path):
    """Before: a code sandbox that could not run anything (here a LocalSandbox whose runner's Python does not exist;
    in the field an image built for another prorl, or no Docker engine and no fallback) let training start, and
    every code sample of the run was masked as infra_error (one warning in the log). Now `check_dataset` runs each
    environment's `preflight` and the run stops at once, saying what is missing."""
    import pytest

    from prorl.envs import EnvNotReady
    from prorl.sandbox.local import LocalSandbox

    row = {"env": "code", "task_id": 1, "text": "add", "test_list": ["assert add(1, 2) == 3"], "test_setup_code": ""}
    broken = LocalSandbox(workers=1, python=str(tmp_path / "no-python"))
    try:
        with pytest.raises(EnvNotReady, match="code: the code sandbox .LocalSandbox. did not run a one-line program: "
                                              "infra_error .*local runner"):
            EnvReward(env_kwargs={"code": {"sandbox": broken}}).check_dataset([row])
    finally:
        broken.close()
    working = LocalSandbox(workers=1)
    try:  # the same rows with a sandbox that runs programs: checked, nothing raised
        EnvReward(env_kwargs={"code": {"sandbox": working}}).check_dataset([row])
    finally:
        working.close()

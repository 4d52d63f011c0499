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


def test_env_reward_masks_timeouts_and_infra_errors():
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
    out = reward(prompts, completions, log_metric=logged.__setitem__, log_extra=extra.__setitem__,
                 trainer_state=None, completion_ids=[[1]] * 5, **rows)
    assert out == [1.0, 0.0, None, None, 1.0]
    assert [s.status for s in reward.last_scores] == ["ok", "wrong", "timeout", "infra_error", "ok"]
    assert extra["status"] == ["ok", "wrong", "timeout", "infra_error", "ok"]
    assert logged == {"reward/test/trainer-echo": 2 / 3, "masked/timeout": 0.2, "masked/infra_error": 0.2}


def test_env_reward_names_the_missing_column():
    reward = EnvReward(workers=0)
    try:
        reward([[]], ["x"], task=[_task("3")])
    except KeyError as exc:
        assert "'env' column" in str(exc)
    else:
        raise AssertionError("expected a KeyError")

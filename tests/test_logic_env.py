"""reasoning-gym environments: every task registered and self-consistent (its own answer, after a JSON round
trip, scores 1), the weighted mixture, and generator/scorer failures reported with the task's name."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from prorl.envs import list_envs, make
from prorl.envs.logic import LogicMixEnv, LogicTaskEnv, system_prompt, task_names

# Entries with answer=None: reasoning-gym checks/simulates the proposed answer, so there is no gold to replay.
NO_GOLD = {"boxnet", "graph_color", "propositional_logic", "rubiks_cube", "rush_hour"}


def test_every_reasoning_gym_task_is_registered():
    names = task_names()
    assert len(names) == 106
    envs = list_envs()
    assert all(f"logic/{n}" in envs and envs[f"logic/{n}"] for n in names)


def test_the_task_list_is_cached_so_make_math_does_not_import_reasoning_gym(tmp_path):
    """Before: the first make() or spec() of any env imported reasoning_gym whole to list its tasks (2.3 s and ~100
    MB for make("math")). The list is now cached per installed reasoning-gym; a bad or stale file is rebuilt."""
    probe = ("import json, sys, prorl; prorl.make('math'); ids = sorted(prorl.list_envs()); "
             "print(json.dumps(['reasoning_gym' in sys.modules, ids, prorl.list_envs()['logic/chain_sum']]))")
    env = dict(os.environ, PRORL_CACHE_DIR=str(tmp_path), PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def run():
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.splitlines()[-1])

    imported, ids, desc = run()
    assert imported and len([i for i in ids if i.startswith("logic/")]) == len(task_names())
    cache = tmp_path / "reasoning-gym-tasks.json"
    assert run() == [False, ids, desc]  # from the cache: the same ids and descriptions, reasoning_gym not imported
    for bad in ("{not json", json.dumps({**json.loads(cache.read_text()), "stamp": "0.0.1|elsewhere|0"})):
        cache.write_text(bad)
        assert run() == [True, ids, desc]  # rebuilt, and written again
        assert json.loads(cache.read_text())["stamp"] != "0.0.1|elsewhere|0"


def test_every_task_scores_its_own_answer_after_a_json_round_trip():
    failures, no_gold = [], []
    for name in task_names():
        env = make(f"logic/{name}", size=20, seed=1)
        obs, info = env.reset()
        assert obs[0] == {"role": "system", "content": system_prompt()} and obs[1]["role"] == "user"
        entry = json.loads(json.dumps(info["task"].reference["entry"], default=str))  # as read from a file
        if entry["answer"] is None:
            no_gold.append(name)
            score = env.score("<answer>no idea</answer>", entry)
            assert score.status in ("wrong", "ok"), (name, score)
            continue
        score = env.score(f"Reasoning...\n<answer>{entry['answer']}</answer>", entry)
        if score.reward != 1.0:
            failures.append((name, score.status, score.details))
    assert failures == []
    assert set(no_gold) == NO_GOLD


def test_answer_extraction_and_statuses():
    env = make("logic/basic_arithmetic", size=10, seed=0)
    _, info = env.reset(seed=3)
    entry = info["task"].reference["entry"]
    assert env.score(f"<answer>{entry['answer']}</answer>", entry).status == "ok"
    assert env.score(f"<think><answer>0</answer></think><answer>{entry['answer']}</answer>", entry).status == "ok"
    assert env.score(entry["answer"], entry).status == "format_error"  # no <answer> tags
    assert env.score("<answer>not a number</answer>", entry).status == "wrong"


def test_hand_written_rows_with_a_numeric_answer_or_a_bad_metadata_field():
    env = make("logic/chain_sum")
    # a number in a JSON file used to reach reasoning-gym's string scorer: an infra_error (masked) on every sample
    assert env.score("<answer>2</answer>", {"question": "1 + 1 =", "answer": 2}).status == "ok"
    assert env.score("<answer>3</answer>", {"question": "1 + 1 =", "answer": 2}).status == "wrong"
    bad = env.score("<answer>2</answer>", {"question": "1 + 1 =", "answer": "2", "metadata": "chain_sum"})
    assert bad.status == "format_error" and "field 'metadata'" in bad.details["error"]


def test_arc_boards_score_after_a_json_round_trip():
    for name in ("arc_agi", "rearc"):
        env = make(f"logic/{name}", size=5, seed=0)
        entry = json.loads(json.dumps(env.reset()[1]["task"].reference["entry"]))
        assert env.score(f"<answer>{entry['answer']}</answer>", entry).reward == 1.0


def test_composite_has_a_default_and_scores_by_sub_dataset():
    env = make("logic/composite", size=10, seed=0)
    _, info = env.reset()
    entry = info["task"].reference["entry"]
    assert entry["metadata"]["source_dataset"] in ("chain_sum", "basic_arithmetic", "word_sorting")
    assert env.score("<answer>?</answer>", entry).status in ("ok", "wrong")


def test_mixture_weights_seeds_and_dispatch():
    env = make("logic", tasks={"chain_sum": 3, "word_sorting": 1}, size=50, seed=0)
    assert isinstance(env, LogicMixEnv)
    drawn = Counter(env.reset()[1]["task"].metadata["source_dataset"] for _ in range(200))
    assert set(drawn) == {"chain_sum", "word_sorting"} and drawn["chain_sum"] > 2 * drawn["word_sorting"]
    ids_a = [t.id for t in make("logic", tasks=["chain_sum", "leg_counting"], seed=5).sample_tasks(5, seed=2)]
    ids_b = [t.id for t in make("logic", tasks=["chain_sum", "leg_counting"], seed=5).sample_tasks(5, seed=2)]
    assert ids_a == ids_b
    # any reasoning-gym entry scores in the mixture, by its metadata.source_dataset
    entry = make("logic/letter_counting", size=5).reset()[1]["task"].reference["entry"]
    assert env.score(f"<answer>{entry['answer']}</answer>", entry).status == "ok"
    assert "bad task" in env.score("<answer>1</answer>", {"question": "q", "answer": "1"}).details["error"]
    with pytest.raises(ValueError, match="no_such_task"):
        make("logic", tasks=["chain_sum", "no_such_task"])
    with pytest.raises(ValueError, match="positive"):
        make("logic", tasks={"chain_sum": 0})


def test_default_mixture_draws_from_many_tasks():
    env = make("logic", seed=0)
    assert "composite" not in env.weights and len(env.weights) == 105
    tasks = env.sample_tasks(6, seed=1)
    assert len({t.metadata["source_dataset"] for t in tasks}) >= 4
    assert all(t.prompt[0]["content"] == system_prompt() for t in tasks)


def test_scorer_failure_is_an_infra_error_naming_the_task():
    env = make("logic")
    # a real entry whose metadata lacks what the sudoku scorer reads: reasoning-gym raises KeyError
    entry = {"question": "q", "answer": "1", "metadata": {"source_dataset": "sudoku"}}
    s = env.score("<answer>1 2</answer>", entry)
    assert s.status == "infra_error" and s.details["task"] == "sudoku" and "KeyError" in s.details["error"]
    # ... also inside a batch, where the other samples still score
    chain = make("logic/chain_sum", size=5).reset()[1]["task"].reference["entry"]
    scores = env.score_batch(["<answer>1 2</answer>", f"<answer>{chain['answer']}</answer>"], [entry, chain],
                             workers=2)
    assert [s.status for s in scores] == ["infra_error", "ok"]


def test_generator_failure_is_reported_with_the_task_name():
    # reasoning-gym's word_ladder refuses large sizes: a real generator error
    with pytest.raises(RuntimeError, match="word_ladder"):
        LogicTaskEnv("word_ladder", size=10**6).reset()
    mix = make("logic", tasks={"word_ladder": 100, "chain_sum": 1}, size=10**6, seed=0)
    tasks = mix.sample_tasks(3)
    assert {t.metadata["source_dataset"] for t in tasks} == {"chain_sum"}
    obs, info = mix.reset()
    assert info["task"].metadata["source_dataset"] == "chain_sum"
    assert "word_ladder" in mix.generator_failures

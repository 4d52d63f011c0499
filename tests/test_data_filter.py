"""The difficulty filter of `prorl data build`: pass rates estimated with a real (tiny, exactly known) model."""

import json

import pytest

import prorl
from prorl.cli import main as cli_main
from prorl.data import build, load_recipe, load_rows
from prorl.data.filter import DifficultyFilter, parse_keep
from prorl.data.sampling import SamplingConfig

from _envs_for_tests import EchoEnv, HalfCreditEcho, OutageEcho
from test_eval import build_transition_model

prorl.register("test/echo", EchoEnv, override=True)
prorl.register("test/half-credit-echo", HalfCreditEcho, override=True)
prorl.register("test/outage-echo", OutageEcho, override=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter_models")
    return {"seven": build_transition_model(root / "seven", {"<go>": ["7"]}),
            "coin": build_transition_model(root / "coin", {"<go>": ["7", "8"]}),
            "think_coin": build_transition_model(root / "think_coin", {"<go>": ["7", "8"]}, opens_think=True)}


@pytest.fixture
def recipe_path(tmp_path):
    rows = [{"q": f"say q{i}", "answer": "7" if i < 3 else "9"} for i in range(6)]
    (tmp_path / "echo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "f", "shortfall": "take", "sources": {
        "echo": {"env": "test/echo", "path": "echo.jsonl", "size": 6}}}))
    return tmp_path / "r.yaml"


def test_parse_keep():
    assert parse_keep("0.0<p<1.0") == (0.0, 1.0)
    assert parse_keep(" 0.1 < p < 0.9 ") == (0.1, 0.9)
    assert parse_keep("0.2,0.8") == (0.2, 0.8)
    for bad in ("p<1", "0.9<p<0.1", "0<p<2"):
        with pytest.raises(ValueError, match="--keep"):
            parse_keep(bad)


def test_filter_drops_prompts_the_model_always_or_never_solves(models, recipe_path):
    seven = DifficultyFilter(models["seven"], samples=4, sampling=SamplingConfig(temperature=1.0, top_p=1.0), workers=0)
    result = build(load_recipe(recipe_path), difficulty=seven)
    assert result.train == []
    assert dict(result.stats["echo"].dropped) == {"too_easy": 3, "too_hard": 3}
    coin = DifficultyFilter(models["coin"], samples=8, sampling=SamplingConfig(temperature=1.0, top_p=1.0), workers=0)
    result = build(load_recipe(recipe_path), difficulty=coin)
    assert sorted(r["reference"]["answer"] for r in result.train) == ["7", "7", "7"]
    assert all(0.0 < r["metadata"]["pass_rate"] < 1.0 for r in result.train)
    assert dict(result.stats["echo"].dropped) == {"too_hard": 3}
    assert result.options["difficulty"]["samples"] == 8


def test_pass_rate_is_the_solved_fraction_as_the_trainer_scores_it(models, recipe_path):
    """p counts fully right samples: a continuous reward (half credit for every wrong digit) does not keep a
    prompt the model never solves. After a template that opens <think> the coin model's "7" never closes the
    block, so it answers nothing (as in training): every prompt is too hard."""
    sampling = SamplingConfig(temperature=1.0, top_p=1.0)
    half = recipe_path.with_name("half.yaml")
    half.write_text(recipe_path.read_text().replace('"test/echo"', '"test/half-credit-echo"'))
    result = build(load_recipe(half), difficulty=DifficultyFilter(models["seven"], samples=4, sampling=sampling,
                                                                  workers=0))
    assert dict(result.stats["echo"].dropped) == {"too_easy": 3, "too_hard": 3}  # "7" for "9": 0.5, never solved
    result = build(load_recipe(recipe_path),
                   difficulty=DifficultyFilter(models["think_coin"], samples=8, sampling=sampling, workers=0))
    assert result.train == [] and dict(result.stats["echo"].dropped) == {"too_hard": 6}


def test_prompts_without_a_scored_sample_are_dropped_unscored_and_not_cached(models, recipe_path, tmp_path):
    """During an outage (every sample infra_error) no pass rate is known: those prompts leave this build as
    `unscored`, and no 0.0 is cached for them (it kept them dropped as too hard after the outage)."""
    outage = recipe_path.with_name("outage.yaml")
    outage.write_text(recipe_path.read_text().replace('"test/echo"', '"test/outage-echo"'))
    cache = tmp_path / "rates.jsonl"
    result = build(load_recipe(outage), difficulty=DifficultyFilter(
        models["coin"], samples=2, sampling=SamplingConfig(temperature=1.0, top_p=1.0), workers=0, cache=cache))
    assert result.train == [] and dict(result.stats["echo"].dropped) == {"unscored": 6}
    assert not cache.exists() or cache.read_text() == ""


def test_cli_filter_flags(models, recipe_path, tmp_path):
    out = tmp_path / "out"
    code = cli_main(["data", "build", str(recipe_path), "-o", str(out), "--filter-model", models["coin"],
                     "--samples", "8", "--keep", "0.0<p<1.0", "--filter-max-new-tokens", "4"])
    assert code == 0
    card = json.loads((out / "card.json").read_text())
    assert card["dropped"] == {"too_hard": 3} and card["rows"]["train"] == 3
    assert card["options"]["difficulty"]["keep"] == "0.0<p<1.0"
    assert len(load_rows(out)) == 3
    assert cli_main(["data", "build", str(recipe_path), "-o", str(out), "--filter-model", models["coin"],
                     "--keep", "1<p<0"]) == 2


def test_an_interrupted_filter_keeps_its_pass_rates_and_a_rerun_samples_only_the_rest(models, recipe_path, tmp_path):
    cache = tmp_path / "out" / "pass_rates.jsonl"
    sampled = []

    def stop_in_second_chunk(done, total):
        sampled.append(done)
        if done > 2 * 8:  # the first chunk (2 prompts x 8 samples) is estimated: the user presses Ctrl-C
            raise KeyboardInterrupt

    def coin(progress):
        return DifficultyFilter(models["coin"], samples=8, sampling=SamplingConfig(temperature=1.0, top_p=1.0),
                                workers=0, progress=progress, cache=cache, chunk=2)

    with pytest.raises(KeyboardInterrupt):
        build(load_recipe(recipe_path), difficulty=coin(stop_in_second_chunk))
    assert len(cache.read_text().splitlines()) == 2
    sampled.clear()
    result = build(load_recipe(recipe_path), difficulty=coin(lambda done, total: sampled.append(done)))
    assert sampled[0] > 2 * 8 and sampled[-1] == 6 * 8  # progress goes on from the cached prompts
    assert sum(b - a for a, b in zip([2 * 8] + sampled, sampled)) == 4 * 8  # only the 4 others were sampled
    assert len(cache.read_text().splitlines()) == 6
    assert sorted(r["reference"]["answer"] for r in result.train) == ["7", "7", "7"]
    sampled.clear()
    again = build(load_recipe(recipe_path), difficulty=coin(lambda done, total: sampled.append(done)))
    assert sampled == [] and [r["id"] for r in again.train] == [r["id"] for r in result.train]
    assert [r["metadata"]["pass_rate"] for r in again.train] == [r["metadata"]["pass_rate"] for r in result.train]
    other = DifficultyFilter(models["coin"], samples=4, sampling=SamplingConfig(temperature=1.0, top_p=1.0), workers=0,
                             progress=lambda done, total: sampled.append(done), cache=cache)
    build(load_recipe(recipe_path), difficulty=other)  # other settings: nothing reused
    assert sampled[-1] == 6 * 4


def test_cli_filter_model_that_is_not_a_local_model_fails_before_the_build(recipe_path, tmp_path, capsys):
    code = cli_main(["data", "build", str(recipe_path), "-o", str(tmp_path / "out"), "--filter-model",
                     str(tmp_path / "no-model")])
    assert code == 2
    assert f"--filter-model {tmp_path / 'no-model'}: not a local model folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cached_pass_rates_are_not_reused_for_another_model_saved_in_the_same_folder(tmp_path, recipe_path):
    """The cache is keyed by the model, not only its folder's path. Before the fix a model re-trained into the same
    folder (`--filter-model runs/demo/sft` after a new `prorl demo`) reused the old model's pass rates: nothing
    was sampled again and the old model's verdicts filtered the mixture."""
    model_dir = tmp_path / "model"
    build_transition_model(model_dir, {"<go>": ["7"]})
    sampled = []

    def rates(cache):
        sampled.clear()
        difficulty = DifficultyFilter(str(model_dir), samples=4, sampling=SamplingConfig(temperature=1.0, top_p=1.0),
                                      workers=0, progress=lambda done, total: sampled.append(done), cache=cache)
        return build(load_recipe(recipe_path), difficulty=difficulty)

    cache = tmp_path / "pass_rates.jsonl"
    assert rates(cache).train == [] and sampled[-1] == 6 * 4  # always 7: every prompt too easy or too hard
    assert rates(cache).train == [] and sampled == []  # the same model: every rate reused
    build_transition_model(model_dir, {"<go>": ["7", "8"]})  # another model in the same folder
    result = rates(cache)
    assert sampled and sampled[-1] == 6 * 4
    assert {r["reference"]["answer"] for r in result.train} == {"7"}  # the coin's rates, strictly between 0 and 1

"""The difficulty filter of `prorl data build`: pass rates estimated with a real (tiny, exactly known) model."""

import json

import pytest

import prorl
from prorl.cli import main as cli_main
from prorl.data import DataError, build, load_recipe, load_rows
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


def many_rows_recipe(tmp_path, name="many", seed=0, shortfall="take", sources=None):
    """`big`: 40 prompts, every other one answered "7" (the coin model solves it about half the time)."""
    rows = [{"q": f"say q{i}", "answer": "7" if i % 2 == 0 else "9"} for i in range(40)]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = sources or {"big": {"env": "test/echo", "path": "big.jsonl", "size": 4}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"name": name, "seed": seed, "shortfall": shortfall, "sources": sources}))
    return load_recipe(path)


def counting_coin(models, sampled, samples=4, **kw):
    return DifficultyFilter(models["coin"], samples=samples, sampling=SamplingConfig(temperature=1.0, top_p=1.0),
                            workers=0, chunk=4, progress=lambda done, total: sampled.append(done), **kw)


def prompts_sampled(sampled, samples=4):
    """Prompts sampled for one source, from the progress calls (done counts its sequences sampled or cached)."""
    return sum(b - a for a, b in zip([0] + sampled, sampled)) // samples


def test_a_small_target_estimates_a_seeded_part_of_its_pool_not_all_of_it(models, tmp_path):
    """Size 4 of a 40-prompt pool: the filter goes through the pool in the seed's order and stops once 4 rows are
    kept, instead of sampling all 40 prompts. Before the change every prompt was sampled (40 x 4 sequences)."""
    sampled = []
    result = build(many_rows_recipe(tmp_path), tmp_path / "out", difficulty=counting_coin(models, sampled))
    st = result.stats["big"]
    assert len(result.train) == 4 and all(0 < r["metadata"]["pass_rate"] < 1 for r in result.train)
    assert st.candidates == 40 and 4 <= st.estimated <= 20, st.estimated
    assert prompts_sampled(sampled) == st.estimated  # those estimated were sampled, no other
    assert st.estimated == st.available + sum(st.dropped.values())  # ... each one kept or dropped with a reason
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert (card["sources"]["big"]["estimated"], card["sources"]["big"]["candidates"]) == (st.estimated, 40)
    assert f"estimated the pass rates of {st.estimated} of its 40 prompts" in (tmp_path / "out" / "card.md").read_text()

    again = build(many_rows_recipe(tmp_path), difficulty=counting_coin(models, []))  # no cache: sampled again
    assert [r["id"] for r in again.train] == [r["id"] for r in result.train]
    estimated = {i.where for i in result.issues} | {r["metadata"]["origin"] for r in result.train}
    other = build(many_rows_recipe(tmp_path, seed=1), difficulty=counting_coin(models, []))
    assert estimated != {i.where for i in other.issues} | {r["metadata"]["origin"] for r in other.train}
    assert not {f"{tmp_path / 'big.jsonl'}:{n}" for n in range(1, 5)} <= estimated  # not the file's first rows


def test_a_cached_build_estimates_the_same_rows_and_samples_none(models, tmp_path):
    cache = tmp_path / "pass_rates.jsonl"
    result = build(many_rows_recipe(tmp_path), difficulty=counting_coin(models, [], cache=cache))
    sampled = []
    again = build(many_rows_recipe(tmp_path), difficulty=counting_coin(models, sampled, cache=cache))
    assert sampled == [] and [r["id"] for r in again.train] == [r["id"] for r in result.train]
    assert again.stats["big"].estimated == result.stats["big"].estimated == len(cache.read_text().splitlines())


def test_with_shortfall_scale_a_short_source_lowers_what_the_others_estimate(models, tmp_path):
    """`small` keeps 2 of its size 4 (its other 2 prompts are never solved): scale 0.5, so `big` needs 10 rows of its
    size 20, not 20, and is estimated until 10 are kept. Scale and targets are those of a filter over all 40."""
    rows = [{"q": f"say s{i}", "answer": "7" if i < 2 else "9"} for i in range(4)]
    (tmp_path / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sources = {"big": {"env": "test/echo", "path": "big.jsonl", "size": 20},
               "small": {"env": "test/echo", "path": "small.jsonl", "size": 4}}
    recipe = many_rows_recipe(tmp_path, shortfall="scale", sources=sources)
    result = build(recipe, difficulty=counting_coin(models, [], samples=8))
    assert result.scale == 0.5 and {n: s.selected for n, s in result.stats.items()} == {"big": 10, "small": 2}
    assert result.stats["small"].estimated == 4 and result.stats["big"].estimated < 32, result.stats["big"].estimated


def test_a_generated_source_is_estimated_until_each_task_share_is_decided(models, tmp_path):
    """A generated source's rows are drawn evenly across its tasks (mix.pick), so its scan stops only once every
    task has its share kept or has no prompt left: the rows per task drawn from what it kept are those a filter over
    the whole pool gives, for its target and any smaller one (shortfall=scale may lower it). The whole-pool scan
    reuses the lazy one's pass rates (the cache), so both see the same rates."""
    from random import Random

    from prorl.data.mix import _scan, quotas
    from prorl.data.rows import Candidate
    from prorl.data.stats import SourceStats

    solvable = {"a": 10, "b": 2, "c": 5}  # of the 10 prompts of each task
    pool = [Candidate({"id": f"{t}{i}", "env": "test/echo", "source": "g", "metadata": {},
                       "prompt": [{"role": "user", "content": f"say {t}{i}"}],
                       "reference": {"answer": "7" if i < solvable[t] else "9"}}, f"say {t}{i}", f"g#{t}{i}", t)
            for t in solvable for i in range(10)]
    coin = DifficultyFilter(models["coin"], samples=8, sampling=SamplingConfig(temperature=1.0, top_p=1.0),
                            workers=0, chunk=4, cache=tmp_path / "rates.jsonl")
    lazy, whole = SourceStats("g", "test/echo"), SourceStats("g", "test/echo")
    kept, exhausted = _scan(pool, 12, coin, Random(0), [], lazy)
    everything, _ = _scan(pool, 30, coin, Random(0), [], whole)
    assert whole.estimated == 30 and lazy.estimated < 30 and not exhausted, lazy.estimated
    assert {c.row["id"] for c in kept} <= {c.row["id"] for c in everything}

    def per_task(rows):
        return {t: sum(c.stratum == t for c in rows) for t in solvable}

    assert per_task(kept) != per_task(everything)  # fewer kept, but the same shares:
    for target in range(13):
        assert quotas(per_task(kept), target) == quotas(per_task(everything), target), target


def test_shortfall_error_fails_before_sampling_a_pool_already_short_and_after_the_first_short_source(models,
                                                                                                   recipe_path):
    """shortfall=error with the filter: a pool with fewer rows than its size fails before any prompt is sampled (the
    filter only drops rows); one that the filter leaves short fails as soon as its pool is exhausted."""
    sampled = []
    short = recipe_path.with_name("short.yaml")
    short.write_text(recipe_path.read_text().replace('"size": 6', '"size": 7').replace('"take"', '"error"'))
    with pytest.raises(DataError, match=r"too few valid rows \(echo: 6 of 7\), found before the difficulty filter"):
        build(load_recipe(short), difficulty=counting_coin(models, sampled))
    assert sampled == []
    short.write_text(recipe_path.read_text().replace('"take"', '"error"'))
    with pytest.raises(DataError, match=r"too few valid rows \(echo: 3 of 6\) kept by the difficulty filter"):
        build(load_recipe(short), difficulty=counting_coin(models, sampled, samples=8))
    assert prompts_sampled(sampled, 8) == 6


def test_cli_progress_names_each_source_it_estimates(models, tmp_path, capsys):
    """The filter's progress bar counts one source's sequences at a time. Before the fix it was one bar labelled
    `estimating pass rates` that started again from 0 at every source, naming none, and was left short of its total
    (`100/160`: most scans stop before the end of their pool). Now each source has its own labelled bar, marked
    complete when its scan is over."""
    rows = [{"q": f"say q{i}", "answer": "7" if i % 2 == 0 else "9"} for i in range(40)]
    for name in ("one", "two"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({**r, "q": f"{r['q']} {name}"}) + "\n"
                                                        for r in rows))
    (tmp_path / "r.yaml").write_text(json.dumps({"name": "p", "shortfall": "take", "sources": {
        "one": {"env": "test/echo", "path": "one.jsonl", "size": 2},  # estimated second: the larger share of its pool
        "two": {"env": "test/echo", "path": "two.jsonl", "size": 4}}}))
    code = cli_main(["data", "build", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "out"), "--filter-model",
                     models["coin"], "--samples", "4", "--filter-batch-size", "8"])
    out = capsys.readouterr().out
    assert code == 0, out
    bars = [line.split() for line in out.splitlines() if line.startswith("estimating pass rates")]
    assert [b[:7] for b in bars] == [["estimating", "pass", "rates", "of", "two", "(source", "1/2)"],
                                     ["estimating", "pass", "rates", "of", "one", "(source", "2/2)"]], out
    for b in bars:  # each one complete: N/N sequences, the sequences its source's scan sampled
        done, total = b[-2].split("/")
        assert done == total and int(done) > 0 and int(done) % 4 == 0, b


def test_a_failed_filtered_build_keeps_the_previous_build_and_the_pass_rates_for_a_rerun(models, recipe_path,
                                                                                          tmp_path, capsys):
    """A build is written into its folder only once complete; the pass rates the filter estimated stay in the folder
    (appended as they are estimated) whatever happens to the build, and the error says what was kept."""
    flags = ["--filter-model", models["coin"], "--samples", "8", "--filter-max-new-tokens", "4", "-q"]
    out = tmp_path / "out"
    assert cli_main(["data", "build", str(recipe_path), "-o", str(out), *flags]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before["pass_rates.jsonl"].splitlines()) == 6
    capsys.readouterr()
    # the filter keeps 3 of the 6 prompts: shortfall=error fails after the filter (every rate reused from the cache)
    assert cli_main(["data", "build", str(recipe_path), "-o", str(out), "--set", "shortfall=error", *flags]) == 2
    err = capsys.readouterr().err
    assert "too few valid rows (echo: 3 of 6) kept by the difficulty filter" in err
    assert (f"\n{out} still holds the previous build, as it was (its card.md says what it was built from)\nthe pass "
            f"rates estimated so far are kept in {out / 'pass_rates.jsonl'}: a re-run with the same model and "
            f"settings reuses them") in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = tmp_path / "fresh"  # a first build that fails after sampling: only the pass rates are left
    assert cli_main(["data", "build", str(recipe_path), "-o", str(fresh), "--set", "shortfall=error",
                     "--filter-model", models["coin"], "--samples", "4", "--filter-max-new-tokens", "4", "-q"]) == 2
    err = capsys.readouterr().err
    assert "still holds" not in err and f"kept in {fresh / 'pass_rates.jsonl'}" in err, err
    rates = (fresh / "pass_rates.jsonl").read_text()
    assert [p.name for p in fresh.iterdir()] == ["pass_rates.jsonl"] and len(rates.splitlines()) == 6
    assert cli_main(["data", "build", str(recipe_path), "-o", str(fresh), "--filter-model", models["coin"],
                     "--samples", "4", "--filter-max-new-tokens", "4", "-q"]) == 0
    assert (fresh / "pass_rates.jsonl").read_text() == rates  # all reused: nothing sampled, nothing appended
    assert json.loads((fresh / "card.json").read_text())["rows"]["train"] > 0

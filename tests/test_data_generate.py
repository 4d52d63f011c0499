"""Generated sources of `prorl data build` (reasoning-gym tasks, an environment's own generator): held-out entries,
seeds, and how much is generated when shortfall=scale shrinks the mixture."""

import json
from pathlib import Path

import pytest
import yaml

import prorl
from prorl.data import build, load_recipe, load_rows


def recipe_of(tmp_path: Path, **top) -> "prorl.data.Recipe":
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(top))
    return load_recipe(path)


def test_generated_logic_source_holds_out_the_first_entries_of_each_task(tmp_path):
    spec = dict(name="g", seed=3, sources={"logic": {"env": "logic", "size": 30, "generate": {
        "tasks": ["chain_sum", "basic_arithmetic", "word_sorting"], "seed": 5, "holdout_per_task": 4}}})
    result = build(recipe_of(tmp_path, **spec), tmp_path / "out")
    assert len(result.train) == 30 and len(result.heldout) == 12
    assert dict(result.stats["logic"].per_task) == {"chain_sum": 10, "basic_arithmetic": 10, "word_sorting": 10}
    held = {r["id"] for r in result.heldout}
    assert {r["metadata"]["origin"].split("#")[1] for r in result.heldout} == {"h0", "h1", "h2", "h3"}
    assert not held & {r["id"] for r in result.train}
    held_questions = {r["prompt"][-1]["content"] for r in result.heldout}
    assert not held_questions & {r["prompt"][-1]["content"] for r in result.train}
    again = build(recipe_of(tmp_path, **spec))
    assert [r["id"] for r in again.heldout] == [r["id"] for r in result.heldout]
    assert len(load_rows(tmp_path / "out", "heldout")) == 12


def test_env_generator_source_builds_valid_ifeval_tasks(tmp_path):
    """`generate: {generator: env}`: the environment's own generator (ifeval's procedural tasks), seeded, with the
    first entries held out; a task list or an env without a generator is an error naming the field."""
    spec = dict(name="g", seed=3, sources={"if": {"env": "ifeval", "size": 40, "generate": {
        "generator": "env", "seed": 5, "holdout_per_task": 6}}})
    result = build(recipe_of(tmp_path, **spec), tmp_path / "out")
    assert len(result.train) == 40 and len(result.heldout) == 6
    assert len({json.dumps(r["prompt"]) for r in result.train + result.heldout}) == 46  # no prompt twice
    env = prorl.make("ifeval")
    for row in result.train[:10]:
        assert env.score("an answer", row).status in ("ok", "wrong")  # a valid task, scored
    again = build(recipe_of(tmp_path, **spec), tmp_path / "out2")
    assert [r["prompt"] for r in again.heldout] == [r["prompt"] for r in result.heldout]
    bad = dict(spec, sources={"if": {"env": "ifeval", "size": 4, "generate": {"generator": "env", "tasks": ["x"]}}})
    with pytest.raises(prorl.data.RecipeError, match=r"sources.if.generate.tasks"):
        recipe_of(tmp_path, **bad)
    no_gen = dict(spec, sources={"m": {"env": "math", "size": 4, "generate": {"generator": "env"}}})
    with pytest.raises(prorl.data.RecipeError, match="math has no generator"):
        build(recipe_of(tmp_path, **no_gen), tmp_path / "out3")


def test_held_out_rows_do_not_depend_on_the_recipe_size(tmp_path):
    def held(size):
        spec = dict(name="g", sources={"logic": {"env": "logic", "size": size, "generate": {
            "tasks": ["acre", "chain_sum"], "seed": 1, "holdout_per_task": 3}}})
        return [r["prompt"][-1]["content"] for r in build(recipe_of(tmp_path, **spec)).heldout]

    small, large = held(4), held(40)  # acre makes all its entries up front: they depend on its dataset size
    assert len(small) == 6 and small == large


def test_with_shortfall_scale_a_generated_source_is_made_only_for_the_rows_used(tmp_path):
    """Before the fix a generated source was made in full whatever the scale: a file source of 5 rows for a size of
    100 (scale 0.05) still had 210 logic entries generated for the 10 drawn. Now the file sources, read first, bound
    the scale, and the generator makes (with its 5% margin) the bounded share. A build that is not scaled generates
    as before, so it draws the same rows."""
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                                              + "\n" for i in range(5)))
    logic = {"env": "logic", "size": 200, "generate": {"tasks": ["chain_sum", "basic_arithmetic"], "seed": 1,
                                                        "holdout_per_task": 2}}
    logged = []
    scaled = build(recipe_of(tmp_path, name="s", seed=3, sources={
        "math": {"env": "math", "path": "m.jsonl", "size": 100}, "logic": logic}), tmp_path / "out",
        log=lambda msg, transient=False: logged.append(msg))
    st = scaled.stats["logic"]
    assert scaled.scale == 0.05 and {n: s.selected for n, s in scaled.stats.items()} == {"math": 5, "logic": 10}
    assert st.read == 2 * 2 + 2 * 6 and st.needed == 10  # held out + ceil(ceil(10 * 1.05) / 2) per task (was 214)
    assert len(scaled.heldout) == 4  # the held-out entries do not depend on the size
    assert "logic: 10 of 200 rows needed (shortfall=scale: the sources read so far give at most 0.05 of their " \
           "sizes)" in logged
    assert "logic: generated for 10 rows, not its 200" in (tmp_path / "out" / "card.md").read_text()

    def logic_rows(sources):
        result = build(recipe_of(tmp_path, name="s", seed=3, sources=sources))
        assert result.stats["logic"].needed is None
        return sorted((r for r in result.train if r["source"] == "logic"), key=lambda r: r["id"])

    full = logic_rows({"math": {"env": "math", "path": "m.jsonl", "size": 5}, "logic": {**logic, "size": 12}})
    assert len(full) == 12 and full == logic_rows({"logic": {**logic, "size": 12}})


def test_a_scaled_generated_source_that_de_duplication_shrinks_is_made_in_full(tmp_path):
    """The bounded share of a generated source is made with a 5% margin; when its own duplicates eat more than
    that, it would lower the scale of the whole mixture below what the file sources allow. It is then made in full,
    as before the bound, and the mixture keeps the scale the file sources give (and the stats of one build)."""
    from _envs_for_tests import CaseEcho

    prorl.register("test/case-echo", CaseEcho, override=True)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)})
                                              + "\n" for i in range(2)))
    logged = []
    result = build(recipe_of(tmp_path, name="s", seed=3, sources={
        "math": {"env": "math", "path": "m.jsonl", "size": 100},
        "echo": {"env": "test/case-echo", "size": 100, "generate": {"generator": "env", "seed": 1}}}),
        log=lambda msg, transient=False: logged.append(msg))
    assert "echo: 2 of 100 rows needed (shortfall=scale: the sources read so far give at most 0.02 of their " \
           "sizes)" in logged
    assert any(m.startswith("echo: 1 usable rows of the 2 made; making all 100") for m in logged), logged
    assert result.scale == 0.02 and {n: s.selected for n, s in result.stats.items()} == {"math": 2, "echo": 2}
    st = result.stats["echo"]
    assert st.needed is None and st.read == 105  # one build's counts: the 2 rows made first are not counted

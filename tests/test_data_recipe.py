"""Recipe parsing/validation and the public-format adapters (no model, no building)."""

import json

import pytest

from prorl.data.adapters import EURUS_CODE_SUFFIX, FieldError, eurus_code, ifeval, reasoning_gym, scp116k
from prorl.data.build import is_prose, normalize_text
from prorl.data.recipe import RecipeError, apply_overrides, expand_path, load_recipe, parse_recipe
from prorl.data.sources import source_files

MINIMAL = {"name": "r", "sources": {"math": {"env": "math", "path": "m.jsonl", "size": 10}}}


def with_source(**fields):
    return {"name": "r", "sources": {"math": {"env": "math", "path": "m.jsonl", "size": 10, **fields}}}


@pytest.mark.parametrize("raw,message", [
    ({"name": "r"}, "sources: required field is missing"),
    ({**MINIMAL, "sed": 3}, "sed: unknown field (did you mean 'seed'?)"),
    (with_source(sise=3), "sources.math.sise: unknown field (did you mean 'size'?)"),
    (with_source(size=-3), "sources.math.size: must be an integer >= 1, got -3"),
    ({"name": "r", "sources": {"math": {"path": "m.jsonl", "size": 1}}}, "sources.math.env: required field is missing"),
    ({"name": "r", "sources": {"math": {"env": "math", "size": 1}}}, "sources.math: needs `path`"),
    (with_source(adapter="deepscalr"), "sources.math.adapter: unknown adapter 'deepscalr'"),
    ({**MINIMAL, "dedup": "fuzzy"}, "dedup: must be one of ['none', 'exact', 'normalized']"),
    (with_source(generate={"tasks": ["chain_sum"]}), "give either `path` or `generate`"),
    ({"name": "r", "sources": {"l": {"env": "logic", "size": 5, "generate": {"tasks": ["a", "a"]}}}},
     "sources.l.generate.tasks: lists tasks twice: ['a']"),
    ({"name": "r", "sources": {"a": {"env": "math", "path": "a", "weight": 1}}}, "total: required"),
    ({"name": "r", "sources": {"a": {"env": "math", "path": "a", "size": 3}, "b": {"env": "math", "path": "b",
                                                                                    "weight": 1}}},
     "give every source a `size`"),
    # ignored before the fix, silently: `--set total=1000` on a recipe of sizes built all of its rows
    ({**MINIMAL, "total": 1000}, "total: used only when sources are given by `weight`"),
    (with_source(weight=2), "sources.math.weight: used only when sources have no `size`"),
    ({**MINIMAL, "overrides": ["seed=3"]}, "overrides: unknown field"),  # the card's record of --set, not an input
])
def test_invalid_recipes_name_the_file_and_field(raw, message, tmp_path):
    with pytest.raises(RecipeError) as info:
        parse_recipe(raw, tmp_path / "my.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'my.yaml'}: ")
    assert message in str(info.value)


@pytest.mark.parametrize("weight", [".nan", ".inf", "1e400", "-.inf", "two", "'2'"])
def test_a_weight_that_is_not_a_finite_number_is_an_error_naming_the_field(tmp_path, weight):
    """Before the fix YAML's .nan / .inf (and 1e400, read as inf) passed the `weight > 0` check and the build failed
    in Recipe.wanted() with a bare 'cannot convert float NaN to integer', naming neither the file nor the field."""
    path = tmp_path / "my.yaml"
    path.write_text(f"name: r\ntotal: 10\nsources:\n  a: {{env: math, path: a.jsonl, weight: {weight}}}\n"
                    f"  b: {{env: math, path: b.jsonl, weight: 1}}\n")
    with pytest.raises(RecipeError, match=rf"^{path}: sources\.a\.weight: must be a positive number, got "):
        load_recipe(path)


def test_overrides_set_nested_fields_and_drop_sources(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  a: {env: math, path: a.jsonl, size: 5}\n  b: {env: math, path: b.jsonl, size: 5}\n")
    recipe = load_recipe(path, ["sources.a.path=/data/x.json", "sources.b=null", "seed=7", "sources.a.size=9"])
    assert [s.name for s in recipe.sources] == ["a"]
    assert recipe.source("a").path == "/data/x.json" and recipe.source("a").size == 9 and recipe.seed == 7
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_overrides({}, ["seed"])


def test_errors_from_set_overrides_name_the_recipe_file_and_the_set(tmp_path):
    """Before the fix a `--set` that could not apply was reported without the recipe file (`--set 'seed': expected
    KEY=VALUE`), and a bad value given by `--set` was reported as the file's (`r.yaml: sources.a.size: must be an
    integer >= 1, got 'abc'`) while the file says `size: 5`."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  a: {env: math, path: a.jsonl, size: 5}\n")
    for bad, message in [("seed", "--set 'seed': expected KEY=VALUE"),
                         ("seed=[1", "--set 'seed=[1': the value is not valid YAML"),
                         ("sources.a.size.x=1", "--set 'sources.a.size.x=1': 'size' is not a mapping"),
                         ("sources.b.size=1", "--set 'sources.b.size=1': the recipe has no source 'b'")]:
        with pytest.raises(RecipeError) as info:
            load_recipe(path, [bad])
        assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["seed=1", "sources.a.size=abc"])
    assert str(info.value) == (f"{path}: sources.a.size: must be an integer >= 1, got 'abc' (set by --set "
                               f"'sources.a.size=abc')")
    with pytest.raises(RecipeError) as info:  # a source added by --set: the --set that made it
        load_recipe(path, ["sources.b.env=math"])
    assert str(info.value).endswith("sources.b: needs `path` (and/or `sample`) or `generate` (set by --set "
                                    "'sources.b.env=math')")
    recipe = load_recipe(path, ["sources.a.path=elsewhere.jsonl"])
    with pytest.raises(RecipeError) as info:  # checked at build time, named all the same
        source_files(recipe.source("a"), recipe, sample_data=False, root=None)
    assert str(info.value).startswith(f"{path}: sources.a.path (set by --set 'sources.a.path=elsewhere.jsonl'): no "
                                      f"file matches {str(tmp_path / 'elsewhere.jsonl')!r}")
    with pytest.raises(RecipeError) as info:  # the file's own mistake: no --set named
        path.write_text("name: r\nsources:\n  a: {env: math, path: a.jsonl, size: -1}\n")
        load_recipe(path, ["seed=1"])
    assert str(info.value) == f"{path}: sources.a.size: must be an integer >= 1, got -1"


def test_leaving_out_a_source_the_recipe_does_not_have_is_an_error(tmp_path):
    """`--set sources.NAME=null` leaves a source out. Before the fix a misspelt NAME was accepted without a word and
    the source meant to be left out stayed in the mixture."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  gsm8k: {env: math, path: a.jsonl, size: 5}\n"
                    "  mbpp: {env: code, path: b.jsonl, size: 5}\n")
    with pytest.raises(RecipeError, match=rf"^{path}: --set 'sources.gsm8=null': the recipe has no source 'gsm8' "
                                          r"to leave out \(did you mean 'gsm8k'\?\)"):
        load_recipe(path, ["sources.gsm8=null"])
    with pytest.raises(RecipeError, match=r"no source 'x' to leave out; sources: \['gsm8k', 'mbpp'\]"):
        load_recipe(path, ["sources.x="])
    assert [s.name for s in load_recipe(path, ["sources.gsm8k=null", "sources.gsm8k=null"]).sources] == ["mbpp"]


def test_setting_a_field_of_a_source_the_recipe_does_not_have_names_that_source(tmp_path):
    """Before the fix `--set sources.typo.path=X` created a source `typo` and the error was
    `sources.typo.env: required field is missing`, as if the recipe lacked an env, not naming the misspelt source.
    A source given with its env is still added."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  gsm8k: {env: math, path: a.jsonl, size: 5}\n"
                    "  mbpp: {env: code, path: b.jsonl, size: 5}\n")
    with pytest.raises(RecipeError, match=rf"^{path}: --set 'sources.typo.path=X': the recipe has no source 'typo'; "
                                          r"sources: \['gsm8k', 'mbpp'\] \(to add a source, give its env too: --set "
                                          r"sources.typo.env=ENV\)$"):
        load_recipe(path, ["sources.typo.path=X"])
    with pytest.raises(RecipeError, match=rf"^{path}: --set 'sources.gsm8.size=3': the recipe has no source 'gsm8' "
                                          r"\(did you mean 'gsm8k'\?\)"):
        load_recipe(path, ["sources.gsm8.size=3", "sources.gsm8.path=c.jsonl"])
    added = load_recipe(path, ["sources.extra.path=c.jsonl", "sources.extra.env=math", "sources.extra.size=2"])
    assert [s.name for s in added.sources] == ["gsm8k", "mbpp", "extra"] and added.source("extra").size == 2
    assert load_recipe(path, ["sources.extra={env: math, path: c.jsonl, size: 2}"]).source("extra").env == "math"


@pytest.mark.parametrize("text,kind", [("", "NoneType"), ("- a\n- b\n", "list")])
def test_a_recipe_that_is_not_a_mapping_is_named_also_with_overrides(tmp_path, text, kind):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match=rf"r\.yaml: \(top level\): a recipe is a mapping of fields, got {kind}"):
        load_recipe(tmp_path / "r.yaml", ["seed=1"])


def test_a_key_given_twice_anywhere_in_a_recipe_is_an_error_naming_the_file_key_and_lines(tmp_path):
    """Before the fix the last one won without a word: here the second `math` source replaced the first."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  math: {env: math, path: a.jsonl, size: 5}\n"
                    "  code: {env: code, path: c.jsonl, size: 5}\n  math: {env: math, path: b.jsonl, size: 9}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (f"{path}: not valid YAML: key 'math' is given twice in the same mapping, at lines 3 "
                               f"and 5 (rename or remove one)")
    path.write_text("name: r\nsources:\n  math:\n    env: math\n    path: a.jsonl\n    size: 5\n    size: 9\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: not valid YAML: key 'size' is given twice .* lines 6 and 7"):
        load_recipe(path)
    path.write_text("name: r\nsources:\n  math: {env: math, path: a.jsonl, size: 5}\n")
    with pytest.raises(RecipeError, match=r"--set 'sources.math.columns=\{q: a, q: b\}': the value is not valid "
                                          r"YAML: key 'q' is given twice in the same mapping, on line 1"):
        load_recipe(path, ["sources.math.columns={q: a, q: b}"])
    with pytest.raises(RecipeError, match=r"--set 'seed=\[1': the value is not valid YAML"):
        load_recipe(path, ["seed=[1"])  # before: yaml's own ParserError, uncaught by the CLI


def test_merge_keys_still_merge_and_override(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  a: &base {env: math, path: a.jsonl, size: 5}\n"
                    "  b:\n    <<: *base\n    path: b.jsonl\n")
    recipe = load_recipe(path)
    assert [(s.name, s.path, s.size) for s in recipe.sources] == [("a", "a.jsonl", 5), ("b", "b.jsonl", 5)]


def test_paths_expand_variables_and_explain_an_unset_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PRORL_DATA", "/data")
    assert expand_path("${PRORL_DATA}/a.json", tmp_path, "w") == "/data/a.json"
    assert expand_path("samples/a.json", tmp_path, "w") == str(tmp_path / "samples" / "a.json")
    monkeypatch.delenv("PRORL_DATA")
    with pytest.raises(RecipeError, match=r"export PRORL_DATA=DIR .*--sample-data"):
        expand_path("${PRORL_DATA}/a.json", tmp_path, "sources.math.path")


def test_missing_public_file_says_where_to_put_it(tmp_path):
    from prorl.data import build

    (tmp_path / "r.yaml").write_text(json.dumps(MINIMAL))
    with pytest.raises(RecipeError, match=r"sources.math.path: no file matches .*m\.jsonl.*--sample-data"):
        build(load_recipe(tmp_path / "r.yaml"))


def test_normalized_text_folds_case_and_spacing_but_keeps_digits_and_symbols():
    assert normalize_text("What is  1+1 ?") == normalize_text("what is 1 + 1?") == "what is 1+1?"
    assert normalize_text("What is 1+2?") != normalize_text("What is 1+1?")
    assert normalize_text("Decode ❌✅ now") != normalize_text("Decode ✅❌ now")
    assert normalize_text("ＡＢＣ") == "abc"  # NFKC


def test_only_prose_gets_the_loose_key():
    from prorl.data.build import _keys

    grid_a, grid_b = "Count:\n  ###  \n #   #\n", "Count:\n ###   \n#   # \n"
    assert not is_prose(grid_a) and is_prose("What is 1 + 1?")
    assert _keys(grid_a, "normalized") == ["x:" + grid_a.strip()]  # the grids differ: both are kept
    assert _keys(grid_a, "normalized") != _keys(grid_b, "normalized")
    assert len(_keys("What is 1 + 1?", "normalized")) == 2


# -- adapters ----------------------------------------------------------------------------------------------------
def eurus_row(truth, ability="code"):
    user = "Solve the following coding problem using the programming language python:\n\nAdd two numbers."
    return {"data_source": "taco", "ability": ability,
            "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": user + EURUS_CODE_SUFFIX}],
            "reward_model": {"style": "rule", "ground_truth": truth}}


def test_eurus_code_rows_become_stdin_stdout_tests():
    out = eurus_code(eurus_row(json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})))
    assert out["question"].endswith("Add two numbers.") and "Present the code" not in out["question"]
    assert out["tests"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "3 4\n", "output": "7\n"}]


@pytest.mark.parametrize("truth,ability,field", [
    ("{not json", "code", "reward_model.ground_truth"),
    (json.dumps({"fn_name": "f", "inputs": [[1]], "outputs": [1]}), "code", "reward_model.ground_truth"),
    (json.dumps({"inputs": ["1"], "outputs": []}), "code", "reward_model.ground_truth"),
    (json.dumps({"inputs": ["1"], "outputs": ["1"]}), "math", "ability"),
])
def test_eurus_code_rejects_what_the_code_env_cannot_run(truth, ability, field):
    with pytest.raises(FieldError) as info:
        eurus_code(eurus_row(truth, ability))
    assert info.value.field == field


def test_scp116k_answer_from_extracted_column_or_an_agreeing_boxed_solution():
    base = {"domain": "Physics", "problem": "What is g?", "matched_solution": "about 9.8"}
    assert scp116k({**base, "extracted_answer": " 9.8 "})["answer"] == "9.8"
    agreeing = {**base, "o1_solution": "so g = \\boxed{9.8}", "is_o1_solution_same_with_matched_solution": True}
    assert scp116k(agreeing)["answer"] == "9.8"
    disagreeing = {**agreeing, "is_o1_solution_same_with_matched_solution": False,
                   "qwq_solution": "\\boxed{9.81}", "is_qwq_solution_same_with_matched_solution": True}
    assert scp116k(disagreeing)["answer"] == "9.81"
    with pytest.raises(FieldError, match="no agreeing"):
        scp116k({**agreeing, "is_o1_solution_same_with_matched_solution": False})


def test_ifeval_rows_lose_null_kwargs_and_keep_their_own():
    row = {"key": 1, "prompt": "Write.", "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
           "kwargs": [{"num_words": None, "relation": None}, {"num_words": 50, "relation": "less than", "keyword": None}]}
    assert ifeval(row)["kwargs"] == [{}, {"num_words": 50, "relation": "less than"}]
    with pytest.raises(FieldError, match="list of 2 dicts"):
        ifeval({**row, "kwargs": [{}]})


def test_reasoning_gym_rows_must_name_their_task():
    assert reasoning_gym({"question": "q", "answer": None, "metadata": {"source_dataset": "rubiks_cube"}})
    with pytest.raises(FieldError) as info:
        reasoning_gym({"question": "q", "answer": "1", "metadata": {}})
    assert info.value.field == "metadata.source_dataset"


def test_an_unquoted_template_placeholder_gets_a_hint_to_quote_it(tmp_path):
    """`template: {question}` (or `--set sources.a.template={question} ...`) is YAML's flow mapping, not text.
    Before the fix the errors were `must be a non-empty string, got {'question': None}` and `the value is not valid
    YAML: expected '<document start>'`, with no word of quoting."""
    path = tmp_path / "r.yaml"
    path.write_text("name: r\nsources:\n  a: {env: math, path: a.jsonl, size: 5, template: {question}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value) == (f"{path}: sources.a.template: must be a non-empty string, got {{'question': None}} "
                               "(YAML reads an unquoted {question} as a mapping: quote the text, e.g. "
                               "\"{question} ...\")")
    path.write_text("name: r\nsources:\n  a: {env: math, path: a.jsonl, size: 5}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["sources.a.template={question} Box it."])
    assert str(info.value).startswith(f"{path}: --set 'sources.a.template={{question}} Box it.': the value is not "
                                      "valid YAML (for text that starts with {, quote it: --set "
                                      "'sources.a.template=\"...\"'): ")
    assert load_recipe(path, ['sources.a.template="{question} Box it."']).source("a").template == "{question} Box it."

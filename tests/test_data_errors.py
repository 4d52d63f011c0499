"""prorl data build on bad input: a missing file or unknown task fails before any source is read or generated, a
bad line or file is named by file:line, and a build that keeps no row still writes its card and dropped rows."""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from prorl.cli import main as cli_main
from prorl.data import DataError, RecipeError, build, load_recipe, load_rows

GENERATED = {"env": "logic", "size": 4, "generate": {"tasks": ["chain_sum"], "seed": 1}}


def recipe_of(tmp_path: Path, sources: dict, **top):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "shortfall": "take", **top, "sources": sources}))
    return load_recipe(path)


def math_lines(n: int) -> list[bytes]:
    return [json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}).encode() for i in range(n)]


def build_logging(recipe, **kwargs):
    logged = []
    try:
        return build(recipe, log=lambda msg, transient=False: logged.append(msg), **kwargs), logged
    except (RecipeError, DataError) as exc:
        exc.logged = logged
        raise


def test_a_missing_file_in_a_later_source_fails_before_generating_the_earlier_ones(tmp_path):
    recipe = recipe_of(tmp_path, {"logic": GENERATED, "math": {"env": "math", "path": "nope.jsonl", "size": 3}})
    with pytest.raises(RecipeError, match=r"recipe\.yaml: sources\.math\.path: no file matches") as info:
        build_logging(recipe)
    assert not any("generating" in m for m in info.value.logged), info.value.logged


def test_every_missing_file_is_named_in_one_error_and_an_unset_variable_once(tmp_path, monkeypatch):
    """Before the fix the build stopped at the first source without its file: with prorl-mix.yaml and only
    deepscaler.json downloaded, a user learnt of the missing code, stem and ifeval files one build at a time."""
    recipe = recipe_of(tmp_path, {"logic": GENERATED, "math": {"env": "math", "path": "nope.jsonl", "size": 3},
                                  "code": {"env": "code", "path": "${DATA_FOR_TEST}/c.parquet", "size": 3},
                                  "stem": {"env": "stem", "path": "${DATA_FOR_TEST}/s.jsonl", "size": 3}})
    monkeypatch.setenv("DATA_FOR_TEST", str(tmp_path / "data"))
    with pytest.raises(RecipeError) as info:
        build_logging(recipe)
    lines = str(info.value).splitlines()  # in the recipe's order (recipe_of writes the sources sorted)
    assert [line.split(": ")[1] for line in lines] == ["sources.code.path", "sources.math.path", "sources.stem.path"]
    assert lines[0].startswith(f"{tmp_path / 'recipe.yaml'}: sources.code.path: no file matches")
    assert all(line.startswith(f"also {tmp_path / 'recipe.yaml'}: ") and "no file matches" in line
               for line in lines[1:])
    assert not any("generating" in m or "reading" in m for m in info.value.logged), info.value.logged
    monkeypatch.delenv("DATA_FOR_TEST")  # one export fixes both: said once
    with pytest.raises(RecipeError) as info:
        build_logging(recipe)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["sources.code.path", "sources.math.path"], lines
    assert "uses ${DATA_FOR_TEST}, which is not set: export DATA_FOR_TEST=DIR" in lines[0]


def test_an_unknown_task_in_a_later_source_fails_before_reading_and_names_the_field(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(3)) + b"\n")
    recipe = recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 3},
                                  "logic": {**GENERATED, "generate": {"tasks": ["chain_sum", "chain_summ"]}}})
    with pytest.raises(RecipeError, match=r"recipe\.yaml: sources\.logic\.generate\.tasks: \['chain_summ'\]") as info:
        build_logging(recipe)
    assert not any("reading" in m for m in info.value.logged), info.value.logged


def test_a_bad_row_with_on_error_fail_stops_before_generation(tmp_path):
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(2) + [b'{"problem": "x"']) + b"\n")
    recipe = recipe_of(tmp_path, {"logic": GENERATED, "math": {"env": "math", "path": "m.jsonl", "size": 3}},
                       on_error="fail")
    with pytest.raises(DataError, match=r"m\.jsonl:3: not valid JSON") as info:
        build_logging(recipe)
    assert not any("generating" in m for m in info.value.logged), info.value.logged


def test_shortfall_error_fails_on_a_short_file_source_before_generating(tmp_path):
    """shortfall=error: a file source with fewer usable rows than its size stops the build before any generated
    source is made (de-duplication across sources and the difficulty filter only take rows away). Before the fix
    the generated source was made first and the build failed after it."""
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(3) + math_lines(1)) + b"\n")  # 4 rows, 1 a duplicate
    recipe = recipe_of(tmp_path, {"logic": GENERATED, "math": {"env": "math", "path": "m.jsonl", "size": 4}},
                       shortfall="error")
    found = r"too few valid rows \(math: 3 of 4\), found before generating sources\.logic; "
    with pytest.raises(DataError, match=found) as info:
        build_logging(recipe)
    assert not any("generating" in m for m in info.value.logged), info.value.logged
    # the recipe file and the fields to change (before the fix: neither, only the source's name)
    assert str(info.value) == (f"{tmp_path / 'recipe.yaml'}: shortfall: error: too few valid rows (math: 3 of 4), "
                               "found before generating sources.logic; lower sources.math.size, or set shortfall: "
                               "scale (keeps the proportions with fewer rows) or take")
    with pytest.raises(DataError, match=r"recipe\.yaml: shortfall: error \(set by --set 'shortfall=error'\): too few "
                                        r"valid rows \(math: 3 of 4\).*; lower sources\.math\.size"):
        build_logging(load_recipe(tmp_path / "recipe.yaml", ["shortfall=error"]))
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(4)) + b"\n")
    result, logged = build_logging(recipe)
    assert len(result.train) == 8 and any("logic: generating" in m for m in logged), logged


def test_sources_keep_the_recipe_order_for_deduplication_whatever_the_reading_order(tmp_path):
    """File sources are read before generated ones, but the first source listed still keeps a shared question."""
    result, _ = build_logging(recipe_of(tmp_path, {"logic": GENERATED}))
    question = result.train[0]["reference"]["entry"]["question"]
    (tmp_path / "q.jsonl").write_text(json.dumps({"problem": question, "answer": "1"}) + "\n")
    result, _ = build_logging(recipe_of(tmp_path, {"logic": GENERATED, "math": {
        "env": "math", "path": "q.jsonl", "size": 1, "question_field": "problem"}}))
    assert result.stats["math"].dropped == {"duplicate_exact": 1} and result.stats["logic"].dropped == {}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_a_line_that_is_not_utf8_is_one_bad_row_named_by_file_and_line(tmp_path, suffix):
    lines = math_lines(3)
    lines[1] = lines[1].replace(b"What", b"Caf\xe9: what")  # latin-1, not UTF-8
    data = b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n"  # and a byte-order mark before the first line
    path = tmp_path / f"m{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    result = build(recipe_of(tmp_path, {"math": {"env": "math", "path": path.name, "size": 3}}))
    assert [str(i) for i in result.issues] == [f"{path}:2: not valid UTF-8 (byte 0xe9 at column 17)"]
    assert len(result.train) == 2


def test_a_truncated_json_array_is_an_error_naming_the_file_and_line(tmp_path, capsys):
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    (tmp_path / "m.json").write_text(json.dumps(rows, indent=1)[:-30])
    recipe = recipe_of(tmp_path, {"math": {"env": "math", "path": "m.json", "size": 3}})
    with pytest.raises(DataError, match=rf"{tmp_path / 'm.json'}:\d+: not valid JSON"):
        build(recipe)
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert f"{tmp_path / 'm.json'}:" in capsys.readouterr().err


def test_a_file_that_is_not_parquet_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "m.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=rf"{tmp_path / 'm.parquet'}: cannot read the file"):
        build(recipe_of(tmp_path, {"math": {"env": "math", "path": "m.parquet", "size": 3}}))


def test_a_build_that_keeps_no_row_saves_its_card_and_dropped_rows_then_fails(tmp_path, capsys):
    (tmp_path / "m.jsonl").write_text('{"problem": "What is 1 + 1?"}\n{"problem": "What is 2 + 2?"}\n')
    recipe = recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 3}})
    assert build(recipe, tmp_path / "lib").train == []
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train.parquet").write_text("an earlier build's mixture")  # must not be trained on
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 2
    assert "no training rows in the mixture (rows dropped: invalid: 2)" in capsys.readouterr().err
    for out in ("lib", "out"):
        card = json.loads((tmp_path / out / "card.json").read_text())
        assert card["rows"]["train"] == 0 and card["dropped"] == {"invalid": 2}
        assert len((tmp_path / out / "dropped.jsonl").read_text().splitlines()) == 2
        assert not (tmp_path / out / "train.parquet").exists()
    with pytest.raises(FileNotFoundError, match="no train.parquet"):
        load_rows(tmp_path / "out")


def test_an_output_path_that_is_a_file_fails_before_generating(tmp_path, capsys):
    recipe_of(tmp_path, {"logic": GENERATED})
    (tmp_path / "out").write_text("not a folder")
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "File exists" in captured.err and str(tmp_path / "out") in captured.err
    assert "generating" not in captured.out


def test_load_rows_names_the_jsonl_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"b": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"rows\.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 11\)"):
        load_rows(path)
    path.write_bytes(b'{"a": 1}\n\n{"b": "caf\xc3\xa9"}\n')
    assert load_rows(path) == [{"a": 1}, {"b": "café"}]


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_a_json_array_after_a_byte_order_mark_is_read_as_an_array(tmp_path, suffix):
    """A JSON array saved with a UTF-8 byte-order mark (Windows editors) is read as an array. Before the fix the BOM
    hid the '[' from the format sniffing, so the file was read as JSON Lines: every line of a pretty-printed array
    was a bad row ('not valid JSON') and a one-object line slipped through, here 1 row of 3."""
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(3)]
    data = b"\xef\xbb\xbf" + json.dumps(rows, indent=1).encode() + b"\n"
    path = tmp_path / f"m{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    result = build(recipe_of(tmp_path, {"math": {"env": "math", "path": path.name, "size": 3}}))
    assert result.issues == [] and sorted(r["reference"]["answer"] for r in result.train) == ["0", "2", "4"]


def test_load_rows_reads_files_that_start_with_a_byte_order_mark(tmp_path):
    """`prorl eval --data` reads what `prorl data build` reads: before the fix a BOM before a JSON array or the first
    JSON line was an error ('not valid JSON: Unexpected UTF-8 BOM' at line 1)."""
    rows = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 2 + 2?", "answer": "4"}]
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows, indent=1).encode())
    (tmp_path / "l.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    assert load_rows(tmp_path / "a.json") == rows
    assert load_rows(tmp_path / "l.jsonl") == rows


def test_a_logic_row_naming_an_unknown_reasoning_gym_task_is_a_bad_row(tmp_path):
    """A reasoning-gym row whose metadata.source_dataset is no task (a typo: 'chain-sum') has no scorer. Before the
    fix the build kept it, and every sample of it then scored infra_error, masked: never trained on, with no word."""
    rows = [{"question": "What is 2 + 3?", "answer": "5", "metadata": {"source_dataset": name}}
            for name in ("chain_sum", "chain-sum")]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = build(recipe_of(tmp_path, {"logic": {"env": "logic", "path": "l.jsonl", "size": 2}}))
    assert len(result.train) == 1 and [i.reason for i in result.issues] == ["invalid"]
    assert str(result.issues[0]).startswith(f"{tmp_path / 'l.jsonl'}:2: ")
    assert "'chain-sum' is not a reasoning-gym task (did you mean 'chain_sum'?)" in str(result.issues[0])


def test_a_task_from_dict_that_raises_anything_is_a_bad_row_named_by_file_and_line(tmp_path):
    """A custom environment whose task_from_dict raises an AttributeError on one row. Before: the build stopped
    with a traceback from inside the environment, naming no file or line."""
    from prorl.envs import register

    register("test/data-sloppy", "_envs_for_tests:SloppyEcho", override=True)
    rows = [{"q": f"say {i}", "answer": a} for i, a in enumerate(["1", 2, "3"])]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = build(recipe_of(tmp_path, {"s": {"env": "test/data-sloppy", "path": "l.jsonl", "size": 2}}))
    assert len(result.train) == 2 and [i.reason for i in result.issues] == ["invalid"]
    assert str(result.issues[0]).startswith(f"{tmp_path / 'l.jsonl'}:2: test/data-sloppy rejected the row: "
                                            "AttributeError(")


@pytest.mark.parametrize("question_field", ["q", "question"])
def test_a_task_from_dict_that_returns_no_task_is_a_bad_row_naming_the_env(tmp_path, question_field):
    """Before: the build called task_from_dict itself, and a dict returned for a Task stopped it with a traceback
    (`AttributeError: 'dict' object has no attribute 'prompt'` or `'reference'`), naming no env, file or line."""
    from prorl.envs import register

    register("test/data-dict", "_envs_for_tests:DictTaskEcho", override=True)
    rows = [{"q": f"say {i}", question_field: f"say {i}", "answer": str(i)} for i in range(2)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_of(tmp_path, {"s": {"env": "test/data-dict", "path": "d.jsonl", "size": 2}})
    with pytest.raises(DataError) as err:
        build(recipe, on_error="fail")
    assert str(err.value).startswith(f"{tmp_path / 'd.jsonl'}:1: test/data-dict rejected the row: DictTaskEcho."
                                     "task_from_dict returned dict, not a Task (e.g. prorl.Task(")


def test_a_task_from_dict_that_hangs_is_a_bad_row_not_a_stalled_build(tmp_path):
    """Before: a custom env's task_from_dict that never returned on a row stalled `prorl data build` for ever, without
    a word. Now the env's timeout_s (1 s here) stops it: that row is reported by file:line, the others are kept."""
    import time

    from prorl.envs import register

    register("test/data-hang", "_envs_for_tests:HangingTaskEcho", override=True)
    rows = [{"q": q, "answer": "1"} for q in ("say 1", "HANG", "say 2")]
    (tmp_path / "h.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = recipe_of(tmp_path, {"s": {"env": "test/data-hang", "path": "h.jsonl", "size": 2}})
    t0 = time.monotonic()
    result = build(recipe)
    assert time.monotonic() - t0 < 30
    assert len(result.train) == 2 and [str(i) for i in result.issues] == [
        f"{tmp_path / 'h.jsonl'}:2: test/data-hang rejected the row: HangingTaskEcho.task_from_dict did not return "
        "within 1 s"]


def test_a_humaneval_row_without_a_usable_entry_point_is_a_bad_row_naming_the_field(tmp_path):
    """The test of a HumanEval row calls check(<entry_point>). Before the fix a null, missing, empty or non-string
    entry point was kept (a row without one was 'no known code task format', naming no field), and every completion
    of the others then scored `wrong` (check(None) passes no candidate)."""
    good = {"task_id": "HE/0", "prompt": "def inc(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
            "entry_point": "inc"}
    rows = [good, {**good, "task_id": "HE/1", "entry_point": None},
            {k: v for k, v in {**good, "task_id": "HE/2"}.items() if k != "entry_point"},
            {**good, "task_id": "HE/3", "entry_point": ""}, {**good, "task_id": "HE/4", "entry_point": 7},
            {**good, "task_id": "HE/5", "entry_point": "inc(x)"}]
    path = tmp_path / "he.jsonl"
    path.write_text("".join(json.dumps({**r, "prompt": f"{r['prompt']}    # {i}\n"}) + "\n"  # distinct questions
                            for i, r in enumerate(rows)))
    result = build(recipe_of(tmp_path, {"code": {"env": "code", "path": "he.jsonl", "size": 6}}))
    assert [r["id"] for r in result.train] == ["code/HE/0"]
    must = ("code rejected the row: field 'entry_point' must be the name of the function the test's check() is "
            "called with")
    assert [str(i) for i in result.issues] == [
        f"{path}:2: field 'entry_point': missing", f"{path}:3: field 'entry_point': missing",
        f"{path}:4: {must}, got ''", f"{path}:5: {must}, got 7", f"{path}:6: {must}, got 'inc(x)'"]
    with pytest.raises(DataError, match=rf"{path}:2: field 'entry_point': missing \(on_error=fail"):
        build(recipe_of(tmp_path, {"code": {"env": "code", "path": "he.jsonl", "size": 6}}, on_error="fail"))


def test_load_rows_reads_gzipped_json_lines_and_arrays(tmp_path):
    """`prorl eval --data HumanEval.jsonl.gz --env code`: public files ship gzipped, and the builder reads them.
    Before the fix load_rows read the compressed bytes as text: 'not valid UTF-8 (byte 0x8b at column 2)'."""
    rows = [{"problem": "What is 1 + 1?", "answer": "2"}, {"problem": "What is 2 + 2?", "answer": "4"}]
    (tmp_path / "l.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(json.dumps(rows, indent=1).encode()))
    assert load_rows(tmp_path / "l.jsonl.gz") == rows
    assert load_rows(tmp_path / "a.json.gz") == rows


def test_a_source_with_no_usable_row_is_named_when_it_empties_the_mixture(tmp_path, capsys):
    """With shortfall=scale one source with no usable row scales every source to 0 rows. Before the fix the error
    named no source and counted no `where:` drop: 'no training rows in the mixture (rows dropped: none)', while the
    card's table said the source dropped every row it read and its 'Rows dropped' table said '(none)'."""
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(4)) + b"\n")
    rows = [{"ability": "math", "question": f"Print {i}.", "tests": [{"input": "", "output": str(i)}]} for i in range(3)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 2},
                         "code": {"env": "code", "path": "c.jsonl", "size": 2, "where": {"ability": "code"}}},
              shortfall="scale")
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("no training rows in the mixture (rows dropped: not_selected: 3); sources.code has no usable row (3 read, "
            "not_selected: 3): its `where` {'ability': 'code'} selects none of them (--set sources.code.where=null to "
            "read every row) and shortfall=scale scales every source down with it") in err, err
    card = json.loads((tmp_path / "out" / "card.json").read_text())
    assert card["dropped"] == {"not_selected": 3} == card["sources"]["code"]["dropped"]
    assert card["sources"]["math"]["available"] == 4 and card["rows"]["train"] == 0
    assert "| not_selected | 3 |" in (tmp_path / "out" / "card.md").read_text()
    assert (tmp_path / "out" / "dropped.jsonl").read_text() == ""  # not errors: counted, not listed

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({**r, "ability": "code"}) + "\n" for r in rows))
    recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 2},
                         "code": {"env": "code", "path": "c.jsonl", "size": 2, "columns": {"question": "questn"}}},
              shortfall="scale")  # a wrong column mapping: every row invalid
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{tmp_path / 'c.jsonl'}:1: field 'questn': missing" in err
    assert "(rows dropped: invalid: 3); sources.code has no usable row (3 read, invalid: 3) and shortfall" in err, err


def test_a_generated_source_left_no_row_to_make_is_not_blamed_for_an_empty_mixture(tmp_path, capsys):
    """With shortfall=scale a file source with no valid row leaves a generated source nothing to make (scale 0):
    the error names the file source only, and nothing is generated."""
    (tmp_path / "m.jsonl").write_text('{"problem": "What is 1 + 1?"}\n')  # no answer: invalid
    recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 2}, "logic": GENERATED},
              shortfall="scale")
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(tmp_path / "out"), "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "sources.math has no usable row (1 read, invalid: 1) and shortfall=scale" in err and "sources.logic" \
        not in err, err
    assert json.loads((tmp_path / "out" / "card.json").read_text())["sources"]["logic"]["read"] == 0


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_build_that_fails_early_leaves_no_output_folder(tmp_path, capsys):
    """Before the fix a build stopped by a missing file left an empty -o folder (and the folders above it) behind."""
    recipe_of(tmp_path, {"math": {"env": "math", "path": "missing.jsonl", "size": 3}})
    out = tmp_path / "runs" / "data" / "out"
    assert cli_main(["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "sources.math.path: no file matches" in err and "previous build" not in err, err
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # no staging folder either


def test_a_failed_rebuild_leaves_the_previous_build_whole_and_says_so(tmp_path, capsys):
    """Before the fix a rebuild that failed printed only its error: the folder's train.parquet and card.* were the
    previous build's, with nothing saying so."""
    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(4)) + b"\n")
    recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 3, "holdout": 1}})
    out = tmp_path / "out"
    argv = ["data", "build", str(tmp_path / "recipe.yaml"), "-o", str(out), "-q"]
    assert cli_main(argv) == 0
    before = _folder(out)
    assert set(before) == {"train.parquet", "heldout.parquet", "card.json", "card.md", "dropped.jsonl"}
    capsys.readouterr()
    for bad in ("sources.math.path=gone.jsonl", "sources.math.holdout=4"):  # before reading / while building
        assert cli_main(argv + ["--set", bad]) == 2
        err = capsys.readouterr().err
        assert f"\n{out} still holds the previous build, as it was (its card.md says what it was built from)" in err
        assert _folder(out) == before, bad
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl", "out", "recipe.yaml"]


def test_a_rebuild_that_fails_while_writing_leaves_the_previous_build_whole(tmp_path):
    """A build that fails while writing its files (here: a file size limit, as a full disk would) used to overwrite
    the previous train.parquet with a truncated one. Now the files are written beside the folder and moved in only
    once all are written."""
    import os
    import resource
    import subprocess
    import sys

    filler = lambda i: " ".join(f"{i * 7919 + j * 104729:x}" for j in range(300))  # noqa: E731 (little to compress)
    rows = [json.dumps({"problem": f"What is {i} + {i}? {filler(i)}", "answer": str(2 * i)}) for i in range(300)]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 2}})
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "prorl.cli", "data", "build", str(tmp_path / "recipe.yaml"), "-o", str(out), "-q"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    limit = 64 * 1024

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(argv, env=env, capture_output=True, text=True, preexec_fn=small_files)
    assert done.returncode == 0, done.stderr
    before = _folder(out)
    assert max(len(b) for b in before.values()) < limit
    done = subprocess.run(argv + ["--set", "sources.math.size=300"], env=env, capture_output=True, text=True,
                          preexec_fn=small_files)
    assert done.returncode == 2, done.stderr
    assert _folder(out) == before
    assert done.stderr == (f"error: {out}: cannot write the build: File too large\n{out} still holds the previous "
                           f"build, as it was (its card.md says what it was built from)\n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hf") == ["m.jsonl", "out", "recipe.yaml"]
    assert len(load_rows(out)) == 2


def test_a_generator_that_hangs_stops_the_build_with_an_error_naming_it(tmp_path, capsys):
    """Before: a `generate: {generator: env}` source whose env's generate() never returned stalled `prorl data build`
    for ever, without a word. Now the env's timeout_s (1 s here) stops it: the error names the source, the env and
    its generate; no output folder is made."""
    import time

    from prorl.envs import register

    register("test/data-gen-hang", "_envs_for_tests:HangingGeneratorEcho", override=True)
    recipe = recipe_of(tmp_path, {"g": {"env": "test/data-gen-hang", "size": 4, "generate": {"generator": "env"}}})
    t0 = time.monotonic()
    assert cli_main(["data", "build", str(recipe.path), "-o", str(tmp_path / "out")]) == 2
    assert time.monotonic() - t0 < 30
    assert ("error: sources.g: test/data-gen-hang: HangingGeneratorEcho.generate did not return within 1 s (the env's "
            "timeout_s)") in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out").exists()


def test_the_next_build_removes_what_a_killed_build_left_but_not_a_live_builds_folder(tmp_path):
    """Before: a build killed with SIGKILL (no clean-up runs) left its hidden `.out.building-*` folder beside -o for
    ever. Now the next build into the same -o removes the folders whose process no longer runs, in one log line, and
    keeps those of a build still running (two builds into one -o), of another machine and of an earlier version."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "m.jsonl").write_bytes(b"\n".join(math_lines(4)) + b"\n")
    recipe = recipe_of(tmp_path, {"math": {"env": "math", "path": "m.jsonl", "size": 3}})
    out = tmp_path / "out"
    stage = ("import os, signal, sys; from pathlib import Path; from prorl.data.card import make_stage; "
             "s = make_stage(Path(sys.argv[1]))[0]; (s / 'train.parquet').write_bytes(b'half'); "
             "print(s.name, flush=True)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", stage + "; os.kill(os.getpid(), signal.SIGKILL)", str(out)],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    dead = killed.stdout.strip()
    live = subprocess.Popen([sys.executable, "-c", stage + "; sys.stdin.read()", str(out)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        running = live.stdout.readline().strip()
        pid = dead.split("-")[1].split("@")[0]
        others = [f".out.building-{pid}@another-host-x1y2z3ab", ".out.building-k3j4h5g6"]  # shared disk; old name
        for name in others:
            (tmp_path / name).mkdir()
        logged = []
        build(recipe, out, log=lambda msg, transient=False: logged.append(msg))
        assert len(load_rows(out)) == 3
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted([running, *others])
        assert logged[0] == (f"removed 1 unfinished build folder(s) left beside {out} by build(s) killed before they "
                             f"finished (their process no longer runs): {dead}")
        build(recipe, out, log=lambda msg, transient=False: logged.append(msg))  # nothing left to remove: no line
        assert not [m for m in logged[1:] if m.startswith("removed")]
    finally:
        live.communicate("")
    assert live.returncode == 0

"""The public formats of datasets/prorl-mix.yaml's sources, as published: rows built in the exact published shape
are read correctly, and the bundled samples have the published columns (so --sample-data exercises the same code
path as the public files). Where each schema was checked is cited in the recipe's comments."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

import prorl
from prorl.data import build, load_recipe
from prorl.data.adapters import FieldError, ifeval, scp116k

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "datasets" / "samples"

# nvidia/Llama-Nemotron-Post-Training-Dataset, RL/instruction_following/instruction_following.jsonl
NEMOTRON_IF_COLUMNS = {"input", "args", "category", "license", "reasoning", "used_in_training", "version",
                       "system_prompt"}
# EricLu/SCP-116K, SCP_116K_in_open_source_format.jsonl
SCP_COLUMNS = {"domain", "problem", "matched_solution", "o1_solution", "is_o1_solution_same_with_matched_solution",
               "qwq_solution", "is_qwq_solution_same_with_matched_solution"}


def nemotron_if_row(content, ids, kwargs):
    return {"input": [{"role": "user", "content": content}],
            "args": {"instruction_id_list": ids, "instruction_kwargs": kwargs, "task": "instruction_following"},
            "category": "instruction_following", "license": "odc-by", "reasoning": "off",
            "used_in_training": "Ultra, Super", "version": "v1", "system_prompt": "detailed thinking off"}


def test_nemotron_instruction_following_rows_are_read():
    row = nemotron_if_row("List three uses of a paperclip.\n\nYour response should contain at least 3 sentences.",
                          ["length_constraints:number_sentences", "punctuation:no_comma"],
                          [{"relation": "at least", "num_sentences": 3, "num_words": None}, {}])
    out = ifeval(row)
    assert out["prompt"] == row["input"][0]["content"]
    assert out["instruction_id_list"] == ["length_constraints:number_sentences", "punctuation:no_comma"]
    assert out["kwargs"] == [{"relation": "at least", "num_sentences": 3}, {}]
    task = prorl.make("ifeval").task_from_dict(out)
    assert task.prompt == [{"role": "user", "content": row["input"][0]["content"]}]
    assert task.reference == {"instruction_id_list": out["instruction_id_list"], "kwargs": out["kwargs"]}
    with pytest.raises(FieldError) as info:
        ifeval({**row, "args": {**row["args"], "instruction_kwargs": [{}]}})
    assert info.value.field == "args.instruction_kwargs"
    with pytest.raises(FieldError) as info:
        ifeval({**row, "input": [{"role": "system", "content": "detailed thinking off"}]})
    assert info.value.field == "input"


def test_nemotron_instruction_following_file_builds(tmp_path):
    rows = [nemotron_if_row(f"Describe city number {i}. Do not use any commas in your response.",
                            ["punctuation:no_comma"], [{}]) for i in range(5)]
    (tmp_path / "instruction_following.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"name": "if", "shortfall": "take", "sources": {
        "ifeval": {"env": "ifeval", "path": "instruction_following.jsonl", "adapter": "ifeval", "size": 5}}}))
    result = build(load_recipe(tmp_path / "recipe.yaml"))
    assert result.stats["ifeval"].dropped == {}
    assert sorted(r["prompt"][-1]["content"] for r in result.train) == sorted(r["input"][0]["content"] for r in rows)


def test_scp116k_rows_without_an_answer_column_take_the_agreeing_boxed_answer():
    row = {"domain": "Physics", "problem": "A 2 kg mass moves at 3 m/s. What is its kinetic energy in joules?",
           "matched_solution": "KE = m v^2 / 2 = 9 J.", "o1_solution": "KE = (1/2)(2)(3^2) = \\boxed{9 \\text{ J}}",
           "is_o1_solution_same_with_matched_solution": True, "qwq_solution": "So the answer is 9 J.",
           "is_qwq_solution_same_with_matched_solution": True}
    assert scp116k(row)["answer"] == "9 \\text{ J}"


@pytest.mark.parametrize("name,columns", [("stem.jsonl", SCP_COLUMNS), ("ifeval.jsonl", NEMOTRON_IF_COLUMNS)])
def test_jsonl_samples_have_exactly_the_published_columns(name, columns):
    rows = [json.loads(line) for line in (SAMPLES / name).read_text().splitlines() if line.strip()]
    assert rows and all(set(r) == columns for r in rows), [sorted(set(r) ^ columns) for r in rows][:3]


def test_samples_build_through_the_published_code_paths():
    """The stem sample's answers come from the boxed o1 solutions (the public file has no answer column) and the
    ifeval sample's prompts from the Nemotron `input` messages."""
    recipe = load_recipe(ROOT / "datasets" / "prorl-mix.yaml",
                         overrides=["sources.math=null", "sources.code=null", "sources.logic=null"])
    assert recipe.source("ifeval").path.endswith("RL/instruction_following/instruction_following.jsonl")
    result = build(recipe, sample_data=True)
    assert {n: s.dropped.get("invalid", 0) for n, s in result.stats.items()} == {"stem": 0, "ifeval": 0}
    stem = [r for r in result.train if r["env"] == "stem"]
    ifeval_rows = [r for r in result.train if r["env"] == "ifeval"]
    assert stem and ifeval_rows
    samples = [json.loads(line) for line in (SAMPLES / "ifeval.jsonl").read_text().splitlines()]
    assert {r["prompt"][-1]["content"] for r in ifeval_rows} <= {s["input"][0]["content"] for s in samples}


def test_code_sample_has_the_published_arrow_features():
    schema = pq.read_schema(SAMPLES / "code.parquet")
    assert set(schema.names) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert str(schema.field("prompt").type) == "list<element: struct<content: string, role: string>>"
    assert str(schema.field("reward_model").type) == "struct<ground_truth: string, style: string>"
    assert str(schema.field("extra_info").type) == "struct<index: int64, split: string>"


def test_built_rows_round_trip_through_parquet_exactly(tmp_path):
    """reference/metadata are JSON text: floats keep every digit (datasets' Json() feature cut them to 10
    significant digits, 3e-12 to 0.0), and ints stay ints."""
    from prorl.data import load_rows, to_dataset

    rows = [{"id": "1", "env": "logic", "source": "s", "prompt": [{"role": "user", "content": "x"}],
             "reference": {"answer": 59.03624346792648, "tiny": 3e-12, "n": 2**60 - 1, "kw": [{"a": None}]},
             "metadata": {"pass_rate": 0.125}}]
    to_dataset(rows).to_parquet(str(tmp_path / "train.parquet"))
    assert load_rows(tmp_path) == rows

"""The embedded default: the tiny model builder, the generated tasks, and a shrunken `prorl demo` end to end."""

from __future__ import annotations

import argparse
import json
import struct

import pytest

from prorl.demo.run import add_arguments, load_recipe, run
from prorl.demo.sft import teacher_rows
from prorl.demo.tasks import DOMAINS, TaskConfig, is_heldout, make_rows
from prorl.demo.tiny import build_tiny_model


def test_tiny_model_tokenizer_and_idempotence(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import apply_chat_template

    out = build_tiny_model(str(tmp_path / "m"), num_hidden_layers=2)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    # every digit is a token of its own
    assert [t for t in tok.tokenize("12345") if t.strip("Ġ")] == list("12345")
    messages = [{"role": "user", "content": "What is 12 + 7?"}]
    example = apply_chat_template({"prompt": messages, "completion": [{"role": "assistant", "content": "19"}]}, tok)
    assert example["prompt"].endswith("<|im_start|>assistant\n") and example["completion"] == "19<|im_end|>\n"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok)
    assert build_tiny_model(out, num_hidden_layers=2) == out  # same build: reused
    with pytest.raises(ValueError, match="num_hidden_layers"):
        build_tiny_model(out, num_hidden_layers=3)
    with pytest.raises(TypeError, match="unknown size fields"):
        build_tiny_model(str(tmp_path / "other"), hidden_sise=8)


def test_generated_tasks_are_scored_right_by_the_gym_and_heldout_is_disjoint():
    import prorl

    for env_id in DOMAINS:
        train, held = make_rows(env_id, 40, 0, "train"), make_rows(env_id, 40, 0, "heldout")
        env = prorl.make(env_id)
        assert [s.reward for s in env.score_batch([r["demo"] for r in train], train, workers=0)] == [1.0] * 40
        assert max(s.reward for s in env.score_batch(["no answer"] * 40, held, workers=0)) < 1.0
        # the weak teacher's slips are real mistakes by the gym's verdict
        assert max(s.reward for s in env.score_batch([r["flawed_demo"] for r in train], train, workers=0)) < 1.0
        prompts = lambda rows: {json.dumps(r["prompt"]) for r in rows}  # noqa: E731
        assert not prompts(train) & prompts(held), env_id
        assert len(prompts(held)) > 20
    assert make_rows("math", 5, 3, "train") == make_rows("math", 5, 3, "train")  # deterministic
    assert is_heldout("7+12") == is_heldout("7+12")
    flawed = teacher_rows(make_rows("math", 400, 0, "train"), 0.25, seed=0)
    share = sum(r["demo"] == r["flawed_demo"] for r in flawed) / len(flawed)
    assert 0.18 < share < 0.32
    with pytest.raises(ValueError, match="teacher_error"):
        teacher_rows(flawed, 1.5, seed=0)
    with pytest.raises(ValueError, match="aiw_types"):
        TaskConfig(aiw_types=("bogus",))



def test_a_single_aiw_type_given_as_a_string_is_a_list_of_one():
    """Before: `prorl demo --set tasks.aiw_types=friends` (YAML reads a plain string) failed with `tasks.aiw_types
    must be some of siblings, friends, colleagues; got ['f', 'r', 'i', ...]`: the name was split into letters. Now a
    single name is that one type; a value that is no list of names is named as given."""
    path = _default_recipe()
    assert load_recipe(path, ["tasks.aiw_types=friends"])["tasks"]["aiw_types"] == "friends"
    assert TaskConfig(aiw_types="friends").aiw_types == ("friends",)
    assert TaskConfig(aiw_types=["friends", "colleagues"]).aiw_types == ("friends", "colleagues")
    for sets, got in [("frends", "['frends']"), ("3", "3"), ("[]", "[]"), ("[siblings, [x]]", "['siblings', ['x']]"),
                      ("{a: 1}", "{'a': 1}")]:
        with pytest.raises(ValueError) as info:
            load_recipe(path, [f"tasks.aiw_types={sets}"])
        assert str(info.value) == (f"{path}: tasks.aiw_types must be some of siblings, friends, colleagues; got {got} "
                                   f"(set by --set 'tasks.aiw_types={sets}')")

def test_recipe_overrides_and_errors(tmp_path):
    recipe = load_recipe(_default_recipe(), ["rl.max_steps=3", "seed=5"])
    assert recipe["rl"]["max_steps"] == 3 and recipe["seed"] == 5 and len(recipe["envs"]) >= 3
    with pytest.raises(ValueError, match="unknown recipe section"):
        load_recipe(_default_recipe(), ["bogus.x=1"])
    with pytest.raises(ValueError, match="output_dir"):
        load_recipe(_default_recipe(), ["rl.output_dir=/tmp/x"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe(_default_recipe(), ["no-equals-sign"])
    assert load_recipe(_default_recipe(), ["sft.learning_rate=2e-4"])["sft"]["learning_rate"] == 2e-4  # YAML 1.2
    with pytest.raises(ValueError, match=r"--set 'seed=\[1': the value is not valid YAML"):
        load_recipe(_default_recipe(), ["seed=[1"])
    twice = tmp_path / "twice.yaml"
    twice.write_text(_default_recipe().read_text() + "seed: 1\nseed: 2\n")
    with pytest.raises(ValueError, match=r"twice\.yaml: not valid YAML: key 'seed' is given twice"):
        load_recipe(twice)


def test_recipe_mistakes_are_reported_before_any_work(tmp_path, capsys):
    """A typo or a bad value in any section is a one-line error (exit 2) before the model, the SFT and the folder's
    recipe.json exist: it used to surface as a traceback after minutes of SFT, or (sft/eval keys) not at all."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, "demo")
    cheap = ["--threads", "1", "--set", "sft.steps=1", "--set", "eval.prompts_per_env=1", "--set", "eval.n=1"]
    out = tmp_path / "demo"
    for bad, message in ((["--set", "rl.bogus_field=3"], "bogus_field"),
                         (["--set", "rl.per_device_train_batch_size=10"], "divisible by num_generations"),
                         (["--set", "eval.temperature=hot"], "eval.temperature must be a number"),
                         (["--set", "sft.step=10"], "unknown sft setting(s) ['step']"),
                         (["--set", "rl.max_steps=abc"], "rl.max_steps must be an integer, got 'abc'"),
                         (["--set", "rl.dynamic_sampling=maybe"], "rl.dynamic_sampling must be true or false")):
        assert run(parser.parse_args(["--output", str(out), *cheap, *bad]), "demo") == 2, bad
        assert message in capsys.readouterr().err, bad
        assert not out.exists(), bad
    (tmp_path / "file").write_text("")
    assert run(parser.parse_args(["--output", str(tmp_path / "file"), *cheap]), "demo") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_set_errors_name_the_recipe_file_and_the_set(tmp_path, capsys):
    """Before the fix `prorl demo --set` errors named neither the --set nor, for a bad value, the recipe file:
    `recipe: rl.max_steps must be an integer, got 'abc'`, `recipe: invalid literal for int() with base 10: 'abc'`,
    `recipe: too many values to unpack (expected 2)`, `--set 'seed': expected section.key=value`, and
    `tiny.yaml: rl.output_dir is set by the demo itself; remove it from the recipe` for a --set. As `prorl data
    build --set` does, they now name the file, the field and the --set."""
    path = _default_recipe()
    for sets, message in [
        (["seed"], "--set 'seed': expected section.key=value"),
        (["rl.max_steps=abc"], "rl.max_steps must be an integer, got 'abc' (set by --set 'rl.max_steps=abc')"),
        (["seed=abc"], "seed: must be an integer, got 'abc' (set by --set 'seed=abc')"),
        (["tasks.count_length=abc"], "tasks.count_length must be [low, high] with 1 <= low <= high, got 'abc' "
                                     "(set by --set 'tasks.count_length=abc')"),
        (["tasks.bogus=1"], "tasks.bogus: unknown task setting (known: ['aiw_types', 'count_length', 'list_words']) "
                            "(set by --set 'tasks.bogus=1')"),
        (["envs.nope=1"], "envs.nope: no demo task generator for 'nope' (have ['ifeval', 'logic/aiw', 'math']) "
                          "(set by --set 'envs.nope=1')"),
        (["rl.output_dir=/tmp/x"], "rl.output_dir: the demo sets it itself; leave that --set out (set by --set "
                                   "'rl.output_dir=/tmp/x')"),
        (["rl=3"], "rl: must be a mapping (`key: value` lines), got 3 (set by --set 'rl=3')"),
        (["rl.max_steps=3", "rl.per_device_train_batch_size=10"],
         "rl: generation_batch_size (10) must be divisible by num_generations (8)"),
    ]:
        with pytest.raises(ValueError) as info:
            load_recipe(path, sets)
        assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
    with pytest.raises(ValueError) as info:  # a field below the section: every --set that changed it
        load_recipe(path, ["rl.max_steps=3", "rl.per_device_train_batch_size=10"])
    assert str(info.value).endswith(" (with --set 'rl.max_steps=3', --set 'rl.per_device_train_batch_size=10')")
    broken = tmp_path / "r.yaml"  # the file's own mistake: no --set named
    broken.write_text(path.read_text().replace("max_steps: 100", "max_steps: lots"))
    with pytest.raises(ValueError) as info:
        load_recipe(broken, ["sft.steps=1"])
    assert str(info.value) == f"{broken}: rl.max_steps must be an integer, got 'lots'"
    parser = argparse.ArgumentParser()  # the CLI prints a --set with [brackets] as given (not as rich markup)
    add_arguments(parser, "demo")
    assert run(parser.parse_args(["-o", str(tmp_path / "o"), "--set", "tasks.aiw_types=[x]"]), "demo") == 2
    assert capsys.readouterr().err == (f"error: {path}: tasks.aiw_types must be some of siblings, friends, "
                                       f"colleagues; got ['x'] (set by --set 'tasks.aiw_types=[x]')\n")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_shrunken_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["--output", str(out), "--threads", "1",
            "--set", "sft.steps=8", "--set", "rl.max_steps=4", "--set", "rl.reset_every_steps=2",
            "--set", "rl.per_device_train_batch_size=16", "--set", "rl.num_generations=4",
            "--set", "eval.prompts_per_env=8", "--set", "eval.n=2"]
    parser = argparse.ArgumentParser()
    add_arguments(parser, "demo")
    assert run(parser.parse_args(argv), "demo") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"sft", "rl", "steps", "resets", "wall_s"}
    assert set(summary["sft"]) == set(summary["rl"]) == set(DOMAINS) | {"mean"}
    assert all(0.0 <= v <= 1.0 for part in ("sft", "rl") for v in summary[part].values())
    assert summary["steps"] == 4 and summary["resets"] == 2 and summary["wall_s"] > 0
    resets = [json.loads(x) for x in (out / "rl" / "resets.jsonl").read_text().splitlines()]
    assert [e["step"] for e in resets] == [2, 4]
    from prorl.eval import load_eval_rows  # the held-out prompts, as `prorl eval --data` reads them

    heldout = load_eval_rows(str(out / "heldout.jsonl"))
    assert len(heldout) == 8 * len(DOMAINS) and {r["env"] for r in heldout} == set(DOMAINS)
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24])[0] > 400
    printed = capsys.readouterr().out
    assert "SFT" in printed and "RL" in printed and "logic/aiw" in printed
    # idempotent: a second run reuses everything and prints the same table
    mtime = (out / "summary.json").stat().st_mtime
    assert run(parser.parse_args(argv), "demo") == 0
    assert (out / "summary.json").stat().st_mtime == mtime
    # a different recipe in the same folder is refused, not mixed in
    assert run(parser.parse_args(argv + ["--set", "sft.steps=9"]), "demo") == 2
    assert "different recipe" in capsys.readouterr().err


def _default_recipe():
    from prorl.demo.run import DEFAULT_RECIPE

    return DEFAULT_RECIPE

"""The entry point: `python -m prorl.train --config configs/tiny-cpu.yaml --max_steps 6` on a fresh output folder."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prorl.train import main, parse_args

ROOT = Path(__file__).resolve().parents[1]


def tiny_config_with(path: Path, *lines: str) -> Path:
    """configs/tiny-cpu.yaml with `lines` (`field: value`) written at its end, each replacing the file's own line for
    that field (prorl's YAML loader refuses a field given twice)."""
    keys = {line.split(":")[0] for line in lines}
    kept = [kept for kept in (ROOT / "configs" / "tiny-cpu.yaml").read_text().splitlines()
            if kept.split(":")[0] not in keys]
    path.write_text("\n".join(kept + list(lines)) + "\n")
    return path
# Every metric the trainer issue names (completion_length and clip_ratio under their /mean, /max, /low, /high keys).
METRICS = ["reward", "reward/logic/basic_arithmetic", "reward/logic/chain_sum", "entropy", "kl",
           "completion_length/mean", "completion_length/max", "clip_ratio/low", "clip_ratio/high",
           "dynamic_sampling/kept_groups", "dynamic_sampling/dropped_groups", "dynamic_sampling/rounds", "resets",
           "stage", "masked/timeout", "masked/infra_error", "no_eos_fraction"]


@pytest.mark.slow
def test_tiny_cpu_config_runs_6_steps_through_both_stages(tmp_path):
    out, model = tmp_path / "out", tmp_path / "model"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "prorl.train", "--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--max_steps", "6",
         "--output_dir", str(out), "--model_name_or_path", str(model)],
        capture_output=True, text=True, timeout=400, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2, 3, 4, 5, 6]
    for name in METRICS:  # after the restart a step holds one prompt, so one env: reward/<env> of the other is absent
        logs = train_logs[:4] if name.startswith("reward/") else train_logs
        assert all(name in h for h in logs), f"{name} missing from log_history"
    assert [h["resets"] for h in train_logs] == [0, 1, 1, 2, 2, 3]
    assert [h["stage"] for h in train_logs] == [0, 1, 1, 2, 2, 2]
    events = [json.loads(x) for x in (out / "resets.jsonl").read_text().splitlines()]
    assert [(e["step"], e["restart_required"]) for e in events] == [(2, False), (4, True), (6, False)]
    # 8 completions per step: 2 groups of 4 per round before the restart at step 4, 1 group of 8 after it
    groups = [(h["dynamic_sampling/kept_groups"] + h["dynamic_sampling/dropped_groups"]) / h["dynamic_sampling/rounds"]
              for h in train_logs]
    assert groups == [2, 2, 2, 2, 1, 1]
    assert (out / "model.safetensors").exists() and (model / "tiny_build.json").exists()


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path),
                 "--model_name_or_path", str(tmp_path / "nope"), "--build_tiny_model", "false"]) == 2
    assert re.search(r"prorl train: error: model_name_or_path: .*nope does not exist", capsys.readouterr().err)


def test_dataset_choice_is_validated(tmp_path, capsys):
    config = tmp_path / "both.yaml"
    tiny_config_with(config, "dataset_path: data")
    assert main(["--config", str(config), "--output_dir", str(tmp_path)]) == 2
    assert "prorl train: error: set exactly one of dataset_path and gym_envs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="exactly one of dataset_path and gym_envs"):
        parse_args(["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--dataset_path", "data",
                    "--gym_envs", "logic/chain_sum"])


def test_config_mistakes_are_one_line_errors(tmp_path, capsys):
    """A misspelt field in the YAML, a stage key typo, YAML that does not parse, a missing file: `prorl train`
    says what and where in one line and exits 2 (no traceback), with the close field name when there is one."""
    tiny = (ROOT / "configs" / "tiny-cpu.yaml").read_text()
    typo = tmp_path / "typo.yaml"
    typo.write_text(tiny.replace("max_steps:", "max_stepz:"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("max_steps: [1\n")
    for argv, message in (
            (["--config", str(typo)], "unknown field(s) 'max_stepz' (did you mean 'max_steps'?)"),
            (["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--stages", '[{}, {"num_generationz": 2}]'],
             "stages[1]: 'num_generationz' is not a ProRLConfig field (did you mean 'num_generations'?)"),
            (["--config", str(broken)], 'in "' + str(broken) + '", line 1'),
            (["--config", str(tmp_path / "nope.yaml")], "No such file or directory")):
        assert main(argv + ["--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "prorl train: error:" in err and message in err and "Traceback" not in err, err


def test_a_data_source_flag_replaces_the_config_files_other_one(caplog):
    """`--dataset_path` overrides a config that generates its tasks (`gym_envs`, which no flag could unset), and
    `--gym_envs` a config that reads a dataset, whose `eval_split` (a split of that dataset) goes with it, said in
    one log line. Before: `--gym_envs` over configs/prorl-1.5b.yaml failed with 'eval_split needs dataset_path'
    unless `--eval_split ""` was added."""
    script, _ = parse_args(["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--dataset-path=runs/data/sample"])
    assert (script.dataset_path, script.gym_envs) == ("runs/data/sample", None)
    paper = ["--config", str(ROOT / "configs" / "prorl-1.5b.yaml"), "--bf16", "false", "--use_cpu", "true"]
    with caplog.at_level("INFO", logger="prorl.train"):
        script, _ = parse_args(paper + ["--gym-envs", "logic/chain_sum"])
    assert (script.dataset_path, script.gym_envs, script.eval_split) == (None, ["logic/chain_sum"], None)
    said = [r.getMessage() for r in caplog.records if "eval_split" in r.getMessage()]
    assert said == ["--gym_envs replaces the config file's dataset_path, and its eval_split 'heldout' (a split of "
                    "that dataset) with it: no evaluation set"]
    # an eval_split on the command line is the user's: kept, and refused without a dataset as before
    with pytest.raises(ValueError, match="eval_split needs dataset_path"):
        parse_args(paper + ["--gym_envs", "logic/chain_sum", "--eval_split", "heldout"])
    script, _ = parse_args(paper + ["--gym_envs", "logic/chain_sum", "--eval_split", ""])
    assert not script.eval_split
    script, _ = parse_args(paper + ["--dataset_path", "runs/data/other"])  # a dataset for a dataset: split kept
    assert (script.dataset_path, script.eval_split) == ("runs/data/other", "heldout")


def test_yaml_numbers_without_a_dot_are_floats(tmp_path):
    """PyYAML reads YAML 1.1, where a float needs a dot: `1e-1` and `2e-6` were strings, so a config's
    `dynamic_sampling_accuracy_window: [0, 1e-1]` (or a stage's) was refused as not [low, high] and a learning rate
    `2e-6` relied on argparse converting it. Configs are read with YAML 1.2's float rule; ints, quoted strings and
    YAML 1.1 floats are unchanged."""
    from prorl.yaml_io import load_yaml

    doc = load_yaml("a: 2e-6\nb: [0, 1e-1]\nc: '1e-1'\nd: 10\ne: -.5E+3\nf: 1.0e-5\ng: .inf\nh: 1_000\ni: 1e\n")
    assert doc == {"a": 2e-6, "b": [0, 0.1], "c": "1e-1", "d": 10, "e": -500.0, "f": 1e-5, "g": float("inf"),
                   "h": 1000, "i": "1e"}
    assert [type(doc[k]) for k in "acdeg"] == [float, str, int, float, float]
    tiny = (ROOT / "configs" / "tiny-cpu.yaml").read_text()
    config = tmp_path / "c.yaml"
    stage = "{num_generations: 8, dynamic_sampling_accuracy_window: [0, 5e-1]}"
    tiny = tiny.replace("learning_rate: 1.0e-5", "learning_rate: 2e-6").replace("{num_generations: 8}", stage)
    config.write_text(tiny + "dynamic_sampling_accuracy_window: [0, 1e-1]\nreset_on_kl: 5e-1\nrun_name: '1e5'\n")
    _, args = parse_args(["--config", str(config)])
    assert args.dynamic_sampling_accuracy_window == [0.0, 0.1]
    assert args.stages[1] == {"num_generations": 8, "dynamic_sampling_accuracy_window": [0.0, 0.5]}
    assert (args.learning_rate, args.reset_on_kl, args.run_name) == (2e-6, 0.5, "1e5")
    assert isinstance(args.learning_rate, float)


def test_a_config_that_gives_a_field_twice_is_refused(tmp_path):
    """TRL's yaml.safe_load kept the last of two `learning_rate:` lines without a word; prorl's loader names both."""
    config = tmp_path / "c.yaml"
    config.write_text((ROOT / "configs" / "tiny-cpu.yaml").read_text() + "beta: 0.5\nbeta: 0.0\n")
    lines = config.read_text().splitlines()
    first, second = [i for i, line in enumerate(lines, 1) if line.startswith("beta:")][:2]
    with pytest.raises(yaml.YAMLError, match=rf"key 'beta' is given twice in the same mapping, at lines {first} and "
                                             rf"{second}"):
        parse_args(["--config", str(config)])


def test_paper_config_parses():
    from trl import TrlParser

    from prorl.train import TrainScriptArguments
    from prorl.trainer import ProRLConfig

    script, config = TrlParser((TrainScriptArguments, ProRLConfig)).parse_args_and_config(
        ["--config", str(ROOT / "configs" / "prorl-1.5b.yaml"), "--bf16", "false", "--use_cpu", "true"])
    assert script.model_dtype == "bfloat16" and script.eval_split == "heldout"
    assert (config.loss_type, config.epsilon, config.epsilon_high, config.temperature, config.num_generations,
            config.learning_rate, config.max_completion_length) == ("dapo", 0.2, 0.4, 1.2, 16, 2e-6, 8192)
    assert config.stages[-1] == {"max_completion_length": 16384} and config.dynamic_sampling
    # one process here: 8 x 64 rollouts per generation batch, 32 prompts of 16
    assert config.generation_batch_size == 512 and config.generation_batch_size % config.num_generations == 0


@pytest.mark.parametrize("name", ["prorl-1.5b.yaml", "tiny-cpu.yaml"])
def test_configs_report_only_to_installed_integrations(name):
    """Each `report_to` of the shipped configs has its package installed (the trainer would raise when built)."""
    from transformers.integrations import get_reporting_integration_callbacks
    from trl import TrlParser

    from prorl.train import TrainScriptArguments
    from prorl.trainer import ProRLConfig

    _, config = TrlParser((TrainScriptArguments, ProRLConfig)).parse_args_and_config(
        ["--config", str(ROOT / "configs" / name), "--bf16", "false", "--use_cpu", "true"])
    for callback in get_reporting_integration_callbacks(config.report_to):
        callback()  # as Trainer builds them: raises when the integration's package is missing


def test_default_config_is_valid(tmp_path):
    from prorl.trainer import ProRLConfig

    config = ProRLConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)  # TRL defaults to bf16 on a GPU
    assert (config.num_generations, config.per_device_train_batch_size, config.generation_batch_size) == (16, 16, 16)


def test_jsonl_dataset_of_mixed_envs_keeps_each_rows_own_reference(tmp_path):
    """`dataset_path: rows.jsonl` with the rows of a `prorl data build` mixture (five envs, each with its own
    reference layout) loads, and every row's task is its own, without other rows' keys filled with nulls."""
    from prorl.data import build, load_recipe
    from prorl.train import file_dataset
    from prorl.trainer.rewards import row_task

    rows = build(load_recipe(ROOT / "datasets" / "prorl-mix.yaml"), sample_data=True).train
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, names = file_dataset(str(path))
    assert names == [f"{path}:{i}" for i in range(1, len(rows) + 1)]  # FILE:LINE, for EnvReward's errors
    assert len(ds) == len(rows) and {r["env"] for r in rows} == {"math", "code", "stem", "logic", "ifeval"}
    for row, loaded in zip(rows, ds):
        task = row_task(dict(loaded))
        assert (task["reference"], task["metadata"], loaded["prompt"]) == (row["reference"], row["metadata"],
                                                                           row["prompt"])


@pytest.mark.parametrize("line,message", [
    ("dynamic_sampling_accuracy_window: 0.9", "dynamic_sampling_accuracy_window must be [low, high]"),
    ("dynamic_sampling_accuracy_window: [0, x]", "dynamic_sampling_accuracy_window must be [low, high]"),
    ("reset_every_steps: 2.5", "reset_every_steps must be an integer, got 2.5"),
    ("reset_min_interval: [1]", "reset_min_interval must be an integer"),
])
def test_a_wrongly_typed_yaml_value_is_an_error_naming_the_field(tmp_path, line, message):
    """YAML values reach the config unconverted (argparse converts only strings): checked, naming the field."""
    config = tmp_path / "c.yaml"
    tiny_config_with(config, line)
    with pytest.raises(ValueError) as info:
        parse_args(["--config", str(config)])
    assert message in str(info.value)


def test_a_whole_float_count_in_yaml_is_an_integer(tmp_path):
    config = tmp_path / "c.yaml"
    tiny_config_with(config, "max_generated_tokens: 2.0e+6")
    _, args = parse_args(["--config", str(config)])
    assert args.max_generated_tokens == 2_000_000 and isinstance(args.max_generated_tokens, int)


def test_a_stage_whose_batch_shape_splits_a_group_is_refused_before_training(tmp_path):
    """Caught when the config is parsed, not at the reset that reaches the stage (it raised there, mid-run)."""
    base = ["--config", str(ROOT / "configs" / "tiny-cpu.yaml")]
    with pytest.raises(ValueError, match=r"stages\[1\]: its generation batch of 8 rollouts .* is not divisible by "
                                         r"num_generations 3"):
        parse_args(base + ["--stages", '[{"temperature": 1.0}, {"num_generations": 3}]'])
    with pytest.raises(ValueError, match=r"stages\[1\]: .*of 4 rollouts .*steps_per_generation 1\) is not divisible by "
                                         r"num_generations 8"):
        parse_args(base + ["--stages", '[{"per_device_train_batch_size": 4}, {"num_generations": 8}]'])
    _, args = parse_args(base + ["--stages", '[{"per_device_train_batch_size": 16}, {"num_generations": 8}]'])
    assert args.stages[1] == {"num_generations": 8}


def test_a_stage_can_scale_a_batch_field_set_on_the_command_line():
    """configs/prorl-1.5b.yaml doubles steps_per_generation at the 32-rollout stage with 'x2': the single-GPU command
    (--steps_per_generation 512) gets 1024, so the stage keeps 256 prompts (a fixed 128 would have shrunk it)."""
    base = ["--config", str(ROOT / "configs" / "prorl-1.5b.yaml"), "--bf16", "false", "--use_cpu", "true"]
    _, args = parse_args(base + ["--gradient_accumulation_steps", "128", "--steps_per_generation", "512"])
    assert args.stages[4] == {"num_generations": 32, "steps_per_generation": 1024}
    _, args = parse_args(base)
    assert args.stages[4]["steps_per_generation"] == 128
    with pytest.raises(ValueError, match=r"stages\[0\]\.steps_per_generation must be an integer, got '2x'"):
        parse_args(base + ["--stages", '[{"steps_per_generation": "2x"}]'])
    with pytest.raises(ValueError, match=r"stages\[0\]: .* must be positive integers"):
        parse_args(base + ["--stages", '[{"steps_per_generation": 0}]'])


def test_a_split_of_a_dataset_file_is_refused(tmp_path, capsys):
    """dataset_path a .jsonl/.parquet file has no heldout split: eval_split (or dataset_split) heldout is an error.
    Before: the file's rows were read for it, so the run evaluated (and reset_on_plateau judged) on its training
    rows, silently."""
    from prorl.train import file_dataset

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"env": "math", "prompt": [{"role": "user", "content": f"{i} + 1?"}],
                                        "reference": {"answer": str(i + 1)}}) + "\n" for i in range(4)))
    assert len(file_dataset(str(path))[0]) == 4
    with pytest.raises(ValueError, match=r"rows.jsonl is a file, not a `prorl data build` folder: it has no "
                                         r"'heldout' split"):
        file_dataset(str(path), "heldout")
    base = ["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path / "out"),
            "--model_name_or_path", str(tmp_path / "model"), "--dataset_path", str(path)]
    for flag in ("--eval_split", "--dataset_split"):
        assert main(base + [flag, "heldout"]) == 2
        assert "it has no 'heldout' split" in capsys.readouterr().err


def _math_rows(path: Path, envs: list[str | None]) -> Path:
    """A .jsonl of math rows, one per `envs` entry (None: a blank line)."""
    path.write_text("".join("\n" if env is None else json.dumps({
        "env": env, "prompt": [{"role": "user", "content": f"{i} + 1?"}], "reference": {"answer": str(i + 1)}}) + "\n"
        for i, env in enumerate(envs)))
    return path


def test_a_bad_row_of_a_jsonl_dataset_is_named_by_its_line(tmp_path, capsys):
    """The bad row is line 4 of the file (line 2 is blank). Before: 'row 2', its 0-based index among the rows read,
    while the file's own errors ('rows.jsonl:4: not valid JSON') count lines from 1."""
    path = _math_rows(tmp_path / "rows.jsonl", ["math", None, "math", "mathh", "math"])
    base = ["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path / "out"),
            "--model_name_or_path", str(tmp_path / "model"), "--dataset_path", str(path), "--max_steps", "1"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert f"prorl train: error: EnvReward: {path}:4: unknown environment 'mathh'" in err, err
    _math_rows(path, ["math", None, "math", "math"])
    path.write_text(path.read_text() + json.dumps({"env": "math", "problem": "1+1", "answr": "2"}) + "\n")
    assert main(base) == 2
    assert f"EnvReward: {path}:5 (math) is missing field 'answer'" in capsys.readouterr().err


def test_a_dataset_file_on_the_command_line_drops_the_config_files_splits(tmp_path, caplog, capsys):
    """`--dataset_path rows.jsonl` over configs/prorl-1.5b.yaml (a build folder with eval_split heldout): the file has
    no splits, so the config's eval_split goes with the dataset it replaced, as for --gym_envs. Before: 'rows.jsonl
    is a file ... it has no 'heldout' split'. The config's evaluation (eval_strategy steps) then needs a set: a
    one-line error says what to pass (before, with the split dropped: Trainer's 'pass an `eval_dataset`')."""
    path = _math_rows(tmp_path / "rows.jsonl", ["math"] * 4)
    paper = ["--config", str(ROOT / "configs" / "prorl-1.5b.yaml"), "--bf16", "false", "--use_cpu", "true",
             "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "model")]
    with caplog.at_level("INFO", logger="prorl.train"):
        script, _ = parse_args(paper + ["--dataset_path", str(path)])
    assert (script.dataset_path, script.eval_split, script.dataset_split) == (str(path), None, "train")
    said = [r.getMessage() for r in caplog.records if "eval_split" in r.getMessage()]
    assert said == [f"--dataset_path {path} is a file of training rows, with no splits: the config file's eval_split "
                    "'heldout' (a split of its own dataset_path) is dropped: no evaluation set"]
    assert main(paper + ["--dataset_path", str(path)]) == 2
    assert ("prorl train: error: eval_strategy 'steps' needs an evaluation set, and there is none" in
            capsys.readouterr().err)
    # a split on the command line is the user's: kept, and refused when the file is read
    script, _ = parse_args(paper + ["--dataset_path", str(path), "--eval_split", "heldout"])
    assert script.eval_split == "heldout"
    tiny_eval = tiny_config_with(tmp_path / "c.yaml", "eval_split: heldout", "dataset_path: runs/data/x",
                                 "gym_envs: null")
    with caplog.at_level("INFO", logger="prorl.train"):
        script, _ = parse_args(["--config", str(tiny_eval), "--dataset_path", str(path)])
    assert script.eval_split is None  # evaluation off (tiny-cpu.yaml): nothing else to say


def test_env_kwargs_mistakes_are_one_line_errors(tmp_path, capsys):
    """--env_kwargs naming an unknown argument, an unknown environment, or not a mapping of mappings: exit 2 with a
    message naming env_kwargs, before the trainer is built. Before: a TypeError traceback from inside ProRLTrainer
    (argument typo, a non-mapping value) and an unknown id silently ignored."""
    base = ["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path / "out"),
            "--model_name_or_path", str(tmp_path / "model"), "--max_steps", "1"]
    for kwargs, message in (
            ('{"logic/chain_sum": {"sed": 1}}',
             "env_kwargs['logic/chain_sum']: LogicTaskEnv got unknown arguments: ['sed']"),
            ('{"logic/chain_summ": {}}', "env_kwargs: unknown environment 'logic/chain_summ'"),
            ('{"logic/chain_sum": 1}', "env_kwargs must map environment ids to keyword arguments")):
        assert main(base + ["--env_kwargs", kwargs]) == 2
        err = capsys.readouterr().err
        assert f"prorl train: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("line,message", [("gym_tasks_per_env: 0", "gym_tasks_per_env must be >= 1, got 0"),
                                          ("gym_tasks_per_env: 2.5", "gym_tasks_per_env must be an integer, got 2.5"),
                                          ("gym_seed: [1]", "gym_seed must be an integer, got [1]")])
def test_gym_task_counts_are_checked(tmp_path, capsys, line, message):
    """Before: 0 tasks failed when the trainer was built with 'the dataset has no 'env' column', and a YAML 2.5 or
    [1] was a TypeError traceback from range()/random.Random()."""
    config = tmp_path / "c.yaml"
    tiny_config_with(config, line)
    assert main(["--config", str(config), "--output_dir", str(tmp_path / "out"),
                 "--model_name_or_path", str(tmp_path / "model"), "--max_steps", "1"]) == 2
    assert f"prorl train: error: {message}" in capsys.readouterr().err
    tiny_config_with(config, "gym_tasks_per_env: 8.0")
    assert parse_args(["--config", str(config)])[0].gym_tasks_per_env == 8


def test_resume_from_checkpoint_is_resolved_before_the_trainer_is_built(tmp_path, capsys):
    """`--resume_from_checkpoint true` with no checkpoint in output_dir, or a path that is no checkpoint, is a one-line
    error (exit 2); `false` on the command line overrides a config file's `true` and starts afresh. Before: the first
    two were ValueError / FileNotFoundError tracebacks from trainer.train(), after the model was loaded, and `false`
    was taken for a checkpoint path (a traceback)."""
    config = tmp_path / "c.yaml"
    tiny_config_with(config, "resume_from_checkpoint: true")
    out = tmp_path / "out"
    base = ["--config", str(config), "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "model"),
            "--max_steps", "1", "--save_strategy", "no", "--stages", "[]", "--reset_every_steps", "100"]
    assert main(base) == 2
    assert f"prorl train: error: no complete checkpoint in output_dir {out} to resume from" in capsys.readouterr().err
    assert main(base + ["--resume_from_checkpoint", str(tmp_path / "nope")]) == 2
    assert "nope is not a checkpoint folder (no trainer_state.json)" in capsys.readouterr().err
    assert main(base + ["--resume_from_checkpoint", "false"]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1]


@pytest.mark.parametrize("doc", ["README.md", "docs/training.md"])
def test_documented_vllm_server_fits_the_paper_configs_longest_stage(doc):
    """The `trl vllm-serve --max_model_len N` command for configs/prorl-1.5b.yaml holds its longest completion (the
    last stage's 16384) plus 1024 prompt tokens. Before: 9216 (the first stage's 8192 + 1024), so from the 16k stage
    on every request TRL 1.16 sends to `vllm serve` asks for more tokens than the server's model length (which
    vLLM's OpenAI server refuses; not run here: no vLLM on this machine)."""
    _, config = parse_args(["--config", str(ROOT / "configs" / "prorl-1.5b.yaml"), "--bf16", "false",
                            "--use_cpu", "true"])
    longest = max([config.max_completion_length] + [s["max_completion_length"] for s in config.stages
                                                    if "max_completion_length" in s])
    lengths = [int(n) for n in re.findall(r"trl vllm-serve .*--max_model_len (\d+)", (ROOT / doc).read_text())]
    assert lengths and all(n >= longest + 1024 for n in lengths), (lengths, longest)


def test_one_gym_env_written_as_a_string_in_yaml(tmp_path):
    """`gym_envs: logic/chain_sum` (YAML, no list) is that one environment. Before: the string was iterated, so the
    set-up failed with "unknown environment 'l'"."""
    from prorl.train import gym_dataset

    config = tmp_path / "c.yaml"
    config.write_text(re.sub(r"(?m)^gym_envs: .*$", "gym_envs: logic/chain_sum",
                             (ROOT / "configs" / "tiny-cpu.yaml").read_text()))
    script, _ = parse_args(["--config", str(config)])
    assert script.gym_envs == ["logic/chain_sum"]
    assert set(gym_dataset(script.gym_envs, 2)["env"]) == {"logic/chain_sum"}


def test_gym_tasks_are_generated_by_the_env_as_env_kwargs_configure_it(tmp_path):
    """`--gym_envs ifeval --env_kwargs '{"ifeval": {"instructions": [1, 1]}}'` trains on tasks of one instruction,
    the tasks the reward's environment is built for. Before: gym_dataset built its environments without
    env_kwargs, so the tasks were drawn with the defaults (1-3 instructions) and a custom env's arguments were
    ignored for the training set."""
    from prorl.train import gym_dataset, setup

    kwargs = {"ifeval": {"instructions": [1, 1]}}
    tasks = [json.loads(t) for t in gym_dataset(["ifeval"], 6, env_kwargs=kwargs)["task"]]
    assert [len(t["reference"]["instruction_id_list"]) for t in tasks] == [1] * 6
    assert {len(json.loads(t)["reference"]["instruction_id_list"]) for t in gym_dataset(["ifeval"], 6)["task"]} != {1}
    trainer, _ = setup(["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path / "out"),
                        "--model_name_or_path", str(tmp_path / "model"), "--gym_envs", "ifeval",
                        "--gym_tasks_per_env", "6", "--env_kwargs", json.dumps(kwargs)])
    assert [len(json.loads(t)["reference"]["instruction_id_list"]) for t in trainer.train_dataset["task"]] == [1] * 6


def test_a_gym_env_that_cannot_generate_its_tasks_is_named(tmp_path, capsys):
    """`--gym_envs math` (no generator): a one-line error saying what to do (before: a NotImplementedError traceback
    telling to `pass dataset=[...] to make()`). A custom env whose generator has a bug: an error naming the env
    (before: a KeyError that `prorl train` printed as `error: 'answer'`)."""
    from prorl.envs import register
    from prorl.train import gym_dataset

    base = ["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path / "out"),
            "--model_name_or_path", str(tmp_path / "model"), "--max_steps", "1"]
    assert main(base + ["--gym_envs", "math"]) == 2
    err = capsys.readouterr().err
    assert "prorl train: error: gym_envs: 'math' cannot generate tasks" in err and "Traceback" not in err
    assert main(base + ["--gym_envs", "math", "--env_kwargs", '{"math": {"dataset": []}}']) == 2
    assert "prorl train: error: gym_envs: 'math': math: the dataset given to the environment is empty" in \
        capsys.readouterr().err  # was: ZeroDivisionError
    register("test/broken-gen", "_envs_for_tests:BrokenGeneratorEcho", override=True)
    with pytest.raises(RuntimeError, match=r"gym_envs: 'test/broken-gen' failed to generate its tasks: "
                                           r"KeyError\('answer'\)"):
        gym_dataset(["test/broken-gen"], 2)


@pytest.mark.parametrize("line,message", [
    ("loss_type: dapoo", "loss_type must be one of"),
    ("loss_type: DAPO", "(did you mean 'dapo'?)"),
    ("scale_rewards: grp", "scale_rewards must be one of"),
    ("importance_sampling_level: tokens", "(did you mean 'token'?)"),
    ("multi_objective_aggregation: sum", "multi_objective_aggregation must be one of"),
    ("vllm_mode: serve", "(did you mean 'server'?)"),
])
def test_a_misspelt_choice_of_trl_is_refused_when_the_config_is_parsed(tmp_path, capsys, line, message):
    """TRL reads these strings only inside the training step (`loss_type: dapoo` raised "Unknown loss type" after
    the model was loaded and a batch generated, with a traceback): a one-line error before anything is built."""
    config = tmp_path / "c.yaml"
    tiny_config_with(config, line)
    assert main(["--config", str(config), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "prorl train: error: " + line.split(":")[0] in err and message in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python API example (ProRLConfig + ProRLTrainer on a dataset of `env` rows), run as written from a
    fresh folder: two steps, a reset after each, the documented metric names in the log history."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    example = [b for b in blocks if "ProRLTrainer(" in b and "trainer.train()" in b]
    assert len(example) == 1, "the README has one runnable ProRLTrainer example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example[0], "README.md", "exec"), scope)
    trainer = scope["trainer"]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and [h["resets"] for h in logs] == [1, 2]
    for name in ("reward", "reward/math", "kl", "entropy", "dynamic_sampling/kept_groups", "stage", "tokens/generated"):
        assert all(name in h for h in logs), name
    assert len((tmp_path / "runs" / "python-api" / "resets.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("source,typo,meant", [
    ("--gym_envs", "logic/chain_summ", "logic/chain_sum"),
    ("--dataset_path", "maths", "math"),
])
def test_a_misspelt_environment_id_is_answered_with_the_close_one(tmp_path, capsys, source, typo, meant):
    """An unknown env id in `gym_envs` (named as such) or in a dataset's `env` column suggests the registered ids
    closest to it. Before,
    the hint listed the first five ids sharing its prefix (`logic/chain_summ`: 'logic', 'logic/ab', 'logic/acre', ...;
    `maths`: none)."""
    value = typo
    if source == "--dataset_path":
        value = str(tmp_path / "rows.jsonl")
        Path(value).write_text(json.dumps({"id": "r0", "env": typo, "answer": "2",
                                           "prompt": [{"role": "user", "content": "1+1?"}]}) + "\n")
    assert main(["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), source, value,
                 "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    named = "gym_envs: " if source == "--gym_envs" else "rows.jsonl:1 (id 'r0'): "
    assert f"{named}unknown environment {typo!r}" in err and f"did you mean {meant!r}" in err, err


def test_a_bad_flag_or_value_is_one_line_naming_where_it_came_from(tmp_path, capsys):
    """argparse's errors (a value of the wrong type on the command line or in the YAML, an unknown flag) are one line
    like the other set-up errors, after argparse's 200-line usage before; a YAML value is named with its file (argparse
    blamed `argument --max_steps`, a flag the user never typed), and a misspelt flag gets the close one."""
    config = tiny_config_with(tmp_path / "c.yaml", "max_steps: ten")
    tiny = str(ROOT / "configs" / "tiny-cpu.yaml")
    for argv, message in (
            (["--config", tiny, "--learning_rate", "fast"],
             "prorl train: error: argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
            (["--config", str(config)],
             f"prorl train: error: --config {config}: max_steps: invalid int value: 'ten'"),
            (["--config", tiny, "--max_stepz", "3"],
             "prorl train: error: unknown argument(s) ['--max_stepz', '3'] (did you mean '--max_steps'?)")):
        assert main(argv + ["--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in err and "usage:" not in err and len(err.splitlines()) == 1, err


def test_a_plateau_metric_that_is_never_logged_is_warned_about(tmp_path, caplog):
    """`reset_on_plateau` names a logged metric; one that the logs do not hold (a typo: `reward_eval`) used to train
    on without a word and never reset. The first log of its kind without it (a training log here; an evaluation log
    for an `eval_` name) warns, with the close logged name."""
    argv = ["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--output_dir", str(tmp_path / "out"),
            "--max_steps", "2", "--reset_every_steps", "100", "--save_strategy", "no", "--stages", "[]",
            "--reset_on_plateau", "rewards"]
    with caplog.at_level(logging.WARNING, logger="prorl"):
        assert main(argv) == 0
    warned = [r.getMessage() for r in caplog.records if "reset_on_plateau" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "'rewards' is not among the metrics logged at step 1" in warned[0] and "did you mean 'reward'" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prorl"):
        assert main(argv[:-1] + ["reward", "--output_dir", str(tmp_path / "out2")]) == 0
    assert not [r for r in caplog.records if "reset_on_plateau" in r.getMessage()]


def test_num_generations_that_splits_a_group_names_the_fields_the_user_sets(tmp_path, capsys):
    """TRL's message names generation_batch_size, which tiny-cpu.yaml never sets: the error adds what it is made of."""
    assert main(["--config", str(ROOT / "configs" / "tiny-cpu.yaml"), "--num_generations", "3",
                 "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "generation_batch_size (8) must be divisible by num_generations (3)" in err, err
    assert "per_device_train_batch_size 8 x 1 processes x steps_per_generation 1" in err, err

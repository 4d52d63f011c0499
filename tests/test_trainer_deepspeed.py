"""DeepSpeed ZeRO-3 and ZeRO-2 on two CPU processes (DS_ACCELERATOR=cpu, gloo), for real: dynamic sampling, a hard
reset (reference := the gathered policy, DeepSpeed's Adam state re-initialised), the reference saved unsharded with
the checkpoint and restored on resume, a stage that reshapes the batch stopping the run for a relaunch. The runs are
`tests/sharded_main.py zero2|zero3` (see `_deepspeed_main`). DeepSpeed JIT-compiles a small C++ op at its first
init (g++ needed; cached in ~/.cache/torch_extensions)."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from trainer_utils import tiny_model, two_ranks  # noqa: F401

MISSING = "deepspeed is not installed (make setup installs .[dev,deepspeed]; its CPU op is JIT-built with g++)"
if importlib.util.find_spec("deepspeed") is None and os.environ.get("CI"):
    raise RuntimeError(f"CI=true: {MISSING}")  # as the Docker tests: never skipped in CI
pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason=MISSING)]


def _launch(stage: int, tiny_model: str, out: Path, *flags: str) -> list[dict]:
    return two_ranks("sharded_main.py", f"zero{stage}", out, tiny_model, *flags, timeout=900, DS_ACCELERATOR="cpu",
                     phase="resume" if "--resume" in flags else "train")


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _check_optimizer_reset(opt: dict, zero_optimizer: str) -> None:
    """DeepSpeed's Adam state on one rank: trained before the reset, zero with step 0 right after it."""
    before, after = opt["end@2"], opt["reset@2"]
    assert before["chain"][1].endswith(zero_optimizer) and before["chain"][-1] == "torch.optim.adamw.AdamW"
    assert before["moments"] > 0 and before["n_moments"] > 0 and set(before["steps"]) == {2}
    assert after["moments"] == 0 and after["numel"] == before["numel"] and set(after["steps"]) == {0}


def _check_reference_file(path: Path, out: Path, tiny_model: str) -> None:
    """The checkpoint's reference: full (unsharded) tensors of every parameter, equal to the policy at the reset."""
    ref, policy, initial = _load(path), _load(out / "policy-at-reset.safetensors"), _load(Path(tiny_model) /
                                                                                        "model.safetensors")
    assert ref.keys() == initial.keys() == policy.keys()
    assert all(ref[k].shape == initial[k].shape for k in ref)
    assert all(torch.equal(ref[k], policy[k]) for k in ref)
    assert not all(torch.equal(ref[k], initial[k]) for k in ref)  # trained: not the model TRL loads at start


def test_zero3_dynamic_sampling_reset_checkpoint_and_resume(tiny_model, tmp_path):
    """ZeRO-3 with padding_free (its probe runs at the first forward, on the DeepSpeed engine) and prorl's static
    decode loop (ZeRO-3 parameters gathered for generation): 3 steps, a reset after step 2, then a resume from the
    checkpoint of step 2 whose step 3 must have a KL of ~0 to the reference restored from reference.safetensors."""
    out = tmp_path / "run"
    ranks = _launch(3, tiny_model, out, "--padding-free", "--static-generation")
    for r in ranks:
        assert r["zero3"] and r["engine"] == "DeepSpeedEngine" and r["zero_stage"] == 3
        assert r["local_numel"] == 0  # the policy's parameters are partitioned away from the module
        assert r["pack_one_row"] is False and r["static_generations"] > 0
        assert len(r["trained"]) == 3 and all(len(batch) == 6 for batch in r["trained"])
        assert all(q % 2 == 1 for batch in r["trained"] for q in batch), r["trained"]  # even prompts: constant
        assert r["resets"] == 1 and r["kl"][1] > 1e-4 and r["kl"][2] < 1e-6, r["kl"]
        _check_optimizer_reset(r["opt"], "DeepSpeedZeroOptimizer_Stage3")
        assert r["opt"]["end@3"]["moments"] > 0 and set(r["opt"]["end@3"]["steps"]) == {1}  # a fresh Adam's step 1
    assert ranks[0]["ref_vs_policy_at_reset"] == 0.0  # copy_weights_ through gathered partitions
    assert ranks[0]["weights"] == ranks[1]["weights"]
    _check_reference_file(out / "checkpoint-2" / "reference.safetensors", out, tiny_model)

    resumed = _launch(3, tiny_model, out, "--padding-free", "--static-generation", "--resume",
                      str(out / "checkpoint-2"))
    for r in resumed:
        assert r["step"] == 3 and len(r["trained"]) == 1 and r["resets"] == 1
        assert r["opt"]["begin@2"]["moments"] == 0 and set(r["opt"]["begin@2"]["steps"]) == {0}  # saved after it
        assert len(r["kl"]) == 3 and r["kl"][2] < 1e-6, r["kl"]  # without the restored reference: 6e-3 (measured)
    assert resumed[0]["restored_ref_vs_policy_at_reset"] == 0.0


def _check_engine_batch(r: dict, rows: int, accumulation: int) -> None:
    """The DeepSpeed engine that trained this phase was built for `rows` rows per process and micro-batch (2
    processes), and the engine and accelerate accumulate `accumulation` micro-batches, as the trainer does."""
    geometry = {k: v for k, v in r["geometry"].items() if k != "config_from"}
    assert geometry == {"engine_micro_batch": rows, "engine_train_batch": 2 * rows * accumulation,
                        "engine_gas": accumulation, "accelerator_gas": accumulation,
                        "per_device_train_batch_size": rows, "gradient_accumulation_steps": accumulation,
                        "trainer_batch": rows, "generation_batch_size": 2 * rows * accumulation}, geometry


def test_zero2_restart_stage_stops_and_a_relaunch_goes_on(tiny_model, tmp_path):
    """ZeRO-2: a stage at the reset that raises the rows per process from 6 to 8 and halves the base rate of a
    cosine schedule cannot restart in process under DeepSpeed: the run stops at checkpoint-2; a relaunch resumes with
    8 rows per process, the halved rate, the reference of the reset and a DeepSpeed engine built for 8 rows. Before:
    the engine of the relaunch kept the micro-batch (6) and train batch size (12) that transformers had filled in
    from the base config, and counted 12 samples per step (global_samples 36, 48), measured."""
    out = tmp_path / "run"
    ranks = _launch(2, tiny_model, out, "--restart-stage")
    for r in ranks:
        assert not r["zero3"] and r["engine"] == "DeepSpeedEngine" and r["zero_stage"] == 2
        assert r["step"] == 2 and [len(batch) for batch in r["trained"]] == [6, 6]
        assert r["geometry"]["config_from"] == "deepspeed"  # TrainingArguments(deepspeed=...), "auto" batch keys
        _check_engine_batch(r, rows=6, accumulation=1)
        assert r["engine_steps"] == [[1, 1, 12], [2, 2, 24]]  # [step, the engine's optimizer steps, its samples]
        assert all(q % 2 == 1 for batch in r["trained"] for q in batch), r["trained"]
        assert r["resets"] == 1 and r["kl"][1] > 1e-4
        _check_optimizer_reset(r["opt"], "DeepSpeedZeroOptimizer")
        assert r["opt"]["end@2"]["numel"] == r["local_numel"]  # exp_avg + exp_avg_sq of half the parameters
    assert ranks[0]["ref_vs_policy_at_reset"] == 0.0 and ranks[0]["weights"] == ranks[1]["weights"]
    _check_reference_file(out / "checkpoint-2" / "reference.safetensors", out, tiny_model)

    resumed = _launch(2, tiny_model, out, "--restart-stage", "--resume", str(out / "checkpoint-2"))
    for r in resumed:
        assert r["step"] == 4 and [len(batch) for batch in r["trained"]] == [8, 8] and r["resets"] == 2
        _check_engine_batch(r, rows=8, accumulation=1)
        assert r["engine_steps"] == [[3, 3, 40], [4, 4, 56]]  # 24 samples restored from checkpoint-2, then 16 a step
        assert r["opt"]["begin@2"]["moments"] == 0
        assert r["kl"][2] < 1e-6 < r["kl"][3], r["kl"]
        # cosine over 4 steps from 1e-3, the base halved from step 3 on: 0.5 * 1e-3 * (1 + cos(pi * t / 4)) / 2
        assert r["lr"] == pytest.approx([2.5e-4, 7.3223e-5], rel=1e-4)
        assert r["logged_lr"] == pytest.approx([1e-3, 8.5355e-4, 2.5e-4, 7.3223e-5], rel=1e-4)
    assert resumed[0]["restored_ref_vs_policy_at_reset"] == 0.0 and resumed[0]["weights"] == resumed[1]["weights"]


def test_zero3_restart_stage_with_accumulation_from_an_accelerate_config(tiny_model, tmp_path):
    """ZeRO-3, 2 micro-batches per optimizer step, the DeepSpeed config as `accelerate launch` passes it (a
    deepspeed_config_file) with the base batch as numbers, not "auto": the stage's 8 rows per process reach the engine
    of the relaunch (micro-batch 8, train batch 32), whose accumulation stays the trainer's. The engine steps the
    optimizer at the end of each update only (after its first micro-batch its step count is still the previous
    step's), once per trainer step as without DeepSpeed: AdamW counts 1 and 2 steps after the reset. Before: micro-batch
    6 and train batch 24 after the stage, samples counted 72, 96 (measured)."""
    out, flags = tmp_path / "run", ("--restart-stage", "--accumulate", "--explicit-batch", "--accelerate-config")
    ranks = _launch(3, tiny_model, out, *flags)
    for r in ranks:
        assert r["zero3"] and r["zero_stage"] == 3 and r["geometry"]["config_from"] == "accelerate"
        assert r["step"] == 2 and [len(batch) for batch in r["trained"]] == [12, 12]  # a generation per update
        _check_engine_batch(r, rows=6, accumulation=2)
        assert r["engine_steps"] == [[1, 1, 24], [2, 2, 48]] and r["engine_substeps"] == [[0, 0], [1, 1]]
        _check_optimizer_reset(r["opt"], "DeepSpeedZeroOptimizer_Stage3")

    resumed = _launch(3, tiny_model, out, *flags, "--resume", str(out / "checkpoint-2"))
    for r in resumed:
        assert r["step"] == 4 and [len(batch) for batch in r["trained"]] == [16, 16] and r["resets"] == 2
        _check_engine_batch(r, rows=8, accumulation=2)
        assert r["engine_steps"] == [[3, 3, 80], [4, 4, 112]] and r["engine_substeps"] == [[2, 2], [3, 3]]
        assert [set(r["opt"][k]["steps"]) for k in ("begin@2", "end@3", "end@4")] == [{0}, {1}, {2}]
        assert r["kl"][2] < 1e-6 < r["kl"][3], r["kl"]
        assert r["lr"] == pytest.approx([2.5e-4, 7.3223e-5], rel=1e-4)  # the halved cosine, one value per update
    assert resumed[0]["restored_ref_vs_policy_at_reset"] == 0.0 and resumed[0]["weights"] == resumed[1]["weights"]


def test_zero3_reset_mid_generation_refreshes_the_buffered_reference_logps(tiny_model, tmp_path):
    """One generation for 3 steps (steps_per_generation=3): the reset after step 2 recomputes step 3's reference
    log-probs with the new reference, a ZeRO-3 forward that both ranks join; its KL is then 0 (4.8e-3 with the
    refresh switched off, measured)."""
    ranks = _launch(3, tiny_model, tmp_path / "run", "--buffered")
    for r in ranks:
        assert [len(batch) for batch in r["trained"]] == [18] and r["step"] == 3 and r["resets"] == 1
        assert r["kl"][1] > 1e-4 and r["kl"][2] < 1e-6, r["kl"]
    assert ranks[0]["ref_vs_policy_at_reset"] == 0.0 and ranks[0]["weights"] == ranks[1]["weights"]


@pytest.mark.parametrize("stage", [2, 3])
def test_step_without_loss_tokens_is_skipped_under_deepspeed(tiny_model, tmp_path, stage):
    """Step 2 keeps no group (one round, every reward constant): no loss token on any rank. DeepSpeed steps inside
    the backward, before on_pre_optimizer_step, so the decision is made in compute_loss and the torch optimizer its
    ZeRO optimizer steps (once per group) is guarded: weights and Adam state stay as after step 1 (without it, ZeRO-2:
    AdamW's momentum moved the weights' sum from 308.901 to 309.333 and its step count to 2, measured)."""
    ranks = _launch(stage, tiny_model, tmp_path / "run", "--empty-step-2")
    for r in ranks:
        assert r["step"] == 2 and r["skipped"] == [None, 1.0]
        assert r["step_weights"][0] == r["step_weights"][1]
        assert r["opt"]["end@2"] == r["opt"]["end@1"] and set(r["opt"]["end@1"]["steps"]) == {1}
    assert ranks[0]["step_weights"] == ranks[1]["step_weights"]


def test_empty_updates_of_several_micro_batches_under_deepspeed(tiny_model, tmp_path):
    """Gradient accumulation 2 under ZeRO-2: the decision is made in compute_loss of each update's second
    micro-batch (sync_gradients), from both micro-batches' tokens. Steps 2 and 3 keep no group: weights and Adam
    state stay as after step 1, and the linear schedule advances on the skipped updates (DeepSpeed's engine steps
    it), as without DeepSpeed (tests/test_trainer.py)."""
    ranks = _launch(2, tiny_model, tmp_path / "run", "--empty-step-2", "--accumulate")
    for r in ranks:
        assert r["step"] == 3 and r["skipped"] == [None, 1.0, 1.0]
        assert r["step_weights"][0] == r["step_weights"][1] == r["step_weights"][2]
        assert r["opt"]["end@3"] == r["opt"]["end@1"] and set(r["opt"]["end@1"]["steps"]) == {1}
        assert r["logged_lr"] == pytest.approx([1e-3, 2e-3 / 3, 1e-3 / 3])


def test_partial_offload_backup_optimizer_is_reset_and_guarded(tmp_path):
    """ZeRO-3 with `offload_optimizer.ratio` < 1 steps the sub-groups left on the accelerator with a second torch
    optimizer (`backup_optimizer`), outside the `.optimizer` chain. Before: the hard reset cleared DeepSpeedCPUAdam's
    state only and the skip guard did not cover the backup: its AdamW moments and step count survived the reset and
    a skipped update still moved the weights."""
    ranks = two_ranks("sharded_main.py", "zero3-partial-offload", tmp_path, "-", timeout=900, DS_ACCELERATOR="cpu")
    for r in ranks:
        assert r["types"] == ["DeepSpeedCPUAdam", "AdamW"] and r["wrapped_by_deepspeed"] and r["is_backup"]
        cpu_adam, backup = r["trained"]
        assert cpu_adam["moments"] > 0 and cpu_adam["steps"] == [2] and backup["moments"] > 0 and backup["steps"] == [1]
        assert r["after_skipped_step"] == r["trained"] and not r["skipped_step_changed_weights"]
        assert all(s["moments"] == 0 and s["n"] > 0 and s["steps"] == [0] for s in r["after_reset"]), r["after_reset"]


@pytest.mark.parametrize("how", ["deepspeed", "accelerate"])
def test_zenflow_is_refused_before_training(tmp_path, monkeypatch, capsys, how):
    """DeepSpeed's ZenFlow (zero_optimization.zenflow; its CPU Adam steps in a separate process with overlap_step,
    its selective AdamW outside the `.optimizer` chain) is out of reach of the hard reset and the empty-update
    guard: `prorl train` refuses it when the config is built, naming the key, whether the DeepSpeed config comes
    from `--deepspeed` or from `accelerate launch` (ACCELERATE_DEEPSPEED_CONFIG_FILE); before the model is built.
    Before: accepted; the reset zeroed ZenFlowCPUAdam's state only. Without `zenflow` the same config parses."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    from sharded_main import deepspeed_config

    from prorl.train import main, parse_args

    config = deepspeed_config(2)
    config["zero_optimization"].update(offload_optimizer={"device": "cpu"},
                                       zenflow={"topk_ratio": 0.05, "update_interval": 4, "overlap_step": True})
    assert DeepSpeedZeroConfig(**config["zero_optimization"]).zenflow.overlap_step  # what DeepSpeed itself reads
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(config))
    argv = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"),
            "--output_dir", str(tmp_path / "out"), "--model_name_or_path", str(tmp_path / "model")]
    if how == "deepspeed":
        argv += ["--deepspeed", str(path)]
    else:  # what `accelerate launch --config_file` with a deepspeed_config_file sets
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("prorl train: error: deepspeed: zero_optimization.zenflow is not supported: ZenFlow steps "
                          "the optimizer outside the torch optimizer that a hard reset re-initialises"), err
    assert "remove `zenflow` from the DeepSpeed config" in err and not (tmp_path / "model").exists()
    del config["zero_optimization"]["zenflow"]
    path.write_text(json.dumps(config))
    _, args = parse_args(argv)
    assert args.deepspeed_plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"

"""benchmarks/gpu_step.py end to end in its CPU smoke mode: every part runs and writes a complete JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.py"


@pytest.mark.slow  # ~15-20 s: three trainers and the generation backends, in a subprocess
def test_gpu_step_smoke_writes_every_part(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    n_params = result["meta"]["n_params"]
    assert 0 < n_params["matmul"] < n_params["all"] and result["hardware"]["matmul_tflops"] > 0
    for row in result["generation"].values():
        for name in ("hf", "static"):
            assert row[name]["new_tok_per_s"] > 0 and row[name]["warm_s"] > 0
        assert row["speedup_static_vs_hf"] > 0 and row["floor_ms_per_step"] > 0
    trainers = result["trainer"]
    for kind in ("trl", "prorl", "prorl_static"):
        run = trainers[kind]
        assert len(run["steps"]) == 2 and run["completion_tokens"] == 8 * 8 * run["rounds"]  # L=8, 2x4 per round
        assert 0 < run["generation_s"] < run["step_s"] and run["train_s"] > 0 and run["mfu_vs_measured_matmul"] > 0
    assert trainers["prorl"]["resets"] == 1 and trainers["prorl_static"]["hook"]
    assert sum(s["rounds"] for s in trainers["prorl"]["steps"]) > 2  # dynamic sampling drew extra rounds
    for kind in ("prorl", "prorl_static"):  # each round timed: the extra ones are taken out of the step
        run = trainers[kind]
        assert 0 < run["round_s"] <= run["prepare_s"] and run["extra_rounds_s"] < run["round_s"]
        assert run["step_s_equal_work"] == pytest.approx(run["step_s"] - run["extra_rounds_s"])
    assert set(trainers["ratios"]) == {"prorl_over_trl_step_equal_work", "trl_over_prorl_static_step_equal_work",
                                       "generation_speedup_static"}


def test_gpu_step_trainer_variants_are_runs_of_their_own(tmp_path):
    out = tmp_path / "variants.json"
    name = "prorl_static+fused+nockpt"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--parts", "train", "--trainers", name,
                           "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out.read_text())["trainer"][name]
    assert run["overrides"] == {"optim": "adamw_torch_fused", "gradient_checkpointing": False}
    assert run["mfu_vs_measured_matmul"] > 0 and len(run["steps"]) == 2
    bad = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--trainers", "prorl+turbo", "--out",
                          str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "variants of" in bad.stderr


@pytest.mark.slow  # ~20 s: the generation part in smoke mode
def test_one_call_gpu_plan_runs_selected_parts_under_its_time_limit(tmp_path):
    """benchmarks/gpu_issue7.sh (issue 7 in one device call): a part runs and is merged; a part with too little
    time left is skipped, not started, and the merged file still holds what finished."""
    script = SCRIPT.parent / "gpu_issue7.sh"
    env = {"PATH": "/usr/bin:/bin", "SMOKE": "1", "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(script)], env=env | {"OUT": str(tmp_path / "a"), "PARTS": "gen"},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    merged = json.loads((tmp_path / "a" / "gpu_step.json").read_text())
    assert set(merged) == {"gen"} and merged["gen"]["generation"]["L8"]["hf"]["new_tok_per_s"] > 0
    short = subprocess.run(["bash", str(script)], env=env | {"OUT": str(tmp_path / "b"), "TOTAL_S": "20"},
                           capture_output=True, text=True, timeout=60)
    assert short.returncode == 0, short.stderr[-2000:]
    assert short.stdout.count("skipped") == 3 and json.loads((tmp_path / "b" / "gpu_step.json").read_text()) == {}

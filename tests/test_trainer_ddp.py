"""Two processes (torch.distributed, gloo, CPU): dynamic sampling decides from gathered rewards, so both ranks run
the same rounds and train no constant group, including a group split across the two ranks; a reset on both ranks
brings the (gathered) KL of the next step to ~0; a stage that reshapes the batch restarts both ranks in process;
a step completed with fillers updates as its kept rows of both ranks alone; a resume replays the 2-rank run."""

import pytest
from trainer_utils import tiny_model, two_ranks, varied_length_model  # noqa: F401


def _two_ranks(mode: str, tiny_model: str, tmp_path) -> list[dict]:
    return two_ranks("trainer_utils.py", mode, tmp_path / "run", tiny_model)


@pytest.mark.slow
def test_two_process_adaptive_refill_draws_the_same_rows_on_both_ranks(tiny_model, tmp_path):
    ranks = _two_ranks("ddp-adaptive", tiny_model, tmp_path)
    assert ranks[0]["rounds"] == ranks[1]["rounds"]  # equal shares, or TRL's gather would hang or misalign
    assert all(n % 4 == 0 and n <= 16 for n in ranks[0]["rounds"])
    assert any(n < 16 for n in ranks[0]["rounds"]), ranks[0]["rounds"]  # some refill smaller than a full batch
    for r in ranks:
        assert len(r["trained"]) == 3 and all(len(batch) == 16 for batch in r["trained"])
        assert all(q % 4 for batch in r["trained"] for q in batch), r["trained"]  # every 4th prompt: constant


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "ddp-packed"])
def test_two_process_dynamic_sampling_and_reset(tiny_model, tmp_path, mode):
    """ddp-packed: padding_free, whose packed rows differ in shape between the ranks; the replicas stay equal."""
    ranks = _two_ranks(mode, tiny_model, tmp_path)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    for r in ranks:
        assert len(r["trained"]) == 3 and all(len(batch) == 6 for batch in r["trained"])
        assert all(q % 2 == 1 for batch in r["trained"] for q in batch), r["trained"]  # even prompts: constant
        assert r["resets"] == 1 and r["kl"][1] > 1e-4 and r["kl"][2] < 1e-6
    # 6 rows per rank in groups of 4: a prompt group split across the two ranks was trained
    assert any(set(a[-2:]) & set(b[:4]) for a, b in zip(ranks[0]["trained"], ranks[1]["trained"]))


@pytest.mark.slow
def test_two_process_restart_stage_goes_on_in_process(tiny_model, tmp_path):
    """A stage that doubles the rows per process restarts both ranks in process from the reset's checkpoint, and
    goes on from the next prompt of the epoch (12 prompts, 2 per step, then 4: the 4 steps train each once, in the
    sampler's order). Before, the restart skipped prompts 5-8 of the order (Trainer positioned the data by the
    global step in the new shape)."""
    import torch

    ranks = _two_ranks("ddp-restart", tiny_model, tmp_path)
    for r in ranks:
        assert [len(batch) for batch in r["trained"]] == [4, 4, 8, 8], r["trained"]
        assert r["resets"] == 2 and r["kl"][2] < 1e-6  # step 3: the reference restored is the policy of step 2
    steps = [dict.fromkeys(ranks[0]["trained"][i] + ranks[1]["trained"][i]) for i in range(4)]  # rank 0's rows first
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()  # TRL's RepeatSampler, seed 0
    assert [q for step in steps for q in step] == order
    assert (tmp_path / "run" / "checkpoint-2" / "reference.safetensors").exists()


@pytest.mark.slow
def test_two_process_fillers_update_as_the_kept_rows_of_both_ranks(tiny_model, tmp_path):
    """A step at the cap of dynamic sampling with 6 kept rows of 10 on rank 0, 2 of 10 on rank 1 (completions of
    varied lengths): the filler factor is gathered (20 rows / 8 kept on both ranks, not each rank's own 10/6 and
    10/2), and the step's gradient is that of TRL's loss over the 8 kept rows as one batch, for grpo (a mean of
    per-row means) and dr_grpo (a sum over rows x max_completion_length); the replicas stay equal."""
    ranks = two_ranks("trainer_utils.py", "ddp-fillers", tmp_path / "run", varied_length_model(tiny_model, tmp_path))
    for loss_type in ("grpo", "dr_grpo"):
        assert [r[loss_type]["kept"] for r in ranks] == [6, 2]
        assert ranks[0][loss_type]["weights"] == ranks[1][loss_type]["weights"]
        for r in ranks:
            assert [scale[0] for scale in r[loss_type]["scales"]] == [2.5, 2.5]  # one optimizer step, 2 micro-batches
            assert r[loss_type]["gradient_error"] <= 1.0, (loss_type, r["rank"], r[loss_type]["gradient_error"])
    assert ranks[0]["grpo"]["weights"] != ranks[0]["dr_grpo"]["weights"]  # the lengths vary: two normalisers


@pytest.mark.slow
def test_two_process_resume_replays_the_run(tiny_model, tmp_path):
    """Two ranks, dynamic sampling, a reset with a temperature stage every 3 steps, one generation per 2 steps, 4
    steps per epoch: resumed on two ranks from checkpoint-3 (inside a generation buffer, one file per rank) and from
    checkpoint-6 (inside epoch 1), the later steps (refills, the second epoch) and the final weights of both ranks
    are the uninterrupted run's. Before: the resumed ranks failed to load their buffers (torch.load mapped to
    accelerate's multi-process CPU device, "cpu:0", a location torch does not know); and resumed from checkpoint-6
    they trained steps 7-8 on epoch 0's order (Trainer's set_epoch does not reach the sampler through accelerate's
    skipping batch sampler of a multi-process run)."""
    import shutil

    import torch

    full = two_ranks("trainer_utils.py", "ddp-resume", tmp_path / "full", tiny_model)
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoint-3").glob("generation_buffer_*.pt")) == [
        "generation_buffer_0.pt", "generation_buffer_1.pt"]
    rows = full[0]["rows"]
    assert rows["3"]["resets"] == 1 and rows["4"]["reward"] is None  # the reset after step 3; step 4 buffered
    assert rows["5"]["dynamic_sampling/rounds"] > 1  # refills after the resume
    for at in (3, 6):
        shutil.copytree(tmp_path / "full" / f"checkpoint-{at}", tmp_path / f"resumed{at}" / f"checkpoint-{at}")
        resumed = two_ranks("trainer_utils.py", "ddp-resume", tmp_path / f"resumed{at}", tiny_model, "--resume")
        for rank, (a, b) in enumerate(zip(full, resumed)):
            assert sorted(b["rows"]) == sorted(a["rows"]) == [str(step) for step in range(1, 9)]
            for step in range(at + 1, 9):
                want = pytest.approx(a["rows"][str(step)], abs=1e-6, nan_ok=True)
                assert b["rows"][str(step)] == want, (at, rank, step)
            weights = [torch.load(tmp_path / run / f"weights{rank}.pt") for run in ("full", f"resumed{at}")]
            assert max((weights[0][n] - weights[1][n]).abs().max().item() for n in weights[0]) <= 1e-6, (at, rank)

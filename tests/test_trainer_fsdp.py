"""Two processes (gloo, CPU) under torch's FSDP2 `fully_shard`: prorl's reset helpers on real DTensor shards.

The trainer itself cannot run FSDP here: accelerate 1.16 enables FSDP only for accelerator process groups
(`AcceleratorState.__init__` switches to `DistributedType.FSDP` only from MULTI_GPU/NPU/XPU/..., never from
MULTI_CPU) and, on CPU, silently drops the plugin and trains DDP. So the models are wrapped as accelerate
(policy: each decoder layer, then the root) and TRL's `prepare_fsdp` (reference: the root only) wrap them, and
the reset (`copy_weights_`, `reset_optimizer_state`), the checkpoint's reference (`full_weights`, a collective)
and the resume (`load_weights_`) are the trainer's own functions. What is not covered: accelerate's preparation,
TRL's loss and generation under FSDP2, the trainer's checkpoint and restart plumbing."""

import pytest
from trainer_utils import tiny_model, two_ranks  # noqa: F401


def _two_ranks(mode: str, tiny_model: str, tmp_path) -> list[dict]:
    return two_ranks("sharded_main.py", mode, tmp_path / "run", tiny_model)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp2", "fsdp2-keep"])
def test_fsdp2_reset_checkpoint_and_resume_of_the_reference(tiny_model, tmp_path, mode):
    """fsdp2-keep (reshard_after_forward=False): the root-only reference stays unsharded after its forward while
    the policy's backward reshards it: the reset's copy raised (DTensor shards copied into whole tensors)."""
    ranks = _two_ranks(mode, tiny_model, tmp_path)
    for r in ranks:
        assert r["kl_after"] < 1e-7  # reference := policy on every shard
        assert r["optimizer_state"] == 0
        assert r["kl_policy_moved"] > 1e-3  # the steps after the reset train away from the new reference
        # a fresh reference is the base model, the reset's reference is not; loaded, it is the policy at the reset
        assert r["kl_base"] > 1e-3 and r["kl_resumed"] < 1e-7 and r["resumed_equal"]
        leak, position = r["packing"]  # the padding_free probe forwards the sharded policy
        assert leak < 1e-5 and position < 5e-2
    saver = ranks[0]
    assert saver["saved_shapes"] == saver["full_shapes"]  # whole tensors, not rank 0's shards
    assert saver["saved_equal"]  # the policy at the reset


@pytest.mark.slow
def test_fsdp1_is_refused(tiny_model, tmp_path):
    """Policy and reference wrapped alike have the same flat-parameter names: the copy went through, the saved
    reference was rank 0's flat shard (half the model) and a resume loaded it into rank 1's shard too."""
    for r in _two_ranks("fsdp1", tiny_model, tmp_path):
        assert all("FSDP1 is not supported" in r[k] for k in ("copy", "full", "load")), r

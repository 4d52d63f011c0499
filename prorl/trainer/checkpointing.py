"""Selective activation checkpointing under TRL's GRPO generation.

transformers (>= 5.23) checkpoints every n-th decoder layer with
`activation_checkpointing_kwargs={"every_n_layers": n}` (and can offload saved activations with `"offload": True`):
fewer recomputed layers in backward for more activation memory, one of the training-phase levers of a GRPO step.
TRL 1.16's GRPOTrainer turns checkpointing off around every generation and back on with
`model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)`, which hands
those two keys to `torch.utils.checkpoint.checkpoint`: the first training forward after a generation raises
`ValueError: Unexpected keyword arguments: every_n_layers` (vanilla `trl.GRPOTrainer`, measured). `ProRLTrainer`
routes them back to the arguments transformers expects, so the selection survives every generation.
"""

from __future__ import annotations

import functools

LAYER_KEYS = ("every_n_layers", "offload")  # arguments of activation_checkpointing_enable, not of checkpoint()


def keep_selective_checkpointing(model) -> None:
    """Make `model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=...)` accept `every_n_layers` and
    `offload` inside the kwargs dict (as TRL passes them back after generation). Idempotent; a no-op for a model
    without that method."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or getattr(enable, "_prorl_selective", False):
        return

    @functools.wraps(enable)
    def gradient_checkpointing_enable(gradient_checkpointing_kwargs=None, **kwargs):
        forwarded = dict(gradient_checkpointing_kwargs or {})
        for key in LAYER_KEYS:
            if key in forwarded:
                kwargs.setdefault(key, forwarded.pop(key))
        return enable(gradient_checkpointing_kwargs=forwarded or None, **kwargs)

    gradient_checkpointing_enable._prorl_selective = True
    model.gradient_checkpointing_enable = gradient_checkpointing_enable

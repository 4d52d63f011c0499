"""The one-token GQA attention path the static-cache decode loop (prorl.trainer.generation) switches the model to.

`pack_gqa` (on by default) fixes a decode slowdown measured on an H100 with a prototype (by the workplace,
../shared/MEASURED.md, not with this code): under `torch.compile`, transformers 5.23's sdpa integration skips its
`pack_gqa` path for one-token queries (it checks `is_torchdynamo_compiling()`) and repeats K/V over all cache
positions per layer, ~90% of the decode step; keeping that path gave 2.7x. The override is a registered attention
implementation (`GQA_DECODE_ATTENTION`, via transformers' `AttentionInterface`) that takes the packed path for
one-token GQA queries whether compiling or not and hands every other call to transformers' `sdpa_attention_forward`;
the model is switched to it only for the duration of a `StaticCacheGenerator` call, and only if it runs "sdpa".
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from transformers.integrations.sdpa_attention import pack_gqa, sdpa_attention_forward, use_gqa_in_sdpa
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

GQA_DECODE_ATTENTION = "sdpa_gqa_decode"


def sdpa_gqa_decode_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' `sdpa_attention_forward`, except that a one-token query of a GQA layer always attends on the
    key/value heads (queries packed as (B, kv_heads, groups, D)) instead of repeating K/V per query head, also while
    `torch.compile` traces it (transformers skips this path then: the 5.23 `not is_torchdynamo_compiling()` check)."""
    groups = getattr(module, "num_key_value_groups", 1)
    if (query.shape[2] != 1 or groups == 1 or kwargs.get("position_bias") is not None
            or kwargs.get("cache") is not None or use_gqa_in_sdpa(attention_mask, key, value)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        pack_gqa(query, groups), key, value, attn_mask=pack_gqa(attention_mask, groups), dropout_p=dropout,
        scale=scaling, is_causal=False)
    return out.reshape(out.shape[0], -1, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def register_gqa_decode_attention() -> str:
    """Register the override with transformers (idempotent); returns its attention-implementation name."""
    ALL_ATTENTION_FUNCTIONS.register(GQA_DECODE_ATTENTION, sdpa_gqa_decode_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_DECODE_ATTENTION, sdpa_mask)
    return GQA_DECODE_ATTENTION


@contextlib.contextmanager
def attention_implementation(model, implementation: str | None) -> Iterator[None]:
    """Switch `model` to `implementation` for the block (no-op for None or the current one)."""
    current = model.config._attn_implementation
    if implementation is None or implementation == current:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(current)

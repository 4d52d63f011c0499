"""Padding-free forwards (`ProRLConfig.padding_free`): the log-prob passes (training, old policy, reference) forward
only real tokens.

TRL forwards each micro-batch as a (rows, prompt width + completion width) block: prompts left-padded to the longest
prompt, completions right-padded to the generation's longest completion. With reasoning traces whose lengths spread
from hundreds to thousands of tokens most of that block is padding, and every linear layer computes it. Here the
real tokens of each row (prompt + completion up to its mask) are taken out and packed, first-fit-decreasing, into
rows no longer than `max_tokens` (default: TRL's padded width, so that no packed row costs more attention than a
padded one under a mask-based attention such as sdpa or eager; fewer rows, no padding inside them). Position ids
restart at 0 for every sequence; transformers reads the restarts as sequence boundaries (a block-diagonal causal
mask for sdpa/eager/flex, variable-length kernels for flash attention), so no token attends across sequences. TRL's
fused LM head scores the packed rows through `shift_labels` (the next token where it is a completion token, -100
elsewhere) and the values are put back in TRL's (rows, completion tokens) layout, 0 where the completion mask is 0,
as TRL's padded pass returns them.

The log-probs equal TRL's up to float rounding: RoPE attention depends on relative positions only, and TRL's padded
pass counts left-padded prompts' positions from the padding on. Rows with no completion token to score (masked
truncated or unscored completions) are left out of the forward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Packed:
    """A micro-batch's real tokens packed into rows, and where each scored position goes back."""

    input_ids: torch.Tensor  # (packed rows, width), pad_token_id after the last sequence of a row
    position_ids: torch.Tensor  # restarting at 0 for every sequence (and for the padding tail of a row)
    shift_labels: torch.Tensor  # the next token where it is a scored completion token, IGNORE elsewhere
    src: tuple[torch.Tensor, torch.Tensor]  # (packed row, position) of each scored token's prediction
    dst: tuple[torch.Tensor, torch.Tensor]  # (row, completion column) in TRL's layout, same order
    shape: tuple[int, int]  # TRL's (rows, logits_to_keep)

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """(packed rows, width) per-position values -> TRL's (rows, logits_to_keep), 0 where nothing is scored."""
        out = values.new_zeros(self.shape)
        return out.index_put(self.dst, values[self.src])


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in bins whose sums stay <= `capacity` (a length over it gets a bin of its own), the
    longest first; deterministic (ties keep their order)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
              max_tokens: int | None = None, pad_token_id: int = 0) -> Packed:
    """Pack the real tokens (`attention_mask` 1) of each row of `input_ids` (rows, width), whose last
    `logits_to_keep` columns are the completion, into rows of at most `max_tokens` tokens (None: the padded width;
    shorter than the longest sequence: the longest sequence). A sequence is never split. Rows with no completion
    token are left out (all but one when no row has any, so that the forward still runs and stays connected to the
    model)."""
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(f"pack_rows: input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must be the same (rows, width)")
    rows, width = input_ids.shape
    if not 0 < logits_to_keep <= width:
        raise ValueError(f"pack_rows: logits_to_keep {logits_to_keep} not in 1..{width}")
    device = input_ids.device
    mask = attention_mask.bool()
    first_completion = width - logits_to_keep
    # every real token, row-major: (row, position); the token after it in the same row, if any
    row, pos = mask.nonzero(as_tuple=True)
    next_same_row = torch.zeros_like(row, dtype=torch.bool)
    next_same_row[:-1] = row[1:] == row[:-1]
    next_pos = torch.full_like(pos, -1)
    next_pos[:-1] = pos[1:]
    scored = next_same_row & (next_pos >= first_completion)  # this token's prediction is a completion token

    lengths = mask.sum(dim=1)
    has_score = torch.zeros(rows, dtype=torch.bool, device=device)
    has_score[row[scored]] = True
    keep_rows = has_score.nonzero(as_tuple=True)[0].tolist() or [int(lengths.argmax())]
    kept_lengths = [int(n) for n in lengths[keep_rows].tolist()]
    capacity = max(max(kept_lengths), max_tokens or width)
    bins = first_fit_decreasing(kept_lengths, capacity)

    # each kept row's packed row and offset
    bin_of = torch.full((rows,), -1, dtype=torch.long)
    offset_of = torch.zeros(rows, dtype=torch.long)
    for b, members in enumerate(bins):
        offset = 0
        for k in members:
            bin_of[keep_rows[k]], offset_of[keep_rows[k]] = b, offset
            offset += kept_lengths[k]
    packed_width = max(sum(kept_lengths[k] for k in members) for members in bins)
    bin_of, offset_of = bin_of.to(device), offset_of.to(device)

    starts = torch.cumsum(lengths, 0) - lengths  # index in (row, pos) of each row's first token
    rank = torch.arange(row.numel(), device=device) - starts[row]  # position within its sequence
    kept = bin_of[row] >= 0
    p_row, p_col = bin_of[row[kept]], offset_of[row[kept]] + rank[kept]

    packed_ids = torch.full((len(bins), packed_width), pad_token_id, dtype=input_ids.dtype, device=device)
    packed_ids[p_row, p_col] = input_ids[row[kept], pos[kept]]
    # padding tail of a row: its own sequence (positions restart), never scored
    position_ids = torch.arange(packed_width, device=device).repeat(len(bins), 1)
    used = torch.tensor([sum(kept_lengths[k] for k in members) for members in bins], device=device)
    position_ids = torch.where(position_ids < used[:, None], position_ids, position_ids - used[:, None])
    position_ids[p_row, p_col] = rank[kept]

    labels = torch.full_like(packed_ids, IGNORE)
    nxt = torch.clamp(torch.arange(row.numel(), device=device) + 1, max=max(row.numel() - 1, 0))
    src = (bin_of[row[scored]], offset_of[row[scored]] + rank[scored])
    labels[src] = input_ids[row[nxt[scored]], pos[nxt[scored]]]
    dst = (row[scored], next_pos[scored] - first_completion)
    return Packed(packed_ids, position_ids, labels, src, dst, (rows, logits_to_keep))


@torch.no_grad()
def packing_error(model, one_row: bool) -> tuple[float, float]:
    """Whether `model` keeps packed sequences apart, measured: a sequence B packed after two different sequences A
    and A' (same length) must get the same log-probs (the largest difference is returned first: a leak across
    sequences gives more than rounding, since B's computation does not depend on A at all when masked), and about
    those of B forwarded alone (second: position ids ignored). Rows [A, B] and [A', B] in one forward, or with
    `one_row` one forward each. Models whose mask builder is not given the position ids (OPT, Bloom, GPT-OSS in
    transformers 5.23), recurrent or convolutional layers (Qwen3.5, LFM2) and flash attention over several rows
    fail the first check."""
    from accelerate.utils import extract_model_from_parallel

    config = extract_model_from_parallel(model).config  # a DeepSpeed engine's own .config is its DeepSpeed dict
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    high = max(4, min(int(text_config.vocab_size), 1000))
    a, a2, b = (torch.randint(3, high, (n,), generator=g) for n in (5, 5, 4))
    ids = torch.stack([torch.cat([a, b]), torch.cat([a2, b])]).to(device)
    pos = torch.cat([torch.arange(5), torch.arange(4)]).repeat(2, 1).to(device)
    was_training = model.training
    model.eval()
    try:
        if one_row:
            logits = torch.cat([model(input_ids=ids[i:i + 1], position_ids=pos[i:i + 1], use_cache=False).logits
                                for i in range(2)])
        else:
            logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = model(input_ids=b[None].to(device), position_ids=pos[:1, 5:], use_cache=False).logits
    finally:
        model.train(was_training)
    packed = logits[:, 5:].float().log_softmax(-1)
    return (float((packed[0] - packed[1]).abs().max()),
            float((packed[0] - alone[0].float().log_softmax(-1)).abs().max()))


LEAK_TOL, POSITION_TOL = 1e-5, 5e-2


class PaddingFreeMixin:
    """Mixed into `ProRLTrainer` before `GRPOTrainer`: with `args.padding_free` its log-prob passes (the loss, the
    old-policy and the reference passes) forward packed rows (`pack_rows`) instead of TRL's padded block."""

    _pack_one_row: bool | None = None  # decided by the probe: None not yet, True one row per forward

    def _check_padding_free(self) -> None:
        if not self.args.padding_free:
            return
        if getattr(self, "aux_loss_enabled", False):
            raise ValueError("padding_free: the model's router load-balancing loss would count the packed rows' "
                             "padding tail and mix sequences in one routing statistic; set router_aux_loss_coef=0 or "
                             "turn padding_free off")
        from transformers.integrations import is_deepspeed_zero3_enabled

        if not (is_deepspeed_zero3_enabled() or self.is_fsdp_enabled):  # sharded weights: at the first forward
            self._probe_packing(self.model)

    def _probe_packing(self, model) -> None:
        """Refuse a model that does not keep packed sequences apart; pack one row per forward where only that keeps
        them apart (transformers' flash attention takes its variable-length path for a single row only)."""
        try:
            leak, position = packing_error(model, one_row=False)
            if leak > LEAK_TOL:
                leak, position = packing_error(model, one_row=True)
                self._pack_one_row = True
            else:
                self._pack_one_row = False
        except (TypeError, ValueError) as exc:  # e.g. a forward without position_ids
            raise ValueError(f"padding_free: the model cannot be forwarded packed ({exc}); set padding_free=False") \
                from exc
        unwrapped = self.accelerator.unwrap_model(model)  # a DeepSpeed engine's .config is its DeepSpeed dict
        name, attn = type(unwrapped).__name__, unwrapped.config._attn_implementation
        if leak > LEAK_TOL:
            raise ValueError(
                f"padding_free: {name} ({attn}) lets packed sequences see each other (a "
                f"sequence's log-probs moved by {leak:.2g} with the sequence packed before it): its mask is not built "
                "from position ids, or a recurrent/convolutional layer carries state across; set padding_free=False")
        if position > POSITION_TOL:
            raise ValueError(f"padding_free: {name} does not restart positions at each packed sequence (log-probs "
                             f"{position:.2g} away from the sequence forwarded alone); set padding_free=False")
        if self._pack_one_row:
            log.info("padding_free: %s (%s) keeps packed sequences apart in one row per forward only: each "
                     "micro-batch is packed into one row", name, attn)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        if not self.args.padding_free:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        given = sorted(k for k, v in multimodal.items() if v is not None)
        if given or compute_aux_loss:
            raise NotImplementedError(f"padding_free supports text-only models without an aux loss (got "
                                      f"{given or 'compute_aux_loss'}); set padding_free=False")
        if self._pack_one_row is None:
            self._probe_packing(model)
        max_tokens = input_ids.numel() if self._pack_one_row else self.args.padding_free_max_tokens
        batch_size = batch_size or input_ids.size(0)
        pad_id = self._tokenizer.pad_token_id or 0  # never scored, never attended to by a real token
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            packed = pack_rows(input_ids[start:start + batch_size], attention_mask[start:start + batch_size],
                               logits_to_keep, max_tokens, pad_id)
            with self.accelerator.autocast():
                outputs = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                shift_labels=packed.shift_labels, fused_lm_head=True)
            all_logps.append(packed.unpack(outputs.log_probs))
            if compute_entropy:
                all_entropies.append(packed.unpack(outputs.entropy))
        logps = torch.cat(all_logps, dim=0)
        return logps, torch.cat(all_entropies, dim=0) if compute_entropy else None, None

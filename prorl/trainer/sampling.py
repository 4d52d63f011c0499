"""Dynamic sampling (DAPO, Section 3.2) on TRL's generation batches: which groups to keep, and row operations on
the dict of tensors that `GRPOTrainer._generate_and_score_completions` returns.

A generation batch holds `num_generations` consecutive rows per prompt (a *group*). Groups whose rewards are all
the same have zero advantage and teach nothing; DAPO drops them and samples more prompts until the batch is full.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Keys of TRL's generation output that are (rows, completion tokens), right-padded; prompt keys are left-padded.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
COMPLETION_KEYS = ("completion_ids", "completion_mask", "old_per_token_logps", "ref_per_token_logps",
                   "sampling_per_token_logps", "tool_mask")
# Keys dynamic sampling cannot regroup (multimodal inputs carry per-image tensors not aligned with rows).
UNSUPPORTED_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                    "num_images", "num_tiles", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def group_keep_mask(rewards: torch.Tensor, num_generations: int, accuracy_window: tuple[float, float] | None,
                    std_tol: float, accuracy: torch.Tensor | None = None) -> torch.Tensor:
    """Which groups carry a learning signal, from the per-completion total rewards of a whole (gathered) batch.

    `rewards` (what the advantages are computed from) has one value per completion, NaN for masked completions
    (timeouts, infrastructure errors). A group is kept when at least two of its completions were scored and the std
    of their rewards exceeds `std_tol` (DAPO: accuracy 0 or 1 teaches nothing), and, with an `accuracy_window`,
    when the mean of `accuracy` (the rewards before shaping; default `rewards`) lies strictly inside it. Returns a
    bool tensor with one value per group.
    """
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not form groups of {num_generations}")
    grouped = rewards.view(-1, num_generations).float()
    scored = ~torch.isnan(grouped)
    count = scored.sum(dim=1)
    mean = torch.nansum(grouped, dim=1) / count.clamp(min=1)
    centered = torch.where(scored, grouped - mean.unsqueeze(1), torch.zeros_like(grouped))
    std = (centered.pow(2).sum(dim=1) / (count - 1).clamp(min=1)).sqrt()  # unbiased, like TRL's nanstd
    keep = (count >= 2) & (std > std_tol)
    if accuracy_window is not None:
        verdicts = (rewards if accuracy is None else accuracy).view(-1, num_generations).float()
        acc = torch.nansum(verdicts, dim=1) / (~torch.isnan(verdicts)).sum(dim=1).clamp(min=1)
        keep &= (acc > accuracy_window[0]) & (acc < accuracy_window[1])
    return keep


def check_supported(batch: dict) -> None:
    bad = [k for k in UNSUPPORTED_KEYS if k in batch]
    if bad:
        raise NotImplementedError(f"dynamic sampling does not support multimodal batches (keys {bad}); "
                                  "set dynamic_sampling=False")


def select_rows(batch: dict, index: torch.Tensor) -> dict:
    """The rows `index` (bool mask or integer indices) of every per-row tensor; drops `num_items_in_batch`."""
    check_supported(batch)
    return {k: v[index] for k, v in batch.items() if k != "num_items_in_batch"}


def num_rows(batch: dict) -> int:
    return int(batch["prompt_ids"].size(0))


def concat_rows(parts: list[dict], pad_token_id: int, token_level_keys: tuple[str, ...] = ()) -> dict:
    """Stack the rows of several generation outputs, padding prompts on the left and completions on the right.

    `token_level_keys` names further (rows, completion tokens) keys, e.g. a token-level importance-sampling ratio.
    `num_items_in_batch` is not carried over: the caller recomputes it for the merged batch.
    """
    parts = [p for p in parts if num_rows(p) > 0] or parts[:1]
    completion_keys = set(COMPLETION_KEYS) | set(token_level_keys)
    out = {}
    for key in parts[0]:
        if key == "num_items_in_batch":
            continue
        values = [p[key] for p in parts]
        if key in PROMPT_KEYS or key in completion_keys:
            width = max(v.size(1) for v in values)
            fill = pad_token_id if key.endswith("_ids") else (1 if key == "tool_mask" else 0)
            side = (lambda w: (w, 0)) if key in PROMPT_KEYS else (lambda w: (0, w))
            values = [F.pad(v, side(width - v.size(1)), value=fill) for v in values]
        elif any(v.shape[1:] != values[0].shape[1:] for v in values):
            raise ValueError(f"cannot merge generation batches: {key!r} has shapes {[tuple(v.shape) for v in values]}")
        out[key] = torch.cat(values, dim=0)
    return out


def group_by_length(slices: list[dict], group: int, token_level_keys: tuple[str, ...] = ()) -> list[dict]:
    """Re-deal the rows of each run of `group` consecutive micro-batches (one optimizer step's) by completion length,
    longest first, into micro-batches of the same sizes, each cut to its own longest completion.

    TRL pads every completion of a generation batch to the longest one and shuffles rows across micro-batches, so
    with lengths that vary (reasoning traces of 1k-16k tokens) most micro-batches forward mostly padding. The step's
    rows, their tensors and `num_items_in_batch` are unchanged, so losses that sum a step's token (or row) terms
    over a fixed normalizer give the same update. Prompts keep their width (so every token keeps its position and
    its numbers); a micro-batch keeps at least 2 completion columns. The length is `completion_mask`'s row sum
    (TRL right-pads; a masked truncated completion counts 0).
    """
    out = []
    completion_keys = set(COMPLETION_KEYS) | set(token_level_keys)
    for start in range(0, len(slices), group):
        chunk = slices[start:start + group]
        sizes = [num_rows(s) for s in chunk]
        if any(set(s) != set(chunk[0]) for s in chunk):
            raise ValueError(f"micro-batches {start}..{start + len(chunk) - 1} have different keys")
        check_supported(chunk[0])
        rows = {k: torch.cat([s[k] for s in chunk]) for k in chunk[0] if k != "num_items_in_batch"}
        lengths = rows["completion_mask"].sum(dim=1)
        order = torch.argsort(lengths, descending=True, stable=True)
        offset = 0
        for size, original in zip(sizes, chunk):
            index = order[offset:offset + size]
            offset += size
            # at least 2 columns: TRL's metric helpers read a (rows, 1) tensor as per-sequence values and would
            # average a 1-token micro-batch's entropy and KL over its masked rows too
            width = max(int(lengths[index].max()), 2) if size else 2
            batch = {k: v[index][:, :width] if k in completion_keys and v.dim() == 2 else v[index]
                     for k, v in rows.items()}
            if "num_items_in_batch" in original:
                batch["num_items_in_batch"] = original["num_items_in_batch"]
            out.append(batch)
    return out


def mixture_view(dataset, env_weights: dict[str, float], seed: int = 0, env_column: str = "env"):
    """A view of `dataset` with the same number of rows in which each environment's share follows `env_weights`
    (rows of an environment are cycled in a shuffled order, so a share larger than the data repeats rows as evenly
    as possible). Environments not in `env_weights` are left out."""
    import random

    envs = dataset[env_column]
    rows: dict[str, list[int]] = {}
    for i, env in enumerate(envs):
        rows.setdefault(env, []).append(i)
    unknown = sorted(set(env_weights) - set(rows))
    if unknown:
        raise ValueError(f"env_weights: no rows for {unknown} in the dataset (it has {sorted(rows)})")
    total = sum(env_weights.values())
    rng = random.Random(seed)
    picked: list[int] = []
    for env, weight in sorted(env_weights.items()):
        want = round(len(envs) * weight / total)
        pool = rows[env][:]
        while want > 0:
            rng.shuffle(pool)
            picked.extend(pool[:want])
            want -= min(want, len(pool))
    rng.shuffle(picked)
    return dataset.select(picked)

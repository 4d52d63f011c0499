"""A tiny Qwen2-architecture model and its tokenizer, built locally from nothing (no download).

`build_tiny_model(output_dir)` trains a byte-level BPE tokenizer with `tokenizers` on text from the demo's generated
tasks (every digit its own token, so arithmetic is learnable; ChatML special tokens and chat template, so TRL's
`apply_chat_template` works), builds a randomly initialised `Qwen2ForCausalLM` from a config, and saves both with
`save_pretrained`. It is what the demo, the trainer's tests and `configs/tiny-cpu.yaml` start from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# The model's shape. Any Qwen2Config field can be overridden through `build_tiny_model(..., **size_overrides)`;
# `vocab_size` sets the tokenizer's BPE vocabulary size (the model's embedding matches the trained tokenizer).
DEFAULT_SIZE: dict[str, Any] = {
    "vocab_size": 640,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, EOS_TOKEN = "<|endoftext|>", "<|im_end|>"
# ChatML, as Qwen2 uses it. Rendering a prompt with `add_generation_prompt=True` is a prefix of rendering the
# prompt plus the assistant's reply, which is what TRL's prompt-completion SFT and GRPO rely on.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_MARKER = "tiny_build.json"  # what was built, so a second call can skip (or refuse a different build)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer whose merges never cross a digit: every digit is a token of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, unk_token=None, bos_token=None,
        model_max_length=DEFAULT_SIZE["max_position_embeddings"], padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _chat_texts(seed: int) -> list[str]:
    """Tokenizer training text: the demo's generated tasks rendered as ChatML conversations."""
    from prorl.demo.tasks import tokenizer_corpus

    return tokenizer_corpus(seed=seed)


def build_tiny_model(output_dir: str, seed: int = 0, **size_overrides) -> str:
    """Build (or reuse) a tiny Qwen2ForCausalLM + tokenizer in `output_dir`; returns `output_dir`.

    Idempotent: if `output_dir` already holds a build with the same seed and size it is returned untouched; a
    build with different settings raises instead of being overwritten.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    size = {**DEFAULT_SIZE, **size_overrides}
    if not set(size_overrides) <= set(Qwen2Config().to_dict()) | set(DEFAULT_SIZE):
        unknown = sorted(set(size_overrides) - set(Qwen2Config().to_dict()))
        raise TypeError(f"build_tiny_model: unknown size fields {unknown} (use Qwen2Config field names)")
    out = Path(output_dir)
    wanted = {"seed": seed, "size": size}
    marker = out / _MARKER
    if marker.exists():
        have = json.loads(marker.read_text())
        if have == wanted:
            return str(out)
        diff = sorted(k for k in set(have["size"]) | set(size) if have["size"].get(k) != size.get(k))
        if have.get("seed") != seed:
            diff.append("seed")
        raise ValueError(f"{out} already holds a tiny model built with other settings ({', '.join(diff)}); "
                         f"pick another directory or delete it")

    tokenizer = train_tokenizer(_chat_texts(seed), vocab_size=int(size["vocab_size"]))
    config = Qwen2Config(
        **{**size, "vocab_size": len(tokenizer)},
        tie_word_embeddings=True, rope_theta=10000.0, hidden_act="silu", rms_norm_eps=1e-6,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    marker.write_text(json.dumps(wanted, indent=1) + "\n")  # written last: its presence means the build is whole
    return str(out)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_model(args.output_dir, seed=args.seed))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

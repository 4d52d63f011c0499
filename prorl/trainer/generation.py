"""A generation backend meant to be faster on GPU (not yet run on one; 0.74-0.89x "hf" on CPU, demo model): a
static-KV-cache decode loop, optionally compiled.

`generate(model, input_ids, attention_mask, generation_config, backend=...)` returns the completion ids (B, T) with
the conventions of `model.generate(...)[:, prompt_len:]`: left-padded prompts in, finished rows padded with
`pad_token_id` after their EOS, and T the number of steps until every row finished (or `max_new_tokens`).

Backends:
  - "hf": `model.generate` itself (what TRL runs: a dynamic cache, one host sync per token).
  - "static": `StaticCacheGenerator`. One `StaticCache` allocated per batch shape and reused across calls; the
    prompt prefilled eagerly; the one-token decode step optionally `torch.compile`d (mode "reduce-overhead", i.e.
    CUDA graphs, by default on GPU; off on CPU); the "all rows finished" check read on the host only every
    `stop_check_every` steps (finished rows keep being decoded, their tokens replaced by padding, as HF does).
    The logits processors are transformers' own, built in `generate`'s order, and sampling is `torch.multinomial`'s
    own one-sample algorithm on the same (B, V) probabilities (see `sample_one`) without its per-token host sync:
    under greedy decoding the tokens are HF's (in bf16: those of `generate` with `cache_implementation="static"`;
    attention over a static cache rounds differently from the default dynamic one), and under sampling with the
    same seed they are the same draws within the call (tested on CPU, tests/test_generation.py); the random
    stream after it is not HF's (up to `stop_check_every - 1` steps are sampled past the last EOS), so later calls
    draw other, equally distributed, samples.

`pack_gqa` (on by default): the one-token GQA attention path of `prorl.trainer.gqa_attention`, taken for the
duration of a `StaticCacheGenerator` call.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from transformers import GenerationConfig, StaticCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .gqa_attention import attention_implementation, register_gqa_decode_attention

log = logging.getLogger(__name__)
BACKENDS = ("hf", "static")

# Generation options this backend does not implement, with the value(s) that mean "off". A config that turns one
# on is refused with its name rather than silently decoded differently from `model.generate`.
_UNSUPPORTED_OFF = {
    "num_beams": (1,), "num_return_sequences": (1,), "num_beam_groups": (1,), "penalty_alpha": (),
    "no_repeat_ngram_size": (0,), "encoder_no_repeat_ngram_size": (0,), "bad_words_ids": (), "force_words_ids": (),
    "constraints": (), "sequence_bias": (), "guidance_scale": (1.0,), "typical_p": (1.0,), "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,), "top_h": (), "forced_bos_token_id": (), "forced_eos_token_id": (),
    "suppress_tokens": (), "begin_suppress_tokens": (), "exponential_decay_length_penalty": (),
    "renormalize_logits": (False,), "remove_invalid_values": (False,), "watermarking_config": (),
    "stop_strings": (), "max_time": (), "prefill_chunk_size": (), "dola_layers": (), "assistant_early_exit": (),
    "prompt_lookup_num_tokens": (), "output_scores": (False,), "output_logits": (False,),
    "return_dict_in_generate": (False,), "encoder_repetition_penalty": (1.0,),
}


# -- Generation config: the same values `model.generate` would use ---------------------------------------------
def resolve_generation_config(model, generation_config: GenerationConfig | None) -> GenerationConfig:
    """`generation_config` with its unset (None) fields filled from `model.generation_config`, then from
    transformers' global defaults: the priority `model.generate` applies. Unsupported options raise ValueError."""
    resolved = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    resolved.update(**model.generation_config.to_dict(), defaults_only=True, allow_custom_entries=True)
    resolved.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    for name, off in _UNSUPPORTED_OFF.items():
        value = getattr(resolved, name, None)
        if value is not None and value not in off:
            raise ValueError(f"generation_config.{name}={value!r} is not supported by the static generation backend "
                             f"(use backend='hf')")
    if resolved.max_new_tokens is None:
        raise ValueError("generation_config.max_new_tokens must be set for the static generation backend")
    if resolved.eos_token_id is None:
        raise ValueError("generation_config.eos_token_id is unset (and the model's generation_config has none)")
    return resolved


def eos_ids(config: GenerationConfig) -> list[int]:
    eos = config.eos_token_id
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


def pad_id(config: GenerationConfig) -> int:
    return int(config.pad_token_id) if config.pad_token_id is not None else eos_ids(config)[0]


def logits_processors(config: GenerationConfig, prompt_len: int, attention_mask: torch.Tensor) -> LogitsProcessorList:
    """transformers' processors for the supported options, in the order `model.generate` builds them."""
    device = attention_mask.device
    eos = torch.tensor(eos_ids(config), device=device)
    procs = LogitsProcessorList()
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        left_pad = (attention_mask != 0).int().argmax(dim=1)
        procs.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, prompt_ignore_length=left_pad))
    if config.min_length:
        procs.append(MinLengthLogitsProcessor(config.min_length, eos, device=device))
    if config.min_new_tokens:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, config.min_new_tokens, eos, device=device))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            procs.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
        if config.min_p is not None:
            procs.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
    return procs


def sample_one(probs: torch.Tensor) -> torch.Tensor:
    """One token per row, the same draw as `torch.multinomial(probs, 1)` from the same RNG state: for one sample,
    ATen's multinomial draws q ~ Exp(1) per entry and takes argmax(p / q) (the exponential race), but first checks
    `probs` with a `.item()`, a host sync per token. This is that algorithm without the check (the decode loop
    checks the probabilities when it syncs anyway)."""
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(dim=-1)


@contextlib.contextmanager
def _without_input_grad_hooks(model) -> Iterator[None]:
    """Detach, for the block, the `make_inputs_require_grads` forward hooks of the input embeddings.

    transformers 5.23's `gradient_checkpointing_enable` registers one more such hook at every call and its
    `disable` keeps them (PEFT aside), and TRL disables/re-enables checkpointing around every generation: the hook
    count grows by one per step, and a compiled decode step, which guards on it, would recompile (and re-capture
    its CUDA graphs) at every training step. Under `no_grad` the hooks do nothing useful."""
    hooks = model.get_input_embeddings()._forward_hooks
    saved = hooks.copy()
    for key, hook in saved.items():
        if getattr(hook, "__name__", "") == "make_inputs_require_grads":
            del hooks[key]
    try:
        yield
    finally:
        hooks.clear()
        hooks.update(saved)  # in their order


# -- The static-cache decode loop ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CacheKey:
    batch: int
    length: int
    dtype: torch.dtype
    device: torch.device


class StaticCacheGenerator:
    """Decode with a reusable `StaticCache` and an optionally compiled one-token step (see the module docstring).

    Args:
        model: a decoder-only transformers model (`StaticCache` must support its layers).
        compile: compile the decode step; None: only on CUDA, and not for models with sliding-window layers.
        compile_mode: `torch.compile` mode; "reduce-overhead" captures the step in a CUDA graph.
        compile_backend: `torch.compile` backend ("inductor"; "eager" traces without generating code; a callable).
        pack_gqa: keep the packed GQA path for one-token queries under compile (sdpa models only).
        stop_check_every: read "all rows finished" on the host every this many steps (1: every step, like HF).
        cache_len_multiple: round the cache length up to a multiple of this; a kept cache at least as long is
            reused, a longer one replaces it (a new cache shape means a new compile and CUDA-graph capture).
    """

    def __init__(self, model, compile: bool | None = None, compile_mode: str | None = "reduce-overhead",
                 compile_backend: str | Callable = "inductor", pack_gqa: bool = True, stop_check_every: int = 16,
                 cache_len_multiple: int = 256):
        if stop_check_every < 1:
            raise ValueError(f"stop_check_every must be >= 1, got {stop_check_every}")
        if cache_len_multiple < 1:
            raise ValueError(f"cache_len_multiple must be >= 1, got {cache_len_multiple}")
        self._model = weakref.ref(model)  # not a strong reference: a generator kept per model must not keep it alive
        self.compile = compile
        self.pack_gqa = pack_gqa
        self.stop_check_every = stop_check_every
        self.cache_len_multiple = cache_len_multiple
        self._compile_kwargs = {"mode": compile_mode, "backend": compile_backend, "fullgraph": True, "dynamic": False}
        self._compiled_step = None
        self._eager_shapes: set[tuple[int, int, bool]] = set()  # (batch, cache length, training) past the limit
        self._cache: StaticCache | None = None
        self._cache_key: _CacheKey | None = None

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this StaticCacheGenerator was garbage-collected")
        return model

    def _uses_compile(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.compile is None else self.compile

    def _decode_step(self, tokens, position_ids, attention_mask, cache) -> torch.Tensor:
        """One token per row through the model; the next-token logits in float32, (B, V)."""
        out = self.model(input_ids=tokens, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        return out.logits[:, -1].float()

    def _static_cache(self, batch: int, length: int, device: torch.device) -> tuple[StaticCache, int]:
        """The cache for this batch and its length: the kept one (reset) if it is long enough, else a new one as
        long as the longest asked so far (as HF does), so the cache shape, hence the compiled graph, only grows."""
        key = _CacheKey(batch, length, self.model.dtype, device)
        old = self._cache_key
        if old is not None and dataclasses.replace(old, length=length) == key and old.length >= length:
            self._cache.reset()
            return self._cache, old.length
        if old is not None and dataclasses.replace(old, length=length) == key:
            key = dataclasses.replace(key, length=max(length, old.length))
        self._cache = None  # free the old buffers before allocating new ones
        self._cache = StaticCache(config=self.model.config, max_cache_len=key.length)
        self._cache_key = key
        return self._cache, key.length

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 generation_config: GenerationConfig | None = None) -> torch.Tensor:
        config = resolve_generation_config(self.model, generation_config)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                             "must both be (batch, prompt_len)")
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("attention_mask: prompts must be left-padded (every row's last position is a token)")
        device = input_ids.device
        attention = None
        if self.pack_gqa and self.model.config._attn_implementation == "sdpa":
            attention = register_gqa_decode_attention()
        with attention_implementation(self.model, attention), _without_input_grad_hooks(self.model):
            return self._generate(input_ids, attention_mask.long(), config, device)

    def _generate(self, input_ids, attention_mask, config: GenerationConfig, device) -> torch.Tensor:
        batch, prompt_len = input_ids.shape
        max_new = int(config.max_new_tokens)
        total = prompt_len + max_new
        cache, cache_len = self._static_cache(batch, -(-total // self.cache_len_multiple) * self.cache_len_multiple,
                                              device)
        # The 2D mask over the whole cache: prompt padding, then every later position "on" (causality hides the
        # positions not written yet). One fixed shape for every decode step, so a compiled step never recompiles.
        full_mask = torch.ones(batch, cache_len, dtype=torch.long, device=device)
        full_mask[:, :prompt_len] = attention_mask
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        step = self._decode_step
        # transformers' sliding-window cache layers keep their fill level in a Python int: a compiled step would
        # recompile at every token (and fail at dynamo's recompile limit), so those models decode eagerly.
        sliding = any(getattr(cache, "is_sliding", ()))
        if sliding and self.compile:
            raise ValueError("compile=True: the model has sliding-window attention layers, whose static cache a "
                             "compiled decode step cannot keep (it recompiles every step); use compile=False")
        shape = (batch, cache_len, self.model.training)
        if self._uses_compile(device) and not sliding and shape not in self._eager_shapes:
            if self._compiled_step is None:
                self._compiled_step = torch.compile(self._decode_step, **self._compile_kwargs)
            step = self._compiled_step
        cuda_graphs = step is self._compiled_step and self._compile_kwargs["mode"] == "reduce-overhead"

        eos = torch.tensor(eos_ids(config), device=device)
        pad = pad_id(config)
        processors = logits_processors(config, prompt_len, attention_mask)
        # Tokens so far (prompt + completion), for the processors that look at them; views of it grow per step.
        sequence = torch.full((batch, total), pad, dtype=torch.long, device=device)
        sequence[:, :prompt_len] = input_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        invalid = torch.zeros((), dtype=torch.bool, device=device)  # NaN/negative probabilities seen (sampling)

        out = self.model(input_ids=input_ids, attention_mask=full_mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        del out
        next_pos = positions[:, -1:].clone()
        steps = 0
        for t in range(max_new):
            scores = processors(sequence[:, :prompt_len + t], logits)
            if config.do_sample:
                probs = torch.softmax(scores, dim=-1)
                invalid |= ~(probs >= 0).all()
                tokens = sample_one(probs)
            else:
                tokens = torch.argmax(scores, dim=-1)
            tokens = torch.where(finished, pad, tokens)
            sequence[:, prompt_len + t] = tokens
            finished |= torch.isin(tokens, eos)
            steps = t + 1
            if steps == max_new or steps % self.stop_check_every == 0:
                all_finished, bad = torch.stack([finished.all(), invalid]).tolist()  # the one host sync
                if bad:
                    raise RuntimeError(f"generation: the probabilities hold NaN or negative values (by step {steps})")
                if all_finished or steps == max_new:
                    break
            next_pos += 1
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            try:
                logits = step(tokens[:, None], next_pos, full_mask, cache)
            except torch._dynamo.exc.FailOnRecompileLimitHit:  # raised before the step ran: nothing written yet
                # Each new batch size / cache length (or train/eval mode) is one more graph of `_decode_step`, shared
                # by every generator; past dynamo's recompile_limit, the shapes not compiled yet decode eagerly
                # (this generator remembers them: one warning per shape, no compile attempt at later calls).
                self._eager_shapes.add(shape)
                log.warning("generation: the compiled decode step hit a dynamo recompile limit (recompile_limit "
                            "%d); decoding batch %d, cache length %d eagerly", torch._dynamo.config.recompile_limit,
                            batch, cache_len)
                step, cuda_graphs = self._decode_step, False
                logits = step(tokens[:, None], next_pos, full_mask, cache)
        completion = sequence[:, prompt_len:prompt_len + steps]
        return completion[:, :_steps_until_all_finished(completion, eos)]


def _steps_until_all_finished(completion: torch.Tensor, eos: torch.Tensor) -> int:
    """The number of steps `model.generate` runs: until the last row emitted its first EOS, else all of them."""
    is_eos = torch.isin(completion, eos)
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completion.shape[1])
    return int(first.max()) if completion.shape[0] else 0


# -- Entry points ------------------------------------------------------------------------------------------------
_GENERATORS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[dict, StaticCacheGenerator]]" = (
    weakref.WeakKeyDictionary())


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
             generation_config: GenerationConfig | None = None, backend: str = "static", **options) -> torch.Tensor:
    """Completion ids (B, T) for left-padded prompts, as `model.generate(...)[:, prompt_len:]` returns them.

    `options` go to `StaticCacheGenerator` (backend "static"); the generator, its cache and its compiled step are
    kept per model and reused by later calls with the same options.
    """
    if backend == "hf":
        if options:
            raise ValueError(f"backend 'hf' takes no options, got {sorted(options)}")
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config)
        return out[:, input_ids.shape[1]:]
    if backend != "static":
        raise ValueError(f"generation backend must be one of {BACKENDS}, got {backend!r}")
    held = _GENERATORS.get(model)
    if held is None or held[0] != options:
        held = (dict(options), StaticCacheGenerator(model, **options))
        _GENERATORS[model] = held
    return held[1](input_ids, attention_mask, generation_config)


def until_first_eos(completion_ids: torch.Tensor, eos_token_ids: list[int]) -> list[list[int]]:
    """Each row's tokens up to and including its first EOS (all of them if it has none), as TRL keeps them."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device))
    ends = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completion_ids.shape[1]).tolist()
    return [row[:end] for row, end in zip(completion_ids.tolist(), ends)]


def trainer_generate(trainer, prompt_ids: list[list[int]], backend: str = "static", **options) -> list[list[int]]:
    """TRL's regular (no vLLM) generation path of `GRPOTrainer._generate_single_turn` for text prompts, decoded by
    `backend`: the unwrapped model (gradient checkpointing off, ZeRO-3 parameters gathered, the trainer's generation
    kwargs in force), left-padded prompt tensors, and each completion cut after its first EOS."""
    from trl.extras.profiling import profiling_context
    from trl.models.utils import unwrap_model_for_generation
    from trl.trainer.utils import pad

    device = trainer.accelerator.device
    prompts = [torch.tensor(ids) for ids in prompt_ids]
    input_ids = pad(prompts, padding_value=trainer._tokenizer.pad_token_id, padding_side="left").to(device)
    attention_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left").to(device)
    with (
        profiling_context(trainer, f"prorl.generate.{backend}"),
        unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator,
            gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
            generation_kwargs=trainer.generation_kwargs,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
        trainer._dist.summon_full_params(trainer.model_wrapped, recurse=False),
    ):
        completion_ids = generate(model, input_ids, attention_mask, trainer.generation_config, backend=backend,
                                  **options)
    return until_first_eos(completion_ids, trainer.eos_token_ids)

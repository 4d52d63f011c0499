"""Review findings on the static generation backend (prorl.trainer.generation), each with the case that failed.

Random tiny models in float64 (no near-ties that rounding could flip), compared with `model.generate`; the compiled
decode step is traced by a counting backend (no code generation, fast on CPU)."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from prorl.trainer.generation import StaticCacheGenerator, generate

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, PAD, EOS = 64, 0, 1
PROMPTS = [[9, 10], [3, 44, 5, 6, 7, 8, 12, 13, 14], [17, 18, 19, 20, 21], [33], [50, 51, 52], [41, 42, 43, 44, 45, 46]]
GREEDY = GenerationConfig(max_new_tokens=12, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)


def _model(**overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(**{**dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=False,
                                   attn_implementation="sdpa", initializer_range=0.3), **overrides})
    return Qwen2ForCausalLM(config).double().eval()


def _left_padded(prompts):
    width = max(map(len, prompts))
    ids, mask = torch.full((len(prompts), width), PAD), torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):], mask[i, width - len(prompt):] = torch.tensor(prompt), 1
    return ids, mask


@pytest.fixture
def graphs():
    """A torch.compile backend that counts the graphs it is given (and runs them uncompiled)."""
    compiled = []

    def backend(graph_module, example_inputs):
        compiled.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    yield compiled, backend
    torch._dynamo.reset()


def test_sliding_window_model_is_not_compiled(graphs):
    """Before: a compiled step recompiled at every token of a sliding-window model (transformers' sliding cache
    layer keeps its fill level in a Python int that dynamo guards on) and failed at the 9th step with
    FailOnRecompileLimitHit, also for a window longer than the sequence (Mistral v0.1: 4096)."""
    compiled, backend = graphs
    model = _model(use_sliding_window=True, sliding_window=4, max_window_layers=0)
    ids, mask = _left_padded(PROMPTS)
    expected = generate(model, ids, mask, GREEDY, backend="hf")
    with pytest.raises(ValueError, match="sliding-window"):
        StaticCacheGenerator(model, compile=True, compile_backend=backend, compile_mode=None)(ids, mask, GREEDY)
    auto = StaticCacheGenerator(model, compile=None, compile_backend=backend, compile_mode=None)
    auto._uses_compile = lambda device: True  # what compile=None means on CUDA
    assert torch.equal(auto(ids, mask, GREEDY), expected) and not compiled


def test_shapes_past_the_recompile_limit_decode_eagerly(graphs, caplog):
    """Before: every new batch size (dynamic-sampling refills, eval) or cache length is one more graph of the
    decode step, and past dynamo's recompile_limit (8) the fullgraph compile raised FailOnRecompileLimitHit,
    ending the run. Now those shapes decode eagerly; the compiled ones keep their graphs. A shape seen past the
    limit is remembered: one warning for it, however often it comes back (before: one at every call)."""
    compiled, backend = graphs
    model = _model()
    generator = StaticCacheGenerator(model, compile=True, compile_backend=backend, compile_mode=None,
                                     cache_len_multiple=4)
    with torch._dynamo.config.patch(recompile_limit=2), caplog.at_level("WARNING", "prorl.trainer.generation"):
        for rows in (1, 2, 3, 4, 2, 3, 3, 4):
            ids, mask = _left_padded(PROMPTS[:rows])
            assert torch.equal(generator(ids, mask, GREEDY), generate(model, ids, mask, GREEDY, backend="hf"))
    assert len(compiled) == 2
    warned = [r.getMessage() for r in caplog.records if "recompile limit" in r.getMessage()]
    assert len(warned) == 2 and "batch 3," in warned[0] and "batch 4," in warned[1], warned


def test_bf16_greedy_tokens_are_hf_static_cache_tokens():
    """In bf16 a static cache is not bitwise HF's default (dynamic-cache) generate: attention over the whole cache
    length rounds differently (here a third of the rows of a random model diverge somewhere). The reference that
    holds exactly is `model.generate` with its own static cache."""
    model = _model(initializer_range=0.1).bfloat16()
    ids, mask = _left_padded(PROMPTS * 8)
    config = GenerationConfig(max_new_tokens=24, do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
    static_hf = model.generate(input_ids=ids, attention_mask=mask, generation_config=GenerationConfig(
        **{**config.to_dict(), "cache_implementation": "static"}))[:, ids.shape[1]:]
    assert torch.equal(generate(model, ids, mask, config, backend="static"), static_hf)

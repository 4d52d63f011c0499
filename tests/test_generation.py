"""The static-cache generation backend against `model.generate` on CPU, with a tiny trained fp32 Qwen2.

The model is trained for a few seconds to count (s, s+1, ... up to a multiple of 8, then EOS), so greedy decoding
has large logit margins (no near-ties that rounding could flip) and rows finish at different steps.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM
from transformers.integrations.sdpa_attention import repeat_kv

from prorl.trainer.generation import StaticCacheGenerator, generate, resolve_generation_config, sample_one
from prorl.trainer.gqa_attention import sdpa_gqa_decode_forward

VOCAB, PAD, EOS = 64, 0, 1
PROMPTS = [[9, 10], [3], [17, 18, 19, 20, 21], [33, 34, 35], [50], [41, 42, 43, 44, 45, 46], [29, 30, 31]]


def _counting_row(start: int) -> list[int]:
    row = [start]
    while row[-1] % 8:
        row.append(row[-1] + 1)
    return row + [EOS]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(one_thread) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=PAD, eos_token_id=EOS, bos_token_id=None, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    model = Qwen2ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    starts = torch.Generator().manual_seed(0)
    for _ in range(60):
        rows = [_counting_row(int(s)) for s in torch.randint(2, VOCAB - 8, (32,), generator=starts)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), PAD)
        labels = torch.full((len(rows), width), -100)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = labels[i, :len(row)] = torch.tensor(row)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2, f"the counting model did not train (loss {loss.item():.3f})"
    model.eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    return model


def _left_padded(prompts: list[list[int]], repeat: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(prompt)
        mask[i, width - len(prompt):] = 1
    return ids.repeat(repeat, 1), mask.repeat(repeat, 1)


@pytest.mark.parametrize("max_new_tokens", [4, 12])  # 4: some rows are cut before their EOS; 12: all finish
@pytest.mark.parametrize("stop_check_every", [1, 3, 16])
@pytest.mark.parametrize("pack_gqa", [True, False])
def test_greedy_tokens_equal_hf_generate(model, max_new_tokens, stop_check_every, pack_gqa):
    ids, mask = _left_padded(PROMPTS)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    expected = generate(model, ids, mask, config, backend="hf")
    got = StaticCacheGenerator(model, stop_check_every=stop_check_every, pack_gqa=pack_gqa)(ids, mask, config)
    assert torch.equal(got, expected)
    # The batch really has EOS inside it, padding after it, and (at 4 tokens) rows cut off.
    finished = (got == EOS).any(dim=1)
    assert finished.any() and (max_new_tokens == 12) == bool(finished.all())
    assert (got == PAD).any()  # the rows that finished early
    assert model.config._attn_implementation == "sdpa"  # the override is switched back after the call


@pytest.mark.parametrize("options", [
    {"temperature": 1.5},
    {"temperature": 1.2, "top_k": 10, "top_p": 0.9, "min_new_tokens": 8},
    {"temperature": 4.0, "min_p": 0.02, "repetition_penalty": 1.3},
])
def test_sampling_draws_equal_hf_generate_with_same_seed(model, options):
    ids, mask = _left_padded(PROMPTS, repeat=30)
    config = GenerationConfig(max_new_tokens=14, do_sample=True, **options)
    torch.manual_seed(1234)
    expected = generate(model, ids, mask, config, backend="hf")
    torch.manual_seed(1234)
    got = generate(model, ids, mask, config, backend="static", stop_check_every=4)
    assert torch.equal(got, expected)
    assert len({tuple(row) for row in got.tolist()}) > len(PROMPTS)  # sampling did vary the rows


def test_sampling_distribution_matches_model_probabilities(model):
    """Independent of the RNG draw order: the first sampled token's frequencies over many rows are the model's
    tempered, top-k-truncated probabilities (total variation distance well inside sampling noise)."""
    ids, mask = _left_padded([[20, 21]], repeat=3000)
    config = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=3.0, top_k=5)
    torch.manual_seed(7)
    first = generate(model, ids, mask, config, backend="static")[:, 0]
    with torch.no_grad():
        logits = model(input_ids=ids[:1]).logits[0, -1] / 3.0
    top = logits.topk(5)
    expected = torch.zeros(VOCAB).index_put_((top.indices,), torch.softmax(top.values, dim=-1))
    observed = torch.bincount(first, minlength=VOCAB).float() / len(first)
    assert expected.max() < 0.9  # a real distribution, not a near-certain token
    assert 0.5 * (observed - expected).abs().sum() < 0.04
    assert set(first.unique().tolist()) <= set(top.indices.tolist())


def test_min_new_tokens_forces_the_length(model):
    ids, mask = _left_padded(PROMPTS)
    config = GenerationConfig(max_new_tokens=10, min_new_tokens=10, do_sample=True, temperature=1.0)
    got = generate(model, ids, mask, config, backend="static")
    assert got.shape == (len(PROMPTS), 10) and not (got == EOS).any()


def test_compiled_decode_step_traces_whole_and_reuses_its_cache(model):
    """torch.compile(fullgraph=True) of the decode step (backend 'eager': tracing without code generation, fast on
    CPU) gives HF's greedy tokens, with the pack_gqa override taken while dynamo traces; the cache is reused by a
    second call of the same shape and rebuilt for another shape."""
    ids, mask = _left_padded(PROMPTS)
    config = GenerationConfig(max_new_tokens=12, do_sample=False)
    expected = generate(model, ids, mask, config, backend="hf")
    generator = StaticCacheGenerator(model, compile=True, compile_backend="eager", compile_mode=None,
                                     cache_len_multiple=4)
    assert torch.equal(generator(ids, mask, config), expected)
    cache = generator._cache
    assert torch.equal(generator(ids, mask, config), expected) and generator._cache is cache
    shorter = GenerationConfig(max_new_tokens=5, do_sample=False)  # fits the kept (longer) cache: reused
    assert torch.equal(generator(ids, mask, shorter), generate(model, ids, mask, shorter, backend="hf"))
    assert generator._cache is cache
    smaller = generator(ids[:3], mask[:3], config)
    assert generator._cache is not cache
    assert torch.equal(smaller, generate(model, ids[:3], mask[:3], config, backend="hf"))


def test_gqa_decode_override_equals_repeated_kv_attention():
    torch.manual_seed(0)
    batch, kv_heads, groups, length, dim = 3, 2, 3, 10, 8

    class Layer(torch.nn.Module):
        num_key_value_groups = groups

    query = torch.randn(batch, kv_heads * groups, 1, dim)
    key, value = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    mask = torch.rand(batch, 1, 1, length) > 0.3
    mask[..., -1] = True
    out, _ = sdpa_gqa_decode_forward(Layer(), query, key, value, mask, scaling=0.5)
    reference = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, groups), repeat_kv(value, groups), attn_mask=mask, scale=0.5).transpose(1, 2)
    assert out.shape == (batch, 1, kv_heads * groups, dim)
    torch.testing.assert_close(out, reference)


def test_bad_input_is_refused_by_name(model):
    ids, mask = _left_padded(PROMPTS)
    with pytest.raises(ValueError, match="num_beams"):
        generate(model, ids, mask, GenerationConfig(max_new_tokens=4, num_beams=2), backend="static")
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids.flip(1), mask.flip(1), GenerationConfig(max_new_tokens=4), backend="static")
    with pytest.raises(ValueError, match="backend"):
        generate(model, ids, mask, GenerationConfig(max_new_tokens=4), backend="vllm")
    with pytest.raises(ValueError, match="stop_check_every"):
        StaticCacheGenerator(model, stop_check_every=0)


def test_generation_config_resolution_follows_generate(model):
    """Unset fields come from the model's generation config, then transformers' defaults (top_k=50 when sampling)."""
    resolved = resolve_generation_config(model, GenerationConfig(max_new_tokens=3, do_sample=True))
    assert (resolved.eos_token_id, resolved.pad_token_id, resolved.top_k, resolved.temperature) == (EOS, PAD, 50, 1.0)


def test_kept_generator_does_not_keep_its_model_alive():
    import gc
    import weakref

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD, eos_token_id=EOS)
    model = Qwen2ForCausalLM(config)
    ids, mask = _left_padded(PROMPTS)
    generate(model, ids, mask, GenerationConfig(max_new_tokens=2), backend="static")
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("pack_gqa", [True, False])
def test_pack_gqa_override_is_what_dynamo_traces(model, pack_gqa):
    """The finding behind the flag: while dynamo traces the decode step, transformers' sdpa path repeats K/V per
    query head (query (B, heads, 1, D)); with the override the traced attention runs on packed queries
    (B, kv_heads, groups, D)."""
    query_shapes = []

    def capture(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target):
                query_shapes.append(tuple(node.args[0].meta["example_value"].shape))
        return graph_module.forward

    ids, mask = _left_padded(PROMPTS)
    torch._dynamo.reset()
    generator = StaticCacheGenerator(model, compile=True, compile_backend=capture, compile_mode=None,
                                     pack_gqa=pack_gqa)
    generator(ids, mask, GenerationConfig(max_new_tokens=3, do_sample=False))
    torch._dynamo.reset()
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    expected = (len(PROMPTS), kv_heads, heads // kv_heads, 16) if pack_gqa else (len(PROMPTS), heads, 1, 16)
    assert query_shapes == [expected] * model.config.num_hidden_layers


def test_sample_one_is_multinomials_draw():
    """Same RNG state, same token as torch.multinomial(probs, 1), and the same RNG state afterwards."""
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        batch, vocab = int(torch.randint(1, 20, (1,), generator=gen)), int(torch.randint(2, 2000, (1,), generator=gen))
        logits = torch.randn(batch, vocab, generator=gen) * 5
        logits[:, : vocab // 3] = -float("inf")  # truncated distributions, as top-k/top-p leave them
        probs = torch.softmax(logits, dim=-1)
        torch.manual_seed(trial)
        expected, after_expected = torch.multinomial(probs, 1).squeeze(1), torch.rand(2)
        torch.manual_seed(trial)
        got, after_got = sample_one(probs), torch.rand(2)
        assert torch.equal(got, expected) and torch.equal(after_got, after_expected)


def test_nan_probabilities_are_reported():
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=PAD, eos_token_id=EOS,
                         tie_word_embeddings=False)
    broken = Qwen2ForCausalLM(config)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    ids, mask = _left_padded(PROMPTS)
    with pytest.raises(RuntimeError, match="NaN"):
        generate(broken, ids, mask, GenerationConfig(max_new_tokens=5, do_sample=True), backend="static")

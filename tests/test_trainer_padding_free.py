"""padding_free: the log-prob passes forward packed rows of real tokens and give TRL's padded values and update."""

from __future__ import annotations

import pytest
import torch
from trainer_utils import (fast_config, history, prompt_dataset, text_hash_reward, tiny_model,  # noqa: F401
                           tiny_moe_model, varied_length_model)

from prorl.trainer import ProRLConfig, ProRLTrainer
from prorl.trainer.packing import IGNORE, first_fit_decreasing, pack_rows, packing_error


def test_pack_rows_layout():
    """Left-padded prompts (3 columns) + right-padded completions (3 columns): the real tokens in rows no longer
    than the longest sequence, positions restarting per sequence, each completion token's label at the position
    that predicts it, and a row with no completion token left out."""
    ids = torch.tensor([[0, 5, 6, 7, 8, 0],
                        [3, 4, 5, 9, 9, 9],
                        [0, 0, 7, 1, 0, 0],  # completion masked (truncated): nothing to score
                        [0, 0, 2, 4, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1, 1],
                         [0, 0, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0]])
    p = pack_rows(ids, mask, logits_to_keep=3, pad_token_id=0)  # rows of at most the padded width, 6
    assert p.input_ids.tolist() == [[3, 4, 5, 9, 9, 9], [5, 6, 7, 8, 2, 4]]  # 6 | 4 + 2: first fit decreasing
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 0, 1]]
    assert p.shift_labels.tolist() == [[IGNORE, IGNORE, 9, 9, 9, IGNORE], [IGNORE, 7, 8, IGNORE, 4, IGNORE]]
    scores = torch.arange(12.0).view(2, 6) + 1
    assert p.unpack(scores).tolist() == [[8, 9, 0], [3, 4, 5], [0, 0, 0], [11, 0, 0]]
    wide = pack_rows(ids, mask, logits_to_keep=3, max_tokens=100)  # everything in one row
    assert wide.input_ids.tolist() == [[3, 4, 5, 9, 9, 9, 5, 6, 7, 8, 2, 4]]
    assert wide.unpack(torch.arange(12.0).view(1, 12) + 1).tolist() == [[8, 9, 0], [3, 4, 5], [0, 0, 0], [11, 0, 0]]
    nothing = pack_rows(ids[2:3], mask[2:3], logits_to_keep=3)  # no row to score: one row still runs
    assert nothing.input_ids.tolist() == [[7]] and nothing.unpack(torch.ones(1, 1)).tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError, match="logits_to_keep 7 not in 1..6"):
        pack_rows(ids, mask, logits_to_keep=7)


def test_first_fit_decreasing():
    assert first_fit_decreasing([3, 5, 2, 4, 1], capacity=5) == [[1], [3, 4], [0, 2]]
    assert first_fit_decreasing([9, 2], capacity=5) == [[0], [1]]  # too long: a bin of its own


def _trainer(model, tmp_path, name, **overrides):
    args = fast_config(tmp_path / name, beta=0.1, **overrides)
    return ProRLTrainer(model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(8))


def _batch(vocab: int, rows: int = 7, prompt: int = 9, completion: int = 12, seed: int = 0):
    """Left-padded prompts of 2..prompt tokens, right-padded completions of 0..completion tokens (0: masked)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, prompt + completion), generator=g)
    p_len = torch.randint(2, prompt + 1, (rows,), generator=g)
    c_len = torch.randint(1, completion + 1, (rows,), generator=g)
    c_len[1] = 0  # a masked completion
    c_len[2] = completion  # one that fills the width
    cols = torch.arange(prompt + completion)
    mask = ((cols[None] >= prompt - p_len[:, None]) & (cols[None] < prompt + c_len[:, None])).long()
    return ids.masked_fill(mask == 0, 0), mask, completion


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("max_tokens", [None, 1000])
def test_packed_logps_entropies_and_gradients_equal_the_padded_ones(tiny_model, tmp_path, attn, max_tokens):
    trainer = _trainer(tiny_model, tmp_path, "t", model_init_kwargs={"attn_implementation": attn},
                       padding_free_max_tokens=max_tokens)
    model = trainer.model
    assert model.config._attn_implementation == attn
    ids, mask, keep = _batch(model.config.vocab_size)
    completion_mask = mask[:, -keep:].float()

    def run(padding_free: bool, batch_size=None):
        trainer.args.padding_free = padding_free
        model.zero_grad()
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, keep, batch_size=batch_size,
                                                                       compute_entropy=True)
        (logps * completion_mask).sum().backward()
        return logps.detach(), entropy.detach(), [p.grad.clone() for p in model.parameters()]

    padded, packed, chunked = run(False), run(True), run(True, batch_size=3)
    for other in (packed, chunked):
        torch.testing.assert_close(other[0], padded[0] * completion_mask, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other[1], padded[1] * completion_mask, atol=1e-5, rtol=1e-5)
        for g_padded, g_other in zip(padded[2], other[2]):
            torch.testing.assert_close(g_other, g_padded, atol=1e-5, rtol=1e-4)
    assert (packed[0][1] == 0).all() and (packed[0][0] != 0).any()


class Counting(ProRLTrainer):
    """Token positions each forward of the log-prob passes computes (the model's input size)."""

    positions = 0

    def _get_per_token_logps_and_entropies(self, model, input_ids, *a, **k):
        def count(module, args, kwargs):
            self.positions += kwargs["input_ids"].numel()

        hook = model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            return super()._get_per_token_logps_and_entropies(model, input_ids, *a, **k)
        finally:
            hook.remove()


@pytest.mark.slow
@pytest.mark.parametrize("grouped, max_tokens", [(False, None), (True, 1024)])
def test_padding_free_training_gives_the_same_run_with_fewer_positions(tiny_model, tmp_path, grouped, max_tokens):
    """beta > 0, 2 optimizer steps per generation (old-policy log-probs), dynamic sampling, completions of varied
    lengths: the same losses, KL, entropy and weights as TRL's padded passes, fewer token positions forwarded;
    with group_micro_batches_by_length as well (whose micro-batches are cut to their longest completion: there
    each sequence is over half the width, so only rows longer than the padded one pack them)."""
    model = varied_length_model(tiny_model, tmp_path)
    runs = {}
    for padding_free in (False, True):
        args = fast_config(tmp_path / f"pf{padding_free}", per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           steps_per_generation=4, num_generations=4, max_completion_length=16, max_steps=2,
                           beta=0.1, dynamic_sampling=True, group_micro_batches_by_length=grouped,
                           padding_free=padding_free, padding_free_max_tokens=max_tokens)
        trainer = Counting(model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(8))
        trainer.train()
        runs[padding_free] = trainer
    plain, packed = runs[False], runs[True]
    assert packed.positions < plain.positions
    for key in ("loss", "kl", "entropy"):
        assert history(packed, key) == pytest.approx(history(plain, key), abs=1e-5), key
    for (name, p), q in zip(plain.model.named_parameters(), packed.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=1e-5, msg=name)


def _tiny_opt(tiny_model, tmp_path) -> str:
    """A 2-layer OPT with the tiny model's tokenizer: transformers 5.23 builds its mask without the position ids, so
    packed sequences would attend to each other."""
    import json
    import shutil

    from transformers import OPTConfig, OPTForCausalLM

    path = tmp_path / "tiny-opt"
    shutil.copytree(tiny_model, path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                             word_embed_proj_dim=32, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
                             eos_token_id=2)).save_pretrained(path)
    return str(path)


def test_the_probe_measures_whether_packed_sequences_stay_apart(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    for attn in ("sdpa", "eager"):
        qwen = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn)
        leak, position = packing_error(qwen, one_row=False)
        assert leak == 0.0 and position < 1e-5, (attn, leak, position)
    opt = AutoModelForCausalLM.from_pretrained(_tiny_opt(tiny_model, tmp_path))
    assert packing_error(opt, one_row=False)[0] > 1e-3
    assert packing_error(opt, one_row=True)[0] > 1e-3  # one row per forward does not help it


def test_padding_free_refuses_a_model_whose_packed_sequences_see_each_other(tiny_model, tmp_path):
    args = fast_config(tmp_path / "o", padding_free=True)
    with pytest.raises(ValueError, match=r"padding_free: OPTForCausalLM \(sdpa\) lets packed sequences see each other"):
        ProRLTrainer(_tiny_opt(tiny_model, tmp_path), reward_funcs=text_hash_reward, args=args,
                     train_dataset=prompt_dataset(8))
    ProRLTrainer(_tiny_opt(tiny_model, tmp_path / "b"), reward_funcs=text_hash_reward,  # padded: fine
                 args=fast_config(tmp_path / "o2"), train_dataset=prompt_dataset(8))


def test_padding_free_refusals(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="padding_free_max_tokens"):
        ProRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", padding_free_max_tokens=0)
    with pytest.raises(ValueError, match="padding_free_max_tokens must be an integer"):
        ProRLConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", padding_free_max_tokens="long")
    path = tiny_moe_model(tiny_model, tmp_path)
    with pytest.raises(ValueError, match="padding_free: the model's router load-balancing loss"):
        ProRLTrainer(path, reward_funcs=text_hash_reward, args=fast_config(tmp_path / "o", padding_free=True, beta=0),
                     train_dataset=prompt_dataset(8))
    trainer = _trainer(tiny_model, tmp_path, "mm", padding_free=True)
    ids, mask, keep = _batch(trainer.model.config.vocab_size)
    with pytest.raises(NotImplementedError, match="padding_free supports text-only.*pixel_values"):
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep, pixel_values=torch.zeros(1))

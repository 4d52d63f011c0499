"""`trainer_generate` inside TRL's GRPOTrainer on CPU: the same completions as TRL's own `_generate_single_turn`
under the same seed, and a training step with the static backend hooked in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_utils import TINY_SIZE, prompt_dataset, text_hash_reward  # noqa: E402

from prorl.trainer.generation import trainer_generate, until_first_eos  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    from prorl.demo.tiny import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("gen-tiny")), seed=0, **TINY_SIZE)


def _trainer(model_dir: str, output_dir: Path, backend: str | None, backend_options: dict | None = None,
             **overrides):
    from prorl.trainer import ProRLConfig, ProRLTrainer

    kwargs = dict(output_dir=str(output_dir), per_device_train_batch_size=8, num_generations=4,
                  max_completion_length=12, max_steps=1, logging_steps=1, save_strategy="no", report_to="none",
                  bf16=False, use_cpu=True, seed=0, gradient_checkpointing=True, dataloader_num_workers=0,
                  disable_tqdm=True, learning_rate=1e-3, beta=1e-4, temperature=1.3)
    kwargs.update(overrides)
    kwargs.update(generation_backend=backend or "hf", generation_backend_kwargs=backend_options,
                  dynamic_sampling=False)
    return ProRLTrainer(model=model_dir, reward_funcs=text_hash_reward, args=ProRLConfig(**kwargs),
                   train_dataset=prompt_dataset(8))


def test_until_first_eos_keeps_trl_convention():
    ids = torch.tensor([[5, 6, 2, 0], [7, 2, 2, 0], [8, 9, 10, 11]])
    assert until_first_eos(ids, [2]) == [[5, 6, 2], [7, 2], [8, 9, 10, 11]]


def test_static_backend_in_trainer_gives_trl_completions(tiny_model_dir, tmp_path):
    """Same seed, same prompts (of different lengths): the static backend returns TRL's completions exactly."""
    trainer = _trainer(tiny_model_dir, tmp_path, backend=None, top_k=20, top_p=0.95)
    tokenizer = trainer.processing_class
    prompt_ids = [tokenizer(text)["input_ids"] for text in ["12+3=", "7*8 is", "q", "say 1 2 3 4 5 6 7"]] * 3
    torch.manual_seed(5)
    expected, _ = trainer._generate_single_turn(prompt_ids, None, {}, 4)
    torch.manual_seed(5)
    got = trainer_generate(trainer, prompt_ids, backend="static", stop_check_every=5)
    assert got == expected
    assert len({tuple(c) for c in got}) > 4  # really sampled


def test_training_step_with_static_backend(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, backend="static", generation_kwargs={"min_new_tokens": 12})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["completions/mean_length"] == 12.0  # min_new_tokens went through the trainer's config
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_compiled_decode_step_is_compiled_once_over_training_steps(tiny_model_dir, tmp_path):
    """TRL re-enables gradient checkpointing after every generation, and transformers then adds one more input-grad
    hook to the embeddings: a compiled step guarding on the hook count would recompile (and re-capture its CUDA
    graphs) every step. The generator detaches those hooks while it decodes, so it compiles once."""
    compiled = []

    def count(graph_module, example_inputs):
        compiled.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    trainer = _trainer(tiny_model_dir, tmp_path, backend="static", max_steps=3,
                       backend_options={"compile": True, "compile_backend": count, "compile_mode": None})
    trainer.train()
    torch._dynamo.reset()
    assert trainer.state.global_step == 3 and len(compiled) == 1
    embeddings = trainer.model.get_input_embeddings()
    assert len(embeddings._forward_hooks) >= 1  # the trainer's hooks are back after each generation

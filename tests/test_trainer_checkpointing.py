"""Selective activation checkpointing (transformers' `every_n_layers`) survives TRL's re-enable after generation:
vanilla TRL 1.16 raises `Unexpected keyword arguments: every_n_layers` at the first training forward after a
generation; ProRLTrainer trains, recomputes only the selected layers, and gets the loss of full checkpointing."""

from __future__ import annotations

import pytest
import torch
from trainer_utils import fast_config, history, prompt_dataset, text_hash_reward, tiny_model  # noqa: F401
from transformers import TrainerCallback

from prorl.trainer import ProRLTrainer
from prorl.trainer.checkpointing import keep_selective_checkpointing


class LayerCalls(TrainerCallback):
    """Per decoder layer: forward calls with grad enabled (the training forward and, when the layer is checkpointed,
    its recomputation in backward), and the layers' checkpointing flags at every step."""

    def __init__(self):
        self.calls: list[int] = []
        self.flags: list[list[bool]] = []
        self.trainer = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        layers = model.model.layers
        self.calls = [0] * len(layers)
        for i, layer in enumerate(layers):
            # on a sub-module: a checkpointed layer's recomputation runs its insides again, not its own hooks
            layer.mlp.register_forward_pre_hook(lambda m, a, i=i: self._count(i, m))

    def _count(self, i, module):
        if torch.is_grad_enabled() and module.training:
            self.calls[i] += 1

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.flags.append([bool(layer.gradient_checkpointing) for layer in model.model.layers])


def _train(model, out, kwargs):
    probe = LayerCalls()
    args = fast_config(out, max_steps=2, gradient_checkpointing=True, activation_checkpointing_kwargs=kwargs,
                       dynamic_sampling=False, beta=0.0)
    trainer = ProRLTrainer(model, reward_funcs=text_hash_reward, args=args, train_dataset=prompt_dataset(8),
                           callbacks=[probe])
    trainer.train()
    return trainer, probe


@pytest.mark.slow
def test_every_n_layers_survives_generation_and_matches_full_checkpointing(tiny_model, tmp_path):
    selective, probe = _train(tiny_model, tmp_path / "sel", {"every_n_layers": 2})
    full, probe_full = _train(tiny_model, tmp_path / "full", None)
    # 2 layers, every 2nd checkpointed: layer 0 recomputed in backward, layer 1 keeps its activations
    assert probe.flags == [[True, False], [True, False]]  # after each generation too
    assert probe_full.flags == [[True, True], [True, True]]
    assert probe.calls[0] == 2 * probe.calls[1] > 0
    assert probe_full.calls[0] == probe_full.calls[1] == probe.calls[0]
    assert history(selective, "loss") == pytest.approx(history(full, "loss"), abs=1e-6)


def test_keep_selective_checkpointing_routes_layer_keys_to_the_enable_arguments():
    seen = []

    class Model:
        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
            seen.append((gradient_checkpointing_kwargs, kwargs))

    model = Model()
    keep_selective_checkpointing(model)
    keep_selective_checkpointing(model)  # idempotent: wrapped once
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"every_n_layers": 3, "offload": True,
                                                                       "use_reentrant": False})
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"every_n_layers": 2})
    model.gradient_checkpointing_enable()
    assert seen == [({"use_reentrant": False}, {"every_n_layers": 3, "offload": True}),
                    (None, {"every_n_layers": 2}), (None, {})]

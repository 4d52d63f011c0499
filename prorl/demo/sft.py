"""The demo's warm start: a short supervised fine-tuning run with TRL's `SFTTrainer` on demonstration answers.

Rows are prompt-completion conversations, so TRL computes the loss on the assistant's answer only. The run is kept
short on purpose: the model should end with middling accuracy, leaving reinforcement learning something to improve.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


def sft_dataset(rows: Sequence[dict[str, Any]]):
    """A TRL prompt-completion dataset: each row's prompt and its demonstration as the assistant's reply."""
    from datasets import Dataset

    missing = [i for i, r in enumerate(rows) if not r.get("demo")]
    if missing:
        raise ValueError(f"sft rows {missing[:5]} have no `demo` (demonstration answer)")
    return Dataset.from_list([{"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["demo"]}]}
                              for r in rows])


def train_sft(model_dir: str, rows: Sequence[dict[str, Any]], output_dir: str, *, steps: int, batch_size: int = 32,
              learning_rate: float = 2e-3, seed: int = 0, warmup_steps: int = 20) -> str:
    """Fine-tune `model_dir` on `rows` for `steps` optimizer steps; saves model and tokenizer to `output_dir`."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, lr_scheduler_type="cosine", warmup_steps=min(warmup_steps, max(steps // 5, 1)),
        weight_decay=0.0, max_length=256, gradient_checkpointing=False, use_cpu=True, bf16=False,
        logging_steps=max(steps // 10, 1), save_strategy="no", report_to=[], disable_tqdm=True, seed=seed,
        dataloader_num_workers=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = SFTTrainer(model=model_dir, args=config, train_dataset=sft_dataset(rows), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))
    return output_dir

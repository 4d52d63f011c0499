"""The demo's warm start: a short supervised fine-tuning run with TRL's `SFTTrainer` on demonstration answers.

Rows are prompt-completion conversations, so TRL computes the loss on the assistant's answer only.

The demonstrations come from an imperfect teacher, as in ProRL's own setting (its starting point,
DeepSeek-R1-Distill-Qwen-1.5B, imitates R1's traces, mistakes included): with probability `teacher_error` a row's
demonstration is the teacher's typical mistake on that task (prorl.demo.tasks: off by one when counting, forgetting
Alice herself in AIW, one bullet short or the closing phrase forgotten). Imitation copies the mistakes; the verifiable
rewards of RL are what can remove them. In one trial with a perfect teacher (`teacher_error: 0`, an earlier version
of these tasks) 100 RL steps did not beat the SFT model (held-out mean 0.874 -> 0.863): demonstrations of a
perfect teacher teach a tiny model faster than rewards do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


def teacher_rows(rows: Sequence[dict[str, Any]], teacher_error: float, seed: int) -> list[dict[str, Any]]:
    """The rows with each demonstration replaced, with probability `teacher_error`, by the flawed one."""
    import random

    if not 0.0 <= teacher_error <= 1.0:
        raise ValueError(f"sft.teacher_error must be in [0, 1], got {teacher_error}")
    rng = random.Random(f"teacher/{seed}")
    out = []
    for row in rows:
        flawed = rng.random() < teacher_error
        if flawed and not row.get("flawed_demo"):
            raise ValueError(f"row {row.get('id')}: no `flawed_demo` for sft.teacher_error > 0")
        out.append({**row, "demo": row["flawed_demo"] if flawed else row["demo"]})
    return out


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

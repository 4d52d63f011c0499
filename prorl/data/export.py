"""`prorl data export BUILD -o OUT --format verl`: a built mixture in verl's Parquet layout.

verl (volcengine/verl) trains on Parquet files of rows (see its `examples/data_preprocess/gsm8k.py`):

    data_source   str                    here the prorl environment id that scores the row (`math`, `logic`, ...)
    prompt        list[{role, content}]  the chat messages (verl applies the model's chat template)
    ability       str                    the environment's family: its id up to the first `/`
    reward_model  {style, ground_truth}  style "rule"; ground_truth the JSON text of the task's reference
    extra_info    {index, split, id, env, source, metadata}  index: the row's place in its split; metadata: JSON text

`prorl.trainer.verl_reward.compute_score` (verl's `custom_reward_function`) scores these rows with their prorl
environment. The reference is JSON text, not a Parquet struct: each environment's has its own fields, which one
struct column would merge into a union of all of them (nulls everywhere else).

OUT gets one file per split of the build: train.parquet, and heldout.parquet when the build has held-out rows (for
verl's `data.val_files`; one an earlier export left there is removed when this build has none). Each file is
written beside its final name and then renamed over it, after every row of the build has been checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prorl.data.card import load_named_rows

FORMATS = ("verl",)
SPLITS = ("train", "heldout")


def verl_features():
    from datasets import Features, List, Value

    return Features({
        "data_source": Value("string"),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "ability": Value("string"),
        "reward_model": {"style": Value("string"), "ground_truth": Value("string")},
        "extra_info": {"index": Value("int64"), "split": Value("string"), "id": Value("string"),
                       "env": Value("string"), "source": Value("string"), "metadata": Value("string")},
    })


def verl_row(row: dict[str, Any], split: str, index: int, where: str = "") -> dict[str, Any]:
    """One schema row of a build (prorl.data.build) -> one verl row. A row without an environment, chat prompt or
    reference object is a ValueError naming it (`where`) and the field."""
    where = where or f"{split} row {index} (0-based)"
    env = row.get("env")
    if not isinstance(env, str) or not env:
        raise ValueError(f"{where}: field 'env' must name the environment, got {env!r}")
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        raise ValueError(f"{where}: field 'prompt' must be chat messages [{{'role', 'content'}}], got {prompt!r:.120}")
    reference = row.get("reference")
    if not isinstance(reference, dict):
        raise ValueError(f"{where}: field 'reference' must be an object, got {type(reference).__name__}")
    metadata = row.get("metadata") or {}
    return {
        "data_source": env,
        "prompt": [{"role": m["role"], "content": m["content"]} for m in prompt],
        "ability": env.split("/", 1)[0],
        "reward_model": {"style": "rule", "ground_truth": json.dumps(reference)},
        "extra_info": {"index": index, "split": split, "id": str(row.get("id") or ""), "env": env,
                       "source": str(row.get("source") or ""), "metadata": json.dumps(metadata)},
    }


def _splits(build: Path) -> list[str]:
    if not build.is_dir():
        return ["train"]  # one file of schema rows
    have = [s for s in SPLITS if (build / f"{s}.parquet").is_file()]
    if "train" not in have:
        raise FileNotFoundError(f"{build}: no train.parquet (is it a `prorl data build` output folder?)")
    return have


def export(build: str | Path, out_dir: str | Path, fmt: str = "verl") -> dict[str, int]:
    """Write the splits of `build` (a `prorl data build` folder, or one .parquet/.jsonl file of its rows) to
    `out_dir` in format `fmt`. Returns {split file name: rows written}."""
    from datasets import Dataset

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: not one of {FORMATS}")
    build, out_dir = Path(build), Path(out_dir)
    if not build.exists():
        raise FileNotFoundError(f"{build}: no such build folder or file")
    tables = {}
    for split in _splits(build):  # every row checked before anything is written
        named = load_named_rows(build, split)
        tables[split] = [verl_row(row, split, i, where) for i, (where, row) in enumerate(named)]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, rows in tables.items():
        target = out_dir / f"{split}.parquet"
        tmp = out_dir / f".{split}.parquet.partial-{os.getpid()}"
        try:
            Dataset.from_list(rows, features=verl_features()).to_parquet(str(tmp))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        written[target.name] = len(rows)
    for split in SPLITS:  # a split an earlier export wrote and this build lacks: verl would read it as this one's
        if split not in tables:
            (out_dir / f"{split}.parquet").unlink(missing_ok=True)
    return written

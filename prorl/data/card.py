"""Saving a built mixture: the dataset (Parquet), its card (card.json + card.md) and the list of dropped rows.

Layout of an output folder:
    train.parquet    the mixture (a `datasets.Dataset`; `reference`/`metadata` are JSON text columns); none if empty
    heldout.parquet  held-out rows (generated hold-outs and `holdout:` rows of file sources), when there are any
    card.json        counts per source/env, rows dropped by reason, scale factor, options, recipe hash; with a
                     difficulty filter, how many prompts of each source it estimated (`estimated`) of its pool
                     (`candidates`)
    card.md          the same for people, with a table of rows per env (and its share)
    dropped.jsonl    every row left out: {"where", "reason", "field", "message"}
    pass_rates.jsonl with --filter-model: the estimated pass rates, reused by a re-run (prorl.data.filter)

`load_rows(path, split)` reads such a folder (or a .parquet / .jsonl file of schema rows) back as dicts.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prorl.envs.jsonl import BOM, open_bytes, read_jsonl

JSON_COLUMNS = ("reference", "metadata")


def features():
    from datasets import Features, List, Value

    # reference/metadata differ per environment: JSON text written by json.dumps (the trainer's row_task and
    # load_rows decode it). datasets' Json() feature goes through ujson at 10 significant digits: a reasoning-gym
    # answer 59.03624346792648 came back 59.0362434679, 3e-12 as 0.0.
    return Features({
        "id": Value("string"), "env": Value("string"), "source": Value("string"),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "reference": Value("string"), "metadata": Value("string"),
    })


def to_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset

    encoded = [{**r, **{k: json.dumps(r[k]) for k in JSON_COLUMNS if k in r}} for r in rows]
    return Dataset.from_list(encoded, features=features())


def card_dict(result) -> dict[str, Any]:
    from prorl import __version__

    recipe = result.recipe
    text = recipe.path.read_text() if recipe.path is not None and recipe.path.exists() else ""
    total = len(result.train)
    per_env = Counter(r["env"] for r in result.train)
    wanted = recipe.wanted()
    wanted_total = sum(wanted.values()) or 1
    sources = {}
    for s in recipe.sources:
        st = result.stats[s.name]
        sources[s.name] = {
            "env": s.env, "files": st.files, "read": st.read, "heldout": st.heldout,
            "dropped": dict(st.dropped), "available": st.available, "recipe_size": s.size, "recipe_weight": s.weight,
            "needed": st.needed, "candidates": st.candidates, "estimated": st.estimated, "selected": st.selected,
            "share": round(st.selected / total, 4) if total else 0.0,
            "recipe_share": round(wanted[s.name] / wanted_total, 4),
            "per_task": dict(sorted(st.per_task.items())) if len(st.per_task) > 1 else None,
        }
    # per source, so rows a `where:` filter left out (`not_selected`: counted, not listed in dropped.jsonl) are in
    # the total as they are in each source's `dropped`
    dropped = sum((Counter(result.stats[s.name].dropped) for s in recipe.sources), Counter())
    return {
        "name": recipe.name, "description": recipe.description,
        "recipe": str(recipe.path) if recipe.path else None,
        "recipe_sha256": hashlib.sha256(text.encode()).hexdigest() if text else None,  # of the file as written
        "overrides": list(recipe.overrides),  # applied on top of it (`--set`): the same file built another way
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "prorl_version": __version__,
        "seed": recipe.seed, "dedup": recipe.dedup, "shortfall": recipe.shortfall, "scale": result.scale,
        "options": result.options,
        "rows": {"train": total, "heldout": len(result.heldout)},
        "per_env": dict(sorted(per_env.items())),
        "heldout_per_env": dict(sorted(Counter(r["env"] for r in result.heldout).items())),
        "sources": sources,
        "dropped": dict(sorted(dropped.items())),
        "dropped_examples": [str(i) for i in result.issues[:20]],
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# {card['name']}", "", card["description"] or "", "",
             f"- recipe: `{card['recipe']}` (sha256 `{(card['recipe_sha256'] or '')[:12]}`), seed {card['seed']}, "
             f"dedup `{card['dedup']}`, shortfall `{card['shortfall']}`",
             *([f"- overrides: {', '.join(f'`--set {o}`' for o in card['overrides'])}"]
               if card.get("overrides") else []),
             f"- rows: **{card['rows']['train']}** train, {card['rows']['heldout']} held out",
             f"- scale factor applied to the recipe's sizes: {card['scale']:.6g}", "",
             "| source | env | read | dropped | held out | available | recipe size | selected | share | recipe share |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in card["sources"].items():
        rshare = f"{s['recipe_share']:.3f}" if s["recipe_share"] is not None else "-"
        lines.append(f"| {name} | {s['env']} | {s['read']} | {sum(s['dropped'].values())} | {s['heldout']} | "
                     f"{s['available']} | {s['recipe_size'] or '-'} | {s['selected']} | {s['share']:.3f} | {rshare} |")
    lines += [f"\n{name}: generated for {s['needed']} rows, not its {s['recipe_size'] or 'share of the total'} "
              "(shortfall=scale: the other sources could not give more)"
              for name, s in card["sources"].items() if s.get("needed") is not None]
    lines += [f"\n{name}: the difficulty filter estimated the pass rates of {s['estimated']} of its "
              f"{s['candidates']} prompts" + ("" if s["estimated"] == s["candidates"] else
                                              " (in a seeded order, until the rows kept could fill its target; "
                                              "`available` counts the rows kept among them)")
              for name, s in card["sources"].items() if s.get("estimated") is not None]
    lines += ["", "## Rows per env", "", "| env | train rows | share | recipe share | held out |",
              "|---|---:|---:|---:|---:|"]
    total = card["rows"]["train"]
    for env in sorted({s["env"] for s in card["sources"].values()}):
        n = card["per_env"].get(env, 0)
        rshare = sum(s["recipe_share"] or 0.0 for s in card["sources"].values() if s["env"] == env)
        lines.append(f"| {env} | {n} | {n / total if total else 0.0:.3f} | {rshare:.3f} | "
                     f"{card['heldout_per_env'].get(env, 0)} |")
    lines += ["", "## Rows dropped", "", "| reason | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in card["dropped"].items()] or ["| (none) | 0 |"]
    if card["dropped_examples"]:
        lines += ["", "First ones (all of them are in `dropped.jsonl`):", ""]
        lines += [f"- `{e}`" for e in card["dropped_examples"]]
    for name, s in card["sources"].items():
        if s["per_task"]:
            lines += ["", f"## {name}: rows per task", ""]
            lines += [", ".join(f"{t} {n}" for t, n in s["per_task"].items())]
    return "\n".join(lines) + "\n"


def save(result, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", result.train), ("heldout", result.heldout)):
        path = out_dir / f"{split}.parquet"
        if rows:
            to_dataset(rows).to_parquet(str(path))
        elif path.exists():
            path.unlink()  # a stale split from an earlier build must not be trained on or evaluated by mistake
    card = card_dict(result)
    (out_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out_dir / "card.md").write_text(card_markdown(card))
    with open(out_dir / "dropped.jsonl", "w") as f:
        for issue in result.issues:
            f.write(json.dumps({"where": issue.where, "reason": issue.reason, "field": issue.field,
                                "message": issue.message}) + "\n")
    return card


def load_rows(path: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Schema rows from a build folder (`split`: train or heldout), a .parquet file, a .jsonl file or a .json file
    holding one array of row objects (as DeepScaleR ships); the JSON ones may be gzipped (.jsonl.gz, .json.gz)."""
    return [row for _, row in load_named_rows(path, split)]


def load_named_rows(path: str | Path, split: str = "train") -> list[tuple[str, dict[str, Any]]]:
    """`load_rows`, each row with its name for error messages: `FILE:LINE` for JSON Lines (the line an editor
    shows), `FILE row N (0-based)` for Parquet, `FILE element N (0-based)` for a JSON array."""
    from datasets import Dataset

    path = Path(path)
    if path.is_dir():
        target = path / f"{split}.parquet"
        if not target.exists():
            have = sorted(p.stem for p in path.glob("*.parquet"))
            raise FileNotFoundError(f"{path}: no {split}.parquet (splits here: {have or 'none'})")
        path = target
    if path.suffix == ".parquet":
        rows = Dataset.from_parquet(str(path)).to_list()
        for row in rows:  # JSON text since this version; a Json() column (older builds) is read as objects already
            row.update((k, json.loads(row[k])) for k in JSON_COLUMNS if isinstance(row.get(k), str))
        return [(f"{path} row {i} (0-based)", row) for i, row in enumerate(rows)]
    if path.name.endswith((".json", ".json.gz")):
        with open_bytes(path) as f:
            data = f.read().removeprefix(BOM)
        if data.lstrip()[:1] == b"[":  # else JSON Lines in a .json file
            try:
                rows = json.loads(data.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: not a valid JSON array ({exc})") from None
            bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
            if bad is not None:
                raise ValueError(f"{path}: element {bad} of the array is not an object (got "
                                 f"{type(rows[bad]).__name__})")
            return [(f"{path} element {i} (0-based)", row) for i, row in enumerate(rows)]
    return [(f"{path}:{line}", row) for line, row in read_jsonl(path)]

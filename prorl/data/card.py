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

`save` writes a build into a hidden folder beside the output folder (`.NAME.building-PID@HOST-XXXX`, named after
the process that writes it) and only once all of it is written moves its files in, each by a rename, the previous
build's splits the new one lacks removed: a build that fails (a full disk, a crash) leaves the previous build whole
and no half-written file. Other files of the folder (pass_rates.jsonl, anything of the user's) are left alone. A
build that was killed (SIGKILL: no clean-up ran) leaves its hidden folder behind; the next build into the same
folder removes it (`remove_stale_stages`) once its process no longer runs.

`load_rows(path, split)` reads such a folder (or a .parquet / .jsonl file of schema rows) back as dicts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from prorl.envs.jsonl import BOM, open_bytes, read_jsonl

JSON_COLUMNS = ("reference", "metadata")
BUILD_FILES = ("train.parquet", "heldout.parquet", "dropped.jsonl", "card.md", "card.json")  # card.json: the last


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
    description = (card["description"] or "").strip()
    recipe = (f"recipe: `{card['recipe']}`" if card["recipe"] else "recipe given in code (no file)") + \
        (f" (sha256 `{card['recipe_sha256'][:12]}`)" if card["recipe_sha256"] else "")
    lines = [f"# {card['name']}", "", *([description, ""] if description else []),
             f"- {recipe}, seed {card['seed']}, dedup `{card['dedup']}`, shortfall `{card['shortfall']}`",
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


def save(result, out_dir: str | Path) -> dict[str, Any]:
    """Write the build `result` into `out_dir`, replacing a previous build there only once all of it is written
    (see the module docstring); OSError (out_dir or the disk unusable) leaves `out_dir` as it was."""
    out_dir = Path(out_dir)
    stage, made = make_stage(out_dir)
    try:
        try:
            card = _write(result, stage)
        except OSError as exc:  # a full disk, a file size limit: the file (of the stage) is not the one to name
            raise OSError(f"{out_dir}: cannot write the build: {exc.strerror or exc}") from exc
        out_dir.mkdir(exist_ok=True)
        for name in BUILD_FILES:  # the previous build's splits this one lacks first: none is left beside the new card
            if not (stage / name).exists() and (out_dir / name).exists():
                (out_dir / name).unlink()  # a stale split must not be trained on or evaluated by mistake
        for name in BUILD_FILES:
            if (stage / name).exists():
                os.replace(stage / name, out_dir / name)
        made = []  # out_dir holds the build now: the folders made above it stay
    finally:
        discard_stage(stage, made)
    return card


def make_stage(out_dir: Path) -> tuple[Path, list[Path]]:
    """A new empty hidden folder beside `out_dir` to write a build into, and the folders above `out_dir` it had to
    make (lowest first) for `discard_stage`. OSError, as `mkdir` gives it, when `out_dir` cannot be a folder."""
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out_dir))
    missing = [p for p in out_dir.parents if not p.exists()]
    above = out_dir.parents[len(missing)]  # the lowest folder above out_dir that exists
    if not above.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-{os.getpid()}@{_host()}-",
                                     dir=out_dir.parent)), missing
    except OSError:
        discard_stage(None, missing)
        raise


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "localhost"  # [:40]: a name fits 255 bytes


def _running(pid: int) -> bool:
    """Whether process `pid` of this machine may still run (in doubt, yes: a live build's folder must stay)."""
    if os.name != "posix" or pid == os.getpid():  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def remove_stale_stages(out_dir: str | Path, log=None) -> list[Path]:
    """Remove the folders beside `out_dir` that `make_stage` made for builds that were killed (SIGKILL, an OOM kill:
    no clean-up ran), i.e. those whose process, named in the folder's name, no longer runs on this machine, and say so
    in one `log` line. A live build's folder, one of another machine (a shared disk) and one named without its process
    (an earlier version of prorl) are left alone. Returns the folders removed."""
    out_dir = Path(os.path.abspath(out_dir))
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.building-(\d+)@(.+)-[^-]+")
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return []
    removed = []
    for path in entries:
        match = pattern.fullmatch(path.name)
        if (match is None or match.group(2) != _host() or path.is_symlink() or not path.is_dir()
                or _running(int(match.group(1)))):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    if removed and log is not None:
        log(f"removed {len(removed)} unfinished build folder(s) left beside {out_dir} by build(s) killed before "
            f"they finished (their process no longer runs): {', '.join(p.name for p in removed)}")
    return removed


def discard_stage(stage: Path | None, made: list[Path]) -> None:
    """Remove what `make_stage` made: the stage with whatever is in it, then the folders it made, while empty."""
    if stage is not None:
        shutil.rmtree(stage, ignore_errors=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break


def _write(result, out_dir: Path) -> dict[str, Any]:
    for split, rows in (("train", result.train), ("heldout", result.heldout)):
        if rows:
            to_dataset(rows).to_parquet(str(out_dir / f"{split}.parquet"))
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

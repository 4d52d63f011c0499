"""Reading JSON Lines: the one reader behind `prorl score`, `prorl eval-ifeval`, `prorl data build`, `load_rows` and
the trainer's .jsonl datasets.

Each line is read as bytes and decoded on its own, so a line that is not UTF-8 is one bad line with its number, not
the end of the file. A byte-order mark opening line 1 (as Windows editors write it) is dropped. Lines of ASCII
whitespace are skipped but still counted, so line numbers are those an editor shows. Every other line must be a JSON
object. Files whose name ends in .gz are gunzipped (HumanEval ships as HumanEval.jsonl.gz).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Callable, Container, Iterator

BOM = b"\xef\xbb\xbf"


def open_bytes(path: str | Path):
    """A file for reading bytes; gunzipped when its name ends in .gz."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def is_blank(data: bytes, number: int) -> bool:
    """Whether line `number` (1-based) holds nothing but whitespace (and, on line 1, a byte-order mark)."""
    return not (data.removeprefix(BOM) if number == 1 else data).strip()


def parse_line(data: bytes, number: int) -> dict | None:
    """The object on line `number` (1-based), None when the line is blank. A bad line is a ValueError whose message
    says what is wrong with it (the caller adds the file and line)."""
    if is_blank(data, number):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {exc.start + 1})") from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    text = text.rstrip("\r\n")  # else a line cut short is an error at column 1 of the line after it
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    return row


def read_jsonl(path: str | Path, on_error: Callable[[int, str], None] | None = None,
               only: Container[int] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of `path`, in file order.

    A bad line raises ValueError `path:line: what is wrong`; with `on_error`, it is passed to `on_error(line,
    message)` instead and reading goes on. `only`: the line numbers to parse; the other lines are not decoded."""
    with open_bytes(path) as f:
        for number, data in enumerate(f, start=1):
            if only is not None and number not in only:
                continue
            try:
                row = parse_line(data, number)
            except ValueError as exc:
                if on_error is None:
                    raise ValueError(f"{path}:{number}: {exc}") from None
                on_error(number, str(exc))
                continue
            if row is not None:
                yield number, row

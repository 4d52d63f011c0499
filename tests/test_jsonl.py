"""prorl.envs.jsonl, the one JSON Lines reader: byte-order mark, blank lines, and bad lines named by file and line."""

import gzip
import json
import re

import pytest

from prorl.envs.jsonl import is_blank, read_jsonl


def test_a_byte_order_mark_on_line_1_is_dropped_and_blank_lines_keep_the_numbering(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \t\n{"b": "caf\xc3\xa9"}\r\n\n{"c": [1, 2]}')  # no final newline
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"b": "café"}), (6, {"c": [1, 2]})]
    path.write_bytes(b"\xef\xbb\xbf\n" + b'{"a": 1}\n')  # a mark alone on line 1: a blank line
    assert list(read_jsonl(path)) == [(2, {"a": 1})]
    assert is_blank(b"\xef\xbb\xbf\n", 1) and not is_blank(b"\xef\xbb\xbf\n", 2)


def test_a_byte_order_mark_after_line_1_is_a_bad_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n\xef\xbb\xbf{"b": 2}\n')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:2: not valid JSON \(Unexpected UTF-8 BOM"):
        list(read_jsonl(path))


@pytest.mark.parametrize("line, message", [
    (b'{"a": ', "not valid JSON (Expecting value at column 7)"),
    (b'{"a": 1} {"b": 2}', "not valid JSON (Extra data at column 10)"),
    (b'{"a": "caf\xe9"}', "not valid UTF-8 (byte 0xe9 at column 11)"),
    (b"[1, 2]", "a row must be a JSON object, got list"),
    (b'"text"', "a row must be a JSON object, got str"),
    (b"null", "a row must be a JSON object, got NoneType"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"ok": 1}\n\n' + line + b'\n{"ok": 2}\n')
    with pytest.raises(ValueError) as info:
        list(read_jsonl(path))
    assert str(info.value) == f"{path}:3: {message}"


def test_with_on_error_bad_lines_are_reported_and_reading_goes_on(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{not json\n[1]\n\n{"b": 2}\n\xff\n')
    seen = []
    rows = read_jsonl(path, on_error=lambda n, message: seen.append((n, message, "bad")))
    for number, row in rows:
        seen.append((number, row))
    assert seen == [
        (1, {"a": 1}),
        (2, "not valid JSON (Expecting property name enclosed in double quotes at column 2)", "bad"),
        (3, "a row must be a JSON object, got list", "bad"),
        (5, {"b": 2}),
        (6, "not valid UTF-8 (byte 0xff at column 1)", "bad"),
    ]


def test_only_the_lines_asked_for_are_decoded(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{not json\n{"b": 2}\n\xff\n{"c": 3}\n')
    assert list(read_jsonl(path, only={3, 5})) == [(3, {"b": 2}), (5, {"c": 3})]


def test_gzipped_files_are_read_line_by_line(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"".join(json.dumps({"i": i}).encode() + b"\n" for i in range(3))
                                   + b"oops\n"))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:4: not valid JSON"):
        list(read_jsonl(path))
    assert list(read_jsonl(path, on_error=lambda n, m: None)) == [(1, {"i": 0}), (2, {"i": 1}), (3, {"i": 2})]

"""Property tests of the line-format parsers (JSONL, text lines, CSV/TSV): no input makes them
raise, every record can be stored (Arrow takes valid UTF-8 only), every non-blank line is exactly
one record at its own line number, and a file read in small read tasks gives the records that
reading it whole gives."""

from __future__ import annotations

import csv
import io
import json
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from theme_engine.engine.corpus import (
    InputFile,
    parse_file,
    parse_task,
    plan_read_tasks,
    prepare_records,
)

# Deterministic, so CI never flakes and a failure reproduces: a fixed example order, no example
# database; no deadline (the first examples pay for imports and file creation).
PROPERTY = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)

LINE_END = re.compile(r"\r\n|\r|\n")  # what ends a line: JSON allows U+2028, U+0085, \f… raw in strings
TRICKY = "\u2028\u2029\x85\x0c\x0b\x1c\x1d\x1e\r\n\ufeff\x00\t \"\\,{}"
CHARS = st.characters(codec="utf-8") | st.sampled_from(list(TRICKY))
TEXTS = st.text(CHARS, max_size=20)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXTS
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXTS, inner, max_size=4), max_leaves=12)
NO_ID = object()  # a record without an "id" field
BLANK = object()  # in a file's list of values: a blank line
# objects, among other fields, with a "text" that is mostly a string and an "id" of any kind
RECORDS = st.builds(
    lambda extra, text, doc_id: {**extra, "text": text} | ({} if doc_id is NO_ID else {"id": doc_id}),
    st.dictionaries(TEXTS, JSON, max_size=3),
    st.one_of(TEXTS, TEXTS, JSON),
    st.one_of(st.just(NO_ID), st.sampled_from(["", " ", "\t\u2028"]), SCALARS, TEXTS, JSON),
)
BLANKS = st.sampled_from(["", " ", "\t", "  \t ", "\x0c", "\u2028", "\x85"])
ENDS = st.sampled_from(["\n", "\r\n", "\r"])
# bytes with the pieces parsers trip on: line ends, a BOM, JSON syntax, escapes of lone
# surrogates, U+2028 and bytes that are not UTF-8
PIECES = [
    b"\n", b"\r", b"\r\n", b"\xef\xbb\xbf", b'{"text": "', b'{"id": ', b'"text"', b'"id"', b'"', b":", b",",
    b"{", b"}", b"[", b"]", b"\\u", b"\\ud83d", b"\\udc80", b"\\ude00", b"\\n", b"1e999", b"null", b"  ",
    b"\xe2\x80\xa8", b"\xc2\x85", b"\x0c", b"\xff", b"\xc3", b"\x00",
]
BYTES = st.lists(
    st.one_of(st.sampled_from(PIECES), st.sampled_from(PIECES), TEXTS.map(str.encode), st.binary(max_size=4)), max_size=40
).map(b"".join)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module: hypothesis runs many examples per test function."""
    return tmp_path_factory.mktemp("parsers")


def _parse(kind: str, data: bytes, id_field: str | None, name: str = "x.jsonl") -> list[dict[str, Any]]:
    return list(parse_file(InputFile(Path(name), kind, name), data, "text", id_field))


def _line_no(rec: dict[str, Any], name: str) -> int:
    file, _, line = rec["source"].rpartition(":")
    assert file == name
    return int(line)


def _non_blank_lines(data: bytes) -> list[int]:
    """Numbers of the lines a line format must turn into one record each."""
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    return [no for no, line in enumerate(LINE_END.split(text), start=1) if line.strip()]


def _storable(recs: list[dict[str, Any]]) -> None:
    """Every record has the parser's shape and survives the trip into Arrow that a run makes."""
    for r in recs:
        assert r["kind"] in ("doc", "bad")
        assert (r["error"] is None) == (r["kind"] == "doc") and (r["text"] is None) == (r["kind"] == "bad")
    pa.table(prepare_records(recs, 1, 10**9))


def _in_tasks(path: Path, kind: str, data: bytes, chunk: int, id_field: str | None) -> tuple[list, list]:
    """The records of the file read whole and read in tasks of about ``chunk`` bytes."""
    path.write_bytes(data)
    f = InputFile(path, kind, path.name)
    tasks = plan_read_tasks([f], chunk_bytes=chunk)
    if len(data) > chunk:
        assert tasks[0].start == 0 and tasks[-1].end == len(data)
        assert all(a.end == b.start for a, b in pairwise(tasks))
    pieces = [r for t in tasks for r in parse_task(f, t, "text", id_field)]
    return pieces, list(parse_file(f, data, "text", id_field))


# ----------------------------------------------------------------------------- any bytes


@PROPERTY
@given(data=BYTES, kind=st.sampled_from(["jsonl", "lines"]), id_field=st.sampled_from([None, "id"]))
@example(data=b"[" * 100_000, kind="jsonl", id_field=None)  # nested deeper than the recursion limit
@example(data=b'{"text": ' + b"1" * 5000 + b"}", kind="jsonl", id_field=None)  # over int's 4300 digits
@example(data=b'{"text": "half a pair \\ud83d"}\n{"text": "ok", "id": "\\udc80"}', kind="jsonl", id_field="id")
@example(data=b'{"\\ud83d": 1}\n', kind="jsonl", id_field=None)  # a lone surrogate in the error's field list
def test_line_formats_take_any_bytes(data: bytes, kind: str, id_field: str | None) -> None:
    recs = _parse(kind, data, id_field)
    _storable(recs)
    assert [_line_no(r, "x.jsonl") for r in recs] == _non_blank_lines(data)


@PROPERTY
@given(data=BYTES, id_field=st.sampled_from([None, "id"]), tsv=st.booleans())
@example(data=b"text,id\n\xff\xfe,fine\nfine,\xff\n", id_field="id", tsv=False)  # undecodable text, id
@example(data=b"\xff,id\nx,y\n", id_field=None, tsv=False)  # undecodable header in the message
def test_csv_takes_any_bytes(data: bytes, id_field: str | None, tsv: bool) -> None:
    name = "x.tsv" if tsv else "x.csv"
    recs = _parse("csv", data, id_field, name)
    _storable(recs)
    lines = len(LINE_END.split(data.decode("utf-8", "surrogateescape")))
    numbers = [_line_no(r, name) for r in recs]
    assert numbers == sorted(set(numbers)) and all(1 <= n <= lines for n in numbers)


@PROPERTY
@given(data=BYTES, kind=st.sampled_from(["jsonl", "lines"]), chunk=st.integers(1, 48), id_field=st.sampled_from([None, "id"]))
@example(data=b"one\rtwo\rthree\nfour\n", kind="lines", chunk=4, id_field=None)  # lone \r ends a line
@example(data=b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n', kind="jsonl", chunk=14, id_field=None)  # U+FEFF mid-file
def test_read_tasks_give_the_records_of_the_whole_file(
    workdir: Path, data: bytes, kind: str, chunk: int, id_field: str | None
) -> None:
    pieces, whole = _in_tasks(workdir / f"any.{'jsonl' if kind == 'jsonl' else 'txt'}", kind, data, chunk, id_field)
    assert pieces == whole


# ----------------------------------------------------------------------------- JSON values, one per line


def _expected_jsonl(values: list[Any], id_field: str | None) -> dict[int, tuple[str, str] | None]:
    """Line number -> (text, id) of the document each value must become, or None for a bad record."""
    out: dict[int, tuple[str, str] | None] = {}
    for no, value in enumerate(values, start=1):
        if value is BLANK:
            continue
        source = f"x.jsonl:{no}"
        ok = isinstance(value, dict) and isinstance(value.get("text"), str)
        if ok and id_field:
            raw = value.get(id_field)
            ok = raw is not None and not isinstance(raw, (dict, list)) and bool(str(raw).strip())
            out[no] = (value["text"], str(raw)) if ok else None
        else:
            out[no] = (value["text"], source) if ok else None
    return out



def _end_after(parts: list[str], end: str) -> str:
    r"""``end`` as the line end after ``parts``, except where an empty line's ``\n`` would join the
    ``\r`` before it into one line end (``\r\n``): then ``\r\n``, so ``\r\r\n`` stays two."""
    if end == "\n" and len(parts) >= 2 and parts[-1] == "" and parts[-2] == "\r":
        return "\r\n"
    return end


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[bytes, list[Any]]:
    """A JSONL file of JSON values and blank lines, with mixed line ends, and its values in order."""
    ascii_only = draw(st.booleans())
    parts, kept = [], []
    for _ in range(draw(st.integers(0, 12))):
        pick = draw(st.integers(0, 5))  # mostly objects with a "text": 1 blank line, 1 other value in 6
        if pick == 0:
            parts.append(draw(BLANKS))
            kept.append(BLANK)
        else:
            value = draw(JSON if pick == 1 else RECORDS)
            parts.append(json.dumps(value, ensure_ascii=ascii_only))
            kept.append(value)
        parts.append(_end_after(parts, draw(ENDS)))
    if parts and draw(st.booleans()):
        parts.pop()  # no line end after the last line
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + "".join(parts)).encode("utf-8"), kept


@PROPERTY
@given(file=jsonl_files(), id_field=st.sampled_from([None, "id"]))
def test_jsonl_keeps_every_object_with_a_string_text_and_names_every_other_line(
    file: tuple[bytes, list[Any]], id_field: str | None
) -> None:
    data, values = file
    recs = _parse("jsonl", data, id_field)
    _storable(recs)
    expected = _expected_jsonl(values, id_field)
    assert [_line_no(r, "x.jsonl") for r in recs] == sorted(expected)
    for r in recs:
        want = expected[_line_no(r, "x.jsonl")]
        if want is None:
            assert r["kind"] == "bad" and r["error"]
        else:
            assert r["kind"] == "doc" and (r["text"], r["id"]) == want


@PROPERTY
@given(file=jsonl_files(), chunk=st.integers(1, 64), id_field=st.sampled_from([None, "id"]))
def test_jsonl_in_small_read_tasks_equals_the_whole_file(
    workdir: Path, file: tuple[bytes, list[Any]], chunk: int, id_field: str | None
) -> None:
    pieces, whole = _in_tasks(workdir / "values.jsonl", "jsonl", file[0], chunk, id_field)
    assert pieces == whole


@PROPERTY
@given(
    lines=st.lists(TEXTS.map(lambda s: LINE_END.sub("", s)), max_size=12),
    ends=st.lists(ENDS, min_size=12, max_size=12),
    bom=st.booleans(),
    chunk=st.integers(1, 32),
)
def test_text_lines_are_one_document_each_at_their_line_number(
    workdir: Path, lines: list[str], ends: list[str], bom: bool, chunk: int
) -> None:
    parts: list[str] = []
    for line, end in zip(lines, ends):
        parts.append(line)
        parts.append(_end_after(parts, end))
    data = (("\ufeff" if bom else "") + "".join(parts)).encode()
    recs = _parse("lines", data, None, "x.txt")
    _storable(recs)
    texts = list(lines)
    if texts:  # the file's first U+FEFF is its byte-order mark
        texts[0] = (("\ufeff" if bom else "") + texts[0]).removeprefix("\ufeff")
    want = [(f"x.txt:{no}", t) for no, t in enumerate(texts, start=1) if t.strip()]
    assert [(r["source"], r["text"]) for r in recs] == want and all(r["kind"] == "doc" for r in recs)
    pieces, whole = _in_tasks(workdir / "x.txt", "lines", data, chunk, None)
    assert pieces == whole == recs


# ----------------------------------------------------------------------------- CSV rows


@PROPERTY
@given(
    rows=st.lists(st.tuples(TEXTS, TEXTS, TEXTS), max_size=10),
    tsv=st.booleans(),
    # Python's writer quotes a field holding a line-end character of its terminator only: with
    # "\n" it leaves a bare \r unquoted, which any reader takes as the end of the row
    style=st.sampled_from([("\r\n", csv.QUOTE_MINIMAL), ("\r\n", csv.QUOTE_ALL), ("\n", csv.QUOTE_ALL)]),
    id_field=st.sampled_from([None, "id"]),
)
def test_csv_rows_are_documents_at_the_line_they_start_on(
    rows: list[tuple[str, str, str]], tsv: bool, style: tuple[str, int], id_field: str | None
) -> None:
    name = "x.tsv" if tsv else "x.csv"
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, delimiter="\t" if tsv else ",", lineterminator=style[0], quoting=style[1])
    writer.writerow(["id", "text", "extra"])
    starts = []
    for row in rows:
        starts.append(1 + len(LINE_END.findall(buf.getvalue())))
        writer.writerow(row)
    recs = _parse("csv", buf.getvalue().encode(), id_field, name)
    _storable(recs)
    assert [r["source"] for r in recs] == [f"{name}:{n}" for n in starts]
    for r, (doc_id, text, _), line in zip(recs, rows, starts):
        if id_field and not doc_id.strip():
            assert r["kind"] == "bad" and r["error"] == "id field 'id' is empty"
        else:
            assert r["kind"] == "doc" and r["text"] == text
            assert r["id"] == (doc_id if id_field else f"{name}:{line}")

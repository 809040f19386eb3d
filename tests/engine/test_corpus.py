"""Inputs, parsing into documents and bad records, normalisation, filters and exact duplicates."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from engine.corpus import (
    CorpusBuilder,
    InputError,
    InputFile,
    ReadTask,
    build_corpus,
    parse_task,
    plan_read_tasks,
    prepare_records,
    clean_text,
    dedup_key,
    expand_inputs,
    filter_reason,
    is_vector_input,
    parse_file,
    read_vector_file,
)


def _parse(name: str, kind: str, data: bytes, text_field="text", id_field=None):
    return list(parse_file(InputFile(Path(name), kind, name), data, text_field, id_field))


def _by_source(records):
    return {r["source"]: r for r in records}


# ----------------------------------------------------------------------------- JSONL


def test_jsonl_good_and_bad_records():
    lines = [
        b'{"text": "a perfectly fine document", "id": 7}',  # 1
        b'{"text": "unterminated',  # 2 invalid JSON
        b"[1, 2, 3]",  # 3 not an object
        b'{"body": "wrong field"}',  # 4 missing text field
        b'{"text": 42}',  # 5 non-string text
        b'{"text": "bad \xff\xfe bytes here"}',  # 6 undecodable
        b"",  # 7 blank: skipped
        b'{"text": null}',  # 8 missing (null)
        '{"text": "line\u2028separator and \u0085 next line inside a string"}'.encode(),  # 9 valid JSON
        b'{"text": "windows line end"}\r',  # 10
    ]
    recs = _parse("in.jsonl", "jsonl", b"\n".join(lines) + b"\n")
    by = _by_source(recs)
    assert [r["source"] for r in recs] == [f"in.jsonl:{i}" for i in (1, 2, 3, 4, 5, 6, 8, 9, 10)]
    assert by["in.jsonl:1"] == {
        "kind": "doc", "id": "in.jsonl:1", "text": "a perfectly fine document", "source": "in.jsonl:1", "error": None
    }
    assert by["in.jsonl:2"]["kind"] == "bad" and "invalid JSON" in by["in.jsonl:2"]["error"]
    assert "not an object" in by["in.jsonl:3"]["error"]
    assert "no field 'text'" in by["in.jsonl:4"]["error"] and "body" in by["in.jsonl:4"]["error"]
    assert "int, not a string" in by["in.jsonl:5"]["error"]
    assert "undecodable" in by["in.jsonl:6"]["error"]
    assert "missing" in by["in.jsonl:8"]["error"]
    assert by["in.jsonl:9"]["kind"] == "doc" and "\u2028" in by["in.jsonl:9"]["text"]
    assert by["in.jsonl:10"]["kind"] == "doc" and by["in.jsonl:10"]["text"] == "windows line end"
    for r in recs:
        if r["kind"] == "bad":
            assert r["id"] is None and r["text"] is None and r["error"]


def test_jsonl_id_field_and_bom():
    data = "\ufeff".encode() + b'{"text": "first doc here", "doc": "a-1"}\n{"text": "no id in this one"}\n{"text": "x", "doc": [1]}\n'
    recs = _parse("ids.jsonl", "jsonl", data, id_field="doc")
    assert recs[0]["kind"] == "doc" and recs[0]["id"] == "a-1"  # BOM does not break line 1
    assert recs[1]["kind"] == "bad" and "id field 'doc'" in recs[1]["error"] and recs[1]["source"] == "ids.jsonl:2"
    assert recs[2]["kind"] == "bad" and recs[2]["source"] == "ids.jsonl:3"
    num = _parse("n.jsonl", "jsonl", b'{"text": "t", "doc": 12}\n', id_field="doc")
    assert num[0]["id"] == "12"


def test_jsonl_other_text_field():
    recs = _parse("f.jsonl", "jsonl", b'{"body": "hello there"}\n', text_field="body")
    assert recs[0]["kind"] == "doc" and recs[0]["text"] == "hello there"


# ----------------------------------------------------------------------------- CSV


def test_csv_rows_ragged_and_multiline():
    data = (
        b"id,text,extra\n"
        b"r1,first row text,x\n"
        b"r2,too,many,fields\n"  # line 3: ragged
        b'r3,"a quoted, multi\nline text",y\n'  # lines 4-5
        b"r4,short\n"  # line 6: ragged (too few)
        b"\n"  # line 7: blank, skipped
        b"r5,last row,z\n"  # line 8
    )
    recs = _parse("t.csv", "csv", data, id_field="id")
    by = _by_source(recs)
    assert by["t.csv:2"]["kind"] == "doc" and by["t.csv:2"]["id"] == "r1" and by["t.csv:2"]["text"] == "first row text"
    assert by["t.csv:3"]["kind"] == "bad" and "4 fields where the header has 3" in by["t.csv:3"]["error"]
    assert by["t.csv:4"]["text"] == "a quoted, multi\nline text" and by["t.csv:4"]["id"] == "r3"
    assert by["t.csv:6"]["kind"] == "bad"
    assert by["t.csv:8"]["id"] == "r5"
    assert len(recs) == 5


def test_csv_without_id_field_uses_file_line_ids():
    recs = _parse("t.csv", "csv", b"text\nalpha beta\ngamma delta\n")
    assert [r["id"] for r in recs] == ["t.csv:2", "t.csv:3"]


@pytest.mark.parametrize(
    "data, id_field, match",
    [
        (b"id,body\n1,hello\n", None, "no column 'text'"),
        (b"text,body\nhello,x\n", "id", "no id column 'id'"),
    ],
)
def test_csv_missing_column_is_one_bad_record(data, id_field, match):
    recs = _parse("m.csv", "csv", data, id_field=id_field)
    assert len(recs) == 1 and recs[0]["kind"] == "bad" and recs[0]["source"] == "m.csv:1"
    assert match in recs[0]["error"]


def test_tsv_and_empty_csv():
    recs = _parse("t.tsv", "csv", b"text\tid\nhello, world\t1\n", id_field="id")
    assert recs[0]["text"] == "hello, world" and recs[0]["id"] == "1"
    assert _parse("e.csv", "csv", b"") == []


# ----------------------------------------------------------------------------- text


def test_plain_text_lines():
    data = b"first line\n\n   \nsecond line\r\nthird \xff line\nfourth\xe2\x80\xa8still fourth\n"
    recs = _parse("notes.txt", "lines", data)
    assert [r["source"] for r in recs] == ["notes.txt:1", "notes.txt:4", "notes.txt:5", "notes.txt:6"]
    assert recs[0]["id"] == "notes.txt:1" and recs[0]["text"] == "first line"
    assert recs[1]["text"] == "second line"  # no trailing \r
    assert recs[2]["kind"] == "bad" and "undecodable" in recs[2]["error"]
    assert recs[3]["kind"] == "doc" and recs[3]["text"] == "fourth\u2028still fourth"


def test_document_kind_is_one_document():
    recs = _parse("docs/a.txt", "document", "\ufeffline one\nline two\n".encode())
    assert len(recs) == 1
    assert recs[0]["id"] == "docs/a.txt" and recs[0]["source"] == "docs/a.txt:1"
    assert recs[0]["text"] == "line one\nline two\n"


# ----------------------------------------------------------------------------- Parquet


def _parquet_bytes(columns: dict) -> bytes:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def test_parquet_text_and_ids():
    data = _parquet_bytes({"text": ["one document", None, "three"], "key": [10, 11, None]})
    recs = _parse("p.parquet", "parquet", data, id_field="key")
    assert recs[0] == {"kind": "doc", "id": "10", "text": "one document", "source": "p.parquet:1", "error": None}
    assert recs[1]["kind"] == "bad" and "missing" in recs[1]["error"] and recs[1]["source"] == "p.parquet:2"
    assert recs[2]["kind"] == "bad" and "id field 'key'" in recs[2]["error"]
    plain = _parse("p.parquet", "parquet", data)
    assert plain[0]["id"] == "p.parquet:1"


def test_parquet_non_string_missing_column_and_garbage():
    recs = _parse("n.parquet", "parquet", _parquet_bytes({"text": [1, 2]}))
    assert all(r["kind"] == "bad" and "not a string" in r["error"] for r in recs) and len(recs) == 2
    recs = _parse("m.parquet", "parquet", _parquet_bytes({"body": ["x"]}))
    assert len(recs) == 1 and "no column 'text'" in recs[0]["error"] and recs[0]["source"] == "m.parquet:0"
    recs = _parse("g.parquet", "parquet", b"this is not parquet")
    assert len(recs) == 1 and "not a readable Parquet" in recs[0]["error"]


# ----------------------------------------------------------------------------- normalisation


def test_clean_text_and_dedup_key():
    assert clean_text("  a\t b\n\nc  ") == "a b c"
    assert clean_text("e\u0301") == "\u00e9"  # NFC
    k = dedup_key("Hello, World!  Again")
    assert k == dedup_key("hello world again") == dedup_key("HELLO   WORLD... again")
    assert k == dedup_key("ＨＥＬＬＯ world again")  # NFKC folds full-width letters
    assert k != dedup_key("hello world again!!! and more")


@pytest.mark.parametrize(
    "text, reason", [("", "empty"), ("short", "too_short"), ("x" * 51, "too_long"), ("just right here", None)]
)
def test_filter_reason(text, reason):
    assert filter_reason(text, 10, 50) == reason


# ----------------------------------------------------------------------------- build_corpus


def _rec(i, text, doc_id=None):
    src = f"f.txt:{i}"
    return {"kind": "doc", "id": doc_id or src, "text": text, "source": src, "error": None}


def test_build_corpus():
    records = [
        _rec(1, "The quick brown fox jumps.", "a"),
        _rec(2, "the quick brown fox jumps", "b"),  # exact duplicate of a (case, punctuation)
        {"kind": "bad", "id": None, "text": None, "source": "f.txt:3", "error": "broken"},
        _rec(4, "something else entirely", "a"),  # duplicate id
        _rec(5, "   \n ", "c"),  # empty after cleaning
        _rec(6, "tiny", "d"),
        _rec(7, "y" * 60, "e"),
        _rec(8, "THE   QUICK brown fox... jumps!", "f"),  # exact duplicate of a (whitespace)
        _rec(9, "a different  document\there", "g"),
    ]
    c = build_corpus(records, min_chars=10, max_chars=50)
    assert c.ids == ["a", "b", "c", "d", "e", "f", "g"]
    assert c.sources == ["f.txt:1", "f.txt:2", "f.txt:5", "f.txt:6", "f.txt:7", "f.txt:8", "f.txt:9"]
    assert c.status == [
        "ok", "exact_duplicate", "filtered_empty", "filtered_too_short", "filtered_too_long", "exact_duplicate", "ok"
    ]
    assert c.exact_of.tolist() == [-1, 0, -1, -1, -1, 0, -1]
    assert c.texts[0] == "The quick brown fox jumps." and c.texts[6] == "a different document here"
    assert c.texts[2] == c.texts[3] == c.texts[4] == ""
    assert c.unique.tolist() == [0, 6]
    assert c.bad == [
        {"source": "f.txt:3", "error": "broken"},
        {"source": "f.txt:4", "error": "duplicate id 'a' (first at f.txt:1)"},
    ]


def test_build_corpus_filtered_documents_take_no_part_in_exact_duplicates():
    c = build_corpus([_rec(1, "tiny", "a"), _rec(2, "Tiny!", "b"), _rec(3, "a good length text", "c")], 10, 50)
    assert c.status == ["filtered_too_short", "filtered_too_short", "ok"]
    assert c.exact_of.tolist() == [-1, -1, -1]


# ----------------------------------------------------------------------------- inputs


def test_expand_inputs_directory_is_stable(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    for rel in ["b.txt", "a.txt", "sub/c.md", "sub/skip.json", "z.TXT"]:
        (d / rel).write_text("content of " + rel)
    files = expand_inputs([d])
    assert [f.name for f in files] == ["docs/a.txt", "docs/b.txt", "docs/sub/c.md", "docs/z.TXT"]
    assert all(f.kind == "document" for f in files)
    assert files == expand_inputs([d])


def test_expand_inputs_kinds_and_name_clash(tmp_path):
    for name in ["x.jsonl", "x.csv", "x.parquet", "x.log"]:
        (tmp_path / name).write_text("")
    files = expand_inputs([tmp_path / n for n in ["x.jsonl", "x.csv", "x.parquet", "x.log"]])
    assert [f.kind for f in files] == ["jsonl", "csv", "parquet", "lines"]
    assert [f.name for f in files] == ["x.jsonl", "x.csv", "x.parquet", "x.log"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.jsonl").write_text("")
    clash = expand_inputs([tmp_path / "x.jsonl", tmp_path / "other" / "x.jsonl"])
    assert [f.name for f in clash] == [str((tmp_path / "x.jsonl").resolve()), str((tmp_path / "other/x.jsonl").resolve())]


def test_expand_inputs_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "missing.jsonl"])
    with pytest.raises(InputError, match="no input"):
        expand_inputs([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .txt"):
        expand_inputs([tmp_path / "empty"])
    np.save(tmp_path / "v.npy", np.ones((2, 2)))
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(InputError, match="mix"):
        expand_inputs([tmp_path / "v.npy", tmp_path / "t.txt"])


# ----------------------------------------------------------------------------- vectors


def test_read_vector_file_npy(tmp_path):
    arr = np.array([[3, 4, 0], [0, 0, 0], [1, 0, 0], [np.nan, 1, 1], [0, 2, 0]], dtype=np.float64)
    np.save(tmp_path / "v.npy", arr)
    [f] = expand_inputs([tmp_path / "v.npy"])
    assert f.kind == "npy" and is_vector_input([f], "vector")
    vi = read_vector_file(f, "vector", "text", None)
    assert vi.ids == ["0", "2", "4"]
    assert vi.vectors.dtype == np.float32
    np.testing.assert_allclose(vi.vectors, [[0.6, 0.8, 0], [1, 0, 0], [0, 1, 0]], atol=1e-7)
    assert vi.texts is None
    assert [b["source"] for b in vi.bad] == ["v.npy:row 1", "v.npy:row 3"]
    assert all(b["kind"] == "bad" and "zero or not finite" in b["error"] for b in vi.bad)


@pytest.mark.parametrize("arr", [np.ones(4), np.ones((0, 3)), np.array([["a", "b"]])])
def test_read_vector_file_npy_bad_shape(tmp_path, arr):
    np.save(tmp_path / "v.npy", arr)
    with pytest.raises(InputError):
        read_vector_file(expand_inputs([tmp_path / "v.npy"])[0], "vector", "text", None)


def test_read_vector_file_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "emb": [[1.0, 1.0], None, [0.0, 0.0], [0.0, 5.0]],
            "key": ["k0", "k1", "k2", "k3"],
            "body": ["first", "second", "third", None],
        }
    )
    pq.write_table(table, tmp_path / "v.parquet")
    [f] = expand_inputs([tmp_path / "v.parquet"])
    assert is_vector_input([f], "emb") and not is_vector_input([f], "vector")
    vi = read_vector_file(f, "emb", "body", "key")
    assert vi.ids == ["k0", "k3"]
    np.testing.assert_allclose(vi.vectors, [[2**-0.5, 2**-0.5], [0, 1]], atol=1e-6)
    assert vi.texts == ["first", ""]
    assert [b["source"] for b in vi.bad] == ["v.parquet:row 1", "v.parquet:row 2"]
    no_ids = read_vector_file(f, "emb", "missing_text", None)
    assert no_ids.ids == ["0", "3"] and no_ids.texts is None


def test_read_vector_file_parquet_ragged(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"vector": [[1.0, 2.0], [1.0, 2.0, 3.0]]}), tmp_path / "r.parquet")
    with pytest.raises(InputError, match="lengths"):
        read_vector_file(expand_inputs([tmp_path / "r.parquet"])[0], "vector", "text", None)


def test_jsonl_roundtrip_through_files(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"document number {i}"}) for i in range(5)) + "\n")
    [f] = expand_inputs([p])
    recs = list(parse_file(f, p.read_bytes(), "text", None))
    c = build_corpus(recs, 10, 100)
    assert c.ids == [f"d.jsonl:{i}" for i in range(1, 6)] and c.unique.tolist() == list(range(5))


# ----------------------------------------------------------------------------- streaming reads


def _jsonl_with_faults(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        if i % 97 == 5:
            lines.append("{broken json")
        elif i % 89 == 7:
            lines.append("")
        else:
            lines.append(json.dumps({"id": f"d{i}", "text": f"document number {i} " + "x" * (i % 50)}))
    path.write_text("\r\n".join(lines[: n // 2]) + "\r\n" + "\n".join(lines[n // 2 :]) + "\n")


def test_line_files_split_into_whole_line_tasks_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    _jsonl_with_faults(path, 3000)
    f = InputFile(path, "jsonl", "big.jsonl")
    tasks = plan_read_tasks([f], chunk_bytes=10_000)
    assert len(tasks) > 10
    assert tasks[0].start == 0 and tasks[-1].end == path.stat().st_size
    assert all(a.end == b.start for a, b in zip(tasks, tasks[1:]))
    whole = list(parse_file(f, path.read_bytes(), "text", "id"))
    pieces = [r for t in tasks for r in parse_task(f, t, "text", "id")]
    assert pieces == whole  # same records, same file:line sources, same order
    assert sum(r["kind"] == "bad" for r in pieces) == sum(1 for i in range(3000) if i % 97 == 5)


def test_text_line_files_and_small_files_are_planned_as_expected(tmp_path: Path) -> None:
    lines = tmp_path / "notes.txt"
    lines.write_text("".join(f"line {i} of notes\n" for i in range(2000)))
    small = tmp_path / "small.jsonl"
    small.write_text('{"text": "one"}\n')
    fl, fs = InputFile(lines, "lines", "notes.txt"), InputFile(small, "jsonl", "small.jsonl")
    tasks = plan_read_tasks([fl, fs], chunk_bytes=4096)
    assert tasks[-1] == ReadTask(1)  # under the chunk size: read whole
    got = [r["source"] for t in tasks[:-1] for r in parse_task(fl, t, "text", None)]
    assert got == [f"notes.txt:{i}" for i in range(1, 2001)]


def test_parquet_files_split_by_row_groups(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    texts = [f"text number {i} with words" for i in range(5000)]
    ids = [f"p{i}" if i != 4321 else None for i in range(5000)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=500)
    f = InputFile(path, "parquet", "t.parquet")
    tasks = plan_read_tasks([f], chunk_bytes=1)
    assert len(tasks) == 10 and [t.first_line for t in tasks] == list(range(1, 5000, 500))
    pieces = [r for t in tasks for r in parse_task(f, t, "text", "id")]
    assert pieces == list(parse_file(f, path.read_bytes(), "text", "id"))
    assert [r["source"] for r in pieces if r["kind"] == "bad"] == ["t.parquet:4322"]
    missing = [r for t in tasks for r in parse_task(f, t, "body", None)]
    assert len(missing) == 1 and "no column 'body'" in missing[0]["error"]  # named once, not per part


def test_builder_over_batches_equals_the_whole_corpus_at_once() -> None:
    recs = [_rec(i, t, f"id{i % 40}") for i, t in enumerate(["Alpha beta gamma!", "alpha BETA gamma", "tiny", "delta epsilon zeta"] * 30)]
    whole = build_corpus(recs, 10, 100)
    builder = CorpusBuilder()
    rows: dict = {}
    for a in range(0, len(recs), 7):
        part = builder.add(prepare_records(recs[a : a + 7], 10, 100))
        for c, v in part.items():
            rows.setdefault(c, []).extend(v)
    assert rows["id"] == whole.ids and rows["text"] == whole.texts and rows["status"] == whole.status
    assert rows["exact_of"] == whole.exact_of.tolist() and rows["length"] == whole.lengths.tolist()
    assert builder.bad == whole.bad and len(builder.bad) == 80  # ids repeat every 40 records
    assert builder.counts == {s: whole.status.count(s) for s in set(whole.status)}


@pytest.mark.parametrize("name", ["docs.jsonl.gz", "docs.csv.bz2", "docs.zst", "docs.zip"])
def test_compressed_inputs_are_refused_by_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x1f\x8b\x08\x00 not text")
    with pytest.raises(InputError, match=rf"{name}: a compressed file .*decompress it first"):
        expand_inputs([path])


def test_a_json_array_file_gets_a_json_lines_hint(tmp_path):
    arr = tmp_path / "docs.json"
    arr.write_text('\ufeff  [{"text": "one"}, {"text": "two"}]')
    with pytest.raises(InputError, match=r"docs\.json: holds one JSON array.*JSON Lines.*jq -c"):
        expand_inputs([arr])
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [f.kind for f in expand_inputs([lines])] == ["jsonl"]

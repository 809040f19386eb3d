"""Inputs, parsing into documents and bad records, normalisation, filters and exact duplicates."""

from __future__ import annotations

import io
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from theme_engine.engine.corpus import (
    CorpusBuilder,
    InputError,
    InputFile,
    ReadTask,
    build_corpus,
    clean_text,
    dedup_key,
    expand_inputs,
    filter_reason,
    is_vector_input,
    parse_file,
    parse_task,
    plan_read_tasks,
    prepare_records,
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


@pytest.mark.parametrize("value", ['""', '"   "', '"\\t\\u2028"'])
def test_an_empty_or_blank_id_is_a_bad_record(value):
    data = f'{{"text": "has an id", "id": "a"}}\n{{"text": "empty id", "id": {value}}}\n'.encode()
    recs = _parse("e.jsonl", "jsonl", data, id_field="id")
    assert recs[0]["kind"] == "doc" and recs[0]["id"] == "a"
    assert recs[1] == {"kind": "bad", "id": None, "text": None, "source": "e.jsonl:2", "error": "id field 'id' is empty"}


@pytest.mark.parametrize(
    "line, error",
    [
        (b"[" * 100_000, "invalid JSON (arrays or objects nested too deeply to read)"),
        (b'{"text": ' + b"9" * 5000 + b"}", "invalid JSON (Exceeds the limit (4300 digits) for integer string conversion"),
        (b'{"text": "half an emoji \\ud83d"}', "text field 'text' holds a lone surrogate \\ud83d (half of a UTF-16 pair)"),
        (b'{"text": "x", "id": "\\udc80"}', "id field 'id' holds a lone surrogate \\udc80"),
        (b'{"\\ud83d": 1}', "no field 'text' (fields: \\ud83d); set --text-field"),
    ],
)
def test_json_the_parser_or_arrow_cannot_take_is_a_bad_record(line, error):
    """Deep nesting (RecursionError), a 5000-digit number (ValueError) and lone surrogate escapes
    (which Arrow refuses to store) used to raise, here or when the run wrote the records."""
    recs = _parse("h.jsonl", "jsonl", b'{"text": "fine"}\n' + line + b"\n", id_field="id" if b'"id"' in line else None)
    assert recs[0]["kind"] == ("bad" if b'"id"' in line else "doc")  # line 1 has no id
    assert recs[1]["kind"] == "bad" and recs[1]["source"] == "h.jsonl:2" and recs[1]["error"].startswith(error)
    pa = pytest.importorskip("pyarrow")
    pa.table(prepare_records(recs, 1, 100))  # storable


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


def test_csv_empty_ids_and_undecodable_ids_are_bad_records():
    data = b"id,text\nr1,kept\n,empty id\n   ,blank id\n\xff\xfe,bad bytes in the id\n"
    recs = _parse("i.csv", "csv", data, id_field="id")
    assert [(r["source"], r["kind"]) for r in recs] == [("i.csv:2", "doc"), ("i.csv:3", "bad"), ("i.csv:4", "bad"), ("i.csv:5", "bad")]
    assert recs[1]["error"] == recs[2]["error"] == "id field 'id' is empty"
    assert recs[3]["error"] == "id field 'id' holds undecodable bytes (not UTF-8); re-encode the file as UTF-8"
    header = _parse("h.csv", "csv", b"\xff,body\nx,y\n")
    assert header[0]["error"] == "no column 'text' (columns: \\udcff, body); set --text-field"  # storable


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
    empty = _parse("e.parquet", "parquet", _parquet_bytes({"text": ["a", "b"], "key": ["", " "]}), id_field="key")
    assert [(r["source"], r["error"]) for r in empty] == [("e.parquet:1", "id field 'key' is empty"), ("e.parquet:2", "id field 'key' is empty")]


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


def test_whitespace_folding_is_res_whitespace():
    """``clean_text`` and ``fold_text`` fold runs of what ``re``'s ``\\s`` matches (every
    character ``str.isspace`` holds true: no-break spaces, ideographic space, separators) into one
    space: the cache keys and exact-duplicate keys of texts already stored depend on it."""
    import re
    import sys

    from theme_engine.engine.corpus import fold_text

    spaces = [chr(c) for c in range(sys.maxunicode + 1) if re.match(r"\s", chr(c))]
    assert "\u00a0" in spaces and "\u3000" in spaces and "\x1c" in spaces
    text = "a" + "".join(spaces) + "b " + " ".join(spaces) + " c" + spaces[-1]
    assert clean_text(text) == "a b c" == re.sub(r"\s+", " ", text).strip()
    assert fold_text(text) == "a b c"


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


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.ones(4), r"v.npy: expected a 2-D array of shape (n, d), got shape (4,)"),
        (np.ones((0, 16)), r"v.npy: holds no vectors (shape (0, 16)); save an array of shape (n, d) with n >= 1 rows"),
        (np.ones((0, 0)), r"v.npy: holds no vectors (shape (0, 0))"),
        (np.ones((5, 0)), r"v.npy: vectors have no dimensions (shape (5, 0)); save an array of shape (n, d) with d >= 1"),
        (np.array([["a", "b"]]), r"v.npy: expected numbers, got dtype <U1"),
    ],
)
def test_read_vector_file_npy_bad_shape(tmp_path, arr, message):
    np.save(tmp_path / "v.npy", arr)
    with pytest.raises(InputError) as err:
        read_vector_file(expand_inputs([tmp_path / "v.npy"])[0], "vector", "text", None)
    assert str(err.value).startswith(message)


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
    assert [(b["source"], b["error"]) for b in vi.bad] == [
        ("v.parquet:row 1", "vector is null"),
        ("v.parquet:row 2", "vector is zero or not finite"),
    ]
    no_ids = read_vector_file(f, "emb", "missing_text", None)
    assert no_ids.ids == ["0", "3"] and no_ids.texts is None


def _vector_parquet(path: Path, columns: dict) -> InputFile:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return expand_inputs([path])[0]


def test_read_vector_file_parquet_ragged_rows_are_bad_records(tmp_path):
    """Rows whose length is not the one most rows have are named and dropped; the run goes on."""
    vecs = [[1.0, 0.0, 0.0]] * 8
    vecs[3], vecs[7] = [1.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    vecs[5] = None
    vi = read_vector_file(_vector_parquet(tmp_path / "r.parquet", {"vector": vecs}), "vector", "text", None)
    assert vi.ids == ["0", "1", "2", "4", "6"] and vi.vectors.shape == (5, 3)
    assert [(b["source"], b["error"]) for b in vi.bad] == [
        ("r.parquet:row 3", "vector has 2 dimensions where most rows have 3"),
        ("r.parquet:row 5", "vector is null"),
        ("r.parquet:row 7", "vector has 4 dimensions where most rows have 3"),
    ]


def test_read_vector_file_parquet_without_a_majority_length_names_the_rows(tmp_path):
    f = _vector_parquet(tmp_path / "r.parquet", {"vector": [[1.0, 2.0], [1.0, 2.0, 3.0], [3.0, 4.0], [5.0, 6.0, 7.0]]})
    with pytest.raises(InputError) as err:
        read_vector_file(f, "vector", "text", None)
    assert str(err.value) == (
        "r.parquet: column 'vector' holds vectors of different lengths and no length is held by most rows "
        "(length 2: rows 0, 2; length 3: rows 1, 3); every row needs the same dimension"
    )


@pytest.mark.parametrize(
    "vectors, message",
    [
        ([], "r.parquet: holds no vectors (column 'vector' has no rows)"),
        ([None, None], "r.parquet: holds no vectors (all 2 rows of column 'vector' are null)"),
        ([[], [], [1.0]], "r.parquet: vectors have no dimensions (most rows of column 'vector' are empty lists)"),
    ],
)
def test_read_vector_file_parquet_with_no_vectors(tmp_path, vectors, message):
    pa = pytest.importorskip("pyarrow")
    column = pa.array(vectors, type=pa.list_(pa.float32()))
    with pytest.raises(InputError) as err:
        read_vector_file(_vector_parquet(tmp_path / "r.parquet", {"vector": column}), "vector", "text", None)
    assert str(err.value) == message


def test_read_vector_file_parquet_ids_must_be_present_and_not_empty(tmp_path):
    f = _vector_parquet(tmp_path / "i.parquet", {"vector": [[1.0, 0.0]] * 4, "key": ["a", "", None, " "]})
    vi = read_vector_file(f, "vector", "text", "key")
    assert vi.ids == ["a"]
    assert [(b["source"], b["error"]) for b in vi.bad] == [
        ("i.parquet:row 1", "id field 'key' is empty"),
        ("i.parquet:row 2", "id field 'key' is missing or not a scalar"),
        ("i.parquet:row 3", "id field 'key' is empty"),
    ]


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
    assert all(a.end == b.start for a, b in pairwise(tasks))
    whole = list(parse_file(f, path.read_bytes(), "text", "id"))
    pieces = [r for t in tasks for r in parse_task(f, t, "text", "id")]
    assert pieces == whole  # same records, same file:line sources, same order
    assert sum(r["kind"] == "bad" for r in pieces) == sum(1 for i in range(3000) if i % 97 == 5)


@pytest.mark.parametrize("kind", ["lines", "jsonl"])
def test_read_tasks_count_lone_cr_line_ends_and_keep_a_mid_file_feff(tmp_path: Path, kind: str) -> None:
    """A lone \\r ends a line for the parser, so the planner counts it too (line numbers after it
    were one short per \\r); U+FEFF is a byte-order mark only at the start of the file (a task
    starting with it dropped it, so a task's records differed from the whole file's)."""
    rows = [json.dumps({"text": f"record {i}"}) if kind == "jsonl" else f"record {i}" for i in range(40)]
    rows[20] = "\ufeff" + rows[20]
    path = tmp_path / ("mixed.jsonl" if kind == "jsonl" else "mixed.txt")
    path.write_bytes("".join(r + ("\n" if i % 3 == 1 else "\r") for i, r in enumerate(rows)).encode())  # \n after row 19
    f = InputFile(path, kind, path.name)
    tasks = plan_read_tasks([f], chunk_bytes=16)
    assert len(tasks) > 5 and any(t.start == path.read_bytes().index("\ufeff".encode()) for t in tasks)
    whole = list(parse_file(f, path.read_bytes(), "text", None))
    assert [r for t in tasks for r in parse_task(f, t, "text", None)] == whole
    assert [r["source"] for r in whole] == [f"{path.name}:{i}" for i in range(1, 41)]


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


def test_strings_column_reads_as_a_sequence_of_str() -> None:
    """``Corpus`` keeps ids, sources and statuses as one Arrow array each; every way the code
    reads them gives what a list would."""
    import pickle

    import pyarrow as pa

    from theme_engine.engine.corpus import Corpus, Strings

    words = ["a", "bé", "", "ok", "ok"] * 30_000  # more than one batch of iteration
    s = Strings(words)
    assert len(s) == len(words) and s[1] == "bé" and s[-1] == "ok" and list(s[2:5]) == ["", "ok", "ok"]
    assert list(s) == words and s == words and s != words[:-1] and s == Strings(pa.chunked_array([words[:7], words[7:]]))
    assert s.take([4, 0, 1]) == ["ok", "a", "bé"]
    assert np.asarray(s, dtype=object).tolist() == words
    assert pa.array(s, pa.string()).to_pylist() == words
    assert list(Strings(["x"]) + ["y", "z"]) == ["x", "y", "z"]
    assert "bé" in s and s.count("ok") == 60_000
    assert pickle.loads(pickle.dumps(s)) == s
    np.testing.assert_array_equal(s.equal("ok"), np.asarray(words) == "ok")
    corpus = Corpus(["d1", "d2", "d3"], ["f:1", "f:2", "f:3"], None, ["ok", "exact_duplicate", "ok"], np.array([-1, 0, -1]), [], np.array([3, 3, 2]))
    assert isinstance(corpus.ids, Strings) and corpus.ids == ["d1", "d2", "d3"]
    np.testing.assert_array_equal(corpus.unique, [0, 2])

"""Corpus contracts: which inputs exist, how each file parses into documents, text normalisation,
the quality filter and exact-duplicate keys. Pure Python; Ray Data calls :func:`parse_file`.

Every record either becomes a document (``kind == "doc"``) or a bad record (``kind == "bad"``)
that names ``file:line`` and what is wrong; a bad record never stops the run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import sources
from .sources import InputError, Location

TEXT_EXTS = {".txt", ".text", ".md"}
JSONL_EXTS = {".jsonl", ".ndjson", ".json"}
CSV_EXTS = {".csv", ".tsv"}
PARQUET_EXTS = {".parquet", ".pq"}
# a column of in-memory data staged by the Python API: why a row cannot be a document (a text that
# is not a string, a missing id), or null; the read stage makes such a row a bad record
STAGED_PROBLEM = "__theme_engine_problem__"
NPY_EXTS = {".npy"}


DATA_EXTS = JSONL_EXTS | CSV_EXTS | PARQUET_EXTS | NPY_EXTS


@dataclass(frozen=True)
class InputFile:
    path: Location  # a local path, or the URL of an object in a store (``engine.sources``)
    kind: str  # "jsonl" | "csv" | "parquet" | "lines" | "document" | "npy"
    name: str  # stable display name, used in generated ids and in messages


COMPRESSED_EXTS = {".gz": "gunzip", ".bz2": "bunzip2", ".xz": "unxz", ".zst": "unzstd", ".zip": "unzip", ".lz4": "unlz4"}


def _kind_of(path: Location) -> str:
    ext = Path(sources.name_of(path)).suffix.lower()
    if ext in COMPRESSED_EXTS:
        raise InputError(
            f"{path}: a compressed file ({ext}); decompress it first ({COMPRESSED_EXTS[ext]} {path.name}): "
            "inputs are read as plain JSONL, CSV/TSV, Parquet, text lines or .npy"
        )
    if ext == ".json" and _starts_with_array(path):
        raise InputError(
            f"{path}: holds one JSON array; the input format is JSON Lines, one object per line "
            f"(convert it with: jq -c '.[]' {sources.name_of(path)} > {Path(sources.name_of(path)).stem}.jsonl)"
        )
    if ext in JSONL_EXTS:
        return "jsonl"
    if ext in CSV_EXTS:
        return "csv"
    if ext in PARQUET_EXTS:
        return "parquet"
    if ext in NPY_EXTS:
        return "npy"
    return "lines"


def _starts_with_array(path: Location) -> bool:
    """Whether the first character that is not whitespace (or a UTF-8 BOM) is ``[``."""
    head = sources.read_bytes(path, 0, 4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] == b"["


def _ext(name: str) -> str:
    return Path(name).suffix.lower()


def expand_inputs(inputs: list[Any]) -> list[InputFile]:
    """Resolve the INPUT arguments (local paths, or URLs of objects in a store: ``s3://``,
    ``gs://``) into files, in a stable order, with stable names. A directory (or a store's prefix)
    is one document per .txt, .text or .md file under it; one without such files is the data files
    under it (JSONL, CSV/TSV, Parquet, .npy), each read as if named (as Spark or Ray Data leave a
    dataset: names starting with ``.`` or ``_`` are left out)."""
    if not inputs:
        raise InputError("no input given: pass one or more files or directories")
    files: list[InputFile] = []
    for raw in inputs:
        path = sources.location(raw)
        found = sources.expand(path, lambda name: _ext(name) in TEXT_EXTS | DATA_EXTS)
        if found is None:
            raise InputError(f"{path}: no such file or directory")
        what, listed = found
        if what == "file":
            files.append(InputFile(path, _kind_of(path), sources.name_of(path)))
            continue
        docs = [p for p in listed if _ext(sources.name_of(p)) in TEXT_EXTS]
        if docs:
            files.extend(InputFile(p, "document", f"{sources.name_of(path)}/{sources.relative(p, path)}") for p in docs)
        elif listed:
            files.extend(InputFile(p, _kind_of(p), f"{sources.name_of(path)}/{sources.relative(p, path)}") for p in listed)
        else:
            raise InputError(
                f"{path}: directory holds no .txt, .text or .md files (one document per file) and no JSONL, CSV, Parquet or .npy files"
            )
    names = [f.name for f in files]
    if len(set(names)) != len(names):  # same base name twice: fall back to full paths
        files = [InputFile(f.path, f.kind, str(f.path.resolve()) if isinstance(f.path, Path) else f.path) for f in files]
    kinds = {f.kind == "npy" for f in files}
    if len(kinds) > 1:
        raise InputError("inputs mix precomputed vectors (.npy) with text files; run them separately")
    return files


def clean_text(text: str) -> str:
    """The text that is embedded and cached: Unicode NFC, whitespace folded to single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())  # str.split() splits on what re's \s matches


def fold_text(text: str) -> str:
    """The text as exact-duplicate detection sees it: NFKC, case-folded, punctuation dropped,
    whitespace folded to single spaces (no assumption about the language or script). Also what
    the lexical near-duplicate evidence compares (``engine.dedup.char_ngrams``)."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_DROP_PUNCTUATION)
    return " ".join(folded.split())


class _DropPunctuation(dict):
    """A ``str.translate`` table that drops punctuation (Unicode category P*) and keeps every other
    character; filled as characters are first seen, so a text costs one C-level lookup a character."""

    def __missing__(self, cp: int) -> int | None:
        keep = None if unicodedata.category(chr(cp)).startswith("P") else cp
        self[cp] = keep
        return keep


_DROP_PUNCTUATION = _DropPunctuation()


def dedup_key(text: str) -> str:
    """Key for exact duplicates: a digest of :func:`fold_text`."""
    return hashlib.blake2b(fold_text(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_UNDECODABLE = "undecodable bytes (not UTF-8); re-encode the file as UTF-8"


def _unicode_problem(file: InputFile, value: str, what: str) -> str | None:
    """Why a decoded string cannot be stored (Arrow takes valid UTF-8 only), or None. Bytes that are
    not UTF-8 decode to lone surrogates (``surrogateescape``); a JSONL line holding such bytes is
    refused before it is parsed, so a surrogate in a JSON value comes from a ``\\ud83d``-style escape."""
    found = _SURROGATE.search(value)
    if found is None:
        return None
    if file.kind == "jsonl":
        return f"{what} holds a lone surrogate \\u{ord(found.group()):04x} (half of a UTF-16 pair), not Unicode text"
    return f"{what} holds {_UNDECODABLE}"


def _doc(file: InputFile, line: int, doc_id: str | None, text: Any, what: str) -> dict[str, Any]:
    source = f"{file.name}:{line}"
    if not isinstance(text, str):
        kind = "missing" if text is None else f"a {type(text).__name__}, not a string"
        return _bad(source, f"{what} is {kind}")
    problem = _unicode_problem(file, text, what)
    if problem is not None:
        return _bad(source, problem)
    return {"kind": "doc", "id": doc_id if doc_id is not None else source, "text": text, "source": source, "error": None}


def _bad(source: str, error: str) -> dict[str, Any]:
    """A bad record. The message may quote the input (field names, a CSV header): bytes that were
    not UTF-8 are written as ``\\udcff`` escapes there, so the record can always be stored."""
    error = error.encode("utf-8", "backslashreplace").decode("utf-8")
    return {"kind": "bad", "id": None, "text": None, "source": source, "error": error}


def _check_id(file: InputFile, field: str, value: Any) -> tuple[str | None, str | None]:
    """A record's ``--id-field`` value as its document id, or why it cannot be one: missing, not a
    scalar, empty or only whitespace (it would name no document), or not storable as text."""
    if value is None or isinstance(value, (dict, list)):
        return None, f"id field {field!r} is missing or not a scalar"
    doc_id = str(value)
    if not doc_id.strip():
        return None, f"id field {field!r} is empty"
    problem = _unicode_problem(file, doc_id, f"id field {field!r}")
    return (None, problem) if problem else (doc_id, None)


def _decode(data: bytes, at_start: bool = True) -> str:
    """Bytes as text, undecodable bytes kept as lone surrogates. A leading U+FEFF is a byte-order
    mark only at the start of the file: a read task from inside it keeps the character, as a
    whole-file read does."""
    text = data.decode("utf-8", errors="surrogateescape")
    return text[1:] if at_start and text.startswith("\ufeff") else text


_NEWLINE = re.compile(r"\r\n|\r|\n")


def _lines(text: str) -> list[str]:
    """Split on line ends only: ``str.splitlines`` also splits on U+2028, U+0085, form feed…,
    which JSON allows raw inside strings (a valid record would become two bad ones)."""
    return _NEWLINE.split(text)


def _line_ends(block: bytes) -> int:
    """How many line ends :func:`_lines` finds in ``block``: ``\\r\\n``, or a ``\\r`` or ``\\n`` alone
    (a block that ends after ``\\n`` never splits a ``\\r\\n``)."""
    return block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")


def parse_file(
    file: InputFile, data: bytes, text_field: str, id_field: str | None, first_line: int = 1
) -> Iterator[dict[str, Any]]:
    """Parse one file's bytes into document and bad-record dicts (``kind``, ``id``, ``text``, ``source``, ``error``).

    For line formats (``jsonl``, ``lines``) ``data`` may be a run of whole lines from inside the
    file whose first line is number ``first_line`` (see :func:`plan_read_tasks`)."""
    if file.kind == "document":
        text = _decode(data)
        yield _doc(file, 1, file.name, text, "the file")
        return
    if file.kind == "lines":
        for no, line in enumerate(_lines(_decode(data, first_line == 1)), start=first_line):
            if line.strip():
                yield _doc(file, no, None, line, "the line")
        return
    if file.kind == "jsonl":
        yield from _parse_jsonl(file, data, text_field, id_field, first_line)
        return
    if file.kind == "csv":
        yield from _parse_csv(file, data, text_field, id_field)
        return
    if file.kind == "parquet":
        yield from _parse_parquet(file, data, text_field, id_field)
        return
    raise InputError(f"{file.name}: cannot parse a {file.kind} file as text")


def _parse_jsonl(
    file: InputFile, data: bytes, text_field: str, id_field: str | None, first_line: int = 1
) -> Iterator[dict[str, Any]]:
    for no, line in enumerate(_lines(_decode(data, first_line == 1)), start=first_line):
        if not line.strip():
            continue
        source = f"{file.name}:{no}"
        if _SURROGATE.search(line):
            yield _bad(source, _UNDECODABLE)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield _bad(source, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield _bad(source, "invalid JSON (arrays or objects nested too deeply to read)")
            continue
        except ValueError as exc:  # an integer of more digits than Python converts
            yield _bad(source, f"invalid JSON ({str(exc).partition(';')[0]})")
            continue
        if not isinstance(obj, dict):
            yield _bad(source, f"a JSON {type(obj).__name__}, not an object")
            continue
        if text_field not in obj:
            yield _bad(source, f"no field {text_field!r} (fields: {', '.join(sorted(obj)[:8])}); set --text-field")
            continue
        doc_id, problem = _check_id(file, id_field, obj.get(id_field)) if id_field else (None, None)
        if problem is not None:
            yield _bad(source, problem)
            continue
        yield _doc(file, no, doc_id, obj[text_field], f"text field {text_field!r}")


def _parse_csv(file: InputFile, data: bytes, text_field: str, id_field: str | None) -> Iterator[dict[str, Any]]:
    delimiter = "\t" if _ext(file.name) == ".tsv" else ","
    reader = csv.reader(io.StringIO(_decode(data), newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield _bad(f"{file.name}:1", f"unreadable CSV header ({exc})")
        return
    if text_field not in header:
        yield _bad(f"{file.name}:1", f"no column {text_field!r} (columns: {', '.join(header[:8])}); set --text-field")
        return
    if id_field and id_field not in header:
        yield _bad(f"{file.name}:1", f"no id column {id_field!r} (columns: {', '.join(header[:8])}); set --id-field")
        return
    t_idx = header.index(text_field)
    i_idx = header.index(id_field) if id_field else None
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield _bad(f"{file.name}:{line}", f"malformed CSV row ({exc})")
            continue
        if not row:
            continue
        if len(row) != len(header):
            yield _bad(f"{file.name}:{line}", f"{len(row)} fields where the header has {len(header)}")
            continue
        doc_id, problem = _check_id(file, header[i_idx], row[i_idx]) if i_idx is not None else (None, None)
        if problem is not None:
            yield _bad(f"{file.name}:{line}", problem)
            continue
        yield _doc(file, line, doc_id, row[t_idx], f"text field {text_field!r}")


def _parse_parquet(file: InputFile, data: bytes, text_field: str, id_field: str | None) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as exc:
        yield _bad(f"{file.name}:0", f"not a readable Parquet file ({exc})")
        return
    yield from _parquet_records(file, table, text_field, id_field)


def _parquet_records(file: InputFile, table: Any, text_field: str, id_field: str | None, first_row: int = 1) -> Iterator[dict[str, Any]]:
    """Records of a Parquet table (or of some of a file's row groups, the first being row ``first_row``;
    a missing column is reported once, by the part holding row 1)."""
    if text_field not in table.column_names:
        if first_row != 1:
            return
        cols = ", ".join(table.column_names[:8])
        yield _bad(f"{file.name}:0", f"no column {text_field!r} (columns: {cols}); set --text-field")
        return
    texts = table.column(text_field).to_pylist()
    ids = table.column(id_field).to_pylist() if id_field and id_field in table.column_names else None
    if id_field and ids is None:
        if first_row == 1:
            yield _bad(f"{file.name}:0", f"no id column {id_field!r}; set --id-field")
        return
    staged = table.column(STAGED_PROBLEM).to_pylist() if STAGED_PROBLEM in table.column_names else None
    for row, text in enumerate(texts, start=first_row):
        if staged is not None and staged[row - first_row] is not None:
            yield _bad(f"{file.name}:{row}", staged[row - first_row])
            continue
        doc_id, problem = _check_id(file, id_field, ids[row - first_row]) if id_field and ids is not None else (None, None)
        if problem is not None:
            yield _bad(f"{file.name}:{row}", problem)
            continue
        yield _doc(file, row, doc_id, text, f"text field {text_field!r}")


def filter_reason(text: str, min_chars: int, max_chars: int) -> str | None:
    """Why a cleaned text is filtered out before embedding, or None to keep it."""
    if not text:
        return "empty"
    if len(text) < min_chars:
        return "too_short"
    if len(text) > max_chars:
        return "too_long"
    return None


def is_vector_input(files: list[InputFile], vector_field: str) -> bool:
    """Precomputed embeddings: .npy files, or Parquet files that have the vector column."""
    if all(f.kind == "npy" for f in files):
        return True
    parquet = [f for f in files if f.kind == "parquet"]
    if not parquet:
        return False

    with_vectors = [vector_field in _parquet_schema(f).names for f in parquet]
    if any(with_vectors) and not (all(with_vectors) and len(parquet) == len(files)):
        raise InputError(f"inputs mix Parquet files with a {vector_field!r} column and text inputs; run them separately")
    return all(with_vectors)


def _parquet(file: InputFile, read: Callable[[Any], Any]) -> Any:
    """``read`` applied to a Parquet input (its local path, or the store's reader); an I/O failure
    is an :class:`InputError` naming the file (and, for a store, what to check)."""
    try:
        return read(sources.parquet_source(file.path))
    except OSError as exc:
        raise InputError(sources.explain(exc, str(file.path)) if not isinstance(file.path, Path) else f"{file.name}: not a readable Parquet file ({exc})") from None


def _parquet_schema(file: InputFile) -> Any:
    import pyarrow.parquet as pq

    return _parquet(file, pq.read_schema)


def _read_row_groups(file: InputFile, task: ReadTask) -> Any:
    """The whole Parquet input (``task.end < 0``), or its row groups ``[task.start, task.end)``."""
    import pyarrow.parquet as pq

    if task.end < 0:
        return _parquet(file, pq.read_table)
    return _parquet(file, lambda src: pq.ParquetFile(src).read_row_groups(list(range(task.start, task.end))))


@dataclass
class VectorInput:
    ids: list[str]
    vectors: np.ndarray  # float32, L2-normalised rows
    texts: list[str] | None
    bad: list[dict[str, Any]]


def l2_normalise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length (float32), and a mask of the rows that could be (finite, non-zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1)
    ok = np.isfinite(norms) & (norms > 0) & np.isfinite(v).all(axis=1)
    out = np.zeros_like(v)
    out[ok] = v[ok] / norms[ok, None]
    return out, ok


def read_vector_file(file: InputFile, vector_field: str, text_field: str, id_field: str | None) -> VectorInput:
    """Precomputed embeddings of a whole file (:func:`read_vector_piece`)."""
    return read_vector_piece(file, ReadTask(0), vector_field, text_field, id_field)


def read_vector_piece(file: InputFile, task: ReadTask, vector_field: str, text_field: str, id_field: str | None) -> VectorInput:
    """Precomputed embeddings: ``.npy`` (n, d), ids ``str(i)``; or Parquet with a list column (the
    whole file, or the row groups of ``task``), read through Arrow into arrays, never into Python
    lists of numbers.

    Rows are named ``file:row i`` from 0 (as the ``.npy`` ids are). A row that cannot be used is a
    bad record: a null vector, one of another length than most rows (of the piece), one that is
    zero or not finite, or (Parquet with ``id_field``) a missing or empty id. A piece with no
    usable dimension is an :class:`InputError`."""
    problems: dict[int, str] = {}  # row of the piece -> why it is a bad record (the first reason found)
    first = max(task.first_line, 1) - 1  # the piece's first row in its file
    if file.kind == "npy":
        vectors = _npy_vectors(file)
        ids = [str(i) for i in range(vectors.shape[0])]
        texts = None
    else:
        table = _read_row_groups(file, task)
        vectors = _vector_matrix(file, vector_field, table.column(vector_field), problems, first)
        ids = [str(first + i) for i in range(table.num_rows)]
        if id_field and id_field in table.column_names:
            for i, value in enumerate(table.column(id_field).to_pylist()):
                doc_id, problem = _check_id(file, id_field, value)
                if problem is not None:
                    problems.setdefault(i, problem)
                ids[i] = doc_id or ""
        texts = table.column(text_field).to_pylist() if text_field in table.column_names else None
    unit, ok = l2_normalise(vectors)
    for i in np.flatnonzero(~ok).tolist():
        problems.setdefault(i, "vector is zero or not finite")
    ok[list(problems)] = False
    keep = np.flatnonzero(ok)
    return VectorInput(
        ids=[ids[i] for i in keep],
        vectors=unit[keep],
        texts=[texts[i] if isinstance(texts[i], str) else "" for i in keep] if texts is not None else None,
        bad=[_bad(f"{file.name}:row {first + i}", problems[i]) for i in sorted(problems)],
    )


def _npy_vectors(file: InputFile) -> np.ndarray:
    """The (n, d) array of numbers in a ``.npy`` file, n and d at least 1."""
    try:
        arr = sources.load_npy(file.path)
    except (ValueError, OSError) as exc:
        raise InputError(f"{file.name}: not a readable .npy array ({exc})") from None
    if arr.ndim != 2:
        raise InputError(f"{file.name}: expected a 2-D array of shape (n, d), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError(f"{file.name}: holds no vectors (shape {arr.shape}); save an array of shape (n, d) with n >= 1 rows")
    if arr.shape[1] == 0:
        raise InputError(f"{file.name}: vectors have no dimensions (shape {arr.shape}); save an array of shape (n, d) with d >= 1")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{file.name}: expected numbers, got dtype {arr.dtype}")
    return np.asarray(arr)


def _vector_matrix(file: InputFile, field: str, column: Any, problems: dict[int, str], first: int = 0) -> np.ndarray:
    """A Parquet vector column as an (n, d) float32 matrix (rows that are not vectors of the
    column's dimension are NaN, and named in ``problems``). The dimension is the length that more
    than half of the non-null rows have; null rows and rows of another length are bad records (as
    zero vectors are: one stray row does not stop a run); without such a length the piece is
    refused, naming the rows of each length (``first``: the piece's first row in its file)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        raise InputError(f"{file.name}: holds no vectors (column {field!r} has no rows)")
    fixed = pa.types.is_fixed_size_list(arr.type)
    if not (fixed or pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise InputError(f"{file.name}: column {field!r} holds {arr.type}, not lists of numbers")
    null = arr.is_null().to_numpy(zero_copy_only=False)
    if fixed:
        lengths = np.full(n, arr.type.list_size, dtype=np.int64)
    else:
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    for i in np.flatnonzero(null).tolist():
        problems[i] = "vector is null"
    if null.all():
        raise InputError(f"{file.name}: holds no vectors (all {n} rows of column {field!r} are null)")
    values, counts = np.unique(lengths[~null], return_counts=True)
    order = np.lexsort((values, -counts))
    d = int(values[order[0]])
    if 2 * int(counts[order[0]]) <= n - int(null.sum()):
        shown = [(int(values[o]), (np.flatnonzero((lengths == values[o]) & ~null) + first).tolist()) for o in order[:4]]
        groups = "; ".join(f"length {m}: {_rows(r)}" for m, r in shown)
        more = f"; {len(order) - 4} more lengths" if len(order) > 4 else ""
        raise InputError(
            f"{file.name}: column {field!r} holds vectors of different lengths and no length is held by most rows "
            f"({groups}{more}); every row needs the same dimension"
        )
    if d == 0:
        raise InputError(f"{file.name}: vectors have no dimensions (most rows of column {field!r} are empty lists)")
    other = ~null & (lengths != d)
    for i in np.flatnonzero(other).tolist():
        problems[i] = f"vector has {int(lengths[i])} dimensions where most rows have {d}"
    good = ~null & ~other
    flat = pc.cast(arr.values, pa.float32(), safe=False)
    numbers = flat.to_numpy(zero_copy_only=False)  # a null number inside a vector: NaN (not finite)
    out = np.full((n, d), np.nan, dtype=np.float32)
    if fixed:
        start = arr.offset * d
        out[good] = numbers[start : start + n * d].reshape(n, d)[good]
    else:
        offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)[:-1]  # into arr.values, the slice included
        rows = np.flatnonzero(good)
        for a in range(0, rows.size, 65_536):  # a block of rows at a time: the gather index is rows x d
            sel = rows[a : a + 65_536]
            out[sel] = numbers[offsets[sel, None] + np.arange(d)]
    return out


def _rows(rows: list[int], shown: int = 5) -> str:
    """``row 3``, ``rows 3, 7`` or ``rows 0, 1, 2, 3, 4 and 12 more``, for a message."""
    if len(rows) == 1:
        return f"row {rows[0]}"
    listed = ", ".join(str(i) for i in rows[:shown])
    return f"rows {listed} and {len(rows) - shown} more" if len(rows) > shown else f"rows {listed}"


# ----------------------------------------------------------------------------- streaming reads

DEFAULT_READ_CHUNK = 64 * 2**20  # bytes of input per read task


@dataclass(frozen=True)
class ReadTask:
    """One piece of one input file: bytes ``[start, end)`` of a line format (whole lines, the first
    being line ``first_line``), row groups ``[start, end)`` of a Parquet file (first row
    ``first_line``), or the whole file (``end == -1``)."""

    file_index: int
    start: int = 0
    end: int = -1
    first_line: int = 1


def plan_read_tasks(files: list[InputFile], chunk_bytes: int = DEFAULT_READ_CHUNK) -> list[ReadTask]:
    """Split the inputs into read tasks of about ``chunk_bytes``, in input order, so no task holds a
    whole large file: JSONL and text-line files by runs of whole lines, Parquet by row groups.
    CSV (quoted fields may span lines) and one-document files are read whole."""
    tasks: list[ReadTask] = []
    for i, f in enumerate(files):
        size = sources.size(f.path)
        if size > chunk_bytes and f.kind in ("jsonl", "lines"):
            tasks.extend(_line_ranges(i, f.path, chunk_bytes))
        elif size > chunk_bytes and f.kind == "parquet":
            tasks.extend(_row_group_ranges(i, f.path, chunk_bytes))
        else:
            tasks.append(ReadTask(i))
    return tasks


def _line_ranges(file_index: int, path: Location, chunk_bytes: int) -> list[ReadTask]:
    """Runs of whole lines of about ``chunk_bytes`` and each run's first line number, from one
    sequential pass holding one chunk at a time (runs end after a ``\n``)."""
    out = []
    start, line = 0, 1
    with sources.open_input(path) as fh:
        while True:
            block = fh.read(chunk_bytes)
            if not block:
                break
            if not block.endswith(b"\n"):
                block += fh.readline()
            out.append(ReadTask(file_index, start, start + len(block), line))
            start += len(block)
            line += _line_ends(block)
    return out


def _row_group_ranges(file_index: int, path: Location, chunk_bytes: int) -> list[ReadTask]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(sources.parquet_source(path)).metadata
    except (pa.ArrowInvalid, OSError):
        return [ReadTask(file_index)]  # read whole: the parser names the problem
    out = []
    first, row, size, rows = 0, 1, 0, 0
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        size += rg.total_byte_size
        rows += rg.num_rows
        if size >= chunk_bytes or g == meta.num_row_groups - 1:
            out.append(ReadTask(file_index, first, g + 1, row))
            first, row, size, rows = g + 1, row + rows, 0, 0
    return out or [ReadTask(file_index)]


def parse_task(
    file: InputFile, task: ReadTask, text_field: str, id_field: str | None
) -> Iterator[dict[str, Any]]:
    """The records of one read task (see :func:`parse_file`)."""
    if task.end < 0:
        yield from parse_file(file, sources.read_bytes(file.path), text_field, id_field)
    elif file.kind == "parquet":
        yield from _parquet_records(file, _read_row_groups(file, task), text_field, id_field, task.first_line)
    else:
        data = sources.read_bytes(file.path, task.start, task.end - task.start)
        yield from parse_file(file, data, text_field, id_field, task.first_line)


PREPARED_COLUMNS = ("kind", "id", "source", "text", "error", "filtered", "key")


def prepare_records(records: Iterable[dict[str, Any]], min_chars: int, max_chars: int) -> dict[str, list[str]]:
    """Parsed records as columns, with the per-record work done (so it runs where the parsing runs):
    the cleaned text, the filter's reason (``""`` when kept; filtered texts are dropped) and the
    exact-duplicate key. Every value is a string, so batches concatenate with one schema."""
    cols: dict[str, list[str]] = {c: [] for c in PREPARED_COLUMNS}
    for rec in records:
        if rec["kind"] == "bad":
            row = ("bad", "", rec["source"], "", rec["error"], "", "")
        else:
            text = clean_text(rec["text"])
            reason = filter_reason(text, min_chars, max_chars) or ""
            row = ("doc", rec["id"], rec["source"], "" if reason else text, "", reason, "" if reason else dedup_key(text))
        for c, v in zip(PREPARED_COLUMNS, row):
            cols[c].append(v)
    return cols


class Strings(Sequence[str]):
    """A column of strings held as one Arrow array: a few bytes a string, where a list holds a
    Python object of some 60 bytes for each (the driver keeps every document's id, source and
    status). Reads as a sequence of ``str``; ``numpy.asarray`` and ``pyarrow.array`` take it
    whole, and :meth:`take` reads many at once."""

    __slots__ = ("arrow",)

    def __init__(self, values: Any) -> None:
        import pyarrow as pa

        if isinstance(values, Strings):
            values = values.arrow
        elif isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks() if values.num_chunks else pa.array([], pa.large_string())
        elif not isinstance(values, pa.Array):
            values = pa.array(list(values), pa.large_string())
        self.arrow = values.cast(pa.large_string()) if values.type != pa.large_string() else values

    def __len__(self) -> int:
        return len(self.arrow)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self.arrow))
            if step == 1:
                return Strings(self.arrow.slice(start, max(0, stop - start)))
            return Strings(self.arrow.take(np.arange(start, stop, step)))
        return self.arrow[i].as_py()

    def __iter__(self) -> Iterator[str]:
        for a in range(0, len(self.arrow), 65_536):  # a batch of Python strings at a time
            yield from self.arrow.slice(a, 65_536).to_pylist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Strings):
            return self.arrow.equals(other.arrow)
        return isinstance(other, Sequence) and not isinstance(other, str) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like a list

    def __add__(self, other: Iterable[str]) -> Strings:
        import pyarrow as pa

        return Strings(pa.concat_arrays([self.arrow, Strings(other).arrow]))

    def __repr__(self) -> str:
        return f"Strings({len(self)})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.arrow.to_numpy(zero_copy_only=False)
        return out if dtype is None else out.astype(dtype)

    def __arrow_array__(self, type: Any = None) -> Any:
        return self.arrow if type is None else self.arrow.cast(type)

    def take(self, rows: Any) -> list[str]:
        """The strings at ``rows`` (positions), as a list."""
        return self.arrow.take(np.asarray(rows, dtype=np.int64)).to_pylist()

    def equal(self, value: str) -> np.ndarray:
        """A boolean mask of the strings equal to ``value``."""
        import pyarrow.compute as pc

        return pc.equal(self.arrow, value).to_numpy(zero_copy_only=False).astype(bool)


@dataclass
class Corpus:
    """Every input document after reading, in input order, and what became of it before embedding.

    ``ids``, ``sources`` and ``status`` are held as :class:`Strings` (given as any sequence of
    ``str``). ``texts`` is ``None`` where the corpus was loaded without them (a run streams texts
    from its stored documents instead of holding them); ``lengths`` is always there."""

    ids: Strings
    sources: Strings
    texts: list[str] | None  # cleaned text ("" for filtered documents)
    status: Strings  # "ok" | "exact_duplicate" | "filtered_empty" | "filtered_too_short" | "filtered_too_long"
    exact_of: np.ndarray  # int64 index of the first document with the same normalised text, -1 if none
    bad: list[dict[str, Any]]
    lengths: np.ndarray | None = None  # characters of each cleaned text

    def __post_init__(self) -> None:
        self.ids, self.sources, self.status = Strings(self.ids), Strings(self.sources), Strings(self.status)
        if self.lengths is None:
            self.lengths = np.asarray([len(t) for t in self.texts or []], dtype=np.int64)

    @property
    def unique(self) -> np.ndarray:
        """Indices of the documents that are embedded (kept by the filter, first of their text)."""
        return np.flatnonzero(self.status.equal("ok"))


class CorpusBuilder:
    """Turns prepared record batches (:func:`prepare_records`), arriving in input order, into the
    corpus one batch at a time: duplicate ids become bad records, exact duplicates point at the
    first document with their key. It keeps one id and one key per document, never the texts:
    :meth:`add` returns the batch's rows for the caller to store."""

    def __init__(self) -> None:
        self.n = 0
        self.bad: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self._ids: dict[str, str] = {}
        self._keys: dict[str, int] = {}

    def first_rows(self) -> dict[str, int]:
        """Each exact-duplicate key seen and the index of its first document."""
        return self._keys

    def add(self, cols: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"id": [], "source": [], "text": [], "status": [], "exact_of": [], "length": []}
        for kind, doc_id, source, text, error, filtered, key in zip(*(cols[c] for c in PREPARED_COLUMNS)):
            if kind == "bad":
                self.bad.append({"source": source, "error": error})
                continue
            if doc_id in self._ids:
                self.bad.append({"source": source, "error": f"duplicate id {doc_id!r} (first at {self._ids[doc_id]})"})
                continue
            self._ids[doc_id] = source
            index = self.n
            self.n += 1
            if filtered:
                status, exact = f"filtered_{filtered}", -1
            else:
                first = self._keys.setdefault(key, index)
                status, exact = ("ok", -1) if first == index else ("exact_duplicate", first)
            self.counts[status] = self.counts.get(status, 0) + 1
            for c, v in zip(out, (doc_id, source, text, status, exact, len(text))):
                out[c].append(v)
        return out


def build_corpus(records: list[dict[str, Any]], min_chars: int, max_chars: int) -> Corpus:
    """From parsed records in input order: ids checked, texts cleaned and filtered, exact duplicates
    collapsed — the in-memory form of what a run streams through :class:`CorpusBuilder`."""
    builder = CorpusBuilder()
    rows = builder.add(prepare_records(records, min_chars, max_chars))
    return Corpus(
        rows["id"], rows["source"], rows["text"], rows["status"], np.asarray(rows["exact_of"], dtype=np.int64), builder.bad
    )

"""The read of large text inputs as a shuffle by key: every piece of the inputs is parsed, and its
documents stored as a part of ``docs.parquet/``, where it runs; what needs the whole corpus (an
id seen before is a bad record, a text seen before is an exact duplicate of its first document)
is decided per bucket of ids and of keys. The driver keeps counts per piece, the bad records and
the rows they drop: never a text, an id or a key per document.

The steps, each a Ray task per piece or per bucket (``actors.tasks``):

1. :func:`stage_piece` parses a piece into a staged table and hands out its ids and keys by bucket;
2. :func:`first_ids`, per bucket of ids: the rows whose id an earlier row holds (bad records);
3. the driver: the rows each piece keeps, hence each piece's first row in the corpus;
4. :func:`first_keys`, per bucket of keys: each key's first document (``keys/part-N.npz``) and,
   per piece, its exact duplicates' rows and the corpus row of their first;
5. :func:`finish_piece`: the staged piece less its dropped rows, with statuses and ``exact_of``,
   as its part of ``docs.parquet/``.

The result is the same corpus as :class:`~engine.corpus.CorpusBuilder` reading the pieces in
order (tested)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .corpus import InputFile, ReadTask, parse_task, prepare_records
from .docstore import DOC_SCHEMA
from .vectors import save_npz

STAGED = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("text", pa.string()), ("filtered", pa.string()), ("key", pa.string()), ("seq", pa.int64())]
)
IDS = pa.schema([("id", pa.string()), ("piece", pa.int64()), ("row", pa.int64()), ("seq", pa.int64()), ("source", pa.string())])
KEYS = pa.schema([("key", pa.string()), ("piece", pa.int64()), ("row", pa.int64())])
EXACT = pa.schema([("row", pa.int64()), ("exact_of", pa.int64())])


def id_buckets(ids: list[str], buckets: int) -> np.ndarray:
    """Each id's bucket: a CRC-32 of its UTF-8 bytes, the same in every process (``hash()`` is not)."""
    return np.fromiter((zlib.crc32(i.encode("utf-8", "surrogatepass")) for i in ids), dtype=np.int64, count=len(ids)) % buckets


def key_buckets(keys: list[str], buckets: int) -> np.ndarray:
    """Each exact-duplicate key's bucket (keys are hex digests: their first 8 digits are uniform)."""
    return np.fromiter((int(k[:8], 16) for k in keys), dtype=np.int64, count=len(keys)) % buckets


def _split(table: pa.Table, bucket: np.ndarray, buckets: int) -> list[pa.Table]:
    order = np.argsort(bucket, kind="stable")
    bounds = np.searchsorted(bucket[order], np.arange(buckets + 1))
    ordered = table.take(pa.array(order))
    return [ordered.slice(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def group_tasks(files: list[InputFile], tasks: list[ReadTask], chunk_bytes: int) -> list[list[ReadTask]]:
    """Consecutive read tasks in pieces of about ``chunk_bytes`` of input (a large file's tasks
    are that size already; small files go together), so that a folder of many small files does
    not become as many parts."""
    from . import sources

    pieces: list[list[ReadTask]] = []
    size = 0
    for t in tasks:
        f = files[t.file_index]
        n = sources.size(f.path) if t.end < 0 else (t.end - t.start if f.kind in ("jsonl", "lines") else chunk_bytes)
        if pieces and size + n <= chunk_bytes:
            pieces[-1].append(t)
            size += n
        else:
            pieces.append([t])
            size = n
    return pieces


def stage_piece(
    files: list[InputFile], tasks: list[ReadTask], fields: tuple[str, str | None], limits: tuple[int, int], piece: int, staged: Path, buckets: int
) -> tuple[dict[str, Any], list[pa.Table], list[pa.Table]]:
    """Parse the read tasks ``tasks`` of ``files`` (one piece), clean, filter and key their records
    (:func:`~engine.corpus.prepare_records`) and store the documents as ``staged`` (schema
    :data:`STAGED`; ``seq``: the record's place in the piece). Returns what the driver keeps (the
    piece's document count and its bad records, each with its ``seq``), then its documents' ids
    (every document) and keys (those the filter kept) split into ``buckets`` tables each."""
    text_field, id_field = fields
    cols: dict[str, list[Any]] = {c: [] for c in STAGED.names}
    bad: list[dict[str, Any]] = []
    seq = 0
    for task in tasks:
        prepared = prepare_records(parse_task(files[task.file_index], task, text_field, id_field), *limits)
        for kind, doc_id, source, text, error, filtered, key in zip(*prepared.values()):
            if kind == "bad":
                bad.append({"seq": seq, "source": source, "error": error})
            else:
                for c, v in zip(STAGED.names, (doc_id, source, text, filtered, key, seq)):
                    cols[c].append(v)
            seq += 1
    table = pa.table(cols, schema=STAGED)
    tmp = staged.with_name(staged.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, staged)
    n = table.num_rows
    ids = pa.table(
        {"id": table.column("id"), "piece": np.full(n, piece), "row": np.arange(n), "seq": table.column("seq"), "source": table.column("source")},
        schema=IDS,
    )
    kept = np.flatnonzero(np.asarray([f == "" for f in cols["filtered"]], dtype=bool))
    keys = pa.table({"key": pa.array([cols["key"][i] for i in kept], pa.string()), "piece": np.full(len(kept), piece), "row": kept}, schema=KEYS)
    return (
        {"documents": n, "bad": bad},
        _split(ids, id_buckets(cols["id"], buckets), buckets),
        _split(keys, key_buckets(keys.column("key").to_pylist(), buckets), buckets),
    )


def _firsts(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """For a sorted column: whether each row is the first of its value."""
    n = len(values)
    first = np.ones(n, dtype=bool)
    if n > 1:
        first[1:] = np.asarray(pc.not_equal(values.slice(1), values.slice(0, n - 1)).to_numpy(zero_copy_only=False), dtype=bool)
    return first


def first_ids(tables: list[pa.Table]) -> dict[str, Any]:
    """Of one bucket of ids (every piece's): the rows whose id an earlier row (in piece, then row
    order) holds, as ``piece``, ``row``, ``seq`` arrays and their bad records' ``source`` and
    ``error`` (which name the first row's source)."""
    t = pa.concat_tables(tables).sort_by([("id", "ascending"), ("piece", "ascending"), ("row", "ascending")])
    first = _firsts(t.column("id"))
    later = np.flatnonzero(~first)
    head = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))[later]  # each later row's first
    ids = t.column("id").take(pa.array(later)).to_pylist()
    firsts = t.column("source").take(pa.array(head)).to_pylist()
    return {
        "piece": t.column("piece").to_numpy()[later],
        "row": t.column("row").to_numpy()[later],
        "seq": t.column("seq").to_numpy()[later],
        "source": t.column("source").take(pa.array(later)).to_pylist(),
        "error": [f"duplicate id {i!r} (first at {s})" for i, s in zip(ids, firsts)],
    }


def corpus_rows(piece: np.ndarray, row: np.ndarray, dropped: dict[int, np.ndarray], offsets: np.ndarray) -> np.ndarray:
    """Rows of the corpus of staged rows (``piece``, ``row``) that are not dropped: the piece's
    first row, plus the row less the piece's dropped rows before it."""
    out = offsets[piece] + row
    for p, rows in dropped.items():
        at = piece == p
        if at.any():
            out[at] -= np.searchsorted(rows, row[at])
    return out


def first_keys(tables: list[pa.Table], dropped: dict[int, np.ndarray], offsets: np.ndarray, keys_part: Path) -> list[pa.Table]:
    """Of one bucket of keys (every piece's): each key's first document, saved as ``keys_part``
    (``key`` S32 and its corpus ``row``), and per piece (``len(offsets) - 1`` tables, schema
    :data:`EXACT`) the staged rows that are exact duplicates and the corpus row of their first.
    ``dropped``: per piece, the sorted staged rows :func:`first_ids` dropped."""
    t = pa.concat_tables(tables)
    piece, row = t.column("piece").to_numpy(), t.column("row").to_numpy()
    keep = np.ones(len(piece), dtype=bool)
    for p, rows in dropped.items():
        at = np.flatnonzero(piece == p)
        keep[at[np.isin(row[at], rows)]] = False
    t = t.filter(pa.array(keep)).sort_by([("key", "ascending"), ("piece", "ascending"), ("row", "ascending")])
    piece, row = t.column("piece").to_numpy(), t.column("row").to_numpy()
    first = _firsts(t.column("key"))
    at = corpus_rows(piece, row, dropped, offsets)
    head = at[np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))]
    keys = np.asarray([k.encode() for k in t.column("key").filter(pa.array(first)).to_pylist()], dtype="S32")
    save_npz(keys_part, key=keys, row=at[first])
    later = ~first
    out = []
    for p in range(len(offsets) - 1):
        sel = later & (piece == p)
        out.append(pa.table({"row": row[sel], "exact_of": head[sel]}, schema=EXACT))
    return out


def finish_piece(staged: Path, dropped: np.ndarray, exact: list[pa.Table], part: Path) -> dict[str, int]:
    """The staged piece less its ``dropped`` rows, with each document's status (``ok``,
    ``exact_duplicate`` or ``filtered_…``) and ``exact_of`` (its first's corpus row, else -1), as
    ``part`` (the documents schema); returns the count of each status."""
    t = pq.read_table(staged)
    n = t.num_rows
    exact_of = np.full(n, -1, dtype=np.int64)
    for e in exact:
        exact_of[e.column("row").to_numpy()] = e.column("exact_of").to_numpy()
    filtered = np.asarray(t.column("filtered").to_numpy(zero_copy_only=False), dtype=object)
    status = np.where(filtered != "", np.char.add("filtered_", filtered.astype(str)), np.where(exact_of >= 0, "exact_duplicate", "ok"))
    keep = np.ones(n, dtype=bool)
    keep[np.asarray(dropped, dtype=np.int64)] = False
    texts = t.column("text")
    out = pa.table(
        {
            "id": t.column("id"),
            "source": t.column("source"),
            "text": texts,
            "status": pa.array(status.tolist(), pa.string()),
            "exact_of": exact_of,
            "length": pc.utf8_length(texts).cast(pa.int64()),
        },
        schema=DOC_SCHEMA,
    ).filter(pa.array(keep))
    tmp = part.with_name(part.name + ".tmp")
    pq.write_table(out, tmp)
    os.replace(tmp, part)
    values, counts = np.unique(status[keep], return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}

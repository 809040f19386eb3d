"""``docs.parquet``: every input document in input order (id, source, text, status, the index of
the first document with the same normalised text, length), one file written by the driver or a
folder of ``part-NNNNN.parquet`` files written by the read tasks (a dataset Arrow, DuckDB and
Spark read as one table). Texts are streamed from it a batch at a time, never held whole;
everything else about the documents loads as a :class:`Corpus`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .corpus import Corpus, InputFile, ReadTask, Strings, read_vector_piece
from .vectors import check_stored, part_files

DOC_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("text", pa.string()), ("status", pa.string()), ("exact_of", pa.int64()), ("length", pa.int64())]
)
DOC_BATCH = 65_536  # documents per streamed batch (read, cache lookup, text reads)


PART_FILE = "part-{:05d}.parquet"


class DocStore:
    """The documents at ``path``: one file (written to a temporary file, then renamed), or a
    folder of parts read in the order of their names."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._rows: list[int] | None = None  # rows per file, once read_rows has looked

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_rows": None}  # each process looks for itself

    @property
    def files(self) -> list[Path]:
        return part_files(self.path, ".parquet") if self.path.is_dir() else [self.path]

    @property
    def n(self) -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    @contextmanager
    def writer(self) -> Iterator[Callable[[dict[str, Any]], None]]:
        """``write(columns)`` appends documents; the file appears whole when the block ends."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(tmp, DOC_SCHEMA) as out:

            def write(columns: dict[str, Any]) -> None:
                if len(columns["id"]):
                    out.write_table(pa.table(columns, schema=DOC_SCHEMA))

            yield write
        self._rows = None
        if self.path.is_dir():  # the parts an earlier read left
            shutil.rmtree(self.path)
        os.replace(tmp, self.path)

    def write_corpus(self, corpus: Corpus) -> None:
        with self.writer() as write:
            write(
                {
                    "id": corpus.ids,
                    "source": corpus.sources,
                    "text": corpus.texts if corpus.texts is not None else [""] * len(corpus.ids),
                    "status": corpus.status,
                    "exact_of": corpus.exact_of,
                    "length": corpus.lengths,
                }
            )

    def load_corpus(self, bad: list[dict[str, Any]]) -> Corpus:
        """Everything about the documents but their texts (read those with :meth:`iter_texts`)."""
        columns = ["id", "source", "status", "exact_of", "length"]
        files = self.files
        t = pa.concat_tables([pq.read_table(f, columns=columns) for f in files]) if files else DOC_SCHEMA.empty_table().select(columns)
        return Corpus(
            ids=Strings(t.column("id")),
            sources=Strings(t.column("source")),
            texts=None,
            status=Strings(t.column("status")),
            exact_of=t.column("exact_of").to_numpy().astype(np.int64),
            bad=bad,
            lengths=t.column("length").to_numpy().astype(np.int64),
        )

    def iter_texts(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(document indices, texts) for the sorted document indices ``rows``, one batch of
        documents at a time."""
        base = 0
        for f in self.files:
            pf = pq.ParquetFile(f)
            end = base + pf.metadata.num_rows
            if np.searchsorted(rows, base) == np.searchsorted(rows, end):  # no row of this part
                base = end
                continue
            for batch in pf.iter_batches(batch_size=DOC_BATCH, columns=["text"]):
                lo, hi = np.searchsorted(rows, [base, base + batch.num_rows])
                if hi > lo:
                    sel = rows[lo:hi]
                    yield sel, batch.column(0).take(pa.array(sel - base)).to_pylist()
                base += batch.num_rows

    def read_rows(self, a: int, b: int, columns: list[str]) -> pa.Table:
        """Columns ``columns`` of documents ``[a, b)``, from the row groups that hold them (the
        files' row counts are looked up once per store: a worker reading many ranges of a
        dataset of many parts opens only the parts that hold each)."""
        files = self.files
        if self._rows is None or len(self._rows) != len(files):
            self._rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
        parts = []
        base = 0
        for f, rows in zip(files, self._rows):
            if base + rows <= a:
                base += rows
                continue
            pf = pq.ParquetFile(f)
            meta = pf.metadata
            for g in range(meta.num_row_groups):
                lo, hi = base, base + meta.row_group(g).num_rows
                if hi > a and lo < b:
                    t = pf.read_row_group(g, columns=columns)
                    parts.append(t.slice(max(a, lo) - lo, min(b, hi) - max(a, lo)))
                base = hi
            if base >= b:
                break
        return pa.concat_tables(parts) if parts else DOC_SCHEMA.empty_table().select(columns)


class DocChain:
    """Several documents files read as one corpus, the rows of each after the last's: a run's own
    ``docs.parquet`` and those of the updates committed on top of it."""

    def __init__(self, paths: list[Path]) -> None:
        self.stores = [DocStore(p) for p in paths]
        self.sizes = [s.n for s in self.stores]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def load_corpus(self, bad: list[dict[str, Any]]) -> Corpus:
        """The whole chain as one corpus (``exact_of`` is stored as a row of the whole chain)."""
        parts = [s.load_corpus([]) for s in self.stores]
        return Corpus(
            ids=_joined([p.ids for p in parts]),
            sources=_joined([p.sources for p in parts]),
            texts=None,
            status=_joined([p.status for p in parts]),
            exact_of=np.concatenate([p.exact_of for p in parts]) if parts else np.zeros(0, np.int64),
            bad=bad,
            lengths=np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64),
        )

    def read_rows(self, a: int, b: int, columns: list[str]) -> pa.Table:
        """Columns ``columns`` of the chain's documents ``[a, b)``."""
        parts = [
            store.read_rows(max(a, lo) - lo, min(b, hi) - lo, columns)
            for store, lo, hi in zip(self.stores, self.offsets[:-1].tolist(), self.offsets[1:].tolist())
            if hi > a and lo < b
        ]
        return pa.concat_tables(parts) if parts else DOC_SCHEMA.empty_table().select(columns)

    def iter_texts(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(rows of the chain, texts) for the sorted rows ``rows``, a batch at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        for store, lo, hi in zip(self.stores, self.offsets[:-1], self.offsets[1:]):
            a, b = np.searchsorted(rows, [lo, hi])
            if b > a:
                for sel, texts in store.iter_texts(rows[a:b] - lo):
                    yield sel + lo, texts


def texts_at(store: DocStore | DocChain, rows: np.ndarray) -> list[str]:
    """The texts of the stored documents ``rows`` (any order, repeats allowed), in that order."""
    rows = np.asarray(rows, dtype=np.int64)
    wanted = np.unique(rows)
    held: dict[int, str] = {}
    for sel, texts in store.iter_texts(wanted):
        held.update(zip(sel.tolist(), texts))
    return [held[r] for r in rows.tolist()]


def _joined(columns: list[Strings]) -> Strings:
    return Strings(pa.chunked_array([c.arrow for c in columns], pa.large_string()))


def run_documents(out: Path) -> DocChain | None:
    """The stored documents of the run in ``out`` (its ``docs.parquet``, then those of its
    committed updates), or None when the run's is not there."""
    import json

    state = Path(out) / ".theme-engine"
    base = state / "read" / "docs.parquet"
    if not base.exists():
        return None
    paths = [base]
    result = Path(out) / "result"  # the published generation holds the record of its updates
    if result.is_symlink() or result.is_dir():
        source = result / "updates.json"
    else:  # a folder of before generations
        current = state / "updates" / "current.json"
        journal = state / "updates" / "commit.json"  # a commit stopped mid-way: its record is the current one
        source = journal if journal.is_file() else current
    if source.is_file():
        data = json.loads(source.read_text())
        data = data.get("current", data)
        paths += [state / "updates" / u["docs"] for u in data.get("updates", [])]
    return DocChain(paths)


def store_vector_piece(
    file: InputFile, task: ReadTask, fields: tuple[str, str, str | None], prefix_ids: bool, docs_part: Path, vectors_part: Path
) -> dict[str, Any]:
    """Read one piece of a precomputed-vector input (:func:`~engine.corpus.read_vector_piece`)
    and store it where it was read: its documents as ``docs_part`` (the docs table's schema) and
    its vectors as ``vectors_part`` (float32 ``.npy``). Ids are prefixed with the file's name when
    the run has several files. Returns what the driver keeps: the counts, the dimension and the
    bad records (each file is written to a temporary name, then renamed)."""
    vector_field, text_field, id_field = fields
    piece = read_vector_piece(file, task, vector_field, text_field, id_field)
    n = len(piece.ids)
    problem = check_stored(piece.vectors, n)
    if problem is not None:  # read_vector_piece normalises and drops bad rows: a bug if reached
        raise ValueError(f"{file.name}: precomputed vectors failed validation after normalising: {problem}")
    ids = [f"{file.name}:{i}" for i in piece.ids] if prefix_ids else piece.ids
    DocStore(docs_part).write_corpus(
        Corpus(ids, [f"{file.name}:row {i}" for i in piece.ids], piece.texts or [""] * n, ["ok"] * n, np.full(n, -1, dtype=np.int64), [])
    )
    tmp = vectors_part.with_name(vectors_part.name + ".tmp.npy")
    np.save(tmp, piece.vectors)
    os.replace(tmp, vectors_part)
    return {"documents": n, "dim": int(piece.vectors.shape[1]) if n else 0, "bad": piece.bad}

"""``docs.parquet``: every input document in input order (id, source, text, status, the index of
the first document with the same normalised text, length). Texts are streamed from it a batch at a
time, never held whole; everything else about the documents loads as a :class:`Corpus`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .corpus import Corpus

DOC_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("text", pa.string()), ("status", pa.string()), ("exact_of", pa.int64()), ("length", pa.int64())]
)
DOC_BATCH = 65_536  # documents per streamed batch (read, cache lookup, text reads)


class DocStore:
    """The documents file at ``path`` (written to a temporary file, then renamed)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def writer(self) -> Iterator[Callable[[dict[str, Any]], None]]:
        """``write(columns)`` appends documents; the file appears whole when the block ends."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with pq.ParquetWriter(tmp, DOC_SCHEMA) as out:

            def write(columns: dict[str, Any]) -> None:
                if len(columns["id"]):
                    out.write_table(pa.table(columns, schema=DOC_SCHEMA))

            yield write
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
        t = pq.read_table(self.path, columns=["id", "source", "status", "exact_of", "length"])
        return Corpus(
            ids=t.column("id").to_pylist(),
            sources=t.column("source").to_pylist(),
            texts=None,
            status=t.column("status").to_pylist(),
            exact_of=t.column("exact_of").to_numpy().astype(np.int64),
            bad=bad,
            lengths=t.column("length").to_numpy().astype(np.int64),
        )

    def iter_texts(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(document indices, texts) for the sorted document indices ``rows``, one batch of
        documents at a time."""
        pf = pq.ParquetFile(self.path)
        base = 0
        for batch in pf.iter_batches(batch_size=DOC_BATCH, columns=["text"]):
            lo, hi = np.searchsorted(rows, [base, base + batch.num_rows])
            if hi > lo:
                sel = rows[lo:hi]
                yield sel, batch.column(0).take(pa.array(sel - base)).to_pylist()
            base += batch.num_rows


class DocChain:
    """Several documents files read as one corpus, the rows of each after the last's: a run's own
    ``docs.parquet`` and those of the updates committed on top of it."""

    def __init__(self, paths: list[Path]) -> None:
        self.stores = [DocStore(p) for p in paths]
        self.sizes = [pq.ParquetFile(s.path).metadata.num_rows for s in self.stores]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def load_corpus(self, bad: list[dict[str, Any]]) -> Corpus:
        """The whole chain as one corpus (``exact_of`` is stored as a row of the whole chain)."""
        parts = [s.load_corpus([]) for s in self.stores]
        return Corpus(
            ids=[i for p in parts for i in p.ids],
            sources=[s for p in parts for s in p.sources],
            texts=None,
            status=[s for p in parts for s in p.status],
            exact_of=np.concatenate([p.exact_of for p in parts]) if parts else np.zeros(0, np.int64),
            bad=bad,
            lengths=np.concatenate([p.lengths for p in parts]) if parts else np.zeros(0, np.int64),
        )

    def iter_texts(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(rows of the chain, texts) for the sorted rows ``rows``, a batch at a time."""
        rows = np.asarray(rows, dtype=np.int64)
        for store, lo, hi in zip(self.stores, self.offsets[:-1], self.offsets[1:]):
            a, b = np.searchsorted(rows, [lo, hi])
            if b > a:
                for sel, texts in store.iter_texts(rows[a:b] - lo):
                    yield sel + lo, texts


def run_documents(out: Path) -> DocChain | None:
    """The stored documents of the run in ``out`` (its ``docs.parquet``, then those of its
    committed updates), or None when the run's is not there."""
    import json

    state = Path(out) / ".theme-engine"
    base = state / "read" / "docs.parquet"
    if not base.is_file():
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

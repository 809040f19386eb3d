"""A run's vectors in Qdrant, searchable by meaning with the theme and duplicate status as payload.

* :class:`EdgeIndex` — embedded Qdrant Edge shard in ``OUT/index`` (the default), no server, one
  process at a time (Qdrant Edge locks its folder). Exact (a full scan per query, no graph) below
  ``index.hnsw_min_points`` points, HNSW at or above: at 100k points building the graph was most of
  the stage's time while a full scan still answers a query quickly (bench/README.md).
* :class:`ServerIndex` — a collection on a Qdrant server (``--qdrant-url``), one per run, for
  corpora too large for one machine's disk or to share a run's index.

A point is an embedded document: its id is the document's row in ``documents.parquet``, its
payload ``row``, ``id`` (the document's id), ``theme``, ``kept`` (1 or 0: Qdrant Edge matches
integers, not booleans), ``duplicate_of`` (the kept document's row, -1 when kept) and ``text``
(an excerpt). ``theme`` and ``kept`` are indexed payload fields, so the filters of
:meth:`search` run inside Qdrant.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .config import redact_url

log = logging.getLogger(__name__)

VECTOR = "embedding"
INDEX_DIR = "index"
UPSERT_BATCH = 2048


class IndexUnavailable(RuntimeError):
    """The index cannot be opened or written (missing, locked, server unreachable…)."""


@dataclass(frozen=True)
class Hit:
    row: int  # the document's row in documents.parquet
    score: float  # cosine with the query
    payload: dict[str, Any]


def _batches(rows: np.ndarray, vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> Iterator[list[tuple[int, list[float], dict[str, Any]]]]:
    """(point id, vector, payload) in upsert batches of ``UPSERT_BATCH``."""
    for a in range(0, len(rows), UPSERT_BATCH):
        b = a + UPSERT_BATCH
        yield list(zip(np.asarray(rows[a:b]).tolist(), np.asarray(vectors[a:b]).tolist(), payloads[a:b]))


def _payload_filter(models: Any, theme: int | None, kept_only: bool) -> Any:
    must = []
    if theme is not None:
        must.append(models.FieldCondition(key="theme", match=models.MatchValue(value=int(theme))))
    if kept_only:
        must.append(models.FieldCondition(key="kept", match=models.MatchValue(value=1)))
    return models.Filter(must=must) if must else None


class EdgeIndex:
    """A Qdrant Edge shard in ``folder``; ``create`` starts it afresh (an earlier one is removed)."""

    def __init__(self, folder: Path, dim: int | None = None, create: bool = False, exact: bool = False) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.folder = Path(folder)
        # a new exact shard is searched by a full scan whatever its segments: merging them would
        # only cost time (and the scan was no faster after it, bench/README.md)
        self._merge = not (create and exact)
        try:
            if create:
                if dim is None:
                    raise ValueError("a new index needs the vectors' dimension")
                if self.folder.exists():
                    shutil.rmtree(self.folder)
                self.folder.mkdir(parents=True)
                # m = 0: no HNSW graph; every query scans the vectors (exact)
                graph = {"hnsw_config": qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)} if exact else {}
                params = qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot, **graph)
                config = qe.EdgeConfig(vectors={VECTOR: params})
                self._shard = qe.EdgeShard.create(str(self.folder), config)
                for key in ("theme", "kept"):
                    self._shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Integer))
            else:
                if not self.folder.is_dir():
                    raise IndexUnavailable(f"{self.folder} holds no search index: run theme-engine again into its folder (index.enabled)")
                self._shard = qe.EdgeShard.load(str(self.folder), None)
        except IndexUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - qdrant_edge raises plain runtime errors
            msg = str(exc)
            if "WouldBlock" in msg or "lock" in msg.lower():
                raise IndexUnavailable(f"search index {self.folder} is in use by another process; try again when it ends") from None
            raise IndexUnavailable(f"search index {self.folder} cannot be opened: {msg}") from None

    def add(self, rows: np.ndarray, vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        qe = self._qe
        for batch in _batches(rows, vectors, payloads):
            points = [qe.Point(id=r, vector={VECTOR: v}, payload=p) for r, v, p in batch]
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def finish(self) -> None:
        """Merge the segments and build the HNSW graph (not for a new exact shard), then write
        everything to disk."""
        if self._merge:
            self._shard.optimize()
        self._shard.flush()

    def search(self, vector: np.ndarray, k: int, theme: int | None = None, kept_only: bool = False) -> list[Hit]:
        qe = self._qe
        found = self._shard.query(
            qe.QueryRequest(
                limit=int(k),
                query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist(), using=VECTOR),
                filter=_payload_filter(qe, theme, kept_only),
                with_payload=True,
            )
        )
        return [Hit(int(p.id), float(p.score), dict(p.payload)) for p in found]

    def count(self) -> int:
        return int(self._shard.info().points_count)

    def close(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.close()


class ServerIndex:
    """A collection on the Qdrant server at ``url`` (QDRANT_API_KEY authenticates when set)."""

    def __init__(self, url: str, collection: str, dim: int | None = None, create: bool = False) -> None:
        from qdrant_client import QdrantClient, models

        self._models = models
        self.collection = collection
        shown = redact_url(url) or ""
        try:
            self._client = QdrantClient(location=url, timeout=60, api_key=os.environ.get("QDRANT_API_KEY") or None)
            exists = self._client.collection_exists(collection)
            if create:
                if exists:
                    self._client.delete_collection(collection)
                self._client.create_collection(collection, vectors_config={VECTOR: models.VectorParams(size=dim, distance=models.Distance.DOT)})
                for key in ("theme", "kept"):
                    self._client.create_payload_index(collection, key, field_schema=models.PayloadSchemaType.INTEGER)
            elif not exists:
                raise IndexUnavailable(f"Qdrant server {shown} has no collection {collection}: run theme-engine again (index.enabled)")
        except IndexUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - transport errors vary (httpx, grpc)
            raise IndexUnavailable(f"Qdrant server {shown} is not usable: {str(exc).replace(url, shown)}") from None

    def add(self, rows: np.ndarray, vectors: np.ndarray, payloads: Sequence[dict[str, Any]]) -> None:
        m = self._models
        for batch in _batches(rows, vectors, payloads):
            points = [m.PointStruct(id=r, vector={VECTOR: v}, payload=p) for r, v, p in batch]
            self._client.upsert(self.collection, points=points, wait=True)

    def finish(self) -> None:
        return None  # the server indexes as points arrive

    def search(self, vector: np.ndarray, k: int, theme: int | None = None, kept_only: bool = False) -> list[Hit]:
        found = self._client.query_points(
            self.collection,
            query=np.asarray(vector, dtype=np.float32).tolist(),
            using=VECTOR,
            limit=int(k),
            query_filter=_payload_filter(self._models, theme, kept_only),
            with_payload=True,
        ).points
        return [Hit(int(p.id), float(p.score), dict(p.payload or {})) for p in found]

    def count(self) -> int:
        return int(self._client.count(self.collection, exact=True).count)

    def close(self) -> None:
        self._client.close()


def open_index(
    out: Path, url: str | None = None, collection: str | None = None, dim: int | None = None, create: bool = False, exact: bool = False
) -> EdgeIndex | ServerIndex:
    """The index of the run in ``out``: on the server ``url`` (collection ``collection``), else the
    Qdrant Edge shard in ``out/index``. ``create`` starts it afresh for ``dim``-dimensional vectors;
    ``exact``: a new Edge shard without an HNSW graph (a server builds its own)."""
    if url:
        if not collection:
            raise ValueError("a server index needs its collection's name")
        return ServerIndex(url, collection, dim, create)
    return EdgeIndex(Path(out) / INDEX_DIR, dim, create, exact)


def run_payloads(
    rows: np.ndarray, pos: np.ndarray, texts: list[str], ids: list[str], unique: np.ndarray, themes: np.ndarray, duplicate_of: np.ndarray, chars: int
) -> list[dict[str, Any]]:
    """The index's payload of each document (corpus rows ``rows``, embedded positions ``pos``):
    its row, id, theme, whether it is kept, the row of the document it duplicates, an excerpt."""
    dup = duplicate_of[pos]
    return [
        {"row": int(r), "id": ids[r], "theme": int(themes[p]), "kept": int(d < 0), "duplicate_of": int(unique[d]) if d >= 0 else -1, "text": t[:chars]}
        for r, p, d, t in zip(rows.tolist(), pos.tolist(), dup.tolist(), texts)
    ]


def build_run_index(
    out: Path,
    url: str | None,
    collection: str | None,
    exact: bool,
    chars: int,
    docs: Any,
    vectors: Any,
    themes_file: Path,
    dedup_file: Path,
    progress: Callable[[int, int], None] | None = None,
    check: Callable[[], None] | None = None,
) -> int:
    """A run's search index built afresh from what its stages stored — the documents ``docs`` (a
    ``DocStore``: ids, texts), their ``vectors`` (``VectorParts``), each one's theme
    (``themes_file``, the label stage's ``result.npz``) and duplicate decision (``dedup_file``) —
    wherever this runs (the driver, or a Ray task beside the data). Returns the points indexed."""
    corpus = docs.load_corpus([])
    unique = corpus.unique
    with np.load(themes_file) as a:
        themes = a["themes"]
    with np.load(dedup_file) as a:
        duplicate_of = a["duplicate_of"]
    n = len(unique)
    index = open_index(out, url, collection, dim=int(vectors.shape[1]), create=True, exact=exact)
    try:
        done = 0
        if progress is not None:
            progress(0, n)
        for rows, texts in docs.iter_texts(unique):
            pos = np.searchsorted(unique, rows)  # positions in unique (sorted), the vectors' rows
            payloads = run_payloads(rows, pos, texts, corpus.ids, unique, themes, duplicate_of, chars)
            for a in range(0, len(rows), 4096):  # a few thousand points per stop point
                b = a + 4096
                index.add(rows[a:b], np.asarray(vectors[pos[a:b]], dtype=np.float32), payloads[a:b])
                done += len(rows[a:b])
                if progress is not None:
                    progress(done, n)
                if check is not None:
                    check()
        index.finish()
        return index.count()
    finally:
        index.close()

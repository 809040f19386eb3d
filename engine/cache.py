"""Embedding cache in Qdrant, keyed by (model id, normalised text).

* :class:`EdgeCache` — embedded Qdrant Edge shard in a local folder (the default). Qdrant Edge
  locks its folder, so exactly one process (the driver) owns it. It writes ~100x faster than
  qdrant-client's pure-Python local mode (README: ~40,000 against ~400 points/s), fast enough to keep up with the embedder.
* :class:`ServerCache` — a Qdrant server (``--qdrant-url``) through qdrant-client; any process may connect.

Point ids are UUIDv5 of ``model_id + NUL + text``: a change of model never returns stale vectors.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .vectors import invalid_rows

log = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6b1d3c0e-2f45-4d8a-9a57-3f0c2e9d8b11")
VECTOR_NAME = "embedding"


class CacheUnavailable(RuntimeError):
    """The cache cannot be opened (locked by another process, server unreachable…)."""


def cache_key(model_id: str, text: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, model_id + "\x00" + text))


def text_key(model_id: str, text: str, windows: Any = None, boilerplate: Any = None) -> str:
    """A text's cache key: the model, and for a text that may be longer than the window, the
    windows' recipe (``engine.windows.TextWindows``) and the digest of the boilerplate left out of
    it (``engine.boilerplate.Boilerplate``), so a pooled vector is never taken for a truncated one
    and a text within the window keeps its key."""
    if windows is not None and windows.may_be_long(text):
        model_id = f"{model_id}|{windows.recipe}" + (f";boilerplate={boilerplate.digest}" if boilerplate else "")
    return cache_key(model_id, text)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "theme-engine"


def _collect(records: Any, into: dict[str, np.ndarray]) -> None:
    """The vectors of retrieved points (Qdrant Edge's or qdrant-client's records), by point id."""
    for rec in records:
        vec = rec.vector[VECTOR_NAME] if isinstance(rec.vector, dict) else rec.vector
        into[str(rec.id)] = np.asarray(vec, dtype=np.float32)


def _valid_hits(keys: Sequence[str], rows: dict[str, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(found mask, vectors of the found keys in key order, count of stored vectors rejected):
    what the store returned for ``keys``, less the vectors that fail :func:`invalid_rows`."""
    present = [i for i, key in enumerate(keys) if key in rows]
    shaped = [i for i in present if rows[keys[i]].shape == (dim,)]
    vectors = np.stack([rows[keys[i]] for i in shaped]) if shaped else np.zeros((0, dim), np.float32)
    good = ~invalid_rows(vectors, dim)
    found = np.zeros(len(keys), dtype=bool)
    found[np.asarray(shaped, dtype=np.int64)[good]] = True
    return found, np.ascontiguousarray(vectors[good], dtype=np.float32), len(present) - int(good.sum())


class EdgeCache:
    """Qdrant Edge shard in ``folder`` (one owner process)."""

    def __init__(self, folder: Path, dim: int, batch: int = 2048) -> None:
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams

        self.folder = Path(folder)
        self.dim = dim
        self.batch = batch
        self.invalid = 0  # stored vectors found damaged (served as misses; re-embedding replaces them)
        config = EdgeConfig(vectors={VECTOR_NAME: EdgeVectorParams(size=dim, distance=Distance.Dot)})
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            if any(self.folder.iterdir()):
                self._shard = EdgeShard.load(str(self.folder), config)
            else:
                self._shard = EdgeShard.create(str(self.folder), config)
        except Exception as exc:  # noqa: BLE001 - qdrant_edge raises plain runtime errors
            msg = str(exc)
            if "WouldBlock" in msg or "lock" in msg.lower():
                raise CacheUnavailable(
                    f"embedding cache {self.folder} is in use by another theme-engine process; "
                    "wait for it, pass another --cache-dir, or use --qdrant-url"
                ) from None
            raise CacheUnavailable(f"embedding cache {self.folder} cannot be opened: {msg}") from None

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), self.batch):
            chunk = list(keys[start : start + self.batch])
            _collect(self._shard.retrieve(chunk, with_payload=False, with_vector=True), rows)
        found, vectors, invalid = _valid_hits(keys, rows, self.dim)
        self.invalid += invalid
        return found, vectors

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        from qdrant_edge import Point, UpdateOperation

        for start in range(0, len(keys), self.batch):
            points = [
                Point(id=key, vector={VECTOR_NAME: vec.tolist()})
                for key, vec in zip(keys[start : start + self.batch], vectors[start : start + self.batch])
            ]
            self._shard.update(UpdateOperation.upsert_points(points))

    def flush(self) -> None:
        self._shard.flush()

    def close(self) -> None:
        shard, self._shard = self._shard, None
        if shard is not None:
            shard.flush()
            shard.close()


class ServerCache:
    """A collection on a Qdrant server."""

    def __init__(self, url: str, collection: str, dim: int, batch: int = 1024) -> None:
        from qdrant_client import QdrantClient, models

        self.dim = dim
        self.batch = batch
        self.collection = collection
        self.invalid = 0  # stored vectors found damaged (served as misses; re-embedding replaces them)
        self._models = models
        from .config import redact_url

        try:
            # ``location`` takes a server URL, or ":memory:" for qdrant-client's in-process mode;
            # QDRANT_API_KEY, when set, authenticates to the server
            self._client = QdrantClient(location=url, timeout=60, api_key=os.environ.get("QDRANT_API_KEY") or None)
            if self._client.collection_exists(collection) and self._size(collection) != dim:
                # the collection holds another model's dimension: this model's vectors go beside it
                self.collection = collection = f"{collection}-{dim}d"
            if not self._client.collection_exists(collection):
                self._client.create_collection(
                    collection, vectors_config={VECTOR_NAME: models.VectorParams(size=dim, distance=models.Distance.DOT)}
                )
        except Exception as exc:  # noqa: BLE001 - transport errors vary (httpx, grpc)
            shown = redact_url(url) or ""
            raise CacheUnavailable(f"Qdrant server {shown} is not usable: {str(exc).replace(url, shown)}") from None

    def _size(self, collection: str) -> int | None:
        vectors = self._client.get_collection(collection).config.params.vectors
        params = vectors.get(VECTOR_NAME) if isinstance(vectors, dict) else vectors
        return getattr(params, "size", None)

    def get(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        rows: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), self.batch):
            recs = self._client.retrieve(
                self.collection, ids=list(keys[start : start + self.batch]), with_payload=False, with_vectors=True
            )
            _collect(recs, rows)
        found, vectors, invalid = _valid_hits(keys, rows, self.dim)
        self.invalid += invalid
        return found, vectors

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        m = self._models
        for start in range(0, len(keys), self.batch):
            points = [
                m.PointStruct(id=key, vector={VECTOR_NAME: vec.tolist()})
                for key, vec in zip(keys[start : start + self.batch], vectors[start : start + self.batch])
            ]
            self._client.upsert(self.collection, points=points, wait=True)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self._client.close()


def open_cache(dim: int, folder: Path | None, url: str | None, collection: str) -> EdgeCache | ServerCache:
    if url:
        return ServerCache(url, collection, dim)
    return EdgeCache((folder or default_cache_dir()) / f"embeddings-{dim}d", dim)

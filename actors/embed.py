"""Embedding actors for Ray Data ``map_batches``: the model is loaded once per actor."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from theme_engine.engine.cache import CacheUnavailable, open_cache, text_key
from theme_engine.engine.device import (
    Device,
    GpuUnavailable,
    fallback_reason,
    onnxruntime_cuda_ready,
    resolve_for_stage,
    run_with_fallback,
)
from theme_engine.engine.boilerplate import Boilerplate
from theme_engine.engine.docstore import DocStore
from theme_engine.engine.embedding import Embedder, ModelSpec
from theme_engine.engine.vectors import PART_NAME, invalid_rows
from theme_engine.engine.windows import TextWindows

from .memory import peak_rss_bytes

log = logging.getLogger(__name__)


def onnx_session(embedder: Embedder) -> Any | None:
    """The onnxruntime ``InferenceSession`` inside a FastEmbed model: ``TextEmbedding.model`` is the
    model class (``OnnxTextEmbedding``), whose ``model`` is the session. None if not found."""
    obj: Any = getattr(embedder, "_model", None)
    for _ in range(3):
        if obj is None or hasattr(obj, "get_providers"):
            return obj
        obj = getattr(obj, "model", None)
    return obj if hasattr(obj, "get_providers") else None


def load_embedder(
    spec: ModelSpec, model_root: str, threads: int | None, device: Device, windows: tuple[int, int] | None = None, boilerplate: Boilerplate | None = None
) -> Embedder:
    """The embedding model on ``device``. On cuda: onnxruntime's CUDA libraries are preloaded first
    (``onnxruntime.preload_dlls``, for pip-installed CUDA/cuDNN), and the session must really have
    ``CUDAExecutionProvider`` — onnxruntime quietly falls back to its CPU provider when the CUDA one
    cannot load — else :class:`GpuUnavailable` says why, and the caller's fall-back takes the CPU."""
    root = Path(model_root)
    if device.kind != "cuda":
        return Embedder(spec, root, threads=threads, windows=windows, boilerplate=boilerplate)
    onnxruntime_cuda_ready()
    providers = [("CUDAExecutionProvider", {"device_id": int(device.ordinal or 0)}), "CPUExecutionProvider"]
    try:
        embedder = Embedder(spec, root, threads=threads, providers=providers, windows=windows, boilerplate=boilerplate)
    except ValueError as exc:  # FastEmbed: a provider that this onnxruntime does not offer
        raise GpuUnavailable(f"onnxruntime CUDA provider: {exc}") from None
    session = onnx_session(embedder)
    if session is None:
        raise GpuUnavailable("cannot find FastEmbed's onnxruntime session to check its providers")
    got = list(session.get_providers())
    if "CUDAExecutionProvider" not in got:
        raise GpuUnavailable(f"onnxruntime session did not get CUDAExecutionProvider (providers: {got}); CUDA/cuDNN libraries missing?")
    return embedder


class EmbedBatch:
    """Ray Data callable class: ``{"row", "text"}`` batches in, ``{"row", "vector"}`` batches out
    (a ``key`` column, when present, passes through with its row), each text's ``tokens``,
    ``windows`` (0: embedded whole), ``capped`` (the cap on windows applied) and ``boilerplate_words``
    (left out of what the model read), and where it ran: ``pid``,
    ``peak_rss``, ``device`` (the device that served the batch) and ``fallback`` (why not the GPU
    asked for, or "")."""

    def __init__(
        self, spec: ModelSpec, model_root: str, threads: int | None, batch_size: int, max_batch_tokens: int, device: str = "auto",
        windows: tuple[int, int] | None = None,
        boilerplate: Boilerplate | None = None,
    ) -> None:
        started = time.time()
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        self.spec, self.model_root, self.threads, self.windows, self.boilerplate = spec, model_root, threads, windows, boilerplate
        asked, reason = resolve_for_stage("embed", device, gpu_ids)
        self.embedder, self.device = run_with_fallback("embed", asked, lambda d: load_embedder(spec, model_root, threads, d, windows, boilerplate))
        self.fallback = fallback_reason(asked, self.device, reason)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.ready_at, self.load_seconds = time.time(), time.time() - started  # for the stage's record
        log.info("embedding actor ready on %s (pid %d) in %.2f s", self.device.name, os.getpid(), self.load_seconds)

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self.device.kind == "cpu":
            return self.embedder.embed(texts, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens)
        asked = self.device

        def run(d: Device, rows: int) -> np.ndarray:
            if d.kind == "cpu":  # the GPU cannot serve this model: the CPU does, from now on
                self.embedder, self.device = load_embedder(self.spec, self.model_root, self.threads, d, self.windows, self.boilerplate), d
                self.fallback = d.reason
            tokens = max(1, self.max_batch_tokens * rows // max(self.batch_size, 1))
            return self.embedder.embed(texts, batch_size=rows, max_batch_tokens=tokens)

        vectors, _ = run_with_fallback("embed", asked, run, batch_rows=self.batch_size)
        return vectors

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        vectors = self._embed(texts)
        out = {"row": np.asarray(batch["row"]), "vector": list(vectors)}
        counts = self.embedder.last_counts()
        out["tokens"], out["windows"], out["capped"], out["boilerplate_words"] = counts[:, 0], counts[:, 1], counts[:, 2].astype(bool), counts[:, 3]
        # where it ran and this actor's peak memory so far, for the stage's report
        out["pid"] = np.full(len(texts), os.getpid(), dtype=np.int64)
        out["peak_rss"] = np.full(len(texts), peak_rss_bytes(), dtype=np.int64)
        out["device"] = np.full(len(texts), self.device.name)
        out["fallback"] = np.full(len(texts), self.fallback or "")
        out["ready_at"] = np.full(len(texts), self.ready_at)
        out["load_seconds"] = np.full(len(texts), self.load_seconds)
        if "key" in batch:
            out["key"] = np.asarray(batch["key"])
        return out


class CacheOwner:
    """The embedding cache's one owner when it is a local folder (Qdrant Edge locks its folder to
    one process): an actor on the driver's node, which the embedding actors ask for hits and give
    their new vectors, so neither passes through the driver."""

    def __init__(self, dim: int, folder: str | None, collection: str) -> None:
        self.cache: Any = None
        self.problem: str | None = None
        try:
            self.cache = open_cache(dim, Path(folder) if folder else None, None, collection)
        except CacheUnavailable as exc:
            self.problem = str(exc)

    def ready(self) -> str | None:
        """None, or why the cache could not be opened."""
        return self.problem

    def get(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.get(keys)

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        self.cache.put(keys, vectors)

    def close(self) -> int:
        """Flush and release the folder; returns the count of stored vectors found damaged."""
        cache, self.cache = self.cache, None
        if cache is None:
            return 0
        cache.close()
        return int(cache.invalid)


def start_cache_owner(dim: int, folder: Path | None, collection: str) -> Any:
    """A :class:`CacheOwner` on this (the driver's) node, where the cache folder is; raises
    :class:`CacheUnavailable` with the cache's own message when it cannot be opened."""
    node = ray.get_runtime_context().get_node_id()
    owner = (
        ray.remote(CacheOwner)
        .options(num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        .remote(dim, str(folder) if folder else None, collection)
    )
    problem = ray.get(owner.ready.remote())
    if problem is not None:
        ray.kill(owner)
        raise CacheUnavailable(problem)
    return owner


class _OwnedCache:
    """The cache as an embedding actor sees it through a :class:`CacheOwner`."""

    invalid = 0  # counted by the owner

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def get(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return ray.get(self.owner.get.remote(keys))

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        ray.get(self.owner.put.remote(keys, vectors))  # waited for: a vector returned is a vector kept


def cache_for_worker(cache: Any, dim: int) -> Any:
    """What an embedding actor uses as its cache: None (no cache), a :class:`CacheOwner` handle
    (a local folder), ``("server", url, collection)`` (each actor its own client), or a cache
    object already open (the driver embedding itself)."""
    if isinstance(cache, ray.actor.ActorHandle):
        return _OwnedCache(cache)
    if isinstance(cache, tuple):
        _, url, collection = cache
        return open_cache(dim, None, url, collection)
    return cache


PART_COUNTS = ("tokens", "long", "windows", "capped", "stripped", "stripped_words")


class EmbedParts(EmbedBatch):
    """Ray Data callable class for the embedding actors of a large run. Each input row names a
    range of the stored documents (``part``, ``start``, ``end``, and ``expect``: how many of them
    are embedded, status ``ok``); the actor reads their texts where they are stored, looks them up
    in the cache, embeds the misses (longest first, a slice at a time, each slice cached as it is
    done) and saves the range's vectors as ``folder/part-NNNNN.npy``. It returns one row of counts
    per range: no text and no vector goes back. A problem (the model's vectors invalid, the stored
    documents changed) is returned in ``problem`` with no part saved."""

    def __init__(
        self, spec: ModelSpec, model_root: str, threads: int | None, batch_size: int, max_batch_tokens: int, device: str = "auto",
        windows: tuple[int, int] | None = None,
        boilerplate: Boilerplate | None = None,
        docs: DocStore | None = None,
        folder: str = "",
        cache: Any = None,
        slice_rows: int = 1024,
    ) -> None:
        super().__init__(spec, model_root, threads, batch_size, max_batch_tokens, device, windows, boilerplate)
        self.docs, self.folder, self.slice_rows = docs, Path(folder), slice_rows
        self.key_windows = TextWindows.for_model(spec, *windows) if windows is not None else None
        self.cache = cache_for_worker(cache, spec.dim)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [self._part(int(p), int(a), int(b), int(e)) for p, a, b, e in zip(batch["part"], batch["start"], batch["end"], batch["expect"])]
        return {k: np.asarray([r[k] for r in rows]) for k in rows[0]}

    def _part(self, part: int, start: int, end: int, expect: int) -> dict[str, Any]:
        spec, cache = self.spec, self.cache
        table = self.docs.read_rows(start, end, ["source", "text", "status"])
        ok = pa.array(np.asarray(table.column("status").to_numpy(zero_copy_only=False) == "ok"))
        texts = table.column("text").filter(ok).to_pylist()
        out: dict[str, Any] = {"part": part, "documents": len(texts), "hits": 0, "embedded": 0, "invalid": 0, "problem": ""}
        out.update(dict.fromkeys(PART_COUNTS, 0))
        if len(texts) != expect:
            out["problem"] = (
                f"documents {start}..{end - 1} of {self.docs.path} hold {len(texts)} documents to embed where the read stage "
                f"counted {expect}: the stored documents changed during the run; run the same command again"
            )
            return self._where(out)
        keys = [text_key(spec.model_id, t, self.key_windows, self.boilerplate) for t in texts]
        vectors = np.zeros((len(texts), spec.dim), dtype=np.float32)
        found = np.zeros(len(texts), dtype=bool)
        if cache is not None and texts:
            invalid = cache.invalid
            found, hits = cache.get(keys)
            vectors[found] = hits
            out["invalid"] = cache.invalid - invalid
        missing = sorted(np.flatnonzero(~found).tolist(), key=lambda i: -len(texts[i]))
        out["hits"], out["embedded"] = int(found.sum()), len(missing)
        for a in range(0, len(missing), self.slice_rows):
            sel = missing[a : a + self.slice_rows]
            got = self._embed([texts[i] for i in sel])
            counts = self.embedder.last_counts()
            for name, value in zip(PART_COUNTS, text_counts(counts)):
                out[name] += value
            bad = invalid_rows(got, spec.dim)
            if bad.any():
                sources = table.column("source").filter(ok).take(pa.array(np.asarray(sel)[bad][:3])).to_pylist()
                out["problem"] = (
                    f"embed: the model returned {int(bad.sum())} vectors that are not finite or not of unit length "
                    f"(e.g. {', '.join(sources)}); those documents are not cached. Check the model folder with theme-engine doctor"
                )
                return self._where(out)
            vectors[sel] = got
            if cache is not None:
                cache.put([keys[i] for i in sel], got)
        path = self.folder / PART_NAME.format(part)
        tmp = path.with_name(path.name + ".tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, path)  # a range embedded twice (a retried task) writes the same part
        return self._where(out)

    def _where(self, out: dict[str, Any]) -> dict[str, Any]:
        """Where the range ran, for the stage's record."""
        out.update(
            pid=os.getpid(), peak_rss=peak_rss_bytes(), device=self.device.name, fallback=self.fallback or "", ready_at=self.ready_at, load_seconds=self.load_seconds
        )
        return out


def text_counts(counts: np.ndarray) -> list[int]:
    """The per-text counts of :meth:`Embedder.last_counts` summed as :data:`PART_COUNTS`."""
    return [
        int(counts[:, 0].sum()),
        int(np.count_nonzero(counts[:, 1])),
        int(counts[:, 1].sum()),
        int(np.count_nonzero(counts[:, 2])),
        int(np.count_nonzero(counts[:, 3])),
        int(counts[:, 3].sum()),
    ]

"""Embedding actors for Ray Data ``map_batches``: the model is loaded once per actor."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from theme_engine.engine.device import (
    Device,
    GpuUnavailable,
    fallback_reason,
    onnxruntime_cuda_ready,
    resolve_for_stage,
    run_with_fallback,
)
from theme_engine.engine.boilerplate import Boilerplate
from theme_engine.engine.embedding import Embedder, ModelSpec

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

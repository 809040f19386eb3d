"""Embedding actors for Ray Data ``map_batches``: the model is loaded once per actor."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import ray

from engine.device import resolve_device
from engine.embedding import Embedder, get_model

from .memory import peak_rss_bytes

log = logging.getLogger(__name__)


class EmbedBatch:
    """Ray Data callable class: ``{"row", "text"}`` batches in, ``{"row", "vector"}`` batches out
    (a ``key`` column, when present, passes through with its row)."""

    def __init__(
        self, model: str, model_root: str, threads: int | None, batch_size: int, max_batch_tokens: int, device: str = "auto"
    ) -> None:
        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
        self.device = resolve_device(device, gpu_ids)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.kind == "cuda" else None
        self.embedder = Embedder(get_model(model), Path(model_root), threads=threads, providers=providers)
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        log.info("embedding actor ready on %s (pid %d)", self.device.name, os.getpid())

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        vectors = self.embedder.embed(texts, batch_size=self.batch_size, max_batch_tokens=self.max_batch_tokens)
        out = {"row": np.asarray(batch["row"]), "vector": list(vectors)}
        # where it ran and this actor's peak memory so far, for the stage's report
        out["pid"] = np.full(len(texts), os.getpid(), dtype=np.int64)
        out["peak_rss"] = np.full(len(texts), peak_rss_bytes(), dtype=np.int64)
        if "key" in batch:
            out["key"] = np.asarray(batch["key"])
        return out

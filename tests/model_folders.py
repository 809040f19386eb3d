"""Second real model folders for the tests, made from the bundled model's files."""

from __future__ import annotations

import json
from pathlib import Path


def reexport_bundled_model(dest: Path, root: Path, pooling: str | None = "mean") -> Path:
    """A second real local model folder: the bundled model's ONNX weights re-saved with a
    ``doc_string`` (protobuf field 6 of ONNX's ModelProto, appended: the last value wins, the
    graph and weights are untouched) beside its tokenizer files and, unless ``pooling`` is None,
    a sentence-transformers ``1_Pooling/config.json``. Other bytes, so another content digest."""
    import shutil

    from theme_engine.engine.embedding import TOKENIZER_FILES, get_model, model_dir

    src = model_dir(get_model(), root)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(src / name, dest / name)
    note = b"re-exported by the theme-engine tests"
    (dest / "model.onnx").write_bytes((src / "model.onnx").read_bytes() + bytes([0x32, len(note)]) + note)
    if pooling is not None:
        (dest / "1_Pooling").mkdir(exist_ok=True)
        flags = {"pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_cls_token": pooling == "cls"}
        (dest / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 384, **flags}))
    return dest


def fastembed_cache_copy(root: Path) -> Path:
    """The bundled model's files laid out as FastEmbed's download of
    ``sentence-transformers/all-MiniLM-L6-v2`` (a Hugging Face hub snapshot) in ``root``/fastembed:
    what a machine with network would have after its first run with that model name."""
    import shutil

    from theme_engine.engine.embedding import TOKENIZER_FILES, get_model, model_dir

    src = model_dir(get_model(), root)
    repo = root / "fastembed" / "models--Qdrant--all-MiniLM-L6-v2-onnx"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", *TOKENIZER_FILES):
        shutil.copyfile(src / name, snapshot / name)
    return snapshot


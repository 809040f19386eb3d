"""The model folder survives the environment that built it: no links into one venv, every file
checked against the packaged sources (a dangling link, a damaged tokenizer are rebuilt), and a
missing packaged file is named."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from theme_engine.engine.embedding import Embedder, ModelUnavailable, get_model, model_dir


def _symlinks(folder) -> list:
    return [p for p in folder.rglob("*") if p.is_symlink()]


def test_built_folder_holds_no_symlinks_and_is_reused_intact(tmp_path) -> None:
    spec = get_model("all-MiniLM-L6-v2-int8")
    folder = model_dir(spec, tmp_path)
    assert _symlinks(folder) == []
    assert (folder / "sources.json").is_file()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert model_dir(spec, tmp_path) == folder
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_folder_with_dangling_symlink_is_rebuilt_and_loads(tmp_path, caplog) -> None:
    spec = get_model("all-MiniLM-L6-v2-int8")
    folder = model_dir(spec, tmp_path)
    gone = tmp_path / "old-venv" / "model.onnx"  # the environment that first built the folder, deleted
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(gone)
    with caplog.at_level(logging.INFO, logger="theme_engine.engine.embedding"):
        assert model_dir(spec, tmp_path) == folder
    assert "model.onnx is a symlink to a missing file" in caplog.text
    assert _symlinks(folder) == [] and (folder / "model.onnx").is_file()
    v = Embedder(spec, tmp_path, threads=1).embed(["The bank raised rates."])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_corrupt_tokenizer_is_detected_and_rebuilt(tmp_path, caplog) -> None:
    spec = get_model("all-MiniLM-L6-v2-int8")
    folder = model_dir(spec, tmp_path)
    size = (folder / "tokenizer.json").stat().st_size
    (folder / "tokenizer.json").write_bytes((b"\xff\xfe\x00garbage" * size)[:size])
    assert (folder / "tokenizer.json").stat().st_size == size  # same size: only the digest tells
    with caplog.at_level(logging.INFO, logger="theme_engine.engine.embedding"):
        v = Embedder(spec, tmp_path, threads=1).embed(["The goalkeeper saved a penalty."])
    assert "tokenizer.json" in caplog.text and "differs from the packaged source" in caplog.text
    assert v.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_missing_packaged_source_names_the_file(tmp_path, monkeypatch) -> None:
    spec = get_model("all-MiniLM-L6-v2-int8")
    missing = tmp_path / "site-packages" / "model.onnx"
    monkeypatch.setattr(type(spec), "onnx_path", lambda self: missing)
    with pytest.raises(ModelUnavailable, match=r"model\.onnx is missing or unreadable.*reinstall theme-engine"):
        model_dir(spec, tmp_path)

"""Choosing the embedding model: a local ONNX folder (--model-path), a FastEmbed model by name
(from its cache, or the one-line error offline), and model ids that keep their vectors apart."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from model_folders import fastembed_cache_copy, reexport_bundled_model
from theme_engine.engine.cache import cache_key
from theme_engine.engine.config import ConfigError, load_config
from theme_engine.engine.embedding import (
    BUNDLED,
    Embedder,
    ModelUnavailable,
    configured_model,
    get_model,
    model_from_ref,
    model_ref,
)

TEXTS = ["The bank raised interest rates again.", "The goalkeeper saved a late penalty.", "Bake the bread for forty minutes."]


@pytest.fixture(scope="module")
def bundled_vectors(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return Embedder(get_model(), tmp_path_factory.mktemp("root"), threads=1).embed(TEXTS)


def test_a_local_folder_model_reads_its_config_and_has_its_own_id(second_model: Path, tmp_path: Path, bundled_vectors) -> None:
    spec = get_model(path=second_model)
    assert (spec.kind, spec.dim, spec.pooling, spec.model_file) == ("path", 384, "mean", "model.onnx")
    assert spec.max_tokens == json.loads((second_model / "tokenizer_config.json").read_text())["model_max_length"]
    assert spec.model_id != get_model().model_id and spec.model_id.startswith(str(second_model))
    # the same weights: the same vectors, under another id (so another cache key)
    vectors = Embedder(spec, tmp_path, threads=1).embed(TEXTS)
    assert np.allclose(vectors, bundled_vectors, atol=1e-5)
    assert cache_key(spec.model_id, TEXTS[0]) != cache_key(get_model().model_id, TEXTS[0])
    info = spec.describe()
    assert info["folder"] == str(second_model) and info["model_id"] == spec.model_id


def test_pooling_from_the_folder_or_stated(tmp_path: Path, bundled_vectors) -> None:
    cls_folder = reexport_bundled_model(tmp_path / "cls", tmp_path / "root", pooling="cls")
    spec = get_model(path=cls_folder)
    assert spec.pooling == "cls"
    cls_vectors = Embedder(spec, tmp_path / "root", threads=1).embed(TEXTS)
    assert np.allclose(np.linalg.norm(cls_vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(cls_vectors, bundled_vectors, atol=1e-3)  # the [CLS] vector, not the mean
    bare = reexport_bundled_model(tmp_path / "bare", tmp_path / "root", pooling=None)
    with pytest.raises(ModelUnavailable, match="--pooling mean\\|cls"):
        get_model(path=bare)
    stated = get_model(path=bare, pooling="mean")
    assert stated.pooling == "mean" and stated.model_id != spec.model_id
    assert get_model(path=bare, pooling="cls").model_id != stated.model_id  # pooling is part of the id


def test_a_broken_folder_says_what_is_missing(second_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no such folder"):
        get_model(path=tmp_path / "nowhere")
    folder = tmp_path / "m"
    shutil.copytree(second_model, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailable, match="tokenizer.json is missing"):
        get_model(path=folder)
    shutil.copyfile(second_model / "tokenizer.json", folder / "tokenizer.json")
    (folder / "model.onnx").rename(folder / "a.onnx")
    shutil.copyfile(folder / "a.onnx", folder / "b.onnx")
    with pytest.raises(ModelUnavailable, match="more than one ONNX file"):
        get_model(path=folder)
    (folder / "b.onnx").unlink()
    assert get_model(path=folder).model_file == "a.onnx"  # the folder's one ONNX file
    (folder / "a.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelUnavailable, match="did not load"):
        Embedder(get_model(path=folder), tmp_path / "root", threads=1)


def test_changed_weights_change_the_id(second_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(second_model, folder)
    before = get_model(path=folder).model_id
    with (folder / "model.onnx").open("ab") as fh:
        fh.write(bytes([0x32, 1]) + b"x")
    assert get_model(path=folder).model_id != before


def test_a_fastembed_model_offline_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as err:
        get_model("sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "--model-path" in message and str(tmp_path / "fastembed") in message
    assert time.perf_counter() - start < 10  # no retries with sleeps
    with pytest.raises(ValueError, match="unknown embedding model 'no-such/model'"):
        get_model("no-such/model", tmp_path)


def test_a_fastembed_model_found_in_its_cache_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundled_vectors) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = fastembed_cache_copy(tmp_path)
    spec = get_model("sentence-transformers/all-MiniLM-L6-v2", tmp_path)
    assert (spec.kind, spec.folder, spec.dim, spec.pooling) == ("fastembed", str(snapshot), 384, "mean")
    vectors = Embedder(spec, tmp_path, threads=1).embed(TEXTS)
    assert np.allclose(vectors, bundled_vectors, atol=1e-5)
    assert spec.model_id != get_model().model_id
    # another node, where the driver's folder is not: found in that node's cache, and it must hold the same files
    moved = spec.__class__(**{**spec.__dict__, "folder": str(tmp_path / "not-on-this-node")})
    other = tmp_path / "node2"
    fastembed_cache_copy(other)
    assert Embedder(moved, other, threads=1).spec.folder.startswith(str(other))
    different = tmp_path / "node3"
    with (fastembed_cache_copy(different) / "model.onnx").open("ab") as fh:
        fh.write(bytes([0x32, 1]) + b"x")
    with pytest.raises(ModelUnavailable, match="differ from the ones the run started with"):
        Embedder(moved, different, threads=1)


def test_the_config_names_one_model_and_the_ref_finds_it_again(second_model: Path, tmp_path: Path) -> None:
    cfg = load_config({"inputs": ["x"], "embed": {"model_path": str(second_model), "prefix": "passage: "}})
    spec = configured_model(cfg.embed, tmp_path)
    assert spec.kind == "path" and spec.prefix == "passage: "
    again = model_from_ref(model_ref(cfg.embed), tmp_path)
    assert again.model_id == spec.model_id
    assert model_ref(load_config({"inputs": ["x"]}).embed) == BUNDLED
    assert spec.model_id != get_model(path=second_model).model_id  # the prefix changes the vectors
    with pytest.raises(ConfigError, match="not both"):
        load_config({"inputs": ["x"], "embed": {"model": "BAAI/bge-small-en-v1.5", "model_path": str(second_model)}})
    with pytest.raises(ConfigError, match="model_path"):
        load_config({"inputs": ["x"], "embed": {"pooling": "cls"}})


def test_models_lists_what_model_takes_and_what_is_here(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from theme_engine.cluster.commands import cli

    snapshot = fastembed_cache_copy(tmp_path)
    assert cli.main(["models", "--json", "--cache-dir", str(tmp_path)]) == 0
    listed = {m["model"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed[BUNDLED]["here"] == "bundled"
    assert listed["sentence-transformers/all-MiniLM-L6-v2"]["here"] == str(snapshot)
    assert listed["sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"] == {
        **listed["sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"], "dim": 384, "here": ""
    }


def test_a_ref_with_the_runs_model_id_refuses_changed_files(second_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "m"
    shutil.copytree(second_model, folder)
    monkeypatch.chdir(tmp_path)
    cfg = load_config({"inputs": ["x"], "embed": {"model_path": "m"}})  # relative: kept absolute
    assert cfg.embed.model_path == folder
    ref = model_ref(cfg.embed, configured_model(cfg.embed, tmp_path).model_id)
    assert model_from_ref(ref, tmp_path).folder == str(folder)
    (folder / "model.onnx_data").write_bytes(b"weights kept beside the graph")  # external data counts
    with pytest.raises(ModelUnavailable, match="the run's vectors were made by"):
        model_from_ref(ref, tmp_path)


def test_loading_leaves_hf_hub_offline_as_it_was(second_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    Embedder(get_model(path=second_model), tmp_path, threads=1)
    assert "HF_HUB_OFFLINE" not in os.environ  # a later FastEmbed model of this process may still download

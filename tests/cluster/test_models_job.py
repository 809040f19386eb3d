"""The whole job with another embedding model and on text that is not English."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from theme_engine.cluster.commands.api import ThemeModel
from theme_engine.cluster.runtime.driver import run
from theme_engine.engine.labels import stop_words_for

DATA = Path(__file__).resolve().parents[1] / "data"


def test_a_second_model_never_gets_the_first_ones_vectors(ray_session, make_config, corpus: Path, second_model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = run(make_config([corpus], tmp_path / "a", cache, kmeans={"k": 4}))
    n = first.manifest["stages"]["embed"]["documents"]
    assert first.manifest["cache"]["misses"] == n
    other = run(make_config([corpus], tmp_path / "b", cache, kmeans={"k": 4}, embed={"model_path": str(second_model)}))
    embed = other.manifest["stages"]["embed"]
    assert other.manifest["cache"]["hits"] == 0 and embed["embedded"] == n  # its own cache keys
    assert embed["model_info"]["kind"] == "path" and embed["model_info"]["folder"] == str(second_model)
    assert embed["model"] != first.manifest["stages"]["embed"]["model"]
    # the same weights re-exported: the same vectors, and so the same themes
    va, vb = (np.load(tmp_path / d / ".theme-engine" / "embed" / "vectors.npy") for d in ("a", "b"))
    assert np.allclose(va, vb, atol=1e-5)
    again = run(make_config([corpus], tmp_path / "c", cache, kmeans={"k": 4}))
    assert again.manifest["cache"]["hits"] == n  # the bundled model's vectors are still there, apart
    # assigning new text later embeds it with the run's own model
    model = ThemeModel.load(tmp_path / "b")
    model.cache_dir = cache
    assigned = model.assign(["And God said, Let there be light: and there was light."])
    assert len(assigned) == 1 and assigned["theme"][0] in range(4)


def _keywords(out: Path) -> list[list[str]]:
    return [t["keywords"] for t in json.loads((out / "themes.json").read_text())["themes"]]


def test_a_german_corpus_gets_german_labels_without_its_stop_words(ray_session, make_config, tmp_path: Path) -> None:
    src = DATA / "german-topics.jsonl"
    result = run(make_config([src], tmp_path / "out", tmp_path / "cache", kmeans={"k": 3}, read={"id_field": "id"}))
    assert result.manifest["stages"]["label"]["stop_words"] == "german"
    german_stop, _ = stop_words_for("german")
    vocabulary = {w.lower().strip(".,") for line in src.read_text(encoding="utf-8").splitlines() for w in json.loads(line)["text"].split()}
    keywords = _keywords(tmp_path / "out")
    assert len(keywords) == 3 and all(keywords)
    for row in keywords:
        for term in row:
            assert all(w in vocabulary and w not in german_stop for w in term.split()), term
    labels = " ".join(t["label"] for t in result.themes)
    assert any(w in labels for w in ("tor", "torwart", "mannschaft", "ofen", "teig", "zug", "bahn", "kartoffeln", "trainer", "fahrkarte"))


def test_text_without_spaces_is_labelled_by_character_pairs(ray_session, make_config, tmp_path: Path) -> None:
    src = DATA / "cjk-topics.jsonl"
    result = run(make_config([src], tmp_path / "out", tmp_path / "cache", kmeans={"k": 3}, read={"id_field": "id"}))
    assert result.manifest["stages"]["label"]["stop_words"] in ("chinese", "japanese")
    text = src.read_text(encoding="utf-8")
    keywords = _keywords(tmp_path / "out")
    assert all(keywords)
    for row in keywords:
        for term in row:
            assert term in text and len(term) <= 2, term  # character bigrams, each from the corpus
    docs = pq.read_table(tmp_path / "out" / "documents.parquet").to_pydict()
    assert len(docs["id"]) == len(text.splitlines()) and all(t is not None for t in docs["theme"])


def test_an_update_refuses_a_model_whose_files_changed(ray_session, make_config, corpus: Path, second_model: Path, tmp_path: Path) -> None:
    import shutil

    import pytest

    from theme_engine.cluster.runtime.driver import RunError
    from theme_engine.cluster.runtime.update import update, update_config

    folder = tmp_path / "model"
    shutil.copytree(second_model, folder)
    rows = corpus.read_text().splitlines()
    base, new = tmp_path / "base.jsonl", tmp_path / "new.jsonl"
    base.write_text("\n".join(rows[:-20]) + "\n")
    new.write_text("\n".join(rows[-20:]) + "\n")
    out = tmp_path / "out"
    run(make_config([base], out, tmp_path / "cache", kmeans={"k": 4}, read={"id_field": "id"}, embed={"model_path": str(folder)}))
    with (folder / "model.onnx").open("ab") as fh:  # other weights' bytes under the same folder
        fh.write(bytes([0x32, 1]) + b"x")
    with pytest.raises(RunError, match="the run's vectors were made by"):
        update(update_config(out, [new], {"cache": {"dir": str(tmp_path / "cache")}}))

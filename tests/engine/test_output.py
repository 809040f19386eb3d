"""The output files: every input document has a row; exact and near duplicates point at kept ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from theme_engine.engine.corpus import build_corpus
from theme_engine.engine.output import read_themes, write_outputs

pq = pytest.importorskip("pyarrow.parquet")


def _rec(i, text):
    return {"kind": "doc", "id": f"d{i}", "text": text, "source": f"f.txt:{i}", "error": None}


@pytest.mark.parametrize("block", [65_536, 2])
def test_write_outputs(tmp_path, monkeypatch, block):
    """(``block``: the files built and appended a block of documents at a time, here 2; the same rows.)"""
    monkeypatch.setattr("theme_engine.engine.output.WRITE_BLOCK", block)
    records = [
        _rec(0, "alpha document about football"),
        _rec(1, "beta document about the bank"),
        _rec(2, "Alpha document about football!"),  # exact copy of d0
        _rec(3, "gamma document about football too"),  # near duplicate of d0
        _rec(4, "tiny"),  # filtered
        _rec(5, "GAMMA document about football too"),  # exact copy of d3 (itself a near duplicate)
        {"kind": "bad", "id": None, "text": None, "source": "f.txt:6", "error": "broken"},
    ]
    corpus = build_corpus(records, 10, 1000)
    unique = corpus.unique
    assert unique.tolist() == [0, 1, 3]
    themes = np.array([0, 1, 0])
    distances = np.array([0.1, 0.2, 0.3], np.float32)
    dedup = {"duplicate_of": np.array([-1, -1, 0]), "similarity": np.array([np.nan, np.nan, 0.93], np.float32)}
    theme_list = [{"theme": 0, "label": "football", "parent": 2}, {"theme": 1, "label": "bank", "parent": 2}]
    hierarchy = [{"id": 2, "children": [0, 1], "parent": None, "similarity": 0.3, "size": 5, "themes": [0, 1], "label": "document"}]
    coords = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], np.float32)
    counts = write_outputs(tmp_path, corpus, unique, themes, distances, dedup, theme_list, hierarchy=hierarchy, coords=coords)

    docs = pq.read_table(tmp_path / "documents.parquet").to_pylist()
    by = {d["id"]: d for d in docs}
    assert [d["id"] for d in docs] == ["d0", "d1", "d2", "d3", "d4", "d5"]
    assert by["d0"]["kept"] and by["d1"]["kept"] and by["d0"]["duplicate_of"] is None
    assert by["d2"] | {"distance": None} == {
        "id": "d2", "theme": 0, "distance": None, "duplicate_of": "d0", "kept": False, "status": "exact_duplicate",
        "source": "f.txt:2", "x": 0.0, "y": 1.0,
    }
    assert by["d2"]["distance"] == pytest.approx(0.1)
    assert by["d3"]["status"] == "near_duplicate" and by["d3"]["duplicate_of"] == "d0" and not by["d3"]["kept"]
    assert by["d5"]["duplicate_of"] == "d0" and by["d5"]["theme"] == 0  # through d3 to the kept d0
    assert by["d4"]["theme"] is None and by["d4"]["status"] == "filtered_too_short" and not by["d4"]["kept"]

    dups = {d["id"]: d for d in pq.read_table(tmp_path / "duplicates.parquet").to_pylist()}
    assert set(dups) == {"d2", "d3", "d5"}
    assert dups["d2"]["kind"] == "exact" and dups["d2"]["similarity"] == pytest.approx(1.0)
    assert dups["d3"]["kind"] == "near" and dups["d3"]["similarity"] == pytest.approx(0.93)
    assert dups["d5"]["similarity"] == pytest.approx(0.93)

    assert read_themes(tmp_path) == (theme_list, hierarchy)
    # map coordinates: an exact copy sits on the text it repeats, a filtered document nowhere
    assert (by["d0"]["x"], by["d0"]["y"]) == (0.0, 1.0) and (by["d2"]["x"], by["d2"]["y"]) == (0.0, 1.0)
    assert (by["d5"]["x"], by["d5"]["y"]) == (4.0, 5.0) and by["d4"]["x"] is None and by["d4"]["y"] is None
    assert counts == {
        "input": 6, "kept": 2, "embedded": 3, "near_duplicates": 1, "exact_duplicates": 2, "filtered": 1, "bad_records": 1
    }
    assert not list(tmp_path.glob("*.tmp"))


def test_themes_json_of_an_earlier_version_reads_as_themes_without_a_hierarchy(tmp_path):
    (tmp_path / "themes.json").write_text(json.dumps([{"theme": 0, "label": "x"}]))
    assert read_themes(tmp_path) == ([{"theme": 0, "label": "x"}], [])

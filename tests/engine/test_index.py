"""The run's search index, on Qdrant Edge and on a Qdrant "server" (qdrant-client's in-process
mode speaks the same API): nearest by inner product as an exact search finds, filters applied
inside Qdrant, reopened from disk."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from theme_engine.engine.index import INDEX_DIR, IndexUnavailable, open_index


def _data(n: int = 2000, d: int = 24):
    rng = np.random.default_rng(5)
    v = rng.normal(size=(n, d)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = np.arange(n, dtype=np.int64) * 3 + 1  # rows of documents.parquet need not be contiguous
    payloads = [{"row": int(r), "id": f"doc{r}", "theme": int(i % 4), "kept": int(i % 3 != 0), "text": f"text {i}"} for i, r in enumerate(rows)]
    return v, rows, payloads


@pytest.fixture(params=["edge", "edge-exact", "server"])
def index(request, tmp_path: Path):
    v, rows, payloads = _data()
    url = ":memory:" if request.param == "server" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # qdrant-client's local mode: "payload indexes have no effect"
        ix = open_index(tmp_path, url, "te-test", dim=v.shape[1], create=True, exact=request.param == "edge-exact")
    ix.add(rows, v, payloads)
    ix.finish()
    yield ix, v, rows, payloads
    ix.close()


def test_nearest_equals_exact_search_and_filters_hold(index) -> None:
    ix, v, rows, payloads = index
    assert ix.count() == len(rows)
    for q in (0, 17, 999):
        hits = ix.search(v[q], 10)
        exact = rows[np.argsort(-(v @ v[q]), kind="stable")[:10]]
        assert hits[0].row == rows[q] and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert len({h.row for h in hits} & set(exact.tolist())) >= 9  # HNSW may swap a near-tie
        theme = payloads[q]["theme"]
        only = ix.search(v[q], 20, theme=theme, kept_only=True)
        assert only and all(h.payload["theme"] == theme and h.payload["kept"] == 1 for h in only)
        members = [i for i, p in enumerate(payloads) if p["theme"] == theme and p["kept"]]
        best = rows[members][np.argsort(-(v[members] @ v[q]), kind="stable")[:20]]
        assert len({h.row for h in only} & set(best.tolist())) >= 18


def test_an_exact_edge_index_returns_the_brute_force_neighbours(tmp_path: Path) -> None:
    v, rows, payloads = _data()
    ix = open_index(tmp_path, dim=v.shape[1], create=True, exact=True)
    ix.add(rows, v, payloads)
    ix.finish()  # a new exact shard is not merged: the scan needs no graph
    theme_of = {p["row"]: p["theme"] for p in payloads}
    for reopened in (False, True):
        if reopened:
            ix.close()
            ix = open_index(tmp_path)
        try:
            for q in range(0, len(rows), 97):
                scores = v @ v[q]
                exact = rows[np.argsort(-scores, kind="stable")[:10]]
                hits = ix.search(v[q], 10)
                assert [h.row for h in hits] == exact.tolist(), reopened
                assert np.allclose([h.score for h in hits], np.sort(scores)[::-1][:10], atol=1e-5)
                theme = payloads[q]["theme"]
                mine = [h.row for h in ix.search(v[q], 10, theme=theme)]
                assert mine[0] == rows[q] and all(theme_of[r] == theme for r in mine), reopened
        finally:
            if reopened:
                ix.close()


def test_an_edge_index_reopens_from_disk(tmp_path: Path) -> None:
    v, rows, payloads = _data(300)
    ix = open_index(tmp_path, dim=v.shape[1], create=True)
    ix.add(rows, v, payloads)
    ix.finish()
    ix.close()
    again = open_index(tmp_path)
    try:
        assert again.count() == 300 and again.search(v[5], 1)[0].payload["id"] == payloads[5]["id"]
    finally:
        again.close()


def test_a_missing_index_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(IndexUnavailable, match="holds no search index"):
        open_index(tmp_path)
    assert not (tmp_path / INDEX_DIR).exists()

"""Damaged vectors — in the embedding cache or in a finished stage's output — are found and
replaced, never used: a damaged cached vector is a miss (embedded again, its entry replaced,
counted), and a stage whose files changed since it wrote them runs again."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.runtime.driver import RunError, run
from theme_engine.engine.cache import EdgeCache, ServerCache
from theme_engine.engine.vectors import check_stored, invalid_rows


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _scribble(folder: Path, seed: int = 1) -> None:
    """Random bytes over the vectors Qdrant Edge stores on disk (what a bad disk or a stray
    writer leaves): the shard still opens and serves them."""
    chunks = sorted(folder.glob("segments/*/vector_storage-*/vectors/chunk_*.mmap"))
    assert chunks, f"no vector storage under {folder}"
    rng = np.random.default_rng(seed)
    for chunk in chunks:
        with chunk.open("r+b") as fh:
            fh.write(rng.bytes(min(chunk.stat().st_size, 4 << 20)))


def test_invalid_rows_and_check_stored() -> None:
    v = _unit(5, 4)
    assert not invalid_rows(v, 4).any()
    bad = v.copy()
    bad[1, 0] = np.nan
    bad[2] *= 2.0
    bad[3, 0] = np.inf
    assert invalid_rows(bad, 4).tolist() == [False, True, True, True, False]
    assert invalid_rows(v, 3).all(), "another dimension: every row is invalid"
    huge = v.copy()
    huge[4] = 1e30  # its squares overflow float32: not of unit length
    assert invalid_rows(huge, 4).tolist() == [False, False, False, False, True]
    for dtype in (np.float16, np.float64):
        assert invalid_rows(bad.astype(dtype), 4).tolist() == [False, True, True, True, False], dtype
    assert check_stored(v, 5, 4) is None
    problem = check_stored(bad, 5, 4)
    assert problem is not None and problem.rows == 3 and problem.first == 1
    assert "shape" in str(check_stored(v, 6, 4)) and "float32" in str(check_stored(v.astype(np.float64), 5, 4))


def test_edge_cache_serves_damaged_vectors_as_misses_and_a_put_replaces_them(tmp_path: Path) -> None:
    keys = [str(uuid.uuid4()) for _ in range(200)]
    v = _unit(200, 16)
    cache = EdgeCache(tmp_path / "c", 16)
    cache.put(keys, v)
    cache.close()
    _scribble(tmp_path / "c")
    cache = EdgeCache(tmp_path / "c", 16)
    found, hits = cache.get(keys)
    assert cache.invalid == 200 - int(found.sum()) and cache.invalid > 190
    assert not invalid_rows(hits, 16).any(), "whatever is served is valid"
    cache.put(keys, v)
    found, hits = cache.get(keys)
    assert found.all() and np.allclose(hits, v)
    cache.close()


def test_server_cache_rejects_vectors_of_the_wrong_length() -> None:
    cache = ServerCache(":memory:", "t", 8)
    keys = [str(uuid.uuid4()) for _ in range(6)]
    v = _unit(6, 8)
    v[[1, 4]] *= 3.0  # stored by someone else, not normalised
    cache.put(keys, v)
    found, hits = cache.get(keys)
    assert found.tolist() == [True, False, True, True, False, True] and cache.invalid == 2
    assert np.allclose(hits, v[found])
    cache.close()


def _themes(out: Path) -> list[int]:
    return pq.read_table(out / "documents.parquet", columns=["theme"]).column(0).to_pylist()


def test_a_damaged_cache_is_embedded_again_and_repaired(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    over = {"kmeans": {"k": 4}}
    cache_dir = tmp_path / "cache"
    reference = run(make_config([corpus], tmp_path / "ref", cache_dir, **over))
    n = reference.manifest["stages"]["embed"]["documents"]
    (folder,) = cache_dir.glob("embeddings-*d")
    _scribble(folder)
    repaired = run(make_config([corpus], tmp_path / "out", cache_dir, **over))
    cache = repaired.manifest["cache"]
    assert cache["invalid"] > 0.9 * n and cache["hits"] + cache["misses"] == n
    assert _themes(tmp_path / "out") == _themes(tmp_path / "ref")
    again = run(make_config([corpus], tmp_path / "again", cache_dir, **over))
    assert again.manifest["cache"] == {"hits": n, "misses": 0, "invalid": 0, "enabled": True}


@pytest.mark.parametrize("how", ["digest", "content"])
def test_a_damaged_stage_output_is_not_reused(ray_session, make_config, corpus: Path, tmp_path: Path, how: str) -> None:
    over = {"kmeans": {"k": 4}}
    cfg = make_config([corpus], tmp_path / "out", tmp_path / "cache", **over)
    run(cfg)
    reference = _themes(tmp_path / "out")
    stage = tmp_path / "out" / ".theme-engine" / "embed"
    vectors = np.load(stage / "vectors.npy", mmap_mode="r+")
    vectors[::3] = np.nan
    vectors.flush()
    del vectors
    if how == "content":  # a record from before digests were kept: the content check still catches it
        record = json.loads((stage / "done.json").read_text())
        record.pop("outputs")
        (stage / "done.json").write_text(json.dumps(record))
    rerun = run(cfg)
    assert not rerun.manifest["stages"]["embed"].get("reused"), "the damaged embed stage must run again"
    assert rerun.manifest["stages"]["read"].get("reused") is True
    assert _themes(tmp_path / "out") == reference


def test_a_cache_held_by_another_process_is_refused_by_name(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    folder = cache_dir / "embeddings-384d"
    held = EdgeCache(folder, 384)  # as a run in progress holds it
    try:
        with pytest.raises(RunError, match=rf"embedding cache {folder} is in use by another theme-engine process.*--cache-dir.*--qdrant-url"):
            run(make_config([corpus], tmp_path / "out", cache_dir, kmeans={"k": 4}))
    finally:
        held.close()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_deleted_write_ahead_log_recovers(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    """Qdrant Edge rebuilds from its segments when the WAL is gone; nothing is lost."""
    over = {"kmeans": {"k": 4}}
    cache_dir = tmp_path / "cache"
    first = run(make_config([corpus], tmp_path / "a", cache_dir, **over))
    n = first.manifest["stages"]["embed"]["documents"]
    (folder,) = cache_dir.glob("embeddings-*d")
    shutil.rmtree(folder / "wal")
    second = run(make_config([corpus], tmp_path / "b", cache_dir, **over))
    assert second.manifest["cache"]["hits"] == n and second.manifest["cache"]["invalid"] == 0
    assert _themes(tmp_path / "b") == _themes(tmp_path / "a")


def test_retrieved_vectors_of_another_length_are_misses_and_the_rest_hits() -> None:
    from types import SimpleNamespace

    from theme_engine.engine.cache import VECTOR_NAME, _collect, _valid_hits

    v = _unit(3, 4)
    records = [SimpleNamespace(id=f"k{i}", vector={VECTOR_NAME: row.tolist()}) for i, row in enumerate(v)]
    rows: dict[str, np.ndarray] = {}
    _collect(records, rows)
    _collect([SimpleNamespace(id="odd", vector=[0.5, 0.5]), SimpleNamespace(id="k9", vector=v[0].tolist())], rows)
    found, hits, rejected = _valid_hits(["k0", "odd", "k2", "none", "k9"], rows, 4)
    assert found.tolist() == [True, False, True, False, True] and rejected == 1  # "odd"
    np.testing.assert_array_equal(hits, v[[0, 2, 0]])

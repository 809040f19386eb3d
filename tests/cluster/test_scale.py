"""The hyperscale tier's data path (issue 31): on a multi-node cluster the driver's own object-store
bytes do not grow with the corpus — the texts are read and stored, and the vectors made, stored and
held, by the workers; the driver passes only names, row numbers and what grows with k and d."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from theme_engine.actors.memory import DriverPuts
from theme_engine.cluster.runtime.driver import run
from raylocal import driver_only_head  # tests/cluster/raylocal.py

pytestmark = pytest.mark.slow

DIM = 32


@pytest.fixture(scope="module")
def cluster():
    """A head with no CPUs (the driver's node) and two 1-CPU worker nodes, all on 127.0.0.1."""
    import os

    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    c = driver_only_head("te-sc-")
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=200 * 1024 * 1024)
    c.wait_for_nodes()
    yield c
    ray.shutdown()
    c.shutdown()


def _vector_files(folder: Path, n: int, files: int = 4) -> list[str]:
    """``files`` Parquet files of ids and 32-d vectors from 8 clusters (no texts)."""
    rng = np.random.default_rng(n)
    centers = rng.standard_normal((8, DIM)).astype(np.float32)
    X = centers[rng.integers(0, 8, n)] + 0.1 * rng.standard_normal((n, DIM)).astype(np.float32)
    folder.mkdir(parents=True)
    paths = []
    for f, rows in enumerate(np.array_split(np.arange(n), files)):
        vec = pa.FixedSizeListArray.from_arrays(pa.array(X[rows].reshape(-1)), DIM)
        path = folder / f"part-{f}.parquet"
        pq.write_table(pa.table({"id": [f"d{i}" for i in rows], "vector": vec}), path)
        paths.append(str(path))
    return paths


def _text_files(folder: Path, cache: Path, n: int, files: int = 4) -> list[str]:
    """``files`` JSONL files of ids and short texts from 8 topics, each text's vector already in
    the embedding cache ``cache`` under the bundled model's key (as an earlier run leaves it)."""
    import json

    from theme_engine.engine.cache import EdgeCache, text_key
    from theme_engine.engine.config import EmbedConfig
    from theme_engine.engine.embedding import configured_model
    from theme_engine.engine.windows import TextWindows

    rng = np.random.default_rng(n)
    dim = 384
    centers = rng.standard_normal((8, dim)).astype(np.float32)
    topic = rng.integers(0, 8, n)
    X = centers[topic] + 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    texts = [f"topic {t} note {i} about item {int(rng.integers(0, 50))}" for i, t in enumerate(topic.tolist())]
    ec = EmbedConfig()
    spec = configured_model(ec, cache)
    windows = TextWindows.for_model(spec, ec.window_overlap, ec.max_windows)
    store = EdgeCache(cache / f"embeddings-{dim}d", dim)
    store.put([text_key(spec.model_id, t, windows) for t in texts], X)
    store.close()
    folder.mkdir(parents=True)
    paths = []
    for f, rows in enumerate(np.array_split(np.arange(n), files)):
        path = folder / f"part-{f}.jsonl"
        path.write_text("".join(json.dumps({"id": f"d{i}", "text": texts[i]}) + "\n" for i in rows))
        paths.append(str(path))
    return paths


def test_the_drivers_own_object_bytes_do_not_grow_with_n(cluster, make_config, tmp_path: Path, monkeypatch) -> None:
    """Text inputs read in pieces by tasks that store their parts, embedded by actors that read
    the stored texts, ask the cache (through its owner actor) and save their vectors; then the
    shards, the search and the outputs: the driver puts the same bytes at 4x the documents."""
    from theme_engine.cluster.runtime.stages import read as read_stage

    monkeypatch.setattr(read_stage, "MIB", 2**13)  # read.chunk_mb 1 -> pieces of 8 KiB: each file is several
    seen = {}
    for n in (1_000, 4_000):
        inputs = _text_files(tmp_path / f"in-{n}", tmp_path / f"cache-{n}", n)
        cfg = make_config(
            inputs, tmp_path / f"out-{n}", tmp_path / f"cache-{n}", read={"id_field": "id", "chunk_mb": 1}, embed={"workers_from": 0}, kmeans={"k": 8},
            ray={"shards": 2}, index={"task_from": 0}, layout={"task_from": 0, "sample_size": 500}, dedup={"tasks_from": 0},
        )
        with DriverPuts(every=0.05) as puts:
            result = run(cfg)
        stages = result.manifest["stages"]
        assert stages["read"]["documents"] == n and stages["read"]["written_by"] == "tasks" and stages["read"]["pieces"] > 4
        assert stages["embed"]["written_by"] == "embedding actors" and result.manifest["cache"]["hits"] == n
        assert stages["kmeans"]["shard_nodes"] == 2  # the shards are on the two worker nodes
        assert stages["index"]["built_by"] == "task" and stages["index"]["points"] == n
        assert stages["layout"]["built_by"] == "task"
        seen[n] = (puts.total, puts.peak, puts.samples)
    (small, small_peak, samples), (large, large_peak, _) = seen[1_000], seen[4_000]
    assert samples > 10
    # 4x the documents: what the driver put is the same within 20% (plus a few KiB of per-task
    # arguments); the vectors alone would be 4,000 * 384 * 4 bytes
    assert large <= 1.2 * small + 64 * 1024, seen
    assert large_peak <= 1.2 * small_peak + 64 * 1024, seen
    assert large < 4_000 * 384 * 4 / 10, seen


def test_the_map_a_task_makes_is_the_drivers(cluster, tmp_path: Path) -> None:
    """The layout stage's task (large runs) fits and places the same map as the driver does."""
    import ray

    from theme_engine.actors.tasks import layout_task
    from theme_engine.engine.layout import fit_layout
    from theme_engine.engine.vectors import VectorParts

    rng = np.random.default_rng(1)
    X = rng.standard_normal((1_500, DIM)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    parts = VectorParts.write(tmp_path / "vectors", np.array_split(X, 3))
    there = ray.get(layout_task.options(num_cpus=1).remote(parts, 400, 7, 1))
    here = fit_layout(parts, sample_size=400, seed=7, threads=1)
    assert np.array_equal(there.coords, here.coords)
    assert there.info["sample_size"] == here.info["sample_size"] == 400


def test_stored_vector_parts_are_reused_and_a_damaged_one_is_read_again(cluster, make_config, tmp_path: Path) -> None:
    """The read stage's parts are a finished stage like any other: a re-run reuses every stage;
    a part damaged since (NaN rows) fails the stage's check, the inputs are read again, and the
    result is the same."""
    from theme_engine.engine.vectors import VectorParts

    inputs = _vector_files(tmp_path / "in", 3_000)
    cfg = make_config(inputs, tmp_path / "out", tmp_path / "cache", read={"id_field": "id"}, kmeans={"k": 8}, ray={"shards": 2})
    first = run(cfg)
    docs = pq.read_table(tmp_path / "out" / "documents.parquet").to_pydict()
    parts = VectorParts.open(tmp_path / "out" / ".theme-engine" / "read" / "vectors")
    assert len(parts.paths) == 4 and len(parts) == 3_000 and first.manifest["stages"]["read"]["pieces"] == 4

    again = run(cfg)
    assert all(again.manifest["stages"][s].get("reused") for s in ("read", "embed", "kmeans", "dedup", "label", "layout"))

    damaged = np.load(parts.paths[2])
    damaged[5] = np.nan
    np.save(parts.paths[2], damaged)
    third = run(cfg)
    assert not third.manifest["stages"]["read"].get("reused")
    assert all(third.manifest["stages"][s].get("reused") for s in ("kmeans", "dedup", "label"))  # the same vectors again
    assert pq.read_table(tmp_path / "out" / "documents.parquet").to_pydict() == docs


def test_peak_rss_is_the_processs_own_not_its_parents() -> None:
    """``driver_peak_rss_bytes`` and the actors' peaks count from the process's exec: a child of a
    parent holding 300 MB reports its own few tens of MB (``ru_maxrss`` would report the parent's)."""
    import subprocess
    import sys

    held = np.ones(300 * 2**20 // 8)  # touched: resident in this process
    code = "from theme_engine.actors.memory import peak_rss_bytes; print(peak_rss_bytes())"
    peak = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert 5 * 2**20 < peak < 200 * 2**20, peak
    del held

"""The same job across several Ray nodes on this machine (ray.cluster_utils.Cluster): the same
results as one node, and a worker node lost mid-embedding or mid-k-means does not lose the job."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.runtime.driver import run
from raylocal import driver_only_head  # tests/cluster/raylocal.py

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A head with no CPUs (the driver's node) and two 2-CPU worker nodes, all on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    c = driver_only_head("te-c-")
    workers = [c.add_node(num_cpus=2, object_store_memory=200 * 1024 * 1024) for _ in range(2)]
    c.wait_for_nodes()
    c.workers = workers
    yield c
    ray.shutdown()
    c.shutdown()


def _themes_and_pairs(out: Path) -> tuple[list, set]:
    docs = pq.read_table(out / "documents.parquet").to_pydict()
    dups = pq.read_table(out / "duplicates.parquet").to_pydict()
    return docs["theme"], set(zip(dups["id"], dups["duplicate_of"]))


@pytest.fixture(scope="module")
def single_node(corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: the job on one local Ray node (its themes, its pairs, and its filled cache)."""
    import ray

    base = tmp_path_factory.mktemp("single")
    ray.init(num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="te-s-"))
    try:
        cfg = _cfg(corpus, base / "out", base / "cache")
        run(cfg)
    finally:
        ray.shutdown()
    return (*_themes_and_pairs(base / "out"), base / "cache")


def _cfg(corpus: Path, out: Path, cache: Path, **embed: object):
    from theme_engine.engine.config import load_config

    return load_config(
        {
            "inputs": [str(corpus)],
            "out": str(out),
            "cache": {"dir": str(cache)},
            "read": {"id_field": "id"},
            "kmeans": {"k": 6, "tol": 0.0, "max_iter": 15},
            "ray": {"shards": 3},
            "embed": {"batch_size": 16, **embed},
        }
    )


def _ari(a: list, b: list) -> float:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score([x if x is not None else -1 for x in a], [x if x is not None else -1 for x in b])


def test_three_nodes_give_the_single_node_result(cluster, corpus: Path, single_node, tmp_path: Path) -> None:
    import ray

    result = run(_cfg(corpus, tmp_path / "out", tmp_path / "cache"))
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 3
    assert result.manifest["stages"]["kmeans"]["shards"] == 3
    assert result.manifest["stages"]["kmeans"]["shard_nodes"] == 2  # dealt over both worker nodes
    pool = result.manifest["stages"]["embed"]["pool"]
    assert pool["in_driver"] is False and pool["actors"] >= 1  # the driver's node has no CPU for work: actors embed
    themes, pairs = _themes_and_pairs(tmp_path / "out")
    ref_themes, ref_pairs, _ = single_node
    assert _ari(themes, ref_themes) >= 0.99
    assert pairs == ref_pairs


@pytest.mark.parametrize("stage, after", [("embed", 1), ("kmeans", 3)])
def test_worker_node_lost_mid_stage(cluster, corpus: Path, single_node, tmp_path: Path, stage: str, after: int, monkeypatch) -> None:
    """Mid-embedding, the embedding actors are reading stored texts and saving parts themselves
    (embed.workers_from 0): a lost actor's ranges are run again."""
    from theme_engine.cluster.runtime.stages import embed as embed_stage

    monkeypatch.setattr(embed_stage, "PART_DOCS", 32)
    removed: list = []

    def remove_a_worker(s: str, done: int, total: int) -> None:
        if s == stage and done >= after and not removed:
            victim = cluster.workers[0]
            removed.append(victim)
            cluster.remove_node(victim, allow_graceful=False)

    if stage != "embed":  # the reference's vectors from its cache: what is lost is the k-means
        import shutil

        shutil.copytree(single_node[2], tmp_path / "cache")
    result = run(_cfg(corpus, tmp_path / "out", tmp_path / "cache", workers_from=0 if stage == "embed" else 100_000), sink=remove_a_worker)
    assert removed, f"the node was never removed during {stage}"
    themes, pairs = _themes_and_pairs(tmp_path / "out")
    ref_themes, ref_pairs, _ = single_node
    assert _ari(themes, ref_themes) >= 0.99
    assert pairs == ref_pairs
    if stage == "embed":
        embed = result.manifest["stages"]["embed"]
        assert embed["written_by"] == "embedding actors" and embed["parts"] >= 4
        # every document's vector saved once, none lost (a lost actor's cached slices are hits when its range runs again)
        assert embed["embedded"] + embed["cache"]["hits"] == embed["documents"]
    assert os.path.exists(tmp_path / "out" / "manifest.json")


def test_shards_read_their_own_rows_on_worker_nodes(cluster, tmp_path: Path) -> None:
    """Shard actors read their rows from the vector parts themselves (the driver sends names and
    row numbers, and puts nothing into the object store), on the worker nodes even when the
    driver's node has no CPUs; their blocks for the duplicate search come from them."""
    import numpy as np
    import ray

    from theme_engine.actors.shard import ActorShards
    from theme_engine.engine.vectors import VectorParts

    here = ray.get_runtime_context().get_node_id()
    X = np.eye(12, 8, dtype=np.float32) + np.arange(12, dtype=np.float32)[:, None]
    parts = VectorParts.write(tmp_path / "vectors", [X[:5], X[5:7], X[7:]])  # parts that do not line up with the shards
    shards = ActorShards(parts, 3)
    try:
        infos = shards.info()
        assert [i["offset"] for i in infos] == [0, 4, 8] and [i["n"] for i in infos] == [4, 4, 4]
        assert {i["node"] for i in infos} <= {n["NodeID"] for n in ray.nodes() if n["Alive"]} - {here}
        blocks = ray.get(shards.refs)
        assert all(np.array_equal(b, X[o : o + 4]) for b, o in zip(blocks, [0, 4, 8]))
    finally:
        shards.close()

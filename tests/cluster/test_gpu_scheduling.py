"""GPU scheduling on a mixed Ray cluster (ray.cluster_utils.Cluster on this machine): a CPU node and
a node with a fake GPU (``num_gpus=1``: Ray sets ``CUDA_VISIBLE_DEVICES`` there, but no GPU exists,
and the GPU libraries are made to fail to import in its workers). Actors that ask for a GPU land on
the GPU node, the others elsewhere; the whole job on ``device="auto"`` finishes on CPU, and the
manifest says per stage which device served and why the GPU did not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from theme_engine.engine.device import Device, GpuOutOfMemory, GpuUnavailable
from raylocal import driver_only_head  # tests/cluster/raylocal.py

STUB_REASON = "CUDA driver not available (test stub)"


@pytest.fixture(scope="module")
def mixed_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A head with no CPUs (the driver's node), a 2-CPU node and a 2-CPU node with one fake GPU whose
    workers cannot import cupy or cuml (a stub package on their PYTHONPATH raises ImportError)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    stubs = tmp_path_factory.mktemp("gpu-stubs")
    for name in ("cupy", "cuml"):
        (stubs / name).mkdir()
        (stubs / name / "__init__.py").write_text(f"raise ImportError({f'{name}: {STUB_REASON}'!r})\n")
    saved = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    c = driver_only_head("te-g-")
    cpu_node = c.add_node(num_cpus=2, object_store_memory=200 * 1024 * 1024)
    pythonpath = os.pathsep.join(p for p in (str(stubs), os.environ.get("PYTHONPATH", "")) if p)
    gpu_node = c.add_node(num_cpus=2, num_gpus=1, object_store_memory=200 * 1024 * 1024, env_vars={"PYTHONPATH": pythonpath})
    c.wait_for_nodes()
    c.cpu_node_id, c.gpu_node_id = cpu_node.node_id, gpu_node.node_id
    yield c
    ray.shutdown()
    c.shutdown()
    if saved is None:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved


def test_gpu_actors_on_the_gpu_node_cpu_work_elsewhere(mixed_cluster, tmp_path) -> None:
    import ray

    from theme_engine.actors.shard import ActorShards, ShardWorker
    from theme_engine.cluster.runtime.ray_session import plan
    from theme_engine.engine.config import EmbedConfig
    from theme_engine.engine.vectors import VectorParts

    rng = np.random.default_rng(0)
    block = rng.standard_normal((50, 8)).astype(np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    parts = VectorParts.write(tmp_path / "vectors", [block, block])
    gpu_shards = ActorShards(parts, 2, device="auto", num_gpus=0.5)  # as the plan asks on a GPU cluster
    # CPU actors as a CPU plan makes them (embedding actors): CPUs, no GPU
    cpu_actors = [ray.remote(ShardWorker).options(num_cpus=1).remote(block, 0, "auto", 64, 1) for _ in range(2)]
    try:
        on_gpu = gpu_shards.info()
        on_cpu = ray.get([a.info.remote() for a in cpu_actors])
    finally:
        gpu_shards.close()
        for a in cpu_actors:
            ray.kill(a)
    assert {i["node"] for i in on_gpu} == {mixed_cluster.gpu_node_id}
    # the fake GPU cannot serve: CPU, with the reason, reported by every GPU shard
    for i in on_gpu:
        assert i["device"] == "cpu"
        assert [f["stage"] for f in i["fallbacks"]] == ["kmeans"]
        assert STUB_REASON in i["fallbacks"][0]["reason"] and "cupy" in i["fallbacks"][0]["reason"]
    # Ray keeps actors that ask for no GPU off GPU nodes while other nodes have room; no GPU asked
    # for, no fall-back
    assert {i["node"] for i in on_cpu} == {mixed_cluster.cpu_node_id}
    assert all(i["device"] == "cpu" and i["fallbacks"] == [] for i in on_cpu)

    p = plan(1_000, EmbedConfig(), dim=8)
    assert p.use_gpu and p.cluster_gpus == 1
    assert p.embed_actors == 1 and p.embed_resources.gpus == 1.0 and p.embed_resources.cpus <= 2
    assert 0 < p.shard_resources.gpus <= 0.5 and p.shard_resources.cpus == 0
    assert 0 < p.task_resources.gpus <= 0.5 and p.shards * p.shard_resources.gpus + p.task_resources.gpus <= 1.0
    p_cpu = plan(1_000, EmbedConfig(), dim=8, device="cpu")
    assert not p_cpu.use_gpu and p_cpu.embed_resources.gpus == 0 and p_cpu.shard_resources.gpus == 0 and p_cpu.task_resources.gpus == 0


def test_whole_job_falls_back_to_cpu_and_says_why(mixed_cluster, corpus: Path, make_config, tmp_path: Path) -> None:
    from theme_engine.cluster.runtime.driver import run
    from theme_engine.cluster.runtime.metrics import RunMetrics

    metrics = RunMetrics()
    cfg = make_config(
        [corpus],
        tmp_path / "out",
        tmp_path / "cache",
        read={"id_field": "id"},
        kmeans={"k": 3, "max_iter": 10},
        embed={"batch_size": 32},
    )
    assert cfg.device == "auto"
    result = run(cfg, on_stage=metrics.on_stage)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m == json.loads(json.dumps(result.manifest))
    stages = m["stages"]
    for stage in ("embed", "kmeans", "dedup"):  # asked for the GPU, served by the CPU
        assert stages[stage]["device"] == "cpu", stage
        reasons = [f["reason"] for f in stages[stage]["fallbacks"]]
        assert reasons and all("cupy" in r and STUB_REASON in r for r in reasons), (stage, reasons)
    fallbacks = {f["stage"]: f for f in m["gpu_fallbacks"]}
    assert set(fallbacks) == {"embed", "kmeans", "dedup"}
    assert all(f["count"] >= 1 and STUB_REASON in f["reason"] for f in fallbacks.values())
    assert m["k"] == 3 and len(result.themes) >= 1
    for stage in ("embed", "kmeans", "dedup"):
        assert metrics.gpu_fallbacks.labels(stage=stage)._value.get() >= 1


# ----------------------------------------------------------------------------- actors, without Ray


def test_shard_worker_moves_to_cpu_for_good_when_the_gpu_cannot_hold_it(monkeypatch) -> None:
    """A GPU shard whose k-means step runs out of memory even with smaller blocks continues on the
    CPU (same results as a CPU shard) and reports the fall-back once per reason."""
    import theme_engine.actors.shard as shard_mod
    from theme_engine.engine.kmeans import Shard

    fake_gpu = Device(kind="cuda", xp=np, ordinal=0)
    monkeypatch.setattr(shard_mod, "resolve_for_stage", lambda stage, requested, ids: (fake_gpu, None))
    tried: list[int] = []
    real_step = Shard.step

    def step(self: Shard, C: np.ndarray, fit=None):
        if self.device.kind == "cuda":
            tried.append(self.batch_rows)
            raise GpuOutOfMemory("test: out of GPU memory")
        return real_step(self, C, fit)

    monkeypatch.setattr(Shard, "step", step)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6)).astype(np.float32)
    w = shard_mod.ShardWorker(X, 0, "cuda", 256, 1)
    assert w.info()["device"] == "cuda:0"
    C = X[:4]
    got = w.call("step", C)
    assert tried == [256, 128, 64, 32]  # halved on the GPU first
    ref = Shard(X, 0, batch_rows=256).step(C)  # the CPU shard it became
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    info = w.info()
    assert info["device"] == "cpu"
    assert info["fallbacks"] == [{"stage": "kmeans", "reason": "test: out of GPU memory", "count": 1}]
    w.call("step", C)  # stays on the CPU: no second fall-back
    assert w.info()["fallbacks"][0]["count"] == 1 and len(tried) == 4


def test_shard_worker_asked_for_cuda_without_a_gpu_reports_why() -> None:
    import theme_engine.actors.shard as shard_mod

    X = np.eye(4, dtype=np.float32)
    w = shard_mod.ShardWorker(X, 10, "cuda", 64, 1)  # Ray is not running here: no GPU assigned
    info = w.info()
    assert info["device"] == "cpu" and info["fallbacks"][0]["stage"] == "kmeans"
    assert "no GPU is assigned" in info["fallbacks"][0]["reason"]
    i, j, s, served = w.pairs_with(X, 10, 0.5, 16)
    assert served == {"device": "cpu", "fallback": None} and len(i) == 0


def test_embedding_on_a_cpu_onnxruntime_falls_back_with_reason(monkeypatch, tmp_path: Path) -> None:
    """Here onnxruntime is the CPU build: the cuda path refuses with the reason and the actor embeds
    on the CPU, saying so in every batch."""
    import theme_engine.actors.embed as embed_mod
    from theme_engine.engine.embedding import get_model

    pytest.importorskip("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    name = get_model()
    fake_gpu = Device(kind="cuda", xp=np, ordinal=0)
    with pytest.raises(GpuUnavailable, match="CUDAExecutionProvider"):
        embed_mod.load_embedder(name, str(tmp_path), 1, fake_gpu)
    monkeypatch.setattr(embed_mod, "resolve_for_stage", lambda stage, requested, ids: (fake_gpu, None))
    actor = embed_mod.EmbedBatch(name, str(tmp_path), 1, 8, 4096, device="cuda")
    out = actor({"row": np.arange(3), "text": np.array(["a verse", "another verse", "the end"], dtype=object)})
    assert actor.device.kind == "cpu"
    assert set(out["device"]) == {"cpu"} and all("CUDAExecutionProvider" in r for r in out["fallback"])
    vecs = np.stack(out["vector"])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert embed_mod.onnx_session(actor.embedder).get_providers() == ["CPUExecutionProvider"]

"""Autoscaling with Ray's fake multi-node provider: GPU nodes from zero and back, never for CPU work.

``ray.cluster_utils.AutoscalingCluster`` cannot be used here: its start() and shutdown() run
``ray stop --force`` (ending every Ray on the machine) and in ray 2.60 it reads an example config
the wheel lacks. :class:`raylocal.LocalHead` starts the same thing without either:
``ray start --head --block --autoscaling-config=FILE`` with ``RAY_FAKE_CLUSTER=1`` in its own
session, and stops it by killing its processes — fake worker nodes included (they are started by
the head's autoscaler monitor, so they are the head's descendants). The driver runs in its own
process (``autoscale_driver.py``) so that it never meets this test process's Ray.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raylocal import LocalHead  # tests/cluster/raylocal.py (rootdir-relative import)

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("autoscale_driver.py")
DEMO = Path(__file__).resolve().parents[2] / "demo" / "bible-verses.jsonl"
MB = 1024 * 1024


def fake_cluster_config(gcs_address: str, head_cpus: int) -> dict:
    """Ray's fake_multi_node example config, inline, with a CPU and a (fake) GPU worker type."""
    return {
        "cluster_name": "te-fake",
        "max_workers": 3,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,  # else the provider assumes this machine's IP and port 6379
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {
                "resources": {"CPU": 1, "object_store_memory": 80 * MB},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,  # room for all the CPU job's demand: a GPU node is never the only fit
            },
            "gpu_worker": {
                "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 80 * MB},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.05,
        "docker": {},
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def autoscaling_head():
    head = LocalHead(num_cpus=2, object_store_mb=200, env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    config = Path(head.temp_dir) / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(head.gcs_address, head.num_cpus)))
    head.extra = [f"--autoscaling-config={config}"]
    head.start()
    try:
        yield head
    finally:
        left = head.stop()
        assert not left, f"processes of the autoscaling head (or its fake nodes) left running: {left}"


def _drive(head: LocalHead, mode: str, *args: str, timeout: float = 240) -> dict:
    r = subprocess.run(
        [sys.executable, str(DRIVER), head.gcs_address, mode, *args], check=False,
        capture_output=True, text=True, timeout=timeout, env=head.env(),
    )  # fmt: skip
    head.remember()
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"driver failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{head.log_tail()}"
    return json.loads(lines[-1][len("RESULT ") :])


def test_cpu_job_never_starts_a_gpu_node(autoscaling_head: LocalHead) -> None:
    res = _drive(autoscaling_head, "cpu")
    assert [n for n in res["start"] if n["gpus"]] == []
    assert res["max_nodes"] >= 2, f"the autoscaler never answered the CPU demand: {res}"
    assert res["max_gpu_nodes"] == 0, res
    assert all(n["gpus"] == 0 for n in res["end"]), res


def test_gpu_actor_scales_a_gpu_node_up_from_zero_and_down(autoscaling_head: LocalHead) -> None:
    res = _drive(autoscaling_head, "gpu")
    assert [n for n in res["start"] if n["gpus"]] == [], res  # from zero
    assert res["where"] is not None, f"the GPU actor never started: {res}"
    assert res["cluster_gpus_up"] >= 1 and res["max_gpu_nodes"] == 1, res
    head_ids = {n["id"] for n in res["start"]}
    assert res["where"]["node"] not in head_ids  # it ran on the new node
    assert res["where"]["gpu_ids"], res  # a fake GPU: Ray assigned it (CUDA_VISIBLE_DEVICES set; no real device)
    assert res["scaled_down"], f"the idle GPU node was not terminated within the wait: {res}"
    assert res["cluster_gpus_end"] == 0 and all(n["gpus"] == 0 for n in res["end"]), res


def test_cuda_run_asks_the_autoscaler_for_a_gpu_node(autoscaling_head: LocalHead, tmp_path: Path) -> None:
    """The real job with ``device="cuda"`` on a cluster whose GPU node type starts at zero: the
    driver asks the autoscaler for a GPU, a (fake) GPU node starts, the GPU actors run there and —
    no real CUDA — fall back to CPU, which the manifest says."""
    corpus = tmp_path / "verses.jsonl"
    corpus.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:60]))
    res = _drive(autoscaling_head, "run", str(corpus), str(tmp_path), timeout=480)
    assert [n for n in res["start"] if n["gpus"]] == [], res  # from zero
    assert res["max_gpu_nodes"] >= 1 and "first_gpu_s" in res, f"no GPU node came up during the run: {res}"
    m = res["manifest"]
    assert m["k"] == 2 and res["themes"] >= 1
    stages = m["stages"]
    assert stages["embed"]["device"] == "cpu"
    # a GPU was assigned (the autoscaler brought one): the fall-back is the GPU libraries', never
    # "no GPU joined"
    fallbacks = {f["stage"]: f for f in m["gpu_fallbacks"]}
    assert {"embed", "kmeans"} <= set(fallbacks), m
    assert all("none joined" not in f["reason"] for f in m["gpu_fallbacks"]), m
    assert all("no GPU is assigned" not in f["reason"] for f in m["gpu_fallbacks"]), m


# ----------------------------------------------------------------------------- without a Ray (none beside the head)


@pytest.fixture
def no_gpu_cluster(monkeypatch: pytest.MonkeyPatch) -> list:
    """``ray`` answering as a fixed 4-CPU, 2-node cluster with no GPU (no Ray is started: this
    module's head must not meet another Ray); returns the autoscaler requests made."""
    import ray
    import ray.autoscaler.sdk

    requests: list = []
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 4e9}} for _ in range(2)]
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "memory": 8e9})
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    monkeypatch.setattr(ray.autoscaler.sdk, "request_resources", lambda **kw: requests.append(kw))
    # the pending one-GPU placement group (a demand nothing can overwrite), recorded as requests too
    monkeypatch.setattr(ray.util, "placement_group", lambda bundles, **kw: requests.append({"placement_group": bundles}) or "pg")
    monkeypatch.setattr(ray.util, "remove_placement_group", lambda pg: requests.append({"removed": pg}))
    return requests


def test_ensure_gpus_waits_only_for_cuda_and_gives_up(no_gpu_cluster: list, caplog: pytest.LogCaptureFixture) -> None:
    """No GPU and none coming: ``cuda`` asks the autoscaler, waits ``wait_s``, withdraws the
    request and returns False with one warning; ``auto`` and ``cpu`` return at once, asking nothing."""
    from theme_engine.cluster.runtime import ray_session as rs

    caplog.set_level(logging.INFO, logger="theme_engine.cluster.runtime.ray_session")
    t0 = time.monotonic()
    assert rs.ensure_gpus("auto", wait_s=30) is False
    assert rs.ensure_gpus("cpu", wait_s=30) is False
    assert time.monotonic() - t0 < 1
    assert no_gpu_cluster == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]

    t0 = time.monotonic()
    assert rs.ensure_gpus("cuda", wait_s=1, poll_s=0.2) is False
    took = time.monotonic() - t0
    assert 1 <= took < 5, took
    asks = [r for r in no_gpu_cluster if "bundles" in r]
    assert len(asks) >= 3 and all(r == {"bundles": [{"GPU": 1}]} for r in asks[:-1])  # renewed at every poll
    assert asks[-1] == {"bundles": []}  # then withdrawn
    assert {"placement_group": [{"GPU": 1}]} in no_gpu_cluster and no_gpu_cluster[-2:] == [{"removed": "pg"}, {"bundles": []}]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "goes on with CPU" in warnings[0], warnings


def test_ensure_gpus_returns_once_a_gpu_node_joins(no_gpu_cluster: list, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from theme_engine.cluster.runtime import ray_session as rs

    t0 = time.monotonic()
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "GPU": float(time.monotonic() - t0 > 0.5)})
    assert rs.ensure_gpus("cuda", wait_s=30, poll_s=0.1) is True
    assert time.monotonic() - t0 < 5
    asks = [r for r in no_gpu_cluster if "bundles" in r]
    assert asks and all(r == {"bundles": [{"GPU": 1}]} for r in asks)  # kept until the run ends (release_gpu_request)
    assert no_gpu_cluster[-1] == {"removed": "pg"}  # the placement group's demand is dropped once a GPU is there
    count = len(no_gpu_cluster)
    assert rs.ensure_gpus("cuda", wait_s=30) is True and len(no_gpu_cluster) == count  # GPUs present: no new request


def test_plan_grows_the_embedding_pool_to_max_embed_actors(no_gpu_cluster: list) -> None:
    from theme_engine.cluster.runtime.ray_session import plan
    from theme_engine.engine.config import EmbedConfig

    today = plan(1_000, EmbedConfig(), dim=8)
    assert today.embed_actors == 1 and not today.use_gpu  # (4 CPUs - 1 for Ray Data) // 2 threads
    assert not today.embed_in_driver  # more than one node: the actor may live elsewhere
    grown = plan(1_000, EmbedConfig(), dim=8, max_embed_actors=7)
    assert grown.embed_actors == 7 and grown.embed_resources == today.embed_resources


def test_a_head_without_cpus_never_embeds_in_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeRay's head declares no CPUs: with its workers scaled down it is the only node, and the
    embedding must still ask for an actor (which is what makes the autoscaler add a worker)."""
    import ray

    from theme_engine.cluster.runtime.ray_session import plan
    from theme_engine.engine.config import EmbedConfig

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"memory": 8e9})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeID": "head", "Resources": {"memory": 8e9}}])
    p = plan(1_000, EmbedConfig(), dim=8)
    assert p.embed_actors == 1 and not p.embed_in_driver

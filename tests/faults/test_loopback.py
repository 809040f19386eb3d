"""A local run's Ray listens on the loopback interface only (a subprocess: Ray reads the setting
when it is imported, and this test session's Ray is already imported), whether or not the caller
imported Ray before the run (a notebook, a Ray Dataset passed to ``theme_engine.run``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    if sys.argv[1:] == ["ray-first"]:
        import ray
    import psutil
    from theme_engine.cluster.runtime.loopback import local_ray_on_loopback
    from theme_engine.engine.config import load_config

    cfg = load_config({"ray": {"num_cpus": 1, "object_store_memory": 100 * 2**20, "temp_dir": tempfile.mkdtemp()}})
    on = local_ray_on_loopback(cfg)
    from theme_engine.cluster.runtime import ray_session
    import ray

    ray_session.connect(cfg.ray)

    @ray.remote
    def ping():
        return 1

    ray.get(ping.remote())  # a worker process is up and listening too
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    pids = {p.pid for p in procs}
    # Ray's agents are started by the raylet: include every process of this Ray session's temp dir
    for p in psutil.process_iter(["pid", "cmdline"]):
        if cfg.ray.temp_dir and any(str(cfg.ray.temp_dir) in part for part in (p.info["cmdline"] or [])):
            pids.add(p.info["pid"])
    listening = [
        {"pid": c.pid, "ip": c.laddr.ip, "port": c.laddr.port}
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    ]
    ray.shutdown()
    print(json.dumps({"on": on, "listening": listening}))
    """
)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _listeners(env: dict[str, str], *args: str) -> dict:
    res = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("order", ["theme-engine-first", "ray-first"])
def test_a_local_run_binds_ray_to_loopback_only(order: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    got = _listeners(env, order)
    assert got["on"] is True
    assert len(got["listening"]) >= 3  # GCS, raylet, driver and worker at least: the check sees them
    exposed = [c for c in got["listening"] if c["ip"] not in LOOPBACK]
    assert not exposed, exposed


def test_a_cluster_address_is_left_alone() -> None:
    from theme_engine.cluster.runtime.loopback import local_ray_on_loopback
    from theme_engine.engine.config import load_config

    saved = os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    try:
        assert local_ray_on_loopback(load_config({"ray": {"address": "10.0.0.5:6379"}})) is False
        assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    finally:
        if saved is not None:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved

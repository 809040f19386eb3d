"""A real Prometheus scrapes a RunMetrics endpoint (and a target found through a service discovery
file in the format Ray writes), using the project's own cluster/prometheus/prometheus.yml.

Needs the `prometheus` and `promtool` binaries: on Debian/Ubuntu
``apt-get install -y --no-install-recommends prometheus`` (or set PROMETHEUS_BIN / PROMTOOL_BIN).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from ray._private import ray_constants

from theme_engine.cluster.runtime.metrics import RunMetrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "cluster" / "prometheus" / "prometheus.yml"
INSTALL = "apt-get install -y --no-install-recommends prometheus"


def _binary(name: str, env: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        pytest.fail(
            f"the `{name}` binary is not installed, and this test needs a real one: install it with "
            f"`{INSTALL}` (Debian/Ubuntu), or point {env} at it",
            pytrace=False,
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_promtool_accepts_the_project_config() -> None:
    promtool = _binary("promtool", "PROMTOOL_BIN")
    done = subprocess.run([promtool, "check", "config", str(CONFIG)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


class _Prometheus:
    """A prometheus process on 127.0.0.1 with a temp config and storage; stopped by :meth:`stop`."""

    def __init__(self, binary: str, config: dict, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg_path = workdir / "prometheus.yml"
        cfg_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]

    def query(self, promql: str) -> list[dict]:
        body = _get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, timeout: float = 45.0) -> list[dict]:
        """The query's result once it is non-empty (Prometheus up and the targets scraped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                result = self.query(promql)
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        pytest.fail(f"no result for {promql!r} within {timeout:.0f} s; prometheus log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def _test_config(driver_port: int, sd_file: Path) -> dict:
    """The project's prometheus.yml with a 1 s scrape interval, the driver target on our port and
    Ray's service discovery file at a temp path."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    jobs["theme-engine"]["static_configs"][0]["targets"] = [f"127.0.0.1:{driver_port}"]
    jobs["ray"]["file_sd_configs"][0]["files"] = [str(sd_file)]
    jobs["ray"]["file_sd_configs"][0]["refresh_interval"] = "1s"
    return cfg


def test_real_prometheus_scrapes_run_metrics(tmp_path: Path) -> None:
    binary = _binary("prometheus", "PROMETHEUS_BIN")
    metrics = RunMetrics()
    metrics.start(device="cpu")
    metrics.sink("embed", 30, 200)
    metrics.on_stage("read", {"seconds": 0.25, "device": "cpu", "documents": 200, "bad": 1, "ok": 190, "filtered_empty": 4})
    metrics.on_stage("embed", {"seconds": 1.5, "device": "cpu", "documents": 190, "embedded": 150,
                               "cache": {"hits": 40, "misses": 150, "enabled": True}})
    metrics.on_stage("kmeans", {"seconds": 0.75, "device": "cuda", "k": 7, "iterations": 13, "inertia": 12.5, "converged": True})
    metrics.on_stage("dedup", {"seconds": 0.5, "device": "cpu", "pairs": 11, "groups": 5, "near_duplicates": 8})

    # a stand-in for a Ray node's metrics endpoint, listed in a file in the format Ray writes
    node_registry = CollectorRegistry()
    Gauge("ray_node_cpu_count", "CPUs of the node", registry=node_registry).set(2)
    sd_file = tmp_path / ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE

    prom = None
    driver = metrics.serve(0)
    node_server, node_thread = start_http_server(0, addr="127.0.0.1", registry=node_registry)
    node_port = node_server.server_address[1]
    try:
        sd_file.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{node_port}"]}]))
        prom = _Prometheus(binary, _test_config(driver.port, sd_file), tmp_path)

        def one(promql: str) -> tuple[dict, float]:
            result = prom.wait_for(promql)
            assert len(result) == 1, result
            return result[0]["metric"], float(result[0]["value"][1])

        labels, k = one("theme_engine_k")
        assert k == 7
        assert labels["job"] == "theme-engine" and labels["instance"] == f"127.0.0.1:{driver.port}"
        assert one('theme_engine_stage_duration_seconds{stage="embed"}')[1] == 1.5
        assert one('theme_engine_stage_device{stage="kmeans", device="cuda"}')[1] == 1
        assert one("theme_engine_kmeans_inertia")[1] == 12.5
        assert one("theme_engine_documents_read")[1] == 200
        assert one("theme_engine_cache_hits / (theme_engine_cache_hits + theme_engine_cache_misses)")[1] == pytest.approx(40 / 190)
        assert one("theme_engine_embed_documents_per_second")[1] == pytest.approx(100.0)
        assert one('theme_engine_run_status{status="running"}')[1] == 1
        # a later value reaches Prometheus at the next scrape
        metrics.finish("succeeded")
        assert one('theme_engine_run_status{status="succeeded"} == 1')[1] == 1
        # the target listed in the service discovery file is scraped as job "ray"
        labels, cpus = one('ray_node_cpu_count{job="ray"}')
        assert cpus == 2 and labels["instance"] == f"127.0.0.1:{node_port}"
        # and only the driver's endpoint has theme-engine metrics
        assert {r["metric"]["job"] for r in prom.query("theme_engine_run_start_time_seconds")} == {"theme-engine"}
    finally:
        if prom is not None:
            prom.stop()
        metrics.close()
        node_server.shutdown()
        node_server.server_close()
        node_thread.join(5)
    assert prom.proc.returncode is not None

"""The cluster configs: ray-cluster.yaml against Ray's own schema, the KubeRay manifests, the
Prometheus config and the Grafana dashboard (its queries name only metrics RunMetrics defines)."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private import ray_constants
from ray.autoscaler._private.util import prepare_config, validate_config

from theme_engine.cluster.commands import cli
from theme_engine.cluster.runtime.metrics import RunMetrics

ROOT = Path(__file__).resolve().parents[2]
RAY_CLUSTER = ROOT / "ray-cluster.yaml"
K8S = ROOT / "cluster" / "k8s"
PROMETHEUS = ROOT / "cluster" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "cluster" / "grafana" / "theme-engine.json"


def _load(path: Path):
    return yaml.safe_load(path.read_text())


def _validated(config: dict) -> dict:
    """What `ray up` does with a config: fill out the provider's defaults, then check the schema."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


# ---------------------------------------------------------------- ray-cluster.yaml
def test_ray_cluster_yaml_passes_rays_schema() -> None:
    cfg = _validated(_load(RAY_CLUSTER))
    types = cfg["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert cfg["head_node_type"] == "head"
    assert cfg["idle_timeout_minutes"] > 0
    for name, t in types.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
        assert "InstanceType" in t["node_config"], name
    assert types["head"]["max_workers"] == 0
    assert types["cpu_worker"]["resources"]["CPU"] > 0 and "GPU" not in types["cpu_worker"]["resources"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["cpu_worker"]["max_workers"] > 0 and types["gpu_worker"]["max_workers"] > 0


def test_ray_cluster_yaml_installs_the_right_extra_per_node_type() -> None:
    cfg = _validated(_load(RAY_CLUSTER))

    def installs(commands: list[str]) -> str:
        return " ".join(c for c in commands if "pip install" in c and "theme-engine" in c)

    head = installs(cfg["head_setup_commands"])
    cpu = installs(cfg["available_node_types"]["cpu_worker"].get("worker_setup_commands", cfg["worker_setup_commands"]))
    gpu = installs(cfg["available_node_types"]["gpu_worker"]["worker_setup_commands"])  # replaces the global ones
    assert "theme-engine[cpu]" in head and "[gpu]" not in head
    assert "theme-engine[cpu]" in cpu and "[gpu]" not in cpu
    assert "theme-engine[gpu]" in gpu and "[cpu]" not in gpu
    assert any("--metrics-export-port" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])


@pytest.mark.parametrize(
    "break_it, error",
    [
        (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), jsonschema.ValidationError),
        (lambda c: c["available_node_types"]["gpu_worker"].pop("resources"), jsonschema.ValidationError),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers="one"), jsonschema.ValidationError),
        (lambda c: c.update(idle_timout_minutes=5), jsonschema.ValidationError),  # a typo: unknown key
        (lambda c: c.update(head_node_type="gpu_head"), ValueError),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=c["max_workers"] + 1), ValueError),
    ],
    ids=["node-type-without-node-config", "node-type-without-resources", "min-workers-not-int", "unknown-key", "unknown-head-type", "min-over-max"],
)
def test_a_broken_ray_cluster_yaml_is_rejected(break_it, error) -> None:
    cfg = _load(RAY_CLUSTER)
    _validated(cfg)
    broken = copy.deepcopy(cfg)
    break_it(broken)
    with pytest.raises(error):
        _validated(broken)


# ---------------------------------------------------------------- KubeRay
def _containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, g in groups for c in g["template"]["spec"]["containers"]]


def _check_cluster_spec(spec: dict) -> None:
    assert spec["enableInTreeAutoscaling"] is True
    auto = spec["autoscalerOptions"]
    assert auto["idleTimeoutSeconds"] > 0 and auto["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert set(auto["resources"]) == {"requests", "limits"}
    assert "rayStartParams" in spec["headGroupSpec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
        assert g["maxReplicas"] > 0
    for g in [spec["headGroupSpec"], *groups.values()]:
        # KubeRay passes rayStartParams to `ray start` as strings
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), g["rayStartParams"]
    for name, c in _containers(spec):
        assert c.get("image"), f"{name}: container {c.get('name')} has no image"
        for kind in ("requests", "limits"):
            res = c["resources"][kind]
            assert {"cpu", "memory"} <= set(res), f"{name}: resources.{kind} needs cpu and memory"
    gpu = [c for name, c in _containers(spec) if name == "gpu"]
    assert gpu and all(int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for c in gpu)
    others = [c for name, c in _containers(spec) if name != "gpu"]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for c in others)
    assert all("gpu" in c["image"] for c in gpu) and not any("gpu" in c["image"] for c in others)


def test_raycluster_manifest() -> None:
    docs = list(yaml.safe_load_all((K8S / "raycluster.yaml").read_text()))
    assert len(docs) == 1
    rc = docs[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"]
    _check_cluster_spec(rc["spec"])


def test_rayjob_manifest_runs_theme_engine() -> None:
    docs = list(yaml.safe_load_all((K8S / "rayjob.yaml").read_text()))
    assert len(docs) == 1
    job = docs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["theme-engine", "run"]
    args = cli.build_parser().parse_args(argv[1:])  # the entrypoint's flags are ones the CLI has
    assert args.inputs and args.out and args.metrics_port is not None
    _check_cluster_spec(spec["rayClusterSpec"])


# ---------------------------------------------------------------- Prometheus
def test_prometheus_config_scrapes_the_driver_and_rays_service_discovery() -> None:
    cfg = _load(PROMETHEUS)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"theme-engine", "ray"}
    targets = [t for sc in jobs["theme-engine"]["static_configs"] for t in sc["targets"]]
    assert targets and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)
    assert jobs["theme-engine"].get("metrics_path", "/metrics") == "/metrics"
    files = [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]]
    assert files == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


# ---------------------------------------------------------------- Grafana
def _exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_queries_only_defined_metrics() -> None:
    dash = json.loads(GRAFANA.read_text())
    assert dash["title"] and dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["targets"], p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
    used = {name for e in _exprs(dash) for name in re.findall(r"\btheme_engine_[a-z0-9_]+", e)}
    defined = RunMetrics().names()
    assert used - defined == set(), f"queries name metrics RunMetrics does not define: {sorted(used - defined)}"
    for needed in (
        "theme_engine_stage_duration_seconds",
        "theme_engine_embed_documents_per_second",
        "theme_engine_cache_hits",
        "theme_engine_cache_misses",
        "theme_engine_kmeans_inertia",
        "theme_engine_kmeans_iterations",
        "theme_engine_duplicate_pairs",
        "theme_engine_duplicate_groups",
        "theme_engine_gpu_fallbacks",
        "theme_engine_stage_device",
    ):
        assert needed in used, f"the dashboard shows no {needed}"
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        uid = p["datasource"]["uid"]
        assert uid.startswith("${") and uid[2:-1] in variables

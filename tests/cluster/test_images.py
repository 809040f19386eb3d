"""The container images (docker/), read statically: Docker does not run here. Their base tags
match the Ray and Python the project pins, each installs its extra, runs as a user, holds no
secrets and has the model at build time; the cluster configs use them."""

from __future__ import annotations

import re
import shlex
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from theme_engine.cluster.commands.args import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
IMAGES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
TAG = {kind: f"theme-engine:{tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['version']}-{kind}" for kind in IMAGES}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            op, _, rest = pending.partition(" ")
            out.append((op.upper(), rest.split("  #")[0].strip()))
            pending = ""
    return out


def _args(steps: list[tuple[str, str]]) -> dict[str, str]:
    return {k: v.strip('"') for op, rest in steps if op == "ARG" and "=" in rest for k, v in [rest.split("=", 1)]}


@pytest.mark.parametrize("kind", ["cpu", "gpu"], ids=["cpu-image", "cuda-image"])
def test_the_base_is_the_pinned_ray_on_python_311(kind: str) -> None:
    steps = _instructions(IMAGES[kind])
    base = next(rest for op, rest in steps if op == "FROM")
    tag = base.replace("${RAY_VERSION}", _args(steps)["RAY_VERSION"])
    ray_version, python = _args(steps)["RAY_VERSION"], tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ray_version == version("ray"), "the images' Ray is the one the tests run with"
    pins = [d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] if d.startswith("ray[")]
    lower = re.search(r">=([\d.]+)", pins[0]).group(1)
    assert tuple(map(int, ray_version.split("."))) >= tuple(map(int, lower.split("."))) and ray_version.split(".")[0] == "2"
    assert python == ">=3.11"
    assert tag == f"rayproject/ray:{ray_version}-py311" + ("-gpu" if kind == "gpu" else "")
    for manifest in (ROOT / "cluster" / "k8s").glob("*.yaml"):
        spec = yaml.safe_load(manifest.read_text())["spec"]
        assert (spec.get("rayClusterSpec") or spec)["rayVersion"] == ray_version, manifest.name


@pytest.mark.parametrize("kind", ["cpu", "gpu"], ids=["cpu-image", "cuda-image"])
def test_each_image_installs_its_extra_runs_as_a_user_and_has_the_model(kind: str) -> None:
    steps = _instructions(IMAGES[kind])
    runs = [rest for op, rest in steps if op == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1 and f'theme-engine[{kind}]"' in installs[0]
    other = "gpu" if kind == "cpu" else "cpu"
    assert f"[{other}]" not in IMAGES[kind].read_text()
    users = [rest for op, rest in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0") and steps.index(("USER", users[-1])) < steps.index(("RUN", installs[0]))
    # the model is fetched at build time with the CLI's own command, and runs are kept offline
    download = next(r for r in runs if "theme-engine models --download" in r)
    argv = shlex.split(download.split("&&")[-1].replace("${MODELS}", ""))
    assert build_parser().parse_args(argv[1:]).download == ["all-MiniLM-L6-v2-int8"]
    env = " ".join(rest for op, rest in steps if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "FASTEMBED_CACHE_PATH=" in env
    assert [op for op, _ in steps].index("ENV") < [op for op, _ in steps].index("RUN")  # the model lands in FASTEMBED_CACHE_PATH
    assert any("theme-engine doctor" in r for r in runs)
    # what the package needs is copied; what the build does not need stays out
    copied = {part for op, rest in steps if op == "COPY" for part in rest.split()[1:-1]}
    assert {"pyproject.toml", "README.md", "engine", "actors", "cluster", "theme_engine"} <= copied


@pytest.mark.parametrize("kind", ["cpu", "gpu"], ids=["cpu-image", "cuda-image"])
def test_no_secrets_in_the_images(kind: str) -> None:
    text = IMAGES[kind].read_text()
    for op, rest in _instructions(IMAGES[kind]):
        if op in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            assert not [n for n in names if re.search(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", n, re.I)], rest
    assert not re.search(r"(hf_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN)", text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "*.pem", "*.key"} <= set(ignored)


def test_the_cluster_configs_run_the_images() -> None:
    for name in ("raycluster.yaml", "rayjob.yaml"):
        text = (ROOT / "cluster" / "k8s" / name).read_text()
        images = re.findall(r"image:\s*(\S+)", text)
        assert images and set(images) <= set(TAG.values()), name
        assert TAG["gpu"] in images and TAG["cpu"] in images
    for kind, path in IMAGES.items():
        assert f"docker build -f docker/{path.name} -t {TAG[kind]} ." in path.read_text()
        assert f"docker build -f docker/{path.name} -t {TAG[kind]} ." in (ROOT / "README.md").read_text()


def test_ray_cluster_yaml_docker_alternative_passes_rays_schema() -> None:
    """The commented docker: block of ray-cluster.yaml, uncommented as its comment says, is a
    config `ray up` accepts, with the CPU image for the head and CPU workers, the GPU one for GPU workers."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (ROOT / "ray-cluster.yaml").read_text()
    block = re.search(r"^# docker:\n((?:#   .*\n)+)", text, re.M)
    assert block, "ray-cluster.yaml has no commented docker: block"
    docker = yaml.safe_load("docker:\n" + "".join(line[1:] + "\n" for line in block.group(1).splitlines()))["docker"]
    gpu = yaml.safe_load(re.search(r"^#     (docker: \{.*\})$", text, re.M).group(1))["docker"]
    cfg = yaml.safe_load(text)
    cfg["docker"] = docker
    cfg["available_node_types"]["gpu_worker"]["docker"] = gpu
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        cfg[key] = []
    cfg["available_node_types"]["gpu_worker"].pop("worker_setup_commands", None)
    prepared = prepare_config(cfg)
    validate_config(prepared)
    assert prepared["docker"]["image"] == TAG["cpu"]
    assert prepared["available_node_types"]["gpu_worker"]["docker"]["worker_image"] == TAG["gpu"]

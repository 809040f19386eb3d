"""The install plan (offline): CPU and GPU twins live in separate extras, never in the base
dependencies; a missing twin module fails with one typed error that says how to install it."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from theme_engine.engine import deps

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"

# distribution -> the module it installs, for each twin pair (CPU, GPU)
CPU_TWINS = {"faiss-cpu": "faiss", "onnxruntime": "onnxruntime", "fastembed": "fastembed"}
GPU_TWINS = {"faiss-gpu-cu12": "faiss", "onnxruntime-gpu": "onnxruntime", "fastembed-gpu": "fastembed"}
GPU_ONLY = ("cupy-cuda12x", "cuml-cu12")


@pytest.fixture(scope="module")
def project() -> dict:
    with PYPROJECT.open("rb") as fh:
        return tomllib.load(fh)["project"]


def _names(reqs: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in reqs}


def test_base_dependencies_hold_neither_twin(project):
    base = _names(project["dependencies"])
    assert not base & (set(CPU_TWINS) | set(GPU_TWINS) | set(GPU_ONLY))


def test_cpu_and_gpu_extras_hold_only_their_own_twins(project):
    extras = project["optional-dependencies"]
    cpu, gpu = _names(extras["cpu"]), _names(extras["gpu"])
    assert {"faiss-cpu", "fastembed"} <= cpu
    assert {"faiss-gpu-cu12", "fastembed-gpu", "onnxruntime-gpu", *GPU_ONLY} <= gpu
    assert not cpu & (set(GPU_TWINS) | set(GPU_ONLY))
    assert not gpu & set(CPU_TWINS)


def test_gpu_onnxruntime_is_a_cuda12_build(project):
    (ort,) = [Requirement(r) for r in project["optional-dependencies"]["gpu"] if Requirement(r).name == "onnxruntime-gpu"]
    # PyPI's onnxruntime-gpu is built for CUDA 13 from 1.27 on (bench/gpu_install_check.py checks the metadata)
    assert "1.26.0" in ort.specifier and "1.27.0" not in ort.specifier


def test_dev_extra_is_cpu_plus_test_and_test_holds_no_twin(project):
    extras = project["optional-dependencies"]
    dev = [Requirement(r) for r in extras["dev"]]
    assert any(r.name == project["name"] and {"cpu", "test"} <= r.extras for r in dev)
    assert not any(r.name == project["name"] and "gpu" in r.extras for r in dev)
    assert "pytest" in _names(extras["test"])
    assert not _names(extras["test"]) & (set(CPU_TWINS) | set(GPU_TWINS) | set(GPU_ONLY) | {project["name"]})


def test_twins_table_matches_the_extras(project):
    extras = project["optional-dependencies"]
    for module, (cpu_dist, gpu_dist) in deps.TWINS.items():
        assert CPU_TWINS.get(cpu_dist) == module and GPU_TWINS.get(gpu_dist) == module
        assert gpu_dist in _names(extras["gpu"])


def test_require_imports_an_installed_module():
    import faiss

    assert deps.require("faiss") is faiss


def test_require_names_the_install_command_when_a_module_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(deps.MissingDependency) as info:
        deps.require("faiss")
    err = info.value
    assert isinstance(err, ImportError) and err.module == "faiss"
    assert "faiss is not installed" in str(err) and 'pip install "theme-engine[cpu]"' in str(err)
    assert "theme-engine[gpu]" in str(err) and "near-duplicate" in str(err)


def test_require_says_when_an_installed_module_does_not_import(monkeypatch):
    def broken(name):
        raise ImportError("libcudart.so.12: cannot open shared object file")

    monkeypatch.setattr(deps.importlib, "import_module", broken)
    with pytest.raises(deps.MissingDependency, match=r"installed but does not import \(libcudart"):
        deps.require("faiss")


def test_check_runtime_lists_every_missing_module(monkeypatch):
    deps.check_runtime()  # the dev environment has the cpu extra
    monkeypatch.setitem(sys.modules, "faiss", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert len(deps.missing_runtime()) == 2
    with pytest.raises(deps.MissingDependency, match=r"missing runtime dependencies: faiss, onnxruntime\. .*theme-engine\[cpu\]"):
        deps.check_runtime()


def test_the_import_sites_raise_the_typed_error(monkeypatch, tmp_path):
    import numpy as np

    from theme_engine.engine import dedup, partition
    from theme_engine.engine.embedding import Embedder, get_model

    monkeypatch.setitem(sys.modules, "faiss", None)
    x = np.eye(4, dtype=np.float32)
    with pytest.raises(deps.MissingDependency, match="faiss"):
        dedup.range_pairs(x, 0, x, 0, 0.9)
    with pytest.raises(deps.MissingDependency, match="faiss"):
        partition._faiss()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(deps.MissingDependency, match="onnxruntime is not installed; it is needed for the embedding model"):
        Embedder(get_model("all-MiniLM-L6-v2-int8"), tmp_path)


def test_installed_twins_reports_one_distribution_per_module():
    twins = deps.installed_twins()
    assert set(twins) == set(deps.TWINS)
    assert all(len(found) == 1 for found in twins.values()), twins


def test_the_report_pages_files_ship_in_the_package() -> None:
    """report.html is built from engine/assets/report/ (HTML, CSS, JavaScript): a wheel must hold them."""
    from fnmatch import fnmatch

    with PYPROJECT.open("rb") as fh:
        globs = tomllib.load(fh)["tool"]["setuptools"]["package-data"]["theme_engine.engine"]
    engine = PYPROJECT.parent / "engine"
    files = sorted(p.relative_to(engine).as_posix() for p in (engine / "assets" / "report").iterdir())
    assert files == ["assets/report/app.js", "assets/report/page.html", "assets/report/report.css"]
    assert all(any(fnmatch(f, g) for g in globs) for f in files)

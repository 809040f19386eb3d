"""Shared test set-up: hardware markers and a session-scoped local Ray."""

from __future__ import annotations

import os
import tempfile

import pytest


def _has_gpu() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any failure means no usable GPU here
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for a test module (2 CPUs, small object store, private temp dir); modules that
    build their own multi-node cluster do not use it."""
    import ray

    temp = tempfile.mkdtemp(prefix="te-ray-")
    ray.init(
        num_cpus=2,
        object_store_memory=400 * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=temp,
        logging_level="WARNING",
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache dir from a test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    for key in list(os.environ):
        if key.startswith("THEME_ENGINE_"):
            monkeypatch.delenv(key)

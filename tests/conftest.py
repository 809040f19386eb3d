"""Shared test set-up: hardware markers, one local Ray for the modules that ask for it, and the
real-text corpus and settings of the tests that run the whole job (tests/cluster, tests/faults)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from theme_engine.engine.config import RunConfig, load_config


def _has_gpu() -> bool:
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any failure means no usable GPU here
        return False


def _uses_shared_ray(item: pytest.Item) -> bool:
    return "ray_session" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the modules that ask for the shared Ray run first, one after another, so that one Ray
    # serves them all (a start and a stop cost seconds each); every other order is kept
    sharing = {getattr(item, "module", None) for item in items if _uses_shared_ray(item)}
    items.sort(key=lambda item: getattr(item, "module", None) not in sharing)
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _start_ray() -> None:
    import ray

    ray.init(
        num_cpus=2,
        object_store_memory=400 * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=tempfile.mkdtemp(prefix="te-ray-"),
        logging_level="WARNING",
        configure_logging=False,
    )


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (2 CPUs, small object store, private temp dir), shared by the modules that ask
    for it (they run one after another): started when a module asks and none is up, stopped when
    a module that does not ask begins (:func:`_no_shared_ray`) or the session ends. Modules that
    build their own multi-node cluster do not use it."""
    import ray

    if not ray.is_initialized():
        _start_ray()
    yield ray


@pytest.fixture(scope="module", autouse=True)
def _no_shared_ray(request: pytest.FixtureRequest):
    """A module that does not ask for the shared Ray starts without one (it may start its own, or
    test a run that does); the last module's Ray stops with the session."""
    ray = sys.modules.get("ray")  # not imported here: modules that never touch Ray stay without it
    asks = any(_uses_shared_ray(item) and getattr(item, "module", None) is request.module for item in request.session.items)
    if not asks and ray is not None and ray.is_initialized():
        ray.shutdown()
    yield


@pytest.fixture(scope="session", autouse=True)
def _ray_stops_with_the_session():
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache dir from a test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    for key in list(os.environ):
        if key.startswith("THEME_ENGINE_"):
            monkeypatch.delenv(key)


ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo" / "bible-verses.jsonl"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~250 real verses: 40 ASV translations from the demo with their KJV originals, plus others."""
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()]
    asv = [r for r in rows if r["id"].startswith("asv:")][:40]
    originals = {"kjv:" + r["id"].split(":", 1)[1] for r in asv}
    kjv = [r for r in rows if r["id"] in originals]
    others = [r for r in rows if r["id"].startswith("kjv:") and r["id"] not in originals][::9][:170]
    chosen = kjv + others + asv
    path = tmp_path_factory.mktemp("corpus") / "verses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return path


def _make_config(inputs: list[Path], out: Path, cache: Path, **over: object) -> RunConfig:
    values: dict = {"inputs": [str(p) for p in inputs], "out": str(out), "cache": {"dir": str(cache)}}
    values.update(over)
    return load_config(values)


@pytest.fixture(scope="session")
def make_config():
    """``make_config(inputs, out, cache, **sections)`` → a validated RunConfig."""
    return _make_config


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second real local model folder (see :func:`reexport_bundled_model`), mean pooling."""
    base = tmp_path_factory.mktemp("second-model")
    from model_folders import reexport_bundled_model

    return reexport_bundled_model(base / "minilm-reexported", base / "root")


def read_rows(path: Path) -> list[dict]:
    """The records of a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def split_corpus(corpus: Path, tmp: Path, seed: int = 0, share: float = 0.9) -> dict[str, Path]:
    """The test corpus in a seeded order, split ``share`` / the rest (its ASV copies of KJV verses
    fall on both sides): ``base``, ``new``, ``all`` (JSONL files in ``tmp``) and ``tmp``."""
    import numpy as np

    rows = read_rows(corpus)
    rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    cut = int(share * len(rows))
    return {"base": write_rows(tmp / "base.jsonl", rows[:cut]), "new": write_rows(tmp / "new.jsonl", rows[cut:]), "all": write_rows(tmp / "all.jsonl", rows), "tmp": tmp}


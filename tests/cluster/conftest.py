"""Shared data and settings for the tests that run the whole job through Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
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

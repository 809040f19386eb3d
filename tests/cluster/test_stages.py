"""Stages as objects: a stage added to the pipeline runs, is recorded and reused like the built-in
ones without a change to the driver, and a run whose vector stages are all reused opens no shard
actors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from theme_engine.cluster import driver as driver_mod
from theme_engine.cluster.stages import ALWAYS_RUN, PIPELINE, STAGES, RunContext, Stage, base
from theme_engine.cluster.state import atomic_write_json, fingerprint


class ThemeSizes(Stage):
    """An extra stage after label: each theme's share of the kept documents, into OUT."""

    name = "theme_sizes"
    outputs = ("theme_sizes.json",)
    runs = 0

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint(self.name, ctx.fp("label"), ctx.fp("dedup"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        type(self).runs += 1
        themes = ctx.product("label")["arrays"]["themes"]
        kept = ctx.product("dedup")["duplicate_of"] < 0
        sizes = np.bincount(themes[kept], minlength=int(themes.max()) + 1)
        shares = (sizes / sizes.sum()).round(6).tolist()
        ctx.store.save_json(self.name, "shares", shares)
        return {"device": "cpu", "themes": len(shares)}

    def load(self, ctx: RunContext) -> list[float]:
        shares = ctx.store.load_json(self.name, "shares")
        atomic_write_json(ctx.out / "theme_sizes.json", shares)
        return shares


def _with_extra() -> tuple[type[Stage], ...]:
    at = STAGES.index("label") + 1
    return (*PIPELINE[:at], ThemeSizes, *PIPELINE[at:])


def test_an_added_stage_runs_is_recorded_and_reused(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    ThemeSizes.runs = 0
    out = tmp_path / "out"
    cfg = make_config([corpus], out, tmp_path / "cache", kmeans={"k": 3})
    first = driver_mod.Driver(cfg, pipeline=_with_extra()).run()
    m = first.manifest
    assert list(m["stages"]) == [*STAGES[: STAGES.index("label") + 1], "theme_sizes", *STAGES[STAGES.index("label") + 1 :]]
    assert m["stages"]["theme_sizes"]["themes"] == m["themes"] and m["stages"]["theme_sizes"]["seconds"] >= 0
    assert "theme_sizes.json" in m["outputs"]
    shares = json.loads((out / "theme_sizes.json").read_text())
    assert len(shares) == m["themes"] and sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert ThemeSizes.runs == 1

    again = driver_mod.Driver(cfg, pipeline=_with_extra()).run()  # same inputs and settings: reused
    assert again.manifest["stages"]["theme_sizes"]["reused"] is True and ThemeSizes.runs == 1
    assert json.loads((out / "theme_sizes.json").read_text()) == shares

    cfg4 = make_config([corpus], out, tmp_path / "cache", kmeans={"k": 4})  # upstream changed: it runs again
    driver_mod.Driver(cfg4, pipeline=_with_extra()).run()
    assert ThemeSizes.runs == 2
    assert len(json.loads((out / "theme_sizes.json").read_text())) == json.loads((out / "manifest.json").read_text())["themes"]


def test_a_fully_reused_run_opens_no_shard_actors(ray_session, make_config, corpus: Path, tmp_path: Path, monkeypatch) -> None:
    opened: list[int] = []
    real = base.ActorShards

    def counting(*args: Any, **kwargs: Any) -> Any:
        opened.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "ActorShards", counting)
    cfg = make_config([corpus], tmp_path / "out", tmp_path / "cache", kmeans={"k": 3})
    first = driver_mod.run(cfg)
    assert opened == [1]
    second = driver_mod.run(cfg)
    assert opened == [1]  # nothing to compute on the vectors: no actors started
    assert all(second.manifest["stages"][s].get("reused") for s in STAGES if s not in ALWAYS_RUN)
    assert second.themes == first.themes

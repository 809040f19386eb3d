"""Stages as objects: a stage added to the pipeline runs, is recorded and reused like the built-in
ones without a change to the driver, and a run whose vector stages are all reused opens no shard
actors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from theme_engine.cluster.runtime import driver as driver_mod
from theme_engine.cluster.runtime.stages import ALWAYS_RUN, PIPELINE, STAGES, RunContext, Stage, base
from theme_engine.cluster.runtime.state import atomic_write_json, fingerprint


class ThemeSizes(Stage):
    """An extra stage after label: each theme's share of the kept documents, into OUT."""

    name = "theme_sizes"
    outputs = ("theme_sizes.json",)
    runs = 0

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint(self.name, ctx.fp("label"), ctx.fp("dedup"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        type(self).runs += 1
        themes = ctx.product("label").row_themes
        kept = ctx.product("dedup").duplicate_of < 0
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


class NewPerTheme(Stage):
    """An extra update stage after assign: how many new documents each theme took."""

    name = "new_per_theme"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint(self.name, ctx.fp("assign"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        asg = ctx.product("assign")
        new = asg.themes[ctx.grown.n_vectors :]
        counts = np.bincount(new, minlength=len(asg.centroids)).tolist()
        ctx.store.save_json(self.name, "counts", counts)
        return {"device": "cpu", "new": int(sum(counts))}


def test_an_added_stage_runs_in_an_update_too(ray_session, make_config, corpus: Path, tmp_path: Path) -> None:
    """The update is the run's driver over UPDATE_PIPELINE: a stage added to it is run and
    recorded in the update's history like the built-in ones."""
    from theme_engine.cluster.runtime.stages import UPDATE_PIPELINE
    from theme_engine.cluster.runtime.update import UpdateDriver, update_config

    lines = corpus.read_text().splitlines(keepends=True)
    first, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first.write_text("".join(lines[: len(lines) * 9 // 10]))
    rest.write_text("".join(lines[len(lines) * 9 // 10 :]))
    out = tmp_path / "out"
    driver_mod.run(make_config([first], out, tmp_path / "cache", kmeans={"k": 3}))
    at = [s.name for s in UPDATE_PIPELINE].index("assign") + 1
    pipeline = (*UPDATE_PIPELINE[:at], NewPerTheme, *UPDATE_PIPELINE[at:])
    result = UpdateDriver(update_config(out, [rest]), pipeline=pipeline).run()
    stages = result.entry["stages"]
    assert list(stages)[: at + 2] == [*(s.name for s in UPDATE_PIPELINE[:at]), "new_per_theme", UPDATE_PIPELINE[at].name]
    assert stages["new_per_theme"]["device"] == "cpu"
    assert result.entry["read"]["documents"] == len(lines) - len(lines) * 9 // 10


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


def test_a_stage_declares_the_settings_that_decide_its_output_and_its_gpu_use() -> None:
    from theme_engine.cluster.runtime.stages import UPDATE_PIPELINE
    from theme_engine.cluster.runtime.stages.kmeans import KMeans
    from theme_engine.engine.config import load_config

    a = load_config({"kmeans": {"k": 4}})
    b = load_config({"kmeans": {"k": 4, "batch_rows": 1024, "checkpoint_every": 2}})
    c = load_config({"kmeans": {"k": 5}})
    assert KMeans().settings_part(a) == KMeans().settings_part(b)  # memory knobs only
    assert KMeans().settings_part(a) != KMeans().settings_part(c)
    by_name = {s.name: s for s in PIPELINE}
    assert by_name["select_k"]().settings_part(a)["k"] == 4 and "seed" in by_name["select_k"]().settings_part(a)
    assert by_name["read"]().settings_part(a) == by_name["read"]().settings_part(load_config({"read": {"max_bad_examples": 3}}))
    assert [s.name for s in PIPELINE if s.uses_gpu] == ["select_k", "kmeans", "dedup"]
    assert not any(s.uses_gpu for s in UPDATE_PIPELINE)  # an update's stages run on the driver's CPU or Ray's embed actors
    for run_form in PIPELINE:  # an update's form of a stage is decided by the same settings
        for update_form in UPDATE_PIPELINE:
            if update_form.name == run_form.name and update_form.name != "layout":
                assert update_form.settings == run_form.settings, update_form.__name__

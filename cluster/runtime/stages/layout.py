"""layout: the documents' 2-D map (fitted on a seeded sample, the rest placed by their nearest
sample documents; ``engine/layout.py``), with its quality against a PCA baseline."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import ray

from theme_engine.actors.tasks import layout_task

from ..state import fingerprint
from .base import RunContext, Section, Stage


class Layout(Stage):
    name = "layout"
    settings = {"layout": Section("layout", exclude=frozenset({"task_from"}))}  # where it runs changes nothing

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("layout", ctx.fp("embed"), self.settings_part(ctx.cfg))

    def load(self, ctx: RunContext) -> np.ndarray | None:
        """(n, 2) float32 coordinates, one row per embedded document; None when the map is off."""
        if not ctx.cfg.layout.enabled:
            return None
        return ctx.store.load_arrays("layout", "result")["coords"]

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg = ctx.cfg
        if not cfg.layout.enabled:
            return {"device": "none", "skipped": "layout.enabled = false"}
        from theme_engine.engine.layout import fit_layout

        control = ctx.control("layout")
        vectors = ctx.product("embed")
        n = int(vectors.shape[0])
        in_task = n >= cfg.layout.task_from
        if in_task:  # fitted and placed by a Ray task on a worker, which reads the vectors itself
            node_cpus = max((float(nd["Resources"].get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")), default=1.0)
            threads = max(1, int(node_cpus))
            submit = lambda: layout_task.options(num_cpus=threads).remote(vectors, cfg.layout.sample_size, cfg.seed, threads)  # noqa: E731
            layout = ctx.gather({"layout": submit}, control)["layout"]
        else:
            layout = fit_layout(
                vectors,
                sample_size=cfg.layout.sample_size,
                seed=cfg.seed,
                threads=max(1, min(os.cpu_count() or 1, cfg.ray.num_cpus or os.cpu_count() or 1)),
                progress=lambda done, total: control.report(done, total),
                check=control.check,
            )
        ctx.store.save_arrays("layout", "result", coords=np.asarray(layout.coords, dtype=np.float32))
        return {"device": "cpu", "documents": n, "built_by": "task" if in_task else "driver", **layout.info}


class UpdateLayout(Stage):
    """An update's form of the stage: the new documents on the run's map, each at the weighted
    mean of its nearest documents of the map's fitted sample (as a run places the documents
    outside its sample); a new theme's documents as one group of their own."""

    name = "layout"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-layout", ctx.fp("embed"), ctx.fp("assign"), ctx.grown.token)

    def load(self, ctx: RunContext) -> np.ndarray | None:
        return ctx.store.load_arrays("layout", "result")["coords"] if ctx.store.has("layout", "result") else None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        grown = ctx.grown
        if grown.layout_sample is None or "coords" not in grown.arrays:
            return {"device": "none", "skipped": "the run has no map"}
        from theme_engine.engine.layout import place, place_groups  # noqa: PLC0415

        X = np.asarray(ctx.product("embed"), dtype=np.float32)
        sample = grown.layout_sample
        xy = place(grown.vectors(sample), grown.arrays["coords"][sample], X) if len(X) else np.zeros((0, 2), np.float32)
        # a new theme's documents would each sit beside the old document nearest them, scattered
        # over the map: they get a place of their own, as one group
        themes_new = ctx.product("assign").themes[grown.n_vectors :]
        fresh = themes_new >= len(grown.arrays["centroids"])
        if fresh.any():
            xy[fresh] = place_groups(grown.arrays["coords"], X[fresh], themes_new[fresh], xy[fresh])
        ctx.store.save_arrays("layout", "result", coords=np.concatenate([grown.arrays["coords"], xy]).astype(np.float32))
        return {"device": "cpu", "placed": int(len(X)), "sample_size": int(len(sample)), "new_theme_documents": int(fresh.sum())}

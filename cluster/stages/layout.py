"""layout: the documents' 2-D map (fitted on a seeded sample, the rest placed by their nearest
sample documents; ``engine/layout.py``), with its quality against a PCA baseline."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..state import fingerprint
from .base import RunContext, Stage


class Layout(Stage):
    name = "layout"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("layout", ctx.fp("embed"), ctx.cfg.stage_fingerprint_part("layout"))

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
        layout = fit_layout(
            vectors,
            sample_size=cfg.layout.sample_size,
            seed=cfg.seed,
            threads=max(1, min(os.cpu_count() or 1, cfg.ray.num_cpus or os.cpu_count() or 1)),
            progress=lambda done, total: control.report(done, total),
            check=control.check,
        )
        ctx.store.save_arrays("layout", "result", coords=np.asarray(layout.coords, dtype=np.float32))
        return {"device": "cpu", "documents": int(vectors.shape[0]), **layout.info}

"""write: the run's outputs in its new generation (published into ``--out`` at the end) — ``themes.json`` (the themes and their hierarchy),
``documents.parquet`` (with the map's ``x``, ``y``), ``duplicates.parquet`` and ``model.npz``
(each written to a temporary file, then renamed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from theme_engine.engine.embedding import model_ref
from theme_engine.engine.output import MODEL_FILE, write_model, write_outputs

from ..state import fingerprint
from .base import RunContext, Stage
from .grown import GROWN_FILE
from .read import Documents


class Write(Stage):
    name = "write"
    outputs = ("themes.json", "documents.parquet", "duplicates.parquet", MODEL_FILE)
    always_runs = True  # cheap, and keeps the outputs in step with the manifest

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("write", ctx.fp("label"), ctx.fp("dedup"), ctx.fp("layout"))

    def load(self, ctx: RunContext) -> dict[str, int]:
        """The documents' counts (by status, duplicates) for the manifest."""
        return self.counts

    def run(self, ctx: RunContext) -> dict[str, Any]:
        docs, label = ctx.product("read"), ctx.product("label")
        self.counts = counts = write_outputs(
            ctx.result_dir,
            docs.corpus,
            docs.unique,
            label.row_themes,
            label.distances,
            ctx.product("dedup").arrays,
            label.themes,
            hierarchy=label.hierarchy,
            coords=ctx.product("layout"),
        )
        write_model(ctx.result_dir, label.centroids, None if docs.vector_input else model_ref(ctx.cfg.embed, ctx.records["embed"].get("model", "")))
        return {"device": "cpu", **counts}


class UpdateWrite(Stage):
    """An update's form of the stage: the grown result's outputs, written into its new generation
    (published whole by the update's commit), and the corpus-wide arrays the next update reads
    (``grown.npz``)."""

    name = "write"
    always_runs = True

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-write", ctx.fp("label"), ctx.fp("layout"))

    def load(self, ctx: RunContext) -> dict[str, int]:
        return self.counts

    def run(self, ctx: RunContext) -> dict[str, Any]:
        grown = ctx.grown
        docs: Documents = ctx.product("read")
        asg, dd, label = ctx.product("assign"), ctx.product("dedup"), ctx.product("label")
        staging = ctx.result_dir  # the grown result's generation, published at the commit
        corpus = grown.corpus_with(docs.corpus)
        unique = grown.unique_with(docs.corpus)
        self.counts = write_outputs(
            staging, corpus, unique, asg.themes, asg.distances, dd.arrays, label.themes, hierarchy=label.hierarchy, coords=ctx.product("layout"),
            far_from_theme=asg.far_from_theme,
        )  # fmt: skip
        # the run's bad records are listed in its manifest only up to read.max_bad_examples: count them from there
        self.counts["bad_records"] = int(grown.manifest.get("bad_records", {}).get("count", 0)) + len(docs.corpus.bad)
        write_model(staging, asg.centroids, model_ref(ctx.cfg.embed, ctx.records["embed"].get("model", "")))
        moved = np.flatnonzero(asg.themes[: grown.n_vectors] != grown.arrays["themes"])  # a refit's: re-indexed
        grown_arrays = {
            "themes": asg.themes, "distances": asg.distances, "centroids": asg.centroids, "moved": moved,
            "far_from_theme": asg.far_from_theme,
            **dd.arrays,
            **({"coords": ctx.product("layout")} if ctx.product("layout") is not None else {}),
        }  # fmt: skip
        tmp = ctx.store.root / "grown.tmp.npz"
        np.savez(tmp, **grown_arrays)
        os.replace(tmp, ctx.store.root / GROWN_FILE)
        return {"device": "cpu", **self.counts}

"""write: the run's outputs in its new generation (published into ``--out`` at the end) — ``themes.json`` (the themes and their hierarchy),
``documents.parquet`` (with the map's ``x``, ``y``), ``duplicates.parquet`` and ``model.npz``
(each written to a temporary file, then renamed)."""

from __future__ import annotations

from typing import Any

from theme_engine.engine.embedding import model_ref
from theme_engine.engine.output import MODEL_FILE, write_model, write_outputs

from ..state import fingerprint
from .base import RunContext, Stage


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
        lb = label["arrays"]
        self.counts = counts = write_outputs(
            ctx.result_dir,
            docs.corpus,
            docs.unique,
            lb["themes"],
            lb["distances"],
            ctx.product("dedup"),
            label["themes"],
            hierarchy=label["hierarchy"],
            coords=ctx.product("layout"),
        )
        write_model(ctx.result_dir, lb["centroids"], None if docs.vector_input else model_ref(ctx.cfg.embed, ctx.records["embed"].get("model", "")))
        return {"device": "cpu", **counts}

"""write: the run's outputs in its new generation (published into ``--out`` at the end) — ``themes.json`` (the themes and their hierarchy),
``documents.parquet`` (with the map's ``x``, ``y``), ``duplicates.parquet`` (each one file, or a
folder of parts written by Ray tasks: ``output.form``) and ``model.npz`` (each file written to a
temporary name, then renamed)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from theme_engine.engine.embedding import model_ref
from theme_engine.actors.tasks import write_part_task
from theme_engine.engine.corpus import Corpus
from theme_engine.engine.docstore import PART_FILE, DocChain, DocStore
from theme_engine.engine.output import (
    MODEL_FILE,
    document_columns,
    output_counts,
    save_columns,
    write_document_files,
    write_model,
    write_parquet,
    write_themes,
)

from .. import ray_session
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
        corpus, unique = docs.corpus, docs.unique
        cols = document_columns(corpus.exact_of, unique, label.row_themes, label.distances, ctx.product("dedup").arrays, ctx.product("layout"))
        form = write_documents(ctx, ctx.docs(), corpus, cols, ctx.result_dir)
        write_themes(ctx.result_dir, label.themes, label.hierarchy)
        self.counts = output_counts(cols, corpus.status, len(unique), len(corpus.bad))
        write_model(ctx.result_dir, label.centroids, None if docs.vector_input else model_ref(ctx.cfg.embed, ctx.records["embed"].get("model", "")))
        return {"device": "cpu", "form": form, **self.counts}


def write_documents(ctx: RunContext, store: DocStore | DocChain, corpus: Corpus, cols: dict[str, np.ndarray], staging: Path) -> str:
    """``documents.parquet`` and ``duplicates.parquet`` into ``staging``, in the form
    ``output.form`` asks for: single files written here, or folders of parts written by Ray tasks
    (one per part of the stored documents ``store``, or per ``output.part_rows`` of them), each
    reading its documents from ``store`` and its columns from the files this leaves in the stage's
    folder; only the ids of the documents others duplicate go from here to the tasks. Returns the
    form written (``file`` or ``parts``)."""
    oc, n = ctx.cfg.output, len(corpus.ids)
    if oc.form == "file" or (oc.form == "auto" and n < oc.parts_from):
        write_document_files(staging, cols, corpus)
        return "file"
    control = ctx.control("write")
    work = ctx.store.dir("write")
    columns = work / "columns"
    shutil.rmtree(columns, ignore_errors=True)
    save_columns(columns, cols)
    targets = work / "targets.parquet"
    rows = np.unique(cols["dup_of"][cols["dup_of"] >= 0])
    write_parquet(pa.table({"row": pa.array(rows, pa.int64()), "id": pa.array(corpus.ids.take(rows), pa.string())}), targets)
    bounds = _part_bounds(store, oc.part_rows)
    for name in ("documents.parquet", "duplicates.parquet"):
        (staging / name).mkdir()

    def submit(i: int, a: int, b: int) -> Any:
        out = [staging / name / PART_FILE.format(i) for name in ("documents.parquet", "duplicates.parquet")]
        return write_part_task.remote(store, columns, targets, a, b, *out)

    ctx.gather({i: partial(submit, i, a, b) for i, (a, b) in enumerate(bounds)}, control, window=ray_session.task_window())
    shutil.rmtree(columns, ignore_errors=True)
    return "parts"


def _part_bounds(store: DocStore | DocChain, part_rows: int) -> list[tuple[int, int]]:
    """Row ranges of the output parts: each part of the stored documents (a file of them is cut
    into runs of ``part_rows``)."""
    stores = store.stores if isinstance(store, DocChain) else [store]
    bounds, base = [], 0
    for st in stores:
        for f in st.files:
            rows = pq.ParquetFile(f).metadata.num_rows
            step = rows if st.path.is_dir() else part_rows
            bounds.extend((a, min(a + step, base + rows)) for a in range(base, base + rows, max(step, 1)))
            base += rows
    return bounds or [(0, 0)]


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
        cols = document_columns(corpus.exact_of, unique, asg.themes, asg.distances, dd.arrays, ctx.product("layout"), asg.far_from_theme)
        form = write_documents(ctx, grown.chain_with(ctx.docs().path), corpus, cols, staging)
        write_themes(staging, label.themes, label.hierarchy)
        self.counts = output_counts(cols, corpus.status, len(unique), len(corpus.bad))
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
        return {"device": "cpu", "form": form, **self.counts}

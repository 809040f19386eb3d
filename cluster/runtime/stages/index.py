"""index: the run's vectors into Qdrant (Qdrant Edge in ``OUT/index``, or a collection on the
``--qdrant-url`` server), with each document's theme, duplicate status and an excerpt as payload,
for ``theme-engine search`` and ``Result.search``."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from theme_engine.engine.config import redact_url
from theme_engine.actors.tasks import build_index_task
from theme_engine.engine.index import INDEX_DIR, IndexUnavailable, build_run_index, open_index, run_payloads

from ..state import OutLock, OutputBusy, atomic_write_json, committed_updates, fingerprint, result_file, save_committed_updates
from .base import RunContext, RunError, Stage
from .grown import Grown, load_grown


class Index(Stage):
    name = "index"
    outputs = (INDEX_DIR,)  # the Qdrant Edge shard (absent when the index is on a server)

    def fingerprint(self, ctx: RunContext) -> str:
        cfg = ctx.cfg
        where = cfg.cache.qdrant_url or "edge"
        return fingerprint(
            "index", ctx.fp("label"), ctx.fp("dedup"), cfg.index.enabled, where, cfg.report.excerpt_chars, cfg.index.hnsw_min_points
        )

    def verify(self, ctx: RunContext) -> str | None:
        record = ctx.store.finished(self.name, ctx.fp(self.name)) or {}
        if record.get("backend") == "edge" and not (ctx.out / INDEX_DIR).is_dir():
            return f"{ctx.out / INDEX_DIR} is missing"
        return None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg = ctx.cfg
        if not cfg.index.enabled:
            return {"device": "none", "skipped": "index.enabled = false"}
        control = ctx.control("index")
        docs, vectors = ctx.product("read"), ctx.product("embed")
        url = cfg.cache.qdrant_url
        collection = f"theme-engine-run-{ctx.fp('label')[:16]}" if url else None
        n = len(docs.unique)
        exact = not url and n < cfg.index.hnsw_min_points
        chars = cfg.report.excerpt_chars
        args = (ctx.out, url, collection, exact, chars, ctx.docs(), vectors, ctx.store.dir("label") / "result.npz", ctx.store.dir("dedup") / "result.npz")
        in_task = n >= cfg.index.task_from
        try:
            if in_task:  # built by a Ray task beside the data: nothing of it passes through the driver
                points = ctx.gather({"index": lambda: build_index_task.remote(*args)}, control)["index"]
            else:
                points = build_run_index(*args, progress=control.report, check=control.check)
        except IndexUnavailable as exc:
            raise RunError(str(exc)) from None
        return {
            "device": "cpu",
            "backend": "server" if url else "edge",
            **({"url": redact_url(url), "collection": collection} if url else {"folder": INDEX_DIR}),
            "points": points,
            "search": "server" if url else ("exact" if exact else "hnsw"),
            "excerpt_chars": chars,
            "built_by": "task" if in_task else "driver",
        }


def grow_index(out: Path, grown: Grown, qdrant_url: str | None, whole: bool = False) -> dict[str, Any]:
    """After an update's commit: its new documents, and the documents whose theme it changed (a
    refit), upserted into the run's search index (Qdrant Edge in OUT, or the server collection)
    from the committed state. Idempotent: a stop before it finishes leaves the index without
    them (never ahead of the outputs), and the next update does it again first. ``whole``: the
    index made afresh from every document of the result (``theme-engine index``)."""
    record = grown.manifest.get("stages", {}).get("index") or {}
    A = grown.arrays
    first = 0 if whole else grown.n_vectors - len(grown.vector_blocks()[-1])  # the last part's embedded rows
    rows = np.union1d(A["moved"] if "moved" in A and not whole else np.zeros(0, np.int64), np.arange(first, grown.n_vectors))
    url = None
    if record.get("backend") == "server":
        url = qdrant_url or os.environ.get("QDRANT_URL")
        if not url:
            raise RunError(f"the run's index is on a Qdrant server (collection {record['collection']}): pass --qdrant-url")
    t0 = time.perf_counter()
    try:
        if whole:
            if url is None:
                shutil.rmtree(Path(out) / INDEX_DIR, ignore_errors=True)
            dim = int(grown.vector_blocks()[0].shape[1])
            index = open_index(out, url, record.get("collection"), dim=dim, create=True, exact=record.get("search") == "exact")
        else:
            index = open_index(out, url, record.get("collection"))
    except IndexUnavailable as exc:
        raise RunError(str(exc)) from None
    unique, ids, chars = grown.unique, grown.corpus.ids, int(record.get("excerpt_chars", 300))
    try:
        for doc_rows, texts in grown.docs.iter_texts(unique[rows]):
            pos = np.searchsorted(unique, doc_rows)
            payloads = run_payloads(doc_rows, pos, texts, ids, unique, A["themes"], A["duplicate_of"], chars)
            index.add(doc_rows, grown.vectors(pos), payloads)
        index.finish()
        points = index.count()
    finally:
        index.close()
    return {"device": "cpu", "seconds": round(time.perf_counter() - t0, 3), "backend": record.get("backend"), "upserted": int(len(rows)), "points": points}


def rebuild_index(out: Path, qdrant_url: str | None = None) -> dict[str, Any]:
    """The search index of the result in ``out`` made again from its stored vectors and outputs
    (the run's and every update's), under the folder's lock; the published manifest's index
    record says so. What to run when the index is damaged or partly deleted, grown folder or not."""
    out = Path(out)
    try:
        lock = OutLock(out, advice="then run theme-engine index again").acquire()
    except OutputBusy as exc:
        raise RunError(str(exc)) from None
    try:
        grown = load_grown(out)
        if (grown.manifest.get("stages", {}).get("index") or {}).get("points") is None:
            raise RunError(f"the run in {out} has no search index (index.enabled was false): run theme-engine run again with it on")
        record = grow_index(out, grown, qdrant_url, whole=True)
        if record["points"] != grown.n_vectors:
            raise RunError(f"the rebuilt index of {out} holds {record['points']} documents, the result {grown.n_vectors}")
        current = committed_updates(out)
        if current and current["updates"][-1].get("index") == "pending":
            current["updates"][-1]["index"] = "done"
            save_committed_updates(out, current)
        manifest = json.loads(result_file(out, "manifest.json").read_text())
        manifest["stages"]["index"] = {**manifest["stages"]["index"], "points": record["points"], "rebuilt": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(result_file(out, "manifest.json"), manifest)
        return record
    finally:
        lock.release()

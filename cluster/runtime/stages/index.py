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
from theme_engine.engine.docstore import DOC_BATCH
from theme_engine.engine.index import INDEX_DIR, IndexUnavailable, open_index

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
        docs, vectors, dd = ctx.product("read"), ctx.product("embed"), ctx.product("dedup")
        themes = ctx.product("label").row_themes
        unique = docs.unique
        url = cfg.cache.qdrant_url
        collection = f"theme-engine-run-{ctx.fp('label')[:16]}" if url else None
        n = len(unique)
        exact = not url and n < cfg.index.hnsw_min_points
        try:
            index = open_index(ctx.out, url, collection, dim=int(vectors.shape[1]), create=True, exact=exact)
        except IndexUnavailable as exc:
            raise RunError(str(exc)) from None
        chars = cfg.report.excerpt_chars
        try:
            control.report(0, n)
            done = 0
            for rows, texts in ctx.docs().iter_texts(unique):
                pos = np.searchsorted(unique, rows)  # positions in unique (sorted), the vectors' rows
                payloads = _payloads(rows, pos, texts, docs.corpus.ids, unique, themes, dd.duplicate_of, chars)
                for a in range(0, len(rows), DOC_BATCH // 16):  # a few thousand points per stop point
                    b = a + DOC_BATCH // 16
                    index.add(rows[a:b], np.asarray(vectors[pos[a:b]], dtype=np.float32), payloads[a:b])
                    done += len(rows[a:b])
                    control.report(done, n)
                    control.check()
            index.finish()
            points = index.count()
        finally:
            index.close()
        return {
            "device": "cpu",
            "backend": "server" if url else "edge",
            **({"url": redact_url(url), "collection": collection} if url else {"folder": INDEX_DIR}),
            "points": points,
            "search": "server" if url else ("exact" if exact else "hnsw"),
            "excerpt_chars": chars,
        }


def _payloads(
    rows: np.ndarray, pos: np.ndarray, texts: list[str], ids: list[str], unique: np.ndarray, themes: np.ndarray, duplicate_of: np.ndarray, chars: int
) -> list[dict[str, Any]]:
    """The index's payload of each document (corpus rows ``rows``, embedded positions ``pos``):
    its row, id, theme, whether it is kept, the row of the document it duplicates, an excerpt."""
    dup = duplicate_of[pos]
    return [
        {"row": int(r), "id": ids[r], "theme": int(themes[p]), "kept": int(d < 0), "duplicate_of": int(unique[d]) if d >= 0 else -1, "text": t[:chars]}
        for r, p, d, t in zip(rows.tolist(), pos.tolist(), dup.tolist(), texts)
    ]


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
            payloads = _payloads(doc_rows, pos, texts, ids, unique, A["themes"], A["duplicate_of"], chars)
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

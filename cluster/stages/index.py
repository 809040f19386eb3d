"""index: the run's vectors into Qdrant (Qdrant Edge in ``OUT/index``, or a collection on the
``--qdrant-url`` server), with each document's theme, duplicate status and an excerpt as payload,
for ``theme-engine search`` and ``Result.search``."""

from __future__ import annotations

from typing import Any

import numpy as np

from theme_engine.engine.config import redact_url
from theme_engine.engine.docstore import DOC_BATCH
from theme_engine.engine.index import INDEX_DIR, IndexUnavailable, open_index

from ..state import fingerprint
from .base import RunContext, RunError, Stage


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
        themes = ctx.product("label")["arrays"]["themes"]
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
                dup = dd["duplicate_of"][pos]
                payloads = [
                    {
                        "row": int(r),
                        "id": docs.corpus.ids[r],
                        "theme": int(themes[p]),
                        "kept": int(d < 0),
                        "duplicate_of": int(unique[d]) if d >= 0 else -1,
                        "text": t[:chars],
                    }
                    for r, p, d, t in zip(rows.tolist(), pos.tolist(), dup.tolist(), texts)
                ]
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

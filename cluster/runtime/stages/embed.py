"""embed: a vector per unique document into ``vectors.npy`` — cache hits first, the misses by
embedding actors through Ray Data; precomputed vectors (read's ``vectors.npy``) pass through."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import ray

from theme_engine.actors.embed import EmbedBatch
from theme_engine.engine.boilerplate import Boilerplate, corpus_boilerplate, sample_rows
from theme_engine.engine.cache import CacheUnavailable, cache_key, default_cache_dir, open_cache
from theme_engine.engine.config import redact_url
from theme_engine.engine.embedding import ModelSpec, ModelUnavailable, configured_model
from theme_engine.engine.events import Interrupted, StageControl
from theme_engine.engine.vectors import VectorParts, check_file, check_stored, invalid_rows
from theme_engine.engine.windows import TextWindows

from .. import ray_session
from ..state import StageStore, fingerprint
from .base import RunContext, RunError, Stage
from .read import Documents, Read

log = logging.getLogger(__name__)

EMBED_WINDOW = 65_536  # texts to embed sorted by length together


class Embed(Stage):
    name = "embed"

    def manifest_part(self, record: dict[str, Any]) -> dict[str, Any]:
        if record.get("reused"):
            return {"cache": {"hits": 0, "misses": 0, "note": "embed stage reused from this output directory"}}
        return {"cache": record.get("cache", {"hits": 0, "misses": 0})}

    def summary(self, manifest: dict[str, Any]) -> list[str]:
        lt = manifest.get("stages", {}).get("embed", {}).get("long_texts") or {}
        if not lt.get("over_window"):
            return []
        bp = lt.get("boilerplate") or {}
        how = (
            f"embedded as {lt['windows']} windows of up to {lt['window_tokens']} tokens, pooled"
            + (f"; {lt['capped']} capped at {lt['max_windows']} windows" if lt.get("capped") else "")
            + (f"; {bp['documents']} read without the boilerplate the corpus repeats ({bp['words_left_out']} words)" if bp.get("documents") else "")
            if lt.get("mode") == "windows"
            else "truncated to the window (embed.long = truncate)"
        )
        return [f"{lt['over_window']} documents longer than the model's window: {how}"]

    def fingerprint(self, ctx: RunContext) -> str:
        self.docs: Documents = ctx.product("read")
        if self.docs.vector_input:
            self.spec, self.windows = None, None
            return fingerprint("embed", ctx.fp("read"), "precomputed")
        ec = ctx.cfg.embed
        try:
            self.spec = configured_model(ec, ctx.cfg.cache.dir or default_cache_dir())
            model_id = self.spec.model_id
            self.windows = TextWindows.for_model(self.spec, ec.window_overlap, ec.max_windows) if ec.long == "windows" else None
        except (ModelUnavailable, ValueError) as exc:
            raise RunError(f"embed: {exc}") from None
        long = f"{self.windows.recipe};boilerplate={ec.boilerplate_share},{ec.boilerplate_min_docs}" if self.windows is not None else "truncate"
        return fingerprint("embed", ctx.fp("read"), model_id, long)

    @staticmethod
    def vectors_path(store: StageStore) -> Path:
        """``vectors.npy``: a vector per embedded document, in the corpus's order."""
        return store.dir("embed") / "vectors.npy"

    @staticmethod
    def boilerplate_path(store: StageStore) -> Path:
        """``boilerplate.npy``: the run's boilerplate n-grams, which its updates read with."""
        return store.dir("embed") / "boilerplate.npy"

    def _path(self, ctx: RunContext) -> Path:
        return Read.vectors_path(ctx.store) if self.spec is None else self.vectors_path(ctx.store)

    def verify(self, ctx: RunContext) -> str | None:
        if self.spec is None:
            return None  # read verified its vectors
        return check_file(self._path(ctx), len(self.docs.unique), self.spec.dim)

    def load(self, ctx: RunContext) -> VectorParts:
        """The vectors, read a range or a selection at a time: the driver never holds them whole
        (the shard actors read their own rows)."""
        return VectorParts.open(self._path(ctx))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        if self.spec is None:
            return {"device": "none", "skipped": "precomputed vectors", "documents": int(len(self.docs.unique))}
        return self._embed(ctx, self.spec)

    def _embed(self, ctx: RunContext, spec: ModelSpec) -> dict[str, Any]:
        """Vectors of the unique documents into ``vectors.npy`` (written in place, never held whole):
        cache hits first, streamed from the stored documents; the misses go to embedding actors."""
        cfg = ctx.cfg
        control = ctx.control("embed")
        corpus, unique = self.docs.corpus, self.docs.unique
        model_id = spec.model_id
        n = len(unique)
        position = np.full(len(corpus.ids), -1, dtype=np.int64)
        position[unique] = np.arange(n)
        path = self.vectors_path(ctx.store)
        tmp = path.with_name("vectors.tmp.npy")
        vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, spec.dim))
        block_rows = cfg.embed.batch_size * 4  # one block is one stop point and one cache write
        todo: list[Any] = []
        cache = None
        if cfg.cache.enabled:
            try:
                cache = open_cache(spec.dim, cfg.cache.dir, cfg.cache.qdrant_url, cfg.cache.collection)
            except CacheUnavailable as exc:
                raise RunError(str(exc)) from None
        self.actor_peaks: dict[int, int] = {}  # embedding actor pid -> peak resident bytes seen
        self.long_seen = {"tokens": 0, "long": 0, "windows": 0, "capped": 0, "stripped": 0, "stripped_words": 0, "seconds": 0.0}
        self.boilerplate = self._boilerplate(ctx) if self.windows is not None else Boilerplate()
        try:
            n_hits = 0
            window: list[tuple[int, str, str]] = []
            control.report(0, n)
            for rows, texts in ctx.docs().iter_texts(unique):
                pos = position[rows]
                keys = [cache_key(self._key_model(model_id, t), t) for t in texts]
                found = np.zeros(len(keys), dtype=bool)
                if cache is not None:
                    found, hits = cache.get(keys)
                    vectors[pos[found]] = hits
                n_hits += int(found.sum())
                window.extend((int(pos[i]), keys[i], texts[i]) for i in np.flatnonzero(~found))
                if len(window) >= EMBED_WINDOW:
                    todo.extend(_todo_blocks(window, block_rows))
                    window = []
                control.report(n_hits, n)
                control.check()
            todo.extend(_todo_blocks(window, block_rows))
            n_missing = n - n_hits
            log.info("embed: %d cache hits, %d to embed", n_hits, n_missing)
            if cache is not None and cache.invalid:
                where = cfg.cache.qdrant_url and redact_url(cfg.cache.qdrant_url) or getattr(cache, "folder", "the cache")
                log.warning(
                    "embed: %d cached vectors in %s failed validation (not finite, not unit length or of another dimension): "
                    "they are embedded again and replaced in the cache",
                    cache.invalid,
                    where,
                )
            device, fallbacks = "cpu", []
            self.pool: dict[str, Any] = {}
            if n_missing:

                def sources(pos: np.ndarray) -> list[str]:  # file:line of embedded positions, for messages
                    return [corpus.sources[unique[i]] for i in pos]

                device, fallbacks = self._embed_missing(ctx, todo, vectors, cache, spec, control, n_hits, n, sources)
            if cache is not None:
                cache.flush()
        finally:
            if cache is not None:
                cache.close()
        vectors.flush()
        problem = check_stored(vectors, n, spec.dim)
        del vectors
        if problem is not None:  # every row was checked as it came in: a row never written is left
            raise RunError(f"embed: the stage's vectors failed validation ({problem}); run the same command again")
        os.replace(tmp, path)
        invalid = cache.invalid if cache is not None else 0
        return {
            "long_texts": self._long_record(ctx.cfg.embed, spec),
            "device": device,
            **({"fallbacks": fallbacks} if fallbacks else {}),
            "documents": n,
            "embedded": n_missing,
            "actor_peak_rss_bytes": sorted(self.actor_peaks.values(), reverse=True),
            "cache": {"hits": n_hits, "misses": n_missing, "invalid": invalid, "enabled": cfg.cache.enabled},
            "model": model_id,
            "model_info": spec.describe(),
            **({"pool": self.pool} if self.pool else {}),
        }

    def _boilerplate(self, ctx: RunContext) -> Boilerplate:
        """The corpus's boilerplate (``engine.boilerplate``), found in an evenly spaced sample of
        its documents and kept in the stage's folder for the updates of this run."""
        ec, unique = ctx.cfg.embed, self.docs.unique
        sample: list[str] = []
        if ec.boilerplate_share > 0:
            for _, texts in ctx.docs().iter_texts(unique[sample_rows(len(unique))]):
                sample.extend(texts)
        found = corpus_boilerplate(sample, self.windows, ec.boilerplate_share, ec.boilerplate_min_docs)
        np.save(self.boilerplate_path(ctx.store), found.hashes)
        if found:
            log.info("embed: %d boilerplate 8-grams in the long texts of a %d-document sample", len(found.hashes), len(sample))
        return found

    def _key_model(self, model_id: str, text: str) -> str:
        """What a text's cache key holds beside its text: the model, and for a text that may be
        longer than the window, the windows' recipe and the boilerplate left out of it (a pooled
        vector is never taken for a truncated one, and a text within the window keeps its key)."""
        if self.windows is not None and self.windows.may_be_long(text):
            return f"{model_id}|{self.windows.recipe}" + (f";boilerplate={self.boilerplate.digest}" if self.boilerplate else "")
        return model_id

    def _long_record(self, ec: Any, spec: ModelSpec) -> dict[str, Any]:
        """The stage record's account of long texts among those embedded in this run."""
        seen = self.long_seen
        bp = {"ngrams": len(self.boilerplate.hashes), "share": ec.boilerplate_share, "min_docs": ec.boilerplate_min_docs}
        return {
            "mode": ec.long,
            "model_max_tokens": spec.max_tokens,
            **({"window_tokens": self.windows.budget, "overlap": self.windows.overlap, "max_windows": self.windows.max_windows} if self.windows else {}),
            "over_window": seen["long"],
            **({"windows": seen["windows"], "capped": seen["capped"]} if self.windows else {}),
            **({"boilerplate": {**bp, "documents": seen["stripped"], "words_left_out": seen["stripped_words"]}} if self.windows else {}),
            "tokens": seen["tokens"],
            "tokens_per_second": round(seen["tokens"] / seen["seconds"], 1) if seen["seconds"] > 0 else None,
        }

    def _embed_missing(
        self,
        ctx: RunContext,
        todo: list[Any],
        vectors: np.ndarray,
        cache: Any,
        spec: ModelSpec,
        control: StageControl,
        done: int,
        total: int,
        sources: Callable[[np.ndarray], list[str]],
    ) -> tuple[str, list[dict[str, Any]]]:
        cfg = ctx.cfg
        ctx.ensure_gpus(("embed",), control)
        plan = ray_session.plan(total - done, cfg.embed, device=cfg.device, max_embed_actors=cfg.ray.max_embed_actors)
        served: set[str] = set()
        fell_back: dict[str, set[int]] = {}  # reason -> embedding actors (pids) that fell back for it
        root = str(cfg.cache.dir or default_cache_dir())
        windows = (cfg.embed.window_overlap, cfg.embed.max_windows) if cfg.embed.long == "windows" else None
        bp = self.boilerplate or None
        batches = (
            _in_driver(todo, spec, root, plan.embed_threads, cfg, windows, bp)
            if plan.embed_in_driver
            else _through_actors(todo, spec, root, plan, cfg, windows, bp)
        )
        timing: dict[str, Any] = {"started": time.time(), "first": None, "last": None, "ready": {}, "load": {}}
        seen = self.long_seen
        try:
            for batch in batches:
                seen["tokens"] += int(np.sum(batch["tokens"]))
                seen["long"] += int(np.count_nonzero(batch["windows"]))
                seen["windows"] += int(np.sum(batch["windows"]))
                seen["capped"] += int(np.count_nonzero(batch["capped"]))
                seen["stripped"] += int(np.count_nonzero(batch["boilerplate_words"]))
                seen["stripped_words"] += int(np.sum(batch["boilerplate_words"]))
                seen["seconds"] = time.time() - timing["started"]
                timing["last"] = time.time()
                timing["first"] = timing["first"] or timing["last"]
                for pid, ready, load in zip(batch["pid"], batch["ready_at"], batch["load_seconds"]):
                    timing["ready"][int(pid)], timing["load"][int(pid)] = float(ready), float(load)
                for pid in np.unique(batch["pid"]):
                    rss = int(batch["peak_rss"][batch["pid"] == pid].max())
                    self.actor_peaks[int(pid)] = max(self.actor_peaks.get(int(pid), 0), rss)
                served.update(str(d) for d in np.unique(batch["device"]))
                for pid, reason in zip(batch["pid"], batch["fallback"]):
                    if str(reason):
                        fell_back.setdefault(str(reason), set()).add(int(pid))
                rows = np.asarray(batch["row"], dtype=np.int64)
                vecs = np.stack(batch["vector"]).astype(np.float32, copy=False) if len(batch["vector"]) else np.zeros((0, spec.dim), np.float32)
                bad = invalid_rows(vecs, spec.dim)
                if bad.any():
                    where = ", ".join(sources(rows[bad][:3]))
                    raise RunError(
                        f"embed: the model returned {int(bad.sum())} vectors that are not finite or not of unit length "
                        f"(e.g. {where}); those documents are not cached. Check the model folder with theme-engine doctor"
                    )
                vectors[rows] = vecs
                if cache is not None:
                    cache.put([str(k) for k in batch["key"]], vecs)
                done += len(rows)
                control.report(done, total)
                control.check()
        except Interrupted:
            log.warning("embed: stopped after %d of %d documents; the embedded ones are cached", done, total)
            raise
        fallbacks = [{"stage": "embed", "reason": r, "count": len(pids)} for r, pids in sorted(fell_back.items())]
        self.pool = {
            "in_driver": plan.embed_in_driver,
            "actors": 0 if plan.embed_in_driver else len(timing["ready"]),
            "threads_per_actor": plan.embed_threads,
            "cpus_per_actor": plan.embed_resources.cpus,
            # from the stage's start: the first actor's model loaded, the first and the last batch back
            "first_actor_ready_seconds": round(min(timing["ready"].values()) - timing["started"], 3) if timing["ready"] else None,
            "actor_load_seconds": round(max(timing["load"].values()), 3) if timing["load"] else None,
            "first_batch_seconds": round(timing["first"] - timing["started"], 3) if timing["first"] else None,
            "first_to_last_batch_seconds": round(timing["last"] - timing["first"], 3) if timing["first"] else None,
        }
        return ",".join(sorted(served)) or "cpu", fallbacks


class UpdateEmbed(Embed):
    """An update's form of the stage: the new documents' vectors (the cache serves repeats), with
    the run's model and boilerplate; none when every new document is an exact duplicate."""

    kept_by_updates = True  # its vectors

    def fingerprint(self, ctx: RunContext) -> str:
        if ctx.product("read").vector_input:
            raise RunError("an update takes texts: a run of precomputed vectors grows by a new run of all of its vectors")
        fp = super().fingerprint(ctx)
        made_by = ctx.grown.manifest.get("stages", {}).get("embed", {}).get("model")
        if made_by and made_by != self.spec.model_id:
            raise RunError(
                f"the run's vectors were made by {made_by}, but its model's files now give {self.spec.model_id}: new documents "
                "would be compared with another model's vectors; restore the model's files, or run the whole corpus again"
            )
        return fp

    def load(self, ctx: RunContext) -> VectorParts:
        return VectorParts.open(self._path(ctx))  # the new documents' only

    def _boilerplate(self, ctx: RunContext) -> Boilerplate:
        """The run's boilerplate: new documents are read as the run read its own."""
        if ctx.cfg.embed.boilerplate_share <= 0:
            return Boilerplate()
        path = self.boilerplate_path(ctx.grown.run_store)
        try:
            return Boilerplate(np.load(path))
        except (OSError, ValueError) as exc:
            raise RunError(f"the run's boilerplate n-grams ({path}) cannot be read ({exc}); run theme-engine run again to rebuild them") from None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        if len(self.docs.unique) == 0:
            np.save(self._path(ctx), np.zeros((0, self.spec.dim), dtype=np.float32))
            return {"device": "none", "documents": 0, "embedded": 0, "skipped": "no new text to embed", "model": self.spec.model_id}
        return super().run(ctx)


def _through_actors(
    todo: list[Any], spec: ModelSpec, root: str, plan: Any, cfg: Any, windows: tuple[int, int] | None, boilerplate: Boilerplate | None
) -> Iterator[dict[str, Any]]:
    """The blocks embedded by a pool of :class:`EmbedBatch` actors through Ray Data."""
    ds = ray.data.from_arrow_refs(todo).map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "spec": spec,
            "model_root": root,
            "threads": plan.embed_threads,
            "batch_size": cfg.embed.batch_size,
            "max_batch_tokens": cfg.embed.max_batch_tokens,
            "device": cfg.device,
            "windows": windows,
            "boilerplate": boilerplate,
        },
        batch_size=cfg.embed.batch_size * 4,
        # autoscaling: one actor to start, up to ray.max_embed_actors or what the cluster's CPUs (or GPUs) allow
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(plan.embed_actors, len(todo)))),
        num_cpus=plan.embed_resources.cpus,
        num_gpus=plan.embed_resources.gpus,  # one GPU per actor, where the cluster has GPUs
        batch_format="numpy",
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def _in_driver(
    todo: list[Any], spec: ModelSpec, root: str, threads: int, cfg: Any, windows: tuple[int, int] | None, boilerplate: Boilerplate | None
) -> Iterator[dict[str, Any]]:
    """The blocks embedded in the driver's own process, as the pool's one actor would (see
    ``Plan.embed_in_driver``), batch for batch in the same format."""
    embed = EmbedBatch(spec, root, threads, cfg.embed.batch_size, cfg.embed.max_batch_tokens, device="cpu", windows=windows, boilerplate=boilerplate)
    for ref in todo:
        table = ray.get(ref)
        yield embed({name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names})


def _todo_blocks(window: list[tuple[int, str, str]], rows: int) -> list[Any]:
    """Texts still to embed as object-store blocks of ``rows``, longest first (a batch then holds
    texts of similar length and pads little); Ray spills them to disk if memory runs short."""
    window.sort(key=lambda w: -len(w[2]))
    refs = []
    for a in range(0, len(window), rows):
        pos, keys, texts = zip(*window[a : a + rows])
        refs.append(ray.put(pa.table({"row": np.asarray(pos, np.int64), "key": list(keys), "text": list(texts)})))
    return refs

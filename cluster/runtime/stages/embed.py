"""embed: a vector per unique document into ``vectors.npy`` (cache hits first, the misses by
embedding actors through Ray Data), or from ``embed.workers_from`` documents into ``vectors/``,
parts the embedding actors write from the texts they read; precomputed vectors (read's
``vectors/``) pass through."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import ray

from theme_engine.actors.embed import PART_COUNTS, EmbedBatch, EmbedParts, start_cache_owner, text_counts
from theme_engine.engine.boilerplate import Boilerplate, corpus_boilerplate, sample_rows
from theme_engine.engine.cache import CacheUnavailable, default_cache_dir, open_cache, text_key
from theme_engine.engine.config import redact_url
from theme_engine.engine.embedding import ModelSpec, ModelUnavailable, configured_model
from theme_engine.engine.events import Interrupted, StageControl
from theme_engine.engine.vectors import VectorParts, check_file, check_stored, invalid_rows
from theme_engine.engine.windows import TextWindows

from .. import ray_session
from ..state import StageStore, fingerprint, remove
from .base import RunContext, RunError, Stage
from .read import Documents, Read, check_parts

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
    def file_path(store: StageStore) -> Path:
        """``vectors.npy``: a vector per embedded document, in the corpus's order (written by the driver)."""
        return store.dir("embed") / "vectors.npy"

    @staticmethod
    def parts_path(store: StageStore) -> Path:
        """``vectors/``: the same as parts, one per range of stored documents (written by the
        embedding actors, from ``embed.workers_from`` documents)."""
        return store.dir("embed") / "vectors"

    @classmethod
    def vectors_path(cls, store: StageStore) -> Path:
        """The stage's vectors as stored: its parts when it wrote parts, else ``vectors.npy``."""
        parts = cls.parts_path(store)
        return parts if parts.is_dir() else cls.file_path(store)

    @staticmethod
    def boilerplate_path(store: StageStore) -> Path:
        """``boilerplate.npy``: the run's boilerplate n-grams, which its updates read with."""
        return store.dir("embed") / "boilerplate.npy"

    def _path(self, ctx: RunContext) -> Path:
        return Read.vectors_path(ctx.store) if self.spec is None else self.vectors_path(ctx.store)

    def verify(self, ctx: RunContext) -> str | None:
        if self.spec is None:
            return None  # read verified its vectors
        path = self._path(ctx)
        if not path.is_dir():
            return check_file(path, len(self.docs.unique), self.spec.dim)
        try:
            parts = VectorParts.open(path)
        except (OSError, ValueError) as exc:
            return f"{path} is not readable ({exc})"
        return check_parts(ctx, parts, "embed", len(self.docs.unique), self.spec.dim)

    def load(self, ctx: RunContext) -> VectorParts:
        """The vectors, read a range or a selection at a time: the driver never holds them whole
        (the shard actors read their own rows)."""
        return VectorParts.open(self._path(ctx))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        if self.spec is None:
            return {"device": "none", "skipped": "precomputed vectors", "documents": int(len(self.docs.unique))}
        return self._embed(ctx, self.spec)

    def _embed(self, ctx: RunContext, spec: ModelSpec) -> dict[str, Any]:
        """Vectors of the unique documents: below ``embed.workers_from`` into ``vectors.npy`` by
        the driver (cache hits first, streamed from the stored documents; the misses go to
        embedding actors), from it as parts written by the embedding actors (:meth:`_by_workers`)."""
        self.actor_peaks: dict[int, int] = {}  # embedding actor pid -> peak resident bytes seen
        self.long_seen = {"tokens": 0, "long": 0, "windows": 0, "capped": 0, "stripped": 0, "stripped_words": 0, "seconds": 0.0}
        self.boilerplate = self._boilerplate(ctx) if self.windows is not None else Boilerplate()
        if len(self.docs.unique) >= ctx.cfg.embed.workers_from:
            return self._by_workers(ctx, spec)
        cfg = ctx.cfg
        control = ctx.control("embed")
        corpus, unique = self.docs.corpus, self.docs.unique
        model_id = spec.model_id
        n = len(unique)
        position = np.full(len(corpus.ids), -1, dtype=np.int64)
        position[unique] = np.arange(n)
        path = self.file_path(ctx.store)
        tmp = path.with_name("vectors.tmp.npy")
        vectors = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, spec.dim))
        block_rows = cfg.embed.batch_size * 4  # one block is one stop point and one cache write
        todo: list[Any] = []
        cache = self._open_cache(cfg, spec)
        try:
            n_hits = 0
            window: list[tuple[int, str, str]] = []
            control.report(0, n)
            for rows, texts in ctx.docs().iter_texts(unique):
                pos = position[rows]
                keys = [text_key(model_id, t, self.windows, self.boilerplate) for t in texts]
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
        _replace(tmp, path, self.parts_path(ctx.store))
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
        root = str(cfg.cache.dir or default_cache_dir())
        windows = (cfg.embed.window_overlap, cfg.embed.max_windows) if cfg.embed.long == "windows" else None
        bp = self.boilerplate or None
        batches = (
            _in_driver(todo, spec, root, plan.embed_threads, cfg, windows, bp)
            if plan.embed_in_driver
            else _through_actors(todo, spec, root, plan, cfg, windows, bp)
        )
        workers = _Workers(self.actor_peaks)
        seen = self.long_seen
        try:
            for batch in batches:
                counts = np.column_stack([batch["tokens"], batch["windows"], batch["capped"], batch["boilerplate_words"]])
                for name, value in zip(PART_COUNTS, text_counts(counts)):
                    seen[name] += value
                seen["seconds"] = workers.note(batch)
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
        self.pool = workers.pool(plan)
        return workers.device(), workers.fallbacks()

    def _open_cache(self, cfg: Any, spec: ModelSpec) -> Any:
        """The embedding cache opened in this process, or None when it is off."""
        if not cfg.cache.enabled:
            return None
        try:
            return open_cache(spec.dim, cfg.cache.dir, cfg.cache.qdrant_url, cfg.cache.collection)
        except CacheUnavailable as exc:
            raise RunError(str(exc)) from None

    def _by_workers(self, ctx: RunContext, spec: ModelSpec) -> dict[str, Any]:
        """From ``embed.workers_from`` documents: the stored documents in ranges of
        :data:`PART_DOCS`, each read, looked up in the cache, embedded and saved as a part of
        ``vectors/`` by an embedding actor (``actors.embed.EmbedParts``). The driver hands out the
        ranges and adds up the counts each returns: no text and no vector passes through it. A
        local cache folder is owned by an actor on this node (``actors.embed.CacheOwner``); a
        Qdrant server is asked by each actor. The driver's only node embeds itself, as below."""
        cfg = ctx.cfg
        control = ctx.control("embed")
        unique, n_docs = self.docs.unique, len(self.docs.corpus.ids)
        n = len(unique)
        folder = self.parts_path(ctx.store)
        tmp = folder.with_name("vectors.tmp")
        remove(tmp)
        tmp.mkdir(parents=True)
        starts = np.arange(0, n_docs, PART_DOCS, dtype=np.int64)
        ends = np.minimum(starts + PART_DOCS, n_docs)
        expect = np.searchsorted(unique, ends) - np.searchsorted(unique, starts)
        keep = expect > 0
        units = {"part": np.flatnonzero(keep), "start": starts[keep], "end": ends[keep], "expect": expect[keep]}
        ctx.ensure_gpus(("embed",), control)
        plan = ray_session.plan(n, cfg.embed, device=cfg.device, max_embed_actors=cfg.ray.max_embed_actors)
        kwargs = {
            "spec": spec,
            "model_root": str(cfg.cache.dir or default_cache_dir()),
            "threads": plan.embed_threads,
            "batch_size": cfg.embed.batch_size,
            "max_batch_tokens": cfg.embed.max_batch_tokens,
            "windows": (cfg.embed.window_overlap, cfg.embed.max_windows) if cfg.embed.long == "windows" else None,
            "boilerplate": self.boilerplate or None,
            "docs": ctx.docs(),
            "folder": str(tmp),
            "slice_rows": cfg.embed.batch_size * 32,  # one slice is one cache write
        }
        cache: Any = None
        owner: Any = None
        try:
            if plan.embed_in_driver:
                cache = self._open_cache(cfg, spec)
                embed = EmbedParts(**kwargs, device="cpu", cache=cache)
                batches: Any = (embed({k: v[i : i + 1] for k, v in units.items()}) for i in range(len(units["part"])))
            else:
                if cfg.cache.enabled and cfg.cache.qdrant_url:
                    cache = ("server", cfg.cache.qdrant_url, cfg.cache.collection)
                elif cfg.cache.enabled:
                    try:
                        cache = owner = start_cache_owner(spec.dim, cfg.cache.dir, cfg.cache.collection)
                    except CacheUnavailable as exc:
                        raise RunError(str(exc)) from None
                batches = _parts_through_actors(units, kwargs, cache, plan, cfg)
            done = self._tally_parts(batches, control, n, plan)
            invalid = done["invalid"] + (ray.get(owner.close.remote()) if owner is not None else 0)  # the owner flushes the folder
        finally:
            if owner is not None:
                ray.kill(owner)
            elif cache is not None and hasattr(cache, "close"):
                cache.close()
        if done["documents"] != n:
            raise RunError(f"embed: the embedding actors returned vectors for {done['documents']} of {n} documents; run the same command again")
        _replace(tmp, folder, self.file_path(ctx.store))
        problem = check_parts(ctx, VectorParts.open(folder), "embed", n, spec.dim)
        if problem is not None:
            raise RunError(f"embed: the stage's vectors failed validation ({problem}); run the same command again")
        if invalid:
            where = cfg.cache.qdrant_url and redact_url(cfg.cache.qdrant_url) or str(cfg.cache.dir or default_cache_dir())
            log.warning(
                "embed: %d cached vectors in %s failed validation (not finite, not unit length or of another dimension): "
                "they were embedded again and replaced in the cache",
                invalid,
                where,
            )
        return {
            "long_texts": self._long_record(cfg.embed, spec),
            "device": done["device"],
            **({"fallbacks": done["fallbacks"]} if done["fallbacks"] else {}),
            "documents": n,
            "embedded": done["embedded"],
            "written_by": "driver" if plan.embed_in_driver else "embedding actors",
            "parts": int(keep.sum()),
            "actor_peak_rss_bytes": sorted(self.actor_peaks.values(), reverse=True),
            "cache": {"hits": done["hits"], "misses": done["embedded"], "invalid": invalid, "enabled": cfg.cache.enabled},
            "model": spec.model_id,
            "model_info": spec.describe(),
            "pool": self.pool,
        }

    def _tally_parts(self, batches: Any, control: StageControl, n: int, plan: Any) -> dict[str, Any]:
        """The counts of the parts as they come back, with progress and stop points."""
        workers = _Workers(self.actor_peaks)
        seen = self.long_seen
        done: dict[str, Any] = {"documents": 0, "hits": 0, "embedded": 0, "invalid": 0}
        control.report(0, n)
        try:
            for batch in batches:
                problems = [str(p) for p in batch["problem"] if str(p)]
                if problems:
                    raise RunError(problems[0])
                for name in PART_COUNTS:
                    seen[name] += int(np.sum(batch[name]))
                seen["seconds"] = workers.note(batch)
                for name in ("documents", "hits", "embedded", "invalid"):
                    done[name] += int(np.sum(batch[name]))
                control.report(done["documents"], n)
                control.check()
        except Interrupted:
            log.warning("embed: stopped after %d of %d documents; the embedded ones are cached", done["documents"], n)
            raise
        self.pool = workers.pool(plan)
        done["device"], done["fallbacks"] = workers.device(), workers.fallbacks()
        return done


class UpdateEmbed(Embed):
    """An update's form of the stage: the new documents' vectors (the cache serves repeats), with
    the run's model and boilerplate; none when every new document is an exact duplicate."""

    kept_by_updates = True  # its vectors

    def fingerprint(self, ctx: RunContext) -> str:
        fp = super().fingerprint(ctx)  # the read refused precomputed vectors
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
            tmp = self.file_path(ctx.store).with_name("vectors.tmp.npy")
            np.save(tmp, np.zeros((0, self.spec.dim), dtype=np.float32))
            _replace(tmp, self.file_path(ctx.store), self.parts_path(ctx.store))
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


PART_DOCS = 8_192  # stored documents per range an embedding actor reads, embeds and saves as one part


class _Workers:
    """What the embedding actors' batches say about them: when each was ready, its peak memory,
    the devices that served and the fall-backs, for the stage's record."""

    def __init__(self, peaks: dict[int, int]) -> None:
        self.peaks = peaks  # embedding actor pid -> peak resident bytes seen
        self.started, self.first, self.last = time.time(), 0.0, 0.0
        self.ready: dict[int, float] = {}
        self.load: dict[int, float] = {}
        self.served: set[str] = set()
        self.fell_back: dict[str, set[int]] = {}  # reason -> embedding actors (pids) that fell back for it

    def note(self, batch: dict[str, Any]) -> float:
        """Take in one batch's columns; returns the seconds since the stage's actors started."""
        self.last = time.time()
        self.first = self.first or self.last
        for pid, ready, load in zip(batch["pid"], batch["ready_at"], batch["load_seconds"]):
            self.ready[int(pid)], self.load[int(pid)] = float(ready), float(load)
        for pid in np.unique(batch["pid"]):
            rss = int(batch["peak_rss"][batch["pid"] == pid].max())
            self.peaks[int(pid)] = max(self.peaks.get(int(pid), 0), rss)
        self.served.update(str(d) for d in np.unique(batch["device"]))
        for pid, reason in zip(batch["pid"], batch["fallback"]):
            if str(reason):
                self.fell_back.setdefault(str(reason), set()).add(int(pid))
        return self.last - self.started

    def device(self) -> str:
        return ",".join(sorted(self.served)) or "cpu"

    def fallbacks(self) -> list[dict[str, Any]]:
        return [{"stage": "embed", "reason": r, "count": len(pids)} for r, pids in sorted(self.fell_back.items())]

    def pool(self, plan: Any) -> dict[str, Any]:
        return {
            "in_driver": plan.embed_in_driver,
            "actors": 0 if plan.embed_in_driver else len(self.ready),
            "threads_per_actor": plan.embed_threads,
            "cpus_per_actor": plan.embed_resources.cpus,
            # from the stage's start: the first actor's model loaded, the first and the last batch back
            "first_actor_ready_seconds": round(min(self.ready.values()) - self.started, 3) if self.ready else None,
            "actor_load_seconds": round(max(self.load.values()), 3) if self.load else None,
            "first_batch_seconds": round(self.first - self.started, 3) if self.first else None,
            "first_to_last_batch_seconds": round(self.last - self.first, 3) if self.first else None,
        }


def _parts_through_actors(units: dict[str, np.ndarray], kwargs: dict[str, Any], cache: Any, plan: Any, cfg: Any) -> Iterator[dict[str, Any]]:
    """The ranges embedded and saved by a pool of :class:`EmbedParts` actors through Ray Data: a
    range per task, so a lost actor's range is run again (its part is written whole or not at all)."""
    items = [{k: int(v[i]) for k, v in units.items()} for i in range(len(units["part"]))]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        EmbedParts,
        fn_constructor_kwargs={**kwargs, "device": cfg.device, "cache": cache},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(plan.embed_actors, len(items)))),
        num_cpus=plan.embed_resources.cpus,
        num_gpus=plan.embed_resources.gpus,
        batch_format="numpy",
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def _replace(tmp: Path, path: Path, other: Path) -> None:
    """The stage's new vectors (``tmp``: a file or a folder of parts) in place of ``path``, and
    the other form (``other``) an earlier run left, removed."""
    remove(other)
    remove(path)
    os.replace(tmp, path)

"""The stage driver: read → embed → select_k → kmeans → dedup → label → write.

Each stage's output is persisted under ``OUT/.theme-engine/<stage>`` with a fingerprint of its
inputs and settings; a re-run reuses finished stages, and a stopped run resumes (embeddings from
the cache, k-means from its last checkpointed iteration).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import ray

from theme_engine.actors.embed import EmbedBatch
from theme_engine.actors.memory import peak_rss_bytes
from theme_engine.actors.shard import ActorShards, search_partitions
from theme_engine.actors.tasks import fit_draw_task, score_k_task
from theme_engine.engine.cache import CacheUnavailable, cache_key, default_cache_dir, open_cache
from theme_engine.engine.config import RunConfig, public_config, redact_url
from theme_engine.engine.corpus import (
    PREPARED_COLUMNS,
    Corpus,
    CorpusBuilder,
    InputError,
    InputFile,
    ReadTask,
    expand_inputs,
    is_vector_input,
    parse_task,
    plan_read_tasks,
    prepare_records,
    read_vector_file,
)
from theme_engine.engine.device import count_fallbacks
from theme_engine.engine.docstore import DOC_BATCH, DocStore
from theme_engine.engine.dedup import KIND_LEXICAL, duplicate_evidence, group_duplicates, hybrid_pairs, keep_rank, search_threshold
from theme_engine.engine.lexical import WordIndex
from theme_engine.engine.embedding import get_model
from theme_engine.engine.events import Interrupted, StageControl
from theme_engine.engine.kmeans import ConvergenceWarning, KMeansState, assign_sharded, fit_sharded, sample_shards
from theme_engine.engine.partition import default_n_partitions, merge_pairs, partition_centroids, safe_margin
from theme_engine.engine.labels import (
    KeywordSet,
    assemble_themes,
    ctfidf_keywords,
    keyword_sample,
    label_lift,
    merge_map,
    merged_centroids,
    representatives,
)
from theme_engine.engine.manifest import build_manifest
from theme_engine.engine.output import MODEL_FILE, write_model, write_outputs
from theme_engine.engine.vectors import check_stored, invalid_rows
from theme_engine.engine.select_k import (
    CRITERIA,
    candidate_ks,
    choose_by_modularity,
    choose_k,
    k_ceiling,
    modularity_sample_size,
    widen_grid,
    widened_range,
)

from . import ray_session
from .gather import Backoff, gather
from .state import OutLock, OutputBusy, StageStore, atomic_write_json, file_digest, fingerprint, foreign_entries, foreign_out_message

log = logging.getLogger(__name__)

EMBED_WINDOW = 65_536  # texts to embed sorted by length together
STAGES = ("read", "embed", "select_k", "kmeans", "dedup", "label", "write")
PACKAGES = ("theme-engine", "ray", "numpy", "faiss-cpu", "fastembed", "onnxruntime", "qdrant-client", "qdrant-edge-py", "scikit-learn", "pyarrow")


class RunError(RuntimeError):
    """A run cannot go on for a reason the user can act on (message says what to do)."""


class OutputInUse(RunError):
    """Another run holds ``--out``: this one wrote nothing there."""


@dataclass
class RunResult:
    out: Path
    manifest: dict[str, Any]
    themes: list[dict[str, Any]]


@dataclass
class _Ctx:
    cfg: RunConfig
    store: StageStore
    stop: threading.Event
    sink: Callable[[str, int, int], None] | None
    on_stage: Callable[[str, dict[str, Any]], None] | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    fps: dict[str, str] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    def control(self, stage: str) -> StageControl:
        return StageControl(stage, self.sink, self.stop)


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class Driver:
    """Runs one job. ``stop`` (a threading.Event) stops it between batches or iterations; ``sink``
    receives (stage, done, total) progress events and ``on_stage`` each stage's record when it
    finishes or is reused (seconds, device, counts — what the manifest's ``stages`` holds)."""

    def __init__(
        self,
        cfg: RunConfig,
        stop: threading.Event | None = None,
        sink: Callable[[str, int, int], None] | None = None,
        on_stage: Callable[[str, dict[str, Any]], None] | None = None,
    ):
        if cfg.out is None:
            raise RunError("no output directory: pass --out DIR")
        if not cfg.inputs:
            raise RunError("no input given: pass one or more files or directories")
        self.cfg = cfg
        self.out = Path(cfg.out)
        foreign = foreign_entries(self.out)
        if foreign and not cfg.force:
            raise RunError(foreign_out_message(self.out, foreign))
        self.out.mkdir(parents=True, exist_ok=True)
        self.ctx = _Ctx(cfg, StageStore(self.out), stop or threading.Event(), sink, on_stage)
        self.shards: ActorShards | None = None
        self.plan: ray_session.Plan | None = None  # the actor/task resources, once the vectors are known
        self._actor_peaks: dict[int, int] = {}  # embedding actor pid -> peak resident bytes seen
        self._asked_gpu = False  # an autoscaler request for a GPU node is out (ray_session.ensure_gpus)
        self._gpu_wait_failed = False  # --device cuda waited once for a GPU node in vain: never again
        self._no_gpu: dict[str, str] = {}  # stage -> why it ran on CPU though --device cuda asked for a GPU

    # ------------------------------------------------------------------ helpers
    def _stage(
        self, name: str, fp: str, run: Callable[[], dict[str, Any]], verify: Callable[[], str | None] | None = None
    ) -> dict[str, Any]:
        """Run a stage unless its persisted output matches ``fp`` and is intact (the files' digests
        as written, and ``verify()`` finding nothing wrong); record seconds/device/counts."""
        self.ctx.fps[name] = fp
        store = self.ctx.store
        done = store.finished(name, fp)
        if done is not None:
            problem = store.damaged(name, done) or (verify() if verify is not None else None)
            if problem is not None:
                log.warning("%s: the finished stage's output fails validation (%s); running the stage again", name, problem)
                store.invalidate(name)
                done = None
        if done is not None:
            record = {k: v for k, v in done.items() if k not in ("fingerprint", "outputs")}
            record["reused"] = True
            log.info("%s: reusing the finished stage", name)
            self._record(name, record)
            return record
        t0 = time.perf_counter()
        record = run()
        record = {"seconds": round(time.perf_counter() - t0, 3), **record}
        if name in self._no_gpu and record.get("device") not in (None, "none"):
            no_gpu = {"stage": name, "reason": self._no_gpu[name], "count": 1}
            record["fallbacks"] = count_fallbacks([*record.get("fallbacks", []), no_gpu])
        if self.ctx.retries.get(name):
            record["task_retries"] = self.ctx.retries[name]
        self.ctx.store.mark_done(name, fp, record)
        self._record(name, record)
        return record

    def _gather(self, submits: dict[Any, Callable[[], Any]], control: StageControl) -> dict[Any, Any]:
        """Results of Ray tasks, with retries and exponential backoff for lost ones (counted in
        the stage's record as ``task_retries``)."""
        rc = self.cfg.ray
        stage = control.stage

        def count(_key: Any, _attempt: int, _exc: BaseException) -> None:
            self.ctx.retries[stage] = self.ctx.retries.get(stage, 0) + 1

        return gather(submits, control, Backoff(rc.task_attempts, rc.retry_backoff_s), on_retry=count)

    def _ensure_gpus(self, stages: tuple[str, ...], control: StageControl) -> None:
        """Before planning actors for ``stages``: with ``--device cuda`` and no GPU in the cluster,
        ask the autoscaler for a GPU node and wait for it (``ray.scale_wait_s``); if none comes,
        the stages run on CPU and their records say why (a fall-back)."""
        cfg = self.cfg
        if cfg.device != "cuda":
            return
        if ray_session.cluster_gpus() == 0 and not self._gpu_wait_failed and cfg.ray.scale_wait_s > 0:
            self._asked_gpu = True
        wait_s = 0.0 if self._gpu_wait_failed else cfg.ray.scale_wait_s
        if ray_session.ensure_gpus(cfg.device, wait_s, control):
            return
        self._gpu_wait_failed = True
        reason = f"device cuda: the cluster has no GPU and none joined within {cfg.ray.scale_wait_s:g} s (ray.scale_wait_s)"
        for stage in stages:
            self._no_gpu[stage] = reason

    def _record(self, name: str, record: dict[str, Any]) -> None:
        self.ctx.stages[name] = record
        if self.ctx.on_stage is not None:
            self.ctx.on_stage(name, record)

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        """The whole job, holding the lock of ``--out`` (a second run into it is refused by name)."""
        try:
            lock = OutLock(self.out).acquire()
        except OutputBusy as exc:
            raise OutputInUse(str(exc)) from None
        try:
            started = ray_session.connect(self.cfg.ray)
            try:
                return self._run()
            finally:
                if self.shards is not None:
                    self.shards.close()
                if self._asked_gpu:
                    ray_session.release_gpu_request()  # the GPU node may go once idle
                if started:
                    ray.shutdown()
        finally:
            lock.release()

    def _run(self) -> RunResult:
        cfg, store = self.cfg, self.ctx.store
        files = expand_inputs(cfg.inputs)
        vector_input = is_vector_input(files, cfg.read.vector_field)
        inputs_fp = [(f.name, f.kind, file_digest(f.path)) for f in files]

        fp_read = fingerprint("read", inputs_fp, cfg.stage_fingerprint_part("read"), vector_input)
        read_ok = (lambda: _stored_vectors_problem(store.dir("read") / "vectors.npy", None, None)) if vector_input else None
        self._stage("read", fp_read, lambda: self._read(files, vector_input), verify=read_ok)
        corpus = self._load_corpus()
        unique = corpus.unique
        if len(unique) == 0:
            bad = corpus.bad[:3]
            detail = "; ".join(f"{b['source']}: {b['error']}" for b in bad)
            names = ", ".join(f.name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            raise RunError(
                f"nothing usable in {names}: {len(corpus.ids)} documents, {len(corpus.bad)} bad records"
                + (f" (e.g. {detail})" if detail else "")
                + (f"; all documents were filtered (min_chars={cfg.read.min_chars}, max_chars={cfg.read.max_chars})" if corpus.ids else "")
            )

        vectors_file = store.dir("embed" if not vector_input else "read") / "vectors.npy"
        if vector_input:
            fp_embed = fingerprint("embed", fp_read, "precomputed")
            self._stage("embed", fp_embed, lambda: {"device": "none", "skipped": "precomputed vectors", "documents": int(len(unique))})
        else:
            spec = get_model(cfg.embed.model)
            fp_embed = fingerprint("embed", fp_read, spec.model_id)
            self._stage("embed", fp_embed, lambda: self._embed(corpus, unique, spec), verify=lambda: _stored_vectors_problem(vectors_file, len(unique), spec.dim))
        # memory-mapped: the driver never holds the vectors; each shard's block is copied into the
        # object store in turn (blocks are views of the file)
        vectors = np.load(vectors_file, mmap_mode="r")
        n = vectors.shape[0]

        self._ensure_gpus(("select_k", "kmeans", "dedup"), self.ctx.control("kmeans"))
        plan = ray_session.plan(n, cfg.embed, cfg.ray.shards, dim=vectors.shape[1], device=cfg.device)
        self.plan = plan
        blocks = np.array_split(vectors, plan.shards)
        self.shards = ActorShards(
            blocks,
            device=cfg.device,
            batch_rows=cfg.kmeans.batch_rows,
            threads=plan.shard_threads,
            num_gpus=plan.shard_resources.gpus,
            memory=plan.shard_resources.memory,
        )

        fp_k = fingerprint("select_k", fp_embed, cfg.stage_fingerprint_part("select_k"))
        sk = self._stage("select_k", fp_k, lambda: self._select_k(n))
        k = int(sk["k"])

        fp_km = fingerprint("kmeans", fp_k, k, cfg.stage_fingerprint_part("kmeans"))
        self._stage("kmeans", fp_km, lambda: self._kmeans(k, fp_km))
        km = store.load_arrays("kmeans", "result")

        fp_dd = fingerprint("dedup", fp_embed, cfg.stage_fingerprint_part("dedup"), fp_km if cfg.dedup.keep == "central" else "")
        self._stage("dedup", fp_dd, lambda: self._dedup(corpus, unique, vectors, km))
        dd = store.load_arrays("dedup", "result")

        fp_lb = fingerprint("label", fp_km, fp_dd, cfg.stage_fingerprint_part("label"), vector_input)
        self._stage("label", fp_lb, lambda: self._label(corpus, unique, vectors, km, dd))

        themes = store.load_json("label", "themes")
        manifest: dict[str, Any] = {}
        self._stage(
            "write",
            fingerprint("write", fp_lb, fp_dd, time.time()),  # always rewritten: cheap, and keeps the manifest current
            lambda: self._write(corpus, unique, themes, manifest, k),
        )
        manifest["stages"]["write"] = self.ctx.stages["write"]
        manifest["driver_peak_rss_bytes"] = peak_rss_bytes()
        atomic_write_json(self.out / "manifest.json", manifest)
        return RunResult(self.out, manifest, themes)

    # ------------------------------------------------------------------ read
    def _read(self, files: list[InputFile], vector_input: bool) -> dict[str, Any]:
        cfg, store = self.cfg, self.ctx.store
        control = self.ctx.control("read")
        if vector_input:
            parts = [read_vector_file(f, cfg.read.vector_field, cfg.read.text_field, cfg.read.id_field) for f in files]
            dims = {p.vectors.shape[1] for p in parts if len(p.ids)}
            if len(dims) > 1:
                raise InputError(f"vector inputs have different dimensions: {sorted(dims)}")
            ids: list[str] = []
            sources: list[str] = []
            texts: list[str] = []
            bad: list[dict[str, Any]] = []
            for f, p in zip(files, parts):
                bad.extend({"source": b["source"], "error": b["error"]} for b in p.bad)
                ids.extend(doc_id if len(files) == 1 else f"{f.name}:{doc_id}" for doc_id in p.ids)
                sources.extend(f"{f.name}:row {doc_id}" for doc_id in p.ids)
                texts.extend(p.texts if p.texts is not None else [""] * len(p.ids))
            vec_rows = [p.vectors for p in parts]
            # precomputed vectors: every row is kept as given (no text filter, no exact-duplicate collapse)
            corpus = Corpus(ids, sources, texts, ["ok"] * len(ids), np.full(len(ids), -1, dtype=np.int64), bad)
            allv = np.concatenate(vec_rows) if vec_rows else np.zeros((0, 1), np.float32)
            problem = check_stored(allv, len(ids))
            if problem is not None:  # read_vector_file normalises and drops bad rows: a bug if reached
                raise RunError(f"precomputed vectors failed validation after normalising: {problem}")
            tmp = store.dir("read") / "vectors.tmp.npy"
            np.save(tmp, allv)
            os.replace(tmp, store.dir("read") / "vectors.npy")
            self._save_corpus(corpus)
            control.report(len(corpus.ids), len(corpus.ids))
            counts = _count_status(corpus)
        else:
            counts = self._read_text(files, control)
        return {"device": "cpu", **counts}

    def _read_text(self, files: list[InputFile], control: StageControl) -> dict[str, int]:
        """Stream the inputs through Ray Data (read tasks of ``read.chunk_mb``, parsed, cleaned,
        filtered and keyed where they run), in input order, into ``docs.parquet`` a batch at a time:
        the driver keeps one id and one exact-duplicate key per document, never the texts.
        Returns the document counts (by status, and bad records) for the stage's record."""
        cfg = self.cfg
        rc = cfg.read
        tasks = plan_read_tasks(files, rc.chunk_mb * 2**20)
        schema = pa.schema([(c, pa.string()) for c in PREPARED_COLUMNS])

        def parse(batch: dict[str, np.ndarray]) -> Any:
            cols: dict[str, list[str]] = {c: [] for c in PREPARED_COLUMNS}
            for fi, start, end, line in zip(batch["file_index"], batch["start"], batch["end"], batch["first_line"]):
                task = ReadTask(int(fi), int(start), int(end), int(line))
                part = prepare_records(parse_task(files[task.file_index], task, rc.text_field, rc.id_field), rc.min_chars, rc.max_chars)
                for c in PREPARED_COLUMNS:
                    cols[c].extend(part[c])
            return pa.table(cols, schema=schema)

        ctx = ray.data.DataContext.get_current()
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # our own progress replaces its per-dataset lines
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = True  # documents keep input order: ids, "first" and row numbers are stable
        items = [{"file_index": t.file_index, "start": t.start, "end": t.end, "first_line": t.first_line} for t in tasks]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(parse, batch_size=1, batch_format="numpy")
        builder = CorpusBuilder()
        records = 0
        control.report(0, 0)
        try:
            with self._docs().writer() as write:
                for batch in ds.iter_batches(batch_size=DOC_BATCH, batch_format="pyarrow"):
                    write(builder.add({c: batch.column(c).to_pylist() for c in PREPARED_COLUMNS}))
                    records += batch.num_rows
                    control.report(records, 0)
                    control.check()
        finally:
            ctx.execution_options.preserve_order = False
        self.ctx.store.save_json("read", "bad", builder.bad)
        control.report(records, records)
        return {"documents": builder.n, "bad": len(builder.bad), **builder.counts}

    def _docs(self) -> DocStore:
        return DocStore(self.ctx.store.dir("read") / "docs.parquet")

    def _save_corpus(self, corpus: Corpus) -> None:
        self._docs().write_corpus(corpus)
        self.ctx.store.save_json("read", "bad", corpus.bad)

    def _load_corpus(self) -> Corpus:
        """Everything about the documents but their texts (read those with :meth:`_iter_texts`)."""
        return self._docs().load_corpus(self.ctx.store.load_json("read", "bad"))

    def _iter_texts(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[str]]]:
        """(document indices, texts) for the sorted document indices ``rows``, streamed from
        ``docs.parquet`` one batch of documents at a time."""
        return self._docs().iter_texts(rows)

    # ------------------------------------------------------------------ embed
    def _embed(self, corpus: Corpus, unique: np.ndarray, spec: Any) -> dict[str, Any]:
        """Vectors of the unique documents into ``vectors.npy`` (written in place, never held whole):
        cache hits first, streamed from the stored documents; the misses go to embedding actors."""
        cfg, store = self.cfg, self.ctx.store
        control = self.ctx.control("embed")
        model_id = spec.model_id
        n = len(unique)
        position = np.full(len(corpus.ids), -1, dtype=np.int64)
        position[unique] = np.arange(n)
        path = store.dir("embed") / "vectors.npy"
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
        try:
            n_hits = 0
            window: list[tuple[int, str, str]] = []
            control.report(0, n)
            for rows, texts in self._iter_texts(unique):
                pos = position[rows]
                keys = [cache_key(model_id, t) for t in texts]
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
            if n_missing:
                def sources(pos: np.ndarray) -> list[str]:  # file:line of embedded positions, for messages
                    return [corpus.sources[unique[i]] for i in pos]

                device, fallbacks = self._embed_missing(todo, vectors, cache, spec, control, n_hits, n, sources)
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
            "device": device,
            **({"fallbacks": fallbacks} if fallbacks else {}),
            "documents": n,
            "embedded": n_missing,
            "actor_peak_rss_bytes": sorted(self._actor_peaks.values(), reverse=True),
            "cache": {"hits": n_hits, "misses": n_missing, "invalid": invalid, "enabled": cfg.cache.enabled},
            "model": model_id,
        }

    def _embed_missing(
        self,
        todo: list[Any],
        vectors: np.ndarray,
        cache: Any,
        spec: Any,
        control: StageControl,
        done: int,
        total: int,
        sources: Callable[[np.ndarray], list[str]],
    ) -> tuple[str, list[dict[str, Any]]]:
        cfg = self.cfg
        self._ensure_gpus(("embed",), control)
        plan = ray_session.plan(total - done, cfg.embed, device=cfg.device, max_embed_actors=cfg.ray.max_embed_actors)
        batch_rows = cfg.embed.batch_size * 4
        root = str((cfg.cache.dir or default_cache_dir()))
        gpus = plan.embed_resources.gpus  # one GPU per actor, where the cluster has GPUs
        served: set[str] = set()
        fell_back: dict[str, set[int]] = {}  # reason -> embedding actors (pids) that fell back for it
        ds = ray.data.from_arrow_refs(todo).map_batches(
            EmbedBatch,
            fn_constructor_kwargs={
                "model": spec.name,
                "model_root": root,
                "threads": plan.embed_threads,
                "batch_size": cfg.embed.batch_size,
                "max_batch_tokens": cfg.embed.max_batch_tokens,
                "device": cfg.device,
            },
            batch_size=batch_rows,
            # autoscaling: one actor to start, up to ray.max_embed_actors or what the cluster's CPUs (or GPUs) allow
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, min(plan.embed_actors, len(todo)))),
            num_cpus=plan.embed_resources.cpus,
            num_gpus=gpus,
            batch_format="numpy",
        )
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for pid in np.unique(batch["pid"]):
                    rss = int(batch["peak_rss"][batch["pid"] == pid].max())
                    self._actor_peaks[int(pid)] = max(self._actor_peaks.get(int(pid), 0), rss)
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
        return ",".join(sorted(served)) or "cpu", fallbacks

    # ------------------------------------------------------------------ select_k
    def _select_k(self, n: int) -> dict[str, Any]:
        cfg = self.cfg
        control = self.ctx.control("select_k")
        if cfg.kmeans.k is not None:
            if cfg.kmeans.k > n:
                raise RunError(f"--k {cfg.kmeans.k} is larger than the number of distinct documents ({n})")
            return {"device": "none", "k": cfg.kmeans.k, "criterion": "given (--k)"}
        sk = cfg.select_k
        if n < 3:
            raise RunError(f"only {n} distinct documents: too few to choose k; pass --k")
        ks = candidate_ks(n, sk.k_min, sk.k_max, sk.candidates)
        if sk.criterion == "silhouette":
            return self._select_k_silhouette(n, ks, control)
        sample = sample_shards(self.shards, modularity_sample_size(n, sk.sample_size, ks), cfg.seed)
        gpus = self.plan.task_resources.gpus if self.plan.use_gpu else 0
        task = fit_draw_task.options(num_gpus=gpus) if gpus else fit_draw_task

        def run_draws(jobs: list[tuple[np.ndarray, int, int, float]]) -> list[Any]:
            refs: dict[int, Any] = {}
            for rows, *_ in jobs:
                refs.setdefault(id(rows), ray.put(rows))
            submits = {
                i: partial(task.remote, refs[id(rows)], k_top, draw, cfg.seed, fraction, cfg.device)
                for i, (rows, k_top, draw, fraction) in enumerate(jobs)
            }
            results = self._gather(submits, control)
            return [results[i] for i in range(len(jobs))]

        choice, record = choose_by_modularity(
            sample, ks, repeats=sk.repeats, neighbors=sk.neighbors, min_gain=sk.min_gain, seed=cfg.seed, run_draws=run_draws
        )
        fallbacks = count_fallbacks(record.pop("_fallbacks"))
        if record["widened"]:
            log.info("select_k: k=%s was on the edge of %s, widened the range to %s", *[record["widened"][key] for key in ("because", "from", "to")])
        log.info("select_k: chose k=%d (%s)", choice.k, choice.reason)
        return {**record, **({"fallbacks": fallbacks} if fallbacks else {})}

    def _select_k_silhouette(self, n: int, ks: list[int], control: StageControl) -> dict[str, Any]:
        """The earlier criterion (highest mean silhouette), one Ray task per candidate."""
        cfg = self.cfg
        sk = cfg.select_k
        sample = sample_shards(self.shards, min(n, sk.sample_size), cfg.seed)
        ref = ray.put(sample)
        task = score_k_task.options(num_gpus=self.plan.task_resources.gpus) if self.plan.use_gpu else score_k_task

        def score(candidates: list[int]) -> list[Any]:
            submits = {k: partial(task.remote, ref, k, sk.repeats, cfg.seed, cfg.device) for k in candidates}
            return list(self._gather(submits, control).values())

        scores = sorted(score(ks), key=lambda s: s.k)
        widened = None
        span = widened_range(choose_k(scores), ks, 2, k_ceiling(len(sample), ks))
        if span is not None:
            wider = widen_grid(ks, *span)
            widened = {"from": [min(ks), max(ks)], "to": list(span), "because": f"k={choose_k(scores)} was on the edge"}
            scores = sorted(scores + score([k for k in wider if k not in ks]), key=lambda s: s.k)
            ks = wider
        fallbacks = count_fallbacks({"stage": "select_k", "reason": s.fallback} for s in scores if s.fallback)
        k = choose_k(scores)
        log.info("select_k: chose k=%d from %s (silhouette)", k, ks)
        return {
            "device": ",".join(sorted({s.device for s in scores})),
            **({"fallbacks": fallbacks} if fallbacks else {}),
            "k": k,
            "criterion": CRITERIA["silhouette"],
            "reason": f"highest mean silhouette at k={k}",
            "range": [min(ks), max(ks)],
            "widened": widened,
            "edge": k in (min(ks), max(ks)),
            "sample_size": int(len(sample)),
            "repeats": sk.repeats,
            "not_converged": sum(s.not_converged for s in scores),
            "candidates": [s.as_dict() for s in scores],
        }

    # ------------------------------------------------------------------ kmeans
    def _kmeans(self, k: int, fp: str) -> dict[str, Any]:
        cfg, store = self.cfg, self.ctx.store
        control = self.ctx.control("kmeans")
        kc = cfg.kmeans
        state = None
        ck: dict[str, np.ndarray] = {}
        if store.has("kmeans", "checkpoint"):
            try:
                ck = store.load_arrays("kmeans", "checkpoint")
                str(ck["fingerprint"])
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a damaged file: start afresh
                log.warning("kmeans: ignoring the unreadable checkpoint %s (%s)", store.dir("kmeans") / "checkpoint.npz", exc)
                ck = {}
            if ck and str(ck["fingerprint"]) == fp and np.isfinite(ck["centroids"]).all():
                state = KMeansState(
                    centroids=ck["centroids"],
                    iteration=int(ck["iteration"]),
                    inertia=float(ck["inertia"]),
                    converged=bool(ck["converged"]),
                    history=ck["history"].tolist(),
                )
                log.info("kmeans: resuming at iteration %d", state.iteration)

        def checkpoint(s: KMeansState) -> None:
            store.save_arrays(
                "kmeans",
                "checkpoint",
                centroids=s.centroids,
                iteration=np.int64(s.iteration),
                inertia=np.float64(s.inertia),
                converged=np.bool_(s.converged),
                history=np.asarray(s.history, dtype=np.float64),
                fingerprint=np.str_(fp),
            )

        last: list[KMeansState] = []

        def on_iteration(s: KMeansState) -> None:
            last[:] = [s]
            if s.iteration % kc.checkpoint_every == 0:
                checkpoint(s)

        try:
            with warnings.catch_warnings(record=True) as caught:  # logged once below, not shown with a code line
                warnings.simplefilter("always", ConvergenceWarning)
                state = fit_sharded(
                    self.shards,
                    k,
                    seed=cfg.seed,
                    max_iter=kc.max_iter,
                    tol=kc.tol,
                    init_sample_size=kc.init_sample_size,
                    fit_fraction=kc.fit_fraction,
                    state=state,
                    control=control,
                    on_iteration=on_iteration,
                )
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    log.warning("kmeans: %s", w.message)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Interrupted:
            if last:
                checkpoint(last[0])
                log.warning("kmeans: stopped at iteration %d; a re-run resumes there", last[0].iteration)
            raise
        checkpoint(state)
        labels, distances, inertia = assign_sharded(self.shards, state.centroids)
        store.save_arrays("kmeans", "result", centroids=state.centroids, labels=labels, distances=distances)
        info = self.shards.info()
        devices = sorted({i["device"] for i in info})
        fallbacks = count_fallbacks(f for i in info for f in i.get("fallbacks", []) if f["stage"] == "kmeans")
        return {
            "device": ",".join(devices),
            **({"fallbacks": fallbacks} if fallbacks else {}),
            "shard_peak_rss_bytes": [i["peak_rss_bytes"] for i in info],
            "shard_nodes": len({i["node"] for i in info}),
            "k": k,
            "iterations": state.iteration,
            "inertia": inertia,
            "converged": state.converged,
            "shards": len(self.shards.sizes),
            "shard_memory_bytes": int(ray_session.shard_memory(max(self.shards.sizes), state.centroids.shape[1])),
        }

    # ------------------------------------------------------------------ dedup
    def _dedup(self, corpus: Corpus, unique: np.ndarray, vectors: np.ndarray, km: dict[str, np.ndarray]) -> dict[str, Any]:
        cfg = self.cfg
        dc = cfg.dedup
        control = self.ctx.control("dedup")
        # the lexical rule needs texts: precomputed vectors without a text column have none
        has_texts = bool(corpus.lengths[unique].max(initial=0) > 0)
        lexical = dc.lexical and has_texts
        candidate = dc.candidate_threshold if lexical else None
        t_search = search_threshold(dc.threshold, candidate)
        cap = (dc.threshold, dc.lexical_neighbors) if candidate is not None and candidate < dc.threshold else None
        if dc.method == "all_pairs":
            (pi, pj, ps), info = self._all_pairs(control, t_search, cap)
        else:
            (pi, pj, ps), info = self._partitioned_pairs(control, t_search, cap)
        words, fetch, texts_read = None, None, [0]
        if lexical:
            below = ps < dc.threshold
            words = self._word_index(unique, np.unique(np.concatenate([pi[below], pj[below]])), control)
            fetch = self._text_fetcher(unique, control, texts_read)
        hp = hybrid_pairs(
            pi, pj, ps, dc.threshold, candidate, words, fetch, dc.lexical_max_edits, dc.lexical_min_words, dc.lexical_neighbors
        )
        del words
        rank = keep_rank(dc.keep, len(unique), lengths=corpus.lengths[unique], distances=km["distances"])
        res = group_duplicates(len(unique), hp.i, hp.j, hp.cos, rank, dc.grouping, vectors=vectors)
        ev = duplicate_evidence(res.duplicate_of, hp, fetch, dc.lexical_max_edits, dc.lexical_min_words)
        self.ctx.store.save_arrays(
            "dedup",
            "result",
            duplicate_of=res.duplicate_of,
            similarity=res.similarity,
            group=res.group,
            kind=ev["kind"],
            lexical_similarity=ev["lexical_similarity"],
            edits=ev["edits"],
            pairs_i=hp.i,
            pairs_j=hp.j,
            pairs_sim=hp.cos,
            pairs_kind=hp.kind,
        )
        served = info.pop("served", [])
        fallbacks = count_fallbacks({"stage": "dedup", "reason": r["fallback"]} for r in served if r.get("fallback"))
        if lexical:
            rule = {
                "lexical": True,
                "candidate_threshold": candidate,
                "lexical_max_edits": dc.lexical_max_edits,
                "lexical_min_words": dc.lexical_min_words,
                "lexical_neighbors": dc.lexical_neighbors,
                "texts_read": texts_read[0],
            }
        else:
            why = "off (dedup.lexical = false)" if not dc.lexical else "unavailable: the input has vectors but no texts"
            rule = {"lexical": False, "lexical_note": f"lexical evidence {why}; the cosine rule alone"}
        return {
            "device": ",".join(sorted({r["device"] for r in served})) or "cpu",
            **({"fallbacks": fallbacks} if fallbacks else {}),
            "threshold": dc.threshold,
            **rule,
            "keep": dc.keep,
            "grouping": dc.grouping,
            **info,
            **hp.counts,
            "pairs": res.n_pairs,
            "groups": res.n_groups,
            "near_duplicates": int((res.duplicate_of >= 0).sum()),
            "lexical_duplicates": int((ev["kind"] == KIND_LEXICAL).sum()),
        }

    def _word_index(self, unique: np.ndarray, docs: np.ndarray, control: StageControl) -> WordIndex:
        """Word counts and multisets (no texts) of documents ``docs`` (sorted positions in
        ``unique``), streamed from ``docs.parquet`` a batch at a time."""
        parts = []
        for rows, texts in self._iter_texts(unique[docs]):
            parts.append(WordIndex.from_texts(np.searchsorted(unique, rows), texts))  # unique is sorted
            control.check()
        words = WordIndex.concat(parts)
        if not np.array_equal(words.rows, docs):
            raise RunError("docs.parquet does not match the dedup stage's documents; delete OUT/.theme-engine and re-run")
        return words

    def _text_fetcher(self, unique: np.ndarray, control: StageControl, count: list[int]) -> Callable[[np.ndarray], dict[int, str]]:
        """``fetch(sorted positions in unique) -> {position: text}`` streamed from ``docs.parquet``;
        texts already fetched are kept (they are those of the pairs compared and of the
        duplicates: few) and not read again. ``count[0]`` counts the texts read."""
        held: dict[int, str] = {}

        def fetch(docs: np.ndarray) -> dict[int, str]:
            todo = np.asarray([d for d in np.asarray(docs, dtype=np.int64).tolist() if d not in held], dtype=np.int64)
            if todo.size:
                for rows, texts in self._iter_texts(unique[todo]):
                    held.update(zip(np.searchsorted(unique, rows).tolist(), texts))
                    control.check()
                count[0] += int(todo.size)
            return held

        return fetch

    def _all_pairs(
        self, control: StageControl, threshold: float, cap: tuple[float, int] | None = None
    ) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
        """Every shard against every shard, exact (O(n^2) work): every pair at or above ``threshold``
        (below ``cap[0]`` only each row's ``cap[1]`` nearest, ``engine.dedup.cap_candidates``)."""
        dc = self.cfg.dedup
        S = len(self.shards.sizes)
        jobs = [(i, j) for i in range(S) for j in range(i, S)]
        results = self._gather({(i, j): partial(self.shards.pairs, i, j, threshold, dc.batch_rows, cap) for i, j in jobs}, control)
        parts = [results[job] for job in jobs]
        pairs = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
        info: dict[str, Any] = {"method": "all_pairs", "exact": True, "served": [p[3] for p in parts]}
        if threshold < dc.threshold:
            info["candidates_exact"] = True
        return pairs, info

    def _partitioned_pairs(
        self, control: StageControl, threshold: float, cap: tuple[float, int] | None = None
    ) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
        """Rows routed to nearest-centroid partitions by the shards, searched exactly per partition
        by Ray tasks; only the routed rows move (see engine/partition.py for the recall argument).

        Partitions are searched at ``threshold`` (the candidate threshold when the lexical rule
        is on; below ``cap[0]`` only each row's ``cap[1]`` nearest pairs are kept). The default
        margin is the safe one for ``dedup.threshold``: every pair at or above it is found
        (``exact``); a candidate pair below it is found when its two rows meet in a partition
        (``candidates_exact`` only with a margin safe for ``threshold``, which costs many more
        placements: measured 2 vs 137 per row at 0.9 vs 0.7 on 100k rows)."""
        cfg = self.cfg
        dc = cfg.dedup
        n = sum(self.shards.sizes)
        P = min(dc.partitions or default_n_partitions(n), n)
        sample = sample_shards(self.shards, min(n, max(32 * P, 10_000)), cfg.seed + 1)
        centroids = partition_centroids(sample, P, seed=cfg.seed)
        margin = dc.margin if dc.margin is not None else safe_margin(dc.threshold)
        groups = max(1, min(P, 4 * int(ray.cluster_resources().get("CPU", 1))))
        cref = ray.put(centroids)
        routed = [self.shards.route(i, cref, dc.spill, margin, groups) for i in range(len(self.shards.sizes))]
        stats = ray.get([r[-1] for r in routed])
        search = search_partitions.options(num_gpus=self.plan.task_resources.gpus) if self.plan.use_gpu else search_partitions
        submits = {
            g: partial(search.remote, threshold, dc.batch_rows, *[r[g] for r in routed], device=cfg.device, cap=cap)
            for g in range(groups)
        }
        results = self._gather(submits, control)
        pairs = merge_pairs(results[g][:3] for g in range(groups))
        capped = sum(st["capped"] for st in stats)
        placements = sum(st["placements"] for st in stats)
        return pairs, {
            "method": "partitioned",
            "partitions": P,
            "margin": round(margin, 6),
            "spill": dc.spill,
            "placements_per_row": round(placements / max(n, 1), 3),
            "capped_rows": capped,
            "exact": capped == 0 and margin >= safe_margin(dc.threshold),
            **({"candidates_exact": capped == 0 and margin >= safe_margin(threshold)} if threshold < dc.threshold else {}),
            "served": [results[g][3] for g in range(groups)],
        }

    # ------------------------------------------------------------------ label
    def _label(
        self,
        corpus: Corpus,
        unique: np.ndarray,
        vectors: np.ndarray,
        km: dict[str, np.ndarray],
        dd: dict[str, np.ndarray],
    ) -> dict[str, Any]:
        cfg, store = self.cfg, self.ctx.store
        lc = cfg.label
        control = self.ctx.control("label")
        control.report(0, 3)
        centroids, labels = km["centroids"], km["labels"]
        k = centroids.shape[0]
        sizes = np.bincount(labels, minlength=k)
        mapping = merge_map(centroids, sizes, lc.merge_threshold)
        themes = mapping[labels]
        n_themes = int(mapping.max()) + 1
        new_centroids = merged_centroids(centroids, sizes, mapping)
        distances = np.empty(len(themes), dtype=np.float32)
        for a in range(0, len(themes), DOC_BATCH):  # a block of the memory-mapped vectors at a time
            b = min(a + DOC_BATCH, len(themes))
            distances[a:b] = np.linalg.norm(vectors[a:b] - new_centroids[themes[a:b]], axis=1)
        control.report(1, 3)
        kept = dd["duplicate_of"] < 0
        sampled = 0
        if corpus.lengths[unique].max(initial=0) > 0:
            idx = np.flatnonzero(kept)
            idx = idx[keyword_sample(themes[idx], n_themes, lc.max_documents, cfg.seed)]
            sampled = len(idx)
            texts: list[str] = []
            for _, part in self._iter_texts(unique[idx]):
                texts.extend(part)
            kw = ctfidf_keywords(texts, themes[idx], n_themes, lc.keywords, lc.ngram_max)
            keywords, kw_scores, kw_lifts = kw.keywords, kw.scores, kw.lifts
        else:
            keywords, kw_scores, kw_lifts = ([[] for _ in range(n_themes)] for _ in range(3))
        control.report(2, 3)
        reps = representatives(themes, distances, kept, n_themes, lc.representatives)
        theme_list = assemble_themes(
            corpus, unique, themes, kept, mapping, KeywordSet(keywords, kw_scores, kw_lifts), reps, lc.label_words
        )
        store.save_json("label", "themes", theme_list)
        store.save_arrays("label", "result", themes=themes, distances=distances, centroids=new_centroids)
        control.report(3, 3)
        return {
            "device": "cpu",
            "themes": n_themes,
            "merged": int(k - n_themes),
            "keyword_documents": sampled,
            "label_lift": label_lift(kw_lifts),
        }

    # ------------------------------------------------------------------ write
    def _write(self, corpus: Corpus, unique: np.ndarray, themes: list[dict[str, Any]], manifest: dict[str, Any], k: int) -> dict[str, Any]:
        store = self.ctx.store
        lb = store.load_arrays("label", "result")
        dd = store.load_arrays("dedup", "result")
        counts = write_outputs(self.out, corpus, unique, lb["themes"], lb["distances"], dd, themes)
        embedded = not self.ctx.stages.get("embed", {}).get("skipped")
        write_model(self.out, lb["centroids"], self.cfg.embed.model if embedded else None)
        stages = {name: self.ctx.stages[name] for name in STAGES if name in self.ctx.stages}
        manifest.update(
            build_manifest(
                public_config(self.cfg),
                _versions(),
                stages,
                k,
                len(themes),
                counts,
                corpus.bad,
                self.cfg.read.max_bad_examples,
                ["manifest.json", "themes.json", "documents.parquet", "duplicates.parquet", MODEL_FILE],
            )
        )
        return {"device": "cpu", **counts}


def _todo_blocks(window: list[tuple[int, str, str]], rows: int) -> list[Any]:
    """Texts still to embed as object-store blocks of ``rows``, longest first (a batch then holds
    texts of similar length and pads little); Ray spills them to disk if memory runs short."""
    window.sort(key=lambda w: -len(w[2]))
    refs = []
    for a in range(0, len(window), rows):
        pos, keys, texts = zip(*window[a : a + rows])
        refs.append(ray.put(pa.table({"row": np.asarray(pos, np.int64), "key": list(keys), "text": list(texts)})))
    return refs


def _stored_vectors_problem(path: Path, rows: int | None, dim: int | None) -> str | None:
    """What is wrong with a stage's ``vectors.npy`` (missing, unreadable, or rows that are not
    finite unit vectors of ``dim`` columns, ``rows`` of them when given), or None."""
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return f"{path} is not readable ({exc})"
    expected = rows if rows is not None else (vectors.shape[0] if vectors.ndim else 0)
    problem = check_stored(vectors, expected, dim)
    return None if problem is None else f"{path}: {problem}"


def _count_status(corpus: Corpus) -> dict[str, int]:
    out: dict[str, int] = {"documents": len(corpus.ids), "bad": len(corpus.bad)}
    for s in corpus.status:
        out[s] = out.get(s, 0) + 1
    return out


def run(
    cfg: RunConfig,
    stop: threading.Event | None = None,
    sink: Callable[[str, int, int], None] | None = None,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
) -> RunResult:
    return Driver(cfg, stop, sink, on_stage).run()


__all__ = ["Driver", "InputError", "OutputInUse", "RunError", "RunResult", "run"]

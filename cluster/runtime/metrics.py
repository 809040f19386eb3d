"""Run metrics: a prometheus-client registry fed by the driver's hooks.

:class:`RunMetrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the global
one), so several runs in one process, or the tests, do not see each other's values. Pass its
:meth:`~RunMetrics.sink` and :meth:`~RunMetrics.on_stage` to :func:`cluster.driver.run`; it
forwards every progress event to the sink it wraps (the progress display). While a run goes,
:meth:`~RunMetrics.serve` exposes the registry over HTTP for Prometheus to scrape; at the end,
:meth:`~RunMetrics.write` leaves the final values in the text exposition format (``metrics.prom``).

Ray's own metrics (tasks, actors, object store, per node) are exported by every Ray node; a
Prometheus finds them through the file Ray writes, ``/tmp/ray/prom_metrics_service_discovery.json``
(see ``cluster/prometheus/prometheus.yml``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    Info,
    start_http_server,
    write_to_textfile,
)

from theme_engine.engine.device import fallback_counts

log = logging.getLogger(__name__)

PREFIX = "theme_engine_"
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
METRICS_FILE = "metrics.prom"

Sink = Callable[[str, int, int], None]


@dataclass
class MetricsServer:
    """A running metrics endpoint; :meth:`close` stops it and frees the port."""

    server: Any
    thread: threading.Thread
    addr: str
    port: int
    _closed: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunMetrics:
    """Metrics of one run. ``forward`` receives every progress event after it is recorded."""

    def __init__(self, forward: Sink | None = None, registry: CollectorRegistry | None = None) -> None:
        self.forward = forward
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._devices: dict[str, set[str]] = {}
        self._stage_fallbacks: dict[str, dict[str, int]] = {}  # stage record -> fallbacks it reported, per stage
        self._progress: dict[str, tuple[int, int]] = {}
        self._embed_start: tuple[float, int] | None = None
        self._servers: list[MetricsServer] = []
        r = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labelnames=labels, registry=r)

        # the run
        self.run_info = Info(PREFIX + "run", "the run's settings and software version", registry=r)
        self.run_status = gauge("run_status", "1 for the run's current status (running, succeeded, failed, interrupted), 0 for the others", ("status",))
        self.run_start = gauge("run_start_time_seconds", "when the run started (unix time)")
        self.run_end = gauge("run_end_time_seconds", "when the run ended (unix time); absent while it runs")
        # stages
        self.stage_seconds = gauge("stage_duration_seconds", "seconds the stage took in this run (0 when it was reused)", ("stage",))
        self.stage_reused = gauge("stage_reused", "1 when the stage's persisted output was reused, 0 when it ran", ("stage",))
        self.stage_done = gauge("stage_progress_done", "items the stage has finished (batches, documents, iterations)", ("stage",))
        self.stage_total = gauge("stage_progress_total", "items the stage will finish in all (0: not known yet)", ("stage",))
        self.stage_device = gauge("stage_device", "1 for each device a stage ran on (info-style)", ("stage", "device"))
        self.gpu_fallbacks = gauge(
            "gpu_fallbacks", "GPU paths that fell back to the CPU (in the driver process, and those the stages' actors and tasks reported)", ("stage",)
        )
        # documents
        self.docs_read = gauge("documents_read", "documents read from the input (bad records excluded)")
        self.docs_ok = gauge("documents_unique", "distinct documents kept after filtering and exact-duplicate collapse")
        self.docs_filtered = gauge("documents_filtered", "documents dropped by the quality filter (empty, too short, too long)")
        self.docs_exact = gauge("documents_exact_duplicates", "documents whose normalised text repeats an earlier one")
        self.docs_bad = gauge("documents_bad", "input records that could not be parsed")
        self.docs_embedded = gauge("documents_embedded", "documents embedded by the model in this run (cache misses)")
        self.docs_per_second = gauge("embed_documents_per_second", "embedding throughput: documents embedded per second")
        self.cache_hits = gauge("cache_hits", "embeddings found in the cache")
        self.cache_misses = gauge("cache_misses", "embeddings not in the cache (computed)")
        self.cache_invalid = gauge(
            "cache_invalid", "cached embeddings that failed validation (not finite, not unit length, wrong dimension): re-embedded and replaced"
        )
        # clustering and duplicates
        self.k = gauge("k", "number of k-means clusters")
        self.km_iterations = gauge("kmeans_iterations", "k-means (Lloyd) iterations run")
        self.km_inertia = gauge("kmeans_inertia", "k-means inertia: sum of squared distances to the nearest centroid")
        self.km_converged = gauge("kmeans_converged", "1 when k-means converged within its tolerance")
        self.dup_pairs = gauge("duplicate_pairs", "near-duplicate pairs found at the cosine threshold")
        self.dup_groups = gauge("duplicate_groups", "near-duplicate groups")
        self.near_dups = gauge("near_duplicates", "documents marked as near-duplicates of a kept one")
        self.themes = gauge("themes", "themes after merging near-identical clusters")
        self.label_lift = gauge("label_lift_median", "median over themes of the label's first-keyword lift, P(theme | word) / P(theme)")

    # ------------------------------------------------------------------ run
    def start(self, **info: Any) -> None:
        """Mark the run as running now; ``info`` (strings) goes into ``theme_engine_run_info``."""
        from importlib import metadata

        labels = {k: str(v) for k, v in info.items() if v is not None}
        try:
            labels.setdefault("version", metadata.version("theme-engine"))
        except metadata.PackageNotFoundError:
            labels.setdefault("version", "unknown")
        self.run_info.info(labels)
        self.run_start.set(time.time())
        self._set_status("running")

    def finish(self, status: str) -> None:
        """Mark the run as ended with ``status`` (succeeded, failed or interrupted)."""
        self._update_fallbacks()
        self.run_end.set(time.time())
        self._set_status(status)

    def _set_status(self, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
        for s in RUN_STATUSES:
            self.run_status.labels(status=s).set(1 if s == status else 0)

    # ------------------------------------------------------------------ driver hooks
    def sink(self, stage: str, done: int, total: int) -> None:
        """A progress event (the driver's ``sink``): recorded, then forwarded."""
        with self._lock:
            self._progress[stage] = (done, total)
        self.stage_done.labels(stage=stage).set(done)
        self.stage_total.labels(stage=stage).set(total)
        if stage == "embed":
            self._embed_rate(done)
        if self.forward is not None:
            self.forward(stage, done, total)

    __call__ = sink

    def _embed_rate(self, done: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._embed_start is None:
                # the first event counts the cache hits: the rate is measured from there
                self._embed_start = (now, done)
                return
            t0, d0 = self._embed_start
        if now > t0 and done > d0:
            self.docs_per_second.set((done - d0) / (now - t0))

    def on_stage(self, name: str, record: dict[str, Any]) -> None:
        """A stage's record when it finishes or is reused (the driver's ``on_stage``)."""
        reused = bool(record.get("reused"))
        self.stage_reused.labels(stage=name).set(1 if reused else 0)
        self.stage_seconds.labels(stage=name).set(0.0 if reused else float(record.get("seconds", 0.0)))
        with self._lock:  # a finished stage shows done == total (1 of 1 when it reported nothing)
            done, total = self._progress.get(name, (0, 0))
            self._progress[name] = (max(done, total, 1),) * 2
        self.stage_done.labels(stage=name).set(max(done, total, 1))
        self.stage_total.labels(stage=name).set(max(done, total, 1))
        self._set_devices(name, str(record.get("device", "")))
        reported: dict[str, int] = {}
        for f in record.get("fallbacks") or []:  # what the stage's actors and tasks fell back for
            st = str(f.get("stage", name))
            reported[st] = reported.get(st, 0) + int(f.get("count", 1))
        with self._lock:
            self._stage_fallbacks[name] = reported
        handler = getattr(self, f"_record_{name}", None)
        if handler is not None:
            handler(record, reused)
        self._update_fallbacks()

    def _set_devices(self, stage: str, device: str) -> None:
        new = {d.strip() for d in device.split(",") if d.strip()} or {"none"}
        with self._lock:
            old = self._devices.get(stage, set())
            self._devices[stage] = new
        for d in old - new:
            self.stage_device.remove(stage, d)
        for d in new:
            self.stage_device.labels(stage=stage, device=d).set(1)

    def _update_fallbacks(self) -> None:
        totals = dict(fallback_counts())
        with self._lock:
            for reported in self._stage_fallbacks.values():
                for stage, count in reported.items():
                    totals[stage] = totals.get(stage, 0) + count
        for stage, count in totals.items():
            self.gpu_fallbacks.labels(stage=stage).set(count)

    def _record_read(self, rec: dict[str, Any], reused: bool) -> None:
        self.docs_read.set(rec.get("documents", 0))
        self.docs_bad.set(rec.get("bad", 0))
        self.docs_ok.set(rec.get("ok", 0))
        self.docs_exact.set(rec.get("exact_duplicate", 0))
        self.docs_filtered.set(sum(v for k, v in rec.items() if k.startswith("filtered") and isinstance(v, (int, float))))

    def _record_embed(self, rec: dict[str, Any], reused: bool) -> None:
        cache = rec.get("cache") or {}
        embedded = 0 if reused else int(rec.get("embedded", 0))
        self.docs_embedded.set(embedded)
        if reused:  # nothing was looked up in the cache in this run
            self.cache_hits.set(0)
            self.cache_misses.set(0)
            self.cache_invalid.set(0)
            self.docs_per_second.set(0)
            return
        self.cache_hits.set(cache.get("hits", 0))
        self.cache_misses.set(cache.get("misses", 0))
        self.cache_invalid.set(cache.get("invalid", 0))
        seconds = float(rec.get("seconds", 0.0))
        if embedded and seconds > 0:
            self.docs_per_second.set(embedded / seconds)

    def _record_select_k(self, rec: dict[str, Any], reused: bool) -> None:
        if "k" in rec:
            self.k.set(rec["k"])

    def _record_kmeans(self, rec: dict[str, Any], reused: bool) -> None:
        if "k" in rec:
            self.k.set(rec["k"])
        self.km_iterations.set(rec.get("iterations", 0))
        self.km_inertia.set(float(rec.get("inertia", 0.0)))
        self.km_converged.set(1 if rec.get("converged") else 0)

    def _record_dedup(self, rec: dict[str, Any], reused: bool) -> None:
        self.dup_pairs.set(rec.get("pairs", 0))
        self.dup_groups.set(rec.get("groups", 0))
        self.near_dups.set(rec.get("near_duplicates", 0))

    def _record_label(self, rec: dict[str, Any], reused: bool) -> None:
        self.themes.set(rec.get("themes", 0))
        median = (rec.get("label_lift") or {}).get("median")
        if median is not None:
            self.label_lift.set(median)

    def result_totals(self, manifest: dict[str, Any]) -> None:
        """The documents, themes and duplicates of the whole result, as its manifest counts them
        (after an update: the grown result's, not the update's new documents only)."""
        docs = manifest.get("documents") or {}
        self.docs_read.set(docs.get("input", 0) - docs.get("bad_records", 0))
        self.docs_ok.set(docs.get("embedded", 0))
        self.docs_filtered.set(docs.get("filtered", 0))
        self.docs_exact.set(docs.get("exact_duplicates", 0))
        self.docs_bad.set(docs.get("bad_records", 0))
        self.near_dups.set(docs.get("near_duplicates", 0))
        self.themes.set(manifest.get("themes", 0))

    # ------------------------------------------------------------------ exposition
    def names(self) -> set[str]:
        """Every sample name this registry can expose (as used in PromQL queries)."""
        out: set[str] = set()
        for family in self.registry.collect():
            out.add(family.name)
            out.update(s.name for s in family.samples)
        return out

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve the registry at ``http://addr:port/metrics`` from a daemon thread (port 0: a free
        one). Returns the server; :meth:`MetricsServer.close` (or :meth:`close`) stops it."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        handle = MetricsServer(server, thread, addr, int(server.server_address[1]))
        self._servers.append(handle)
        log.info("metrics: serving %s", handle.url)
        return handle

    def close(self) -> None:
        """Stop every endpoint :meth:`serve` started."""
        while self._servers:
            self._servers.pop().close()

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the text exposition format to ``path`` atomically (a temp file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), self.registry)
        return path


__all__ = ["METRICS_FILE", "RUN_STATUSES", "MetricsServer", "RunMetrics"]

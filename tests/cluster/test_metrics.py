"""Run metrics: what RunMetrics records from the driver's hooks, its text file, its HTTP endpoint,
and the whole job through the CLI with ``--metrics-port``."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from theme_engine.cluster.commands import cli
from theme_engine.cluster.runtime.metrics import RunMetrics
from theme_engine.engine.device import Device, GpuUnavailable, run_with_fallback

STAGES = ["read", "embed", "select_k", "kmeans", "dedup", "label", "layout", "write", "index", "report"]

RECORDS = {
    "read": {"seconds": 0.8, "device": "cpu", "documents": 120, "bad": 3, "ok": 100, "exact_duplicate": 12,
             "filtered_too_short": 5, "filtered_empty": 3},
    "embed": {"seconds": 2.0, "device": "cpu", "documents": 100, "embedded": 60,
              "cache": {"hits": 40, "misses": 60, "enabled": True}, "model": "m"},
    "select_k": {"seconds": 1.1, "device": "cpu", "k": 7, "criterion": "silhouette"},
    "kmeans": {"seconds": 0.5, "device": "cpu,cuda", "k": 7, "iterations": 11, "inertia": 42.5, "converged": True},
    "dedup": {"seconds": 0.3, "device": "cpu", "pairs": 9, "groups": 4, "near_duplicates": 6},
    "label": {"seconds": 0.2, "device": "cpu", "themes": 6, "merged": 1, "label_lift": {"median": 4.5, "min": 2.0, "themes": 6}},
    "layout": {"seconds": 0.4, "device": "cpu", "documents": 100},
    "write": {"seconds": 0.1, "device": "cpu", "input": 120},
    "index": {"seconds": 0.1, "device": "cpu", "points": 100},
    "report": {"seconds": 0.2, "device": "cpu", "bytes": 5_000_000},
}


def _value(m: RunMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def _recorded(forward=None) -> RunMetrics:
    m = RunMetrics(forward=forward)
    m.start(device="auto")
    m.sink("embed", 40, 100)
    m.sink("embed", 100, 100)
    for name in STAGES:
        m.on_stage(name, RECORDS[name])
    return m


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_records_stage_records_and_forwards_progress() -> None:
    events: list[tuple[str, int, int]] = []
    m = _recorded(forward=lambda *e: events.append(e))
    assert events == [("embed", 40, 100), ("embed", 100, 100)], "progress events reach the display unchanged"
    for name in STAGES:
        assert _value(m, "theme_engine_stage_duration_seconds", stage=name) == RECORDS[name]["seconds"]
        assert _value(m, "theme_engine_stage_reused", stage=name) == 0
        done = _value(m, "theme_engine_stage_progress_done", stage=name)
        assert done is not None and done == _value(m, "theme_engine_stage_progress_total", stage=name) >= 1
    assert _value(m, "theme_engine_stage_progress_total", stage="embed") == 100
    assert _value(m, "theme_engine_documents_read") == 120
    assert _value(m, "theme_engine_documents_bad") == 3
    assert _value(m, "theme_engine_documents_unique") == 100
    assert _value(m, "theme_engine_documents_filtered") == 8
    assert _value(m, "theme_engine_documents_exact_duplicates") == 12
    assert _value(m, "theme_engine_documents_embedded") == 60
    assert _value(m, "theme_engine_embed_documents_per_second") == pytest.approx(30.0)
    assert _value(m, "theme_engine_cache_hits") == 40 and _value(m, "theme_engine_cache_misses") == 60
    assert _value(m, "theme_engine_k") == 7
    assert _value(m, "theme_engine_kmeans_iterations") == 11
    assert _value(m, "theme_engine_kmeans_inertia") == 42.5
    assert _value(m, "theme_engine_kmeans_converged") == 1
    assert _value(m, "theme_engine_duplicate_pairs") == 9 and _value(m, "theme_engine_duplicate_groups") == 4
    assert _value(m, "theme_engine_near_duplicates") == 6
    assert _value(m, "theme_engine_themes") == 6
    assert _value(m, "theme_engine_label_lift_median") == 4.5
    # device per stage: one series per device, 1
    assert _value(m, "theme_engine_stage_device", stage="kmeans", device="cpu") == 1
    assert _value(m, "theme_engine_stage_device", stage="kmeans", device="cuda") == 1
    assert _value(m, "theme_engine_stage_device", stage="read", device="cpu") == 1
    assert _value(m, "theme_engine_stage_device", stage="read", device="cuda") is None
    # run status and start time
    assert _value(m, "theme_engine_run_status", status="running") == 1
    assert _value(m, "theme_engine_run_status", status="succeeded") == 0
    assert abs(_value(m, "theme_engine_run_start_time_seconds") - time.time()) < 60
    assert _value(m, "theme_engine_run_end_time_seconds") == 0
    m.finish("succeeded")
    assert _value(m, "theme_engine_run_status", status="running") == 0
    assert _value(m, "theme_engine_run_status", status="succeeded") == 1
    assert _value(m, "theme_engine_run_end_time_seconds") >= _value(m, "theme_engine_run_start_time_seconds")
    with pytest.raises(ValueError, match="run status"):
        m.finish("done")


def test_reused_stages_and_device_changes() -> None:
    m = _recorded()
    m.on_stage("kmeans", {**RECORDS["kmeans"], "device": "cpu", "reused": True})
    assert _value(m, "theme_engine_stage_device", stage="kmeans", device="cpu") == 1
    assert _value(m, "theme_engine_stage_device", stage="kmeans", device="cuda") is None, "a stale device series is removed"
    assert _value(m, "theme_engine_stage_reused", stage="kmeans") == 1
    assert _value(m, "theme_engine_stage_duration_seconds", stage="kmeans") == 0, "a reused stage took no time in this run"
    assert _value(m, "theme_engine_kmeans_iterations") == 11, "its results still describe the run"
    m.on_stage("embed", {**RECORDS["embed"], "reused": True})
    assert _value(m, "theme_engine_cache_hits") == 0 and _value(m, "theme_engine_documents_embedded") == 0
    m.on_stage("embed", {"seconds": 0.0, "device": "none", "skipped": "precomputed vectors", "documents": 5})
    assert _value(m, "theme_engine_stage_device", stage="embed", device="none") == 1


def test_gpu_fallbacks_are_counted_per_stage() -> None:
    stage = "metrics-test-stage"

    def work(device: Device) -> str:
        if device.kind == "cuda":
            raise GpuUnavailable("test: no GPU here")
        return device.kind

    m = RunMetrics()
    assert _value(m, "theme_engine_gpu_fallbacks", stage=stage) is None
    fake_gpu = Device(kind="cuda", xp=np, ordinal=0)
    assert run_with_fallback(stage, fake_gpu, work)[0] == "cpu"
    assert run_with_fallback(stage, fake_gpu, work)[0] == "cpu"
    m.on_stage("kmeans", RECORDS["kmeans"])
    assert _value(m, "theme_engine_gpu_fallbacks", stage=stage) == 2


def test_live_embedding_rate_from_progress_events(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr("theme_engine.cluster.runtime.metrics.time.monotonic", lambda: next(clock))
    m = RunMetrics()
    m.sink("embed", 50, 250)  # cache hits: the rate counts from here
    m.sink("embed", 90, 250)
    assert _value(m, "theme_engine_embed_documents_per_second") == pytest.approx(20.0)
    m.sink("embed", 210, 250)
    assert _value(m, "theme_engine_embed_documents_per_second") == pytest.approx(40.0)


def test_write_is_parseable_text_exposition(tmp_path: Path) -> None:
    m = _recorded()
    m.finish("interrupted")
    path = m.write(tmp_path / "sub" / "metrics.prom")
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.prom"], "no temp file is left behind"
    samples = _samples(path.read_text())
    assert samples[("theme_engine_k", frozenset())] == 7
    assert samples[("theme_engine_stage_duration_seconds", frozenset({("stage", "embed")}))] == 2.0
    assert samples[("theme_engine_run_status", frozenset({("status", "interrupted")}))] == 1
    assert samples[("theme_engine_stage_device", frozenset({("stage", "kmeans"), ("device", "cuda")}))] == 1
    info = [labels for (name, labels) in samples if name == "theme_engine_run_info"]
    assert info and ("device", "auto") in info[0] and any(k == "version" for k, _ in info[0])
    # a registry of its own: nothing from the process-wide default registry
    assert not any(name.startswith(("python_", "process_")) for name, _ in samples)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def test_http_endpoint_serves_the_registry_and_stops() -> None:
    m = _recorded()
    server = m.serve(0)
    try:
        assert server.addr == "127.0.0.1" and server.port > 0
        samples = _samples(_get(server.url))
        assert samples[("theme_engine_kmeans_inertia", frozenset())] == 42.5
        assert samples[("theme_engine_documents_read", frozenset())] == 120
        m.on_stage("label", {**RECORDS["label"], "themes": 5})
        assert _samples(_get(server.url))[("theme_engine_themes", frozenset())] == 5, "values are live"
    finally:
        m.close()
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(server.url)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Scraper(threading.Thread):
    """Scrapes a metrics URL every 0.1 s until stopped; keeps the last text it got."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.done = threading.Event()
        self.texts: list[str] = []

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                self.texts.append(_get(self.url))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                continue


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_cli_run_serves_metrics_and_writes_metrics_prom(ray_session, corpus: Path, tmp_path: Path, restore_signals) -> None:
    out = tmp_path / "out"
    port = _free_port()
    scraper = _Scraper(f"http://127.0.0.1:{port}/metrics")
    scraper.start()
    try:
        code = cli.main([
            "run", str(corpus), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--k", "4", "--set", "read.id_field=id", "--num-cpus", "2", "--metrics-port", str(port),
        ])
    finally:
        scraper.done.set()
        scraper.join(5)
    assert code == 0
    # served during the run, from 127.0.0.1, with the run's status "running"
    assert scraper.texts, "the metrics endpoint was never reachable during the run"
    live = _samples(scraper.texts[0])
    assert live[("theme_engine_run_status", frozenset({("status", "running")}))] == 1
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(scraper.url)  # stopped with the run
    samples = _samples((out / "metrics.prom").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in STAGES:
        seconds = samples[("theme_engine_stage_duration_seconds", frozenset({("stage", stage)}))]
        assert seconds == pytest.approx(manifest["stages"][stage]["seconds"])
        for device in manifest["stages"][stage]["device"].split(","):
            assert samples[("theme_engine_stage_device", frozenset({("stage", stage), ("device", device)}))] == 1
    n_input = len(corpus.read_text().splitlines())
    assert samples[("theme_engine_k", frozenset())] == 4 == manifest["k"]
    assert samples[("theme_engine_documents_read", frozenset())] == n_input
    assert samples[("theme_engine_documents_bad", frozenset())] == 0
    assert samples[("theme_engine_documents_embedded", frozenset())] == manifest["stages"]["embed"]["embedded"] > 0
    assert samples[("theme_engine_cache_misses", frozenset())] == manifest["cache"]["misses"]
    assert samples[("theme_engine_embed_documents_per_second", frozenset())] > 0
    assert samples[("theme_engine_kmeans_iterations", frozenset())] == manifest["kmeans"]["iterations"]
    assert samples[("theme_engine_duplicate_pairs", frozenset())] == manifest["dedup"]["pairs"]
    assert samples[("theme_engine_themes", frozenset())] == manifest["themes"]
    assert samples[("theme_engine_run_status", frozenset({("status", "succeeded")}))] == 1
    assert samples[("theme_engine_run_status", frozenset({("status", "running")}))] == 0


def test_cli_run_that_fails_still_writes_metrics_prom(ray_session, tmp_path: Path, restore_signals) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text("{oops\n[1, 2]\n")
    out = tmp_path / "out"
    code = cli.main(["run", str(path), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--num-cpus", "2"])
    assert code == 1
    samples = _samples((out / "metrics.prom").read_text())
    assert samples[("theme_engine_run_status", frozenset({("status", "failed")}))] == 1
    assert samples[("theme_engine_run_status", frozenset({("status", "running")}))] == 0
    assert samples[("theme_engine_documents_bad", frozenset())] == 2
    assert ("theme_engine_stage_duration_seconds", frozenset({("stage", "read")})) in samples

"""A local run is only ever local. ``ray start --head`` records its cluster as the machine's current
one in Ray's temp folder, and ``ray.init()`` without an address joins the cluster recorded there —
or fails, once that head died without ``ray stop`` and left the record behind. A run without an
address starts a Ray of its own with another head alive and after that head is killed; it joins the
head only when told to. Subprocesses: this test session has its own Ray."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.cluster.raylocal import LocalHead
from tests.conftest import DEMO

ROOT = Path(__file__).resolve().parents[2]
RECORD = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # what `ray start` writes, what `ray.init()` reads

JOIN = textwrap.dedent(
    """
    import json, sys
    from theme_engine.cluster.runtime import ray_session
    from theme_engine.engine.config import load_config
    import ray

    conn = ray_session.connect(load_config({"ray": {"address": sys.argv[1]}}).ray)
    print(json.dumps(conn.record()))
    ray.shutdown()
    """
)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture
def foreign_head():
    """A real second Ray head, recorded as the machine's current cluster (as ``ray start`` with
    Ray's default temp folder records it; this head keeps its files in a private one)."""
    saved = RECORD.read_text() if RECORD.exists() else None
    head = LocalHead(num_cpus=1)
    try:
        head.start()
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(head.gcs_address)
        yield head
    finally:
        head.stop()
        if saved is None:
            RECORD.unlink(missing_ok=True)
        else:
            RECORD.write_text(saved)


def _run(tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, dict]:
    corpus = tmp_path / "c.jsonl"
    if not corpus.exists():
        corpus.write_text("".join(DEMO.read_text().splitlines(keepends=True)[:60]))
    out = tmp_path / name
    res = subprocess.run(
        [sys.executable, "-m", "theme_engine.cluster.commands.cli", "run", str(corpus), "--out", str(out), "--k", "2", "--no-cache", "--num-cpus", "1",
         "--set", "layout.enabled=false", "--set", "report.enabled=false"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return res, json.loads((out / "manifest.json").read_text())


def test_a_run_without_an_address_never_joins_another_head(foreign_head: LocalHead, tmp_path: Path) -> None:
    res, manifest = _run(tmp_path, "alive")
    assert manifest["ray"]["how"] == "local" and manifest["ray"]["address"] != foreign_head.gcs_address
    assert "ran on a local Ray of its own on 127.0.0.1" in res.stdout
    # quiet success: nothing at warning level or above (Ray's token notice, its core worker's lines)
    loud = [line for line in res.stderr.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|^\[[^]]* [EWF] \d+ \d+\]", line)]
    assert not loud, loud

    # joining happens when the user names the cluster
    joined = subprocess.run([sys.executable, "-c", JOIN, foreign_head.gcs_address], cwd=ROOT, env=foreign_head.env(), capture_output=True, text=True, timeout=120)
    assert joined.returncode == 0, joined.stderr[-3000:]
    record = json.loads(joined.stdout.strip().splitlines()[-1])
    assert record["how"] == "joined" and record["address"] == foreign_head.gcs_address and record["cpus"] == 1

    assert not foreign_head.stop()  # the head dies without `ray stop`: its record outlives it
    assert RECORD.read_text().strip() == foreign_head.gcs_address
    res, manifest = _run(tmp_path, "dead")
    assert manifest["ray"]["how"] == "local"

"""Credentials in a Qdrant URL or a Ray address never reach the log, the manifest, the metrics or
any file a run writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from theme_engine.cluster.cli import main
from theme_engine.engine.config import load_config, public_config


def test_a_failing_run_with_a_password_in_the_qdrant_url_leaks_it_nowhere(ray_session, corpus: Path, tmp_path: Path, caplog, capsys) -> None:
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        code = main(["run", str(corpus), "--out", str(out), "--k", "3", "--qdrant-url", "http://me:hunter2@127.0.0.1:9"])
    assert code == 1
    assert "me:***@127.0.0.1:9" in caplog.text
    streams = capsys.readouterr()
    assert "hunter2" not in caplog.text + streams.out + streams.err
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "metrics.prom" for p in written)
    for path in written:
        assert b"hunter2" not in path.read_bytes(), f"{path} holds the password"


def test_the_manifest_config_hides_credentials_of_qdrant_and_ray() -> None:
    cfg = load_config({"cache": {"qdrant_url": "http://me:hunter2@10.0.0.2:6333"}, "ray": {"address": "ray://me:hunter2@10.0.0.1:10001"}})
    data = json.dumps(public_config(cfg))
    assert "hunter2" not in data
    assert "ray://me:***@10.0.0.1:10001" in data and "http://me:***@10.0.0.2:6333" in data

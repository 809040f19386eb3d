"""Inputs in an object store (``s3://``), read through pyarrow's filesystems on the driver and the
Ray workers, against a real S3-compatible server on 127.0.0.1 (moto's, ``s3local.py``) that checks
request signatures: the whole job and an update from the store, and the failures a user meets
(wrong credentials, a missing bucket, a dropped connection) in one line each."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.commands import cli
from theme_engine.cluster.runtime.driver import run
from theme_engine.cluster.runtime.update import update as grow
from theme_engine.cluster.runtime.update import update_config
from theme_engine.engine.corpus import InputError, expand_inputs, parse_task, plan_read_tasks
from s3local import S3Server  # tests/cluster/s3local.py

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, corpus: Path):
    """The server, its variables in this process's environment (so the Ray started below hands
    them to its workers, as a user's shell would), and a bucket ``corpus`` holding the test corpus
    as two JSONL parts under ``parts/`` (with a writer's ``_SUCCESS`` marker) and ``new.jsonl``
    (the last tenth, for an update)."""
    lines = corpus.read_text().splitlines(keepends=True)
    cut = len(lines) * 9 // 10
    local = tmp_path_factory.mktemp("s3-local")
    parts = local / "parts"
    parts.mkdir()
    (parts / "part-0.jsonl").write_text("".join(lines[: cut // 2]))
    (parts / "part-1.jsonl").write_text("".join(lines[cut // 2 : cut]))
    (local / "new.jsonl").write_text("".join(lines[cut:]))
    (local / "_SUCCESS").write_text("")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    with S3Server() as server:
        os.environ.update(server.env())
        server.bucket("corpus")
        for name in ("part-0.jsonl", "part-1.jsonl"):
            server.upload(parts / name, f"s3://corpus/parts/{name}")
        server.upload(local / "_SUCCESS", "s3://corpus/parts/_SUCCESS")
        server.upload(local / "new.jsonl", "s3://corpus/new.jsonl")
        server.local = local
        try:
            yield server
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def ray_s3(s3):
    """A local Ray started after the store's variables are set (its workers read the store)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, object_store_memory=400 * 1024 * 1024, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="te-s3-"), logging_level="WARNING", configure_logging=False)
    yield ray
    ray.shutdown()


def _cfg(make_config, inputs, out: Path, cache: Path, **over):
    return make_config(inputs, out, cache, read={"id_field": "id"}, kmeans={"k": 6, "tol": 0.0, "max_iter": 15}, **over)


def _rows(out: Path, name: str) -> dict:
    return pq.read_table(out / name).to_pydict()


def test_the_whole_job_and_an_update_read_from_the_store(ray_s3, s3, make_config, tmp_path: Path) -> None:
    # the same documents from a local folder and from the store's prefix (two files: two read
    # tasks on the workers) give the same result, with the same ids and sources
    local = _cfg(make_config, [s3.local / "parts"], tmp_path / "local", tmp_path / "cache")
    run(local)
    remote = _cfg(make_config, ["s3://corpus/parts/"], tmp_path / "remote", tmp_path / "cache")
    result = run(remote)
    a, b = _rows(tmp_path / "local", "documents.parquet"), _rows(tmp_path / "remote", "documents.parquet")
    assert a["id"] == b["id"] and len(a["id"]) > 200
    assert a["theme"] == b["theme"]
    assert a["source"] == b["source"] and b["source"][0].startswith("parts/part-0.jsonl:")
    assert _rows(tmp_path / "local", "duplicates.parquet") == _rows(tmp_path / "remote", "duplicates.parquet")
    assert result.manifest["stages"]["read"]["documents"] == len(a["id"])
    assert result.manifest["config"]["inputs"] == ["s3://corpus/parts/"]

    # unchanged objects: the read stage is reused (an object's identity is its size and mtime)
    again = run(_cfg(make_config, ["s3://corpus/parts/"], tmp_path / "remote", tmp_path / "cache"))
    assert again.manifest["stages"]["read"].get("reused")

    # an update whose new documents are in the store
    grow(update_config(tmp_path / "remote", ["s3://corpus/new.jsonl"]))
    grown = _rows(tmp_path / "remote", "documents.parquet")
    new_ids = [json.loads(line)["id"] for line in (s3.local / "new.jsonl").read_text().splitlines()]
    assert set(new_ids) <= set(grown["id"]) and len(grown["id"]) > len(b["id"])
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["updates"][-1]["inputs"][0]["name"] == "new.jsonl"


def test_wrong_credentials_a_missing_bucket_and_a_dropped_connection_in_one_line(s3, tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    # wrong secret: refused, named, and the secret is never shown
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(InputError) as err:
        expand_inputs(["s3://corpus/new.jsonl"])
    message = str(err.value)
    assert message.startswith("s3://corpus/new.jsonl: the object store at http://127.0.0.1:") and "refused the credentials" in message
    assert "AWS_SECRET_ACCESS_KEY" in message and "not-the-secret" not in message and "\n" not in message
    # the CLI: exit 2, one line, no traceback
    caplog.set_level(logging.ERROR)
    assert cli.main(["run", "s3://corpus/new.jsonl", "--out", str(tmp_path / "o1")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("refused the credentials" in e for e in errors) and not any("not-the-secret" in e for e in errors)
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)

    with pytest.raises(InputError, match=r"^s3://no-such-bucket: no such bucket \(from s3://no-such-bucket/x.jsonl\)$"):
        expand_inputs(["s3://no-such-bucket/x.jsonl"])
    with pytest.raises(InputError, match=r"^s3://corpus/missing.jsonl: no such file or directory$"):
        expand_inputs(["s3://corpus/missing.jsonl"])

    # a connection that drops between planning and reading: the read task names the object
    with S3Server() as other:
        monkeypatch.setenv("AWS_ENDPOINT_URL", other.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", other.key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", other.secret)
        other.bucket("gone")
        other.upload(s3.local / "new.jsonl", "s3://gone/new.jsonl")
        files = expand_inputs(["s3://gone/new.jsonl"])
        tasks = plan_read_tasks(files)
    with pytest.raises(InputError, match=r"^s3://gone/new.jsonl: cannot reach the object store at http://127.0.0.1:\d+ \(the connection failed or dropped\)"):
        list(parse_task(files[0], tasks[0], "text", "id"))


def test_precomputed_vectors_from_the_store_read_as_local_ones(s3, tmp_path: Path) -> None:
    import numpy as np
    import pyarrow as pa

    from theme_engine.engine.corpus import is_vector_input, read_vector_file

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 8)).astype(np.float32)
    pq.write_table(pa.table({"id": [f"v{i}" for i in range(50)], "vector": [r.tolist() for r in X]}), tmp_path / "v.parquet")
    np.save(tmp_path / "v.npy", X)
    s3.bucket("vectors")
    for name in ("v.parquet", "v.npy"):
        s3.upload(tmp_path / name, f"s3://vectors/{name}")
        local, remote = expand_inputs([tmp_path / name]), expand_inputs([f"s3://vectors/{name}"])
        assert is_vector_input(remote, "vector")
        a, b = read_vector_file(local[0], "vector", "text", "id"), read_vector_file(remote[0], "vector", "text", "id")
        assert a.ids == b.ids and np.array_equal(a.vectors, b.vectors)

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
    _ray_with()
    yield ray
    ray.shutdown()


def _ray_with(**options) -> None:
    import ray

    ray.init(
        num_cpus=2, object_store_memory=400 * 1024 * 1024, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="te-s3-"),
        logging_level="WARNING", configure_logging=False, **options,
    )  # fmt: skip


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


def _published(url: str) -> set[str]:
    """The names under ``url`` in the store (a dataset's parts as ``name/part``)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(url)
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return {f.path[len(root) + 1 :] for f in found if f.type == pafs.FileType.File}


def test_a_run_and_its_updates_publish_to_the_store(ray_s3, s3, make_config, tmp_path: Path, monkeypatch, caplog) -> None:
    """``--out s3://…``: the run works in a local copy under the cache folder and publishes each
    finished result there (a dataset part by part, by Ray tasks, the manifest last); ``Result.load`` reads it
    back from the store equal to the copy; an update of the URL grows the copy and publishes
    again; an upload the store refuses (to the driver or to the workers' tasks) is named in one
    line, and the same command publishes it later without computing anything again."""
    import pandas as pd

    from theme_engine.cluster.commands.api import Result
    from theme_engine.cluster.runtime.driver import RunError
    from theme_engine.cluster.runtime.update import NothingNew, run_folder

    s3.bucket("results")
    url, cache = "s3://results/runs/first", tmp_path / "cache"
    cfg = _cfg(make_config, [s3.local / "parts"], url, cache, output={"form": "parts"})
    local = Path(cfg.out)
    assert cfg.publish_to == url and local.is_relative_to(cache / "outputs" / "s3" / "results")
    run(cfg)
    names = _published(url)
    assert {"manifest.json", "themes.json", "model.npz", "report.html"} <= names
    assert any(n.startswith("documents.parquet/part-") for n in names) and any(n.startswith("duplicates.parquet/part-") for n in names)

    there, here = Result.load(url), Result.load(local)
    assert there.out is None and there.manifest == here.manifest and there.manifest["config"]["publish_to"] == url
    pd.testing.assert_frame_equal(there.documents, here.documents)
    pd.testing.assert_frame_equal(there.duplicates, here.duplicates)
    assert there.themes["label"].tolist() == here.themes["label"].tolist()
    n_run = len(there.documents)

    # an update named by the URL grows the local copy and publishes the grown result
    grow(update_config(url, ["s3://corpus/new.jsonl"], {"cache": {"dir": str(cache)}}))
    grown = Result.load(url)
    assert len(grown.documents) > n_run and len(grown.manifest["updates"]) == 1
    pd.testing.assert_frame_equal(grown.documents, Result.load(local).documents)

    # the store refuses the next upload: the update is committed in the copy, the message says how to publish it
    more = tmp_path / "more.jsonl"
    rows = [json.loads(line) for line in (s3.local / "new.jsonl").read_text().splitlines()[:5]]
    more.write_text("".join(json.dumps({"id": f"more-{r['id']}", "text": r["text"] + " Selah."}) + "\n" for r in rows))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(RunError) as err:
        grow(update_config(url, [more], {"cache": {"dir": str(cache)}}))
    assert "refused the credentials" in str(err.value) and "run the same command again to publish it" in str(err.value)
    assert "not-the-secret" not in str(err.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    assert len(Result.load(url).manifest["updates"]) == 1  # the store still holds the result before it

    # the Ray workers lack the credentials (the driver has them): the upload tasks' refusal is one line too
    import ray

    ray.shutdown()
    _ray_with(runtime_env={"env_vars": {"AWS_SECRET_ACCESS_KEY": "not-the-workers-secret"}})
    with pytest.raises(RunError) as err:
        grow(update_config(url, [more], {"cache": {"dir": str(cache)}}))
    line = str(err.value)
    assert "refused the credentials" in line and "\n" not in line and "Traceback" not in line and "not-the-workers-secret" not in line
    assert len(Result.load(url).manifest["updates"]) == 1
    ray.shutdown()
    _ray_with()

    # another machine is publishing to the URL (its lease, unexpired): this upload waits its turn, in one line
    _lease(s3, tmp_path, url, host="elsewhere", pid=1, expires_in=300)
    with pytest.raises(RunError, match=r"another process is publishing a result there \(elsewhere, pid 1, since .+\); .+run the same command again"):
        grow(update_config(url, [more], {"cache": {"dir": str(cache)}}))
    _drop_lease(url)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="theme_engine.cluster.runtime.driver"):
        with pytest.raises(NothingNew):  # nothing new to read: the committed update is published
            grow(update_config(url, [more], {"cache": {"dir": str(cache)}}))
    assert len(Result.load(url).manifest["updates"]) == 2
    published = [r for r in caplog.records if r.getMessage().startswith(f"published to {url}")]
    assert len(published) == 1 and published[0].args[4] >= 2  # the datasets' parts: by Ray tasks, not by the driver

    with pytest.raises(RunError, match=r"is not on this machine"):
        run_folder("s3://results/runs/never-made", {"cache": {"dir": str(cache)}})


def _lease(s3, tmp_path: Path, url: str, host: str, pid: int, expires_in: float, pids: str = "") -> None:
    """A lease object as another publisher leaves it (``pids``: its PID namespace)."""
    import time

    from theme_engine.engine.sources import LEASE_NAME

    body = tmp_path / f"lease-{host}-{pid}.json"
    now = time.time()
    lease = {"host": host, "pids": pids, "pid": pid, "token": f"t-{host}-{pid}", "since": now - 60, "expires": now + expires_in}
    body.write_text(json.dumps(lease))
    s3.upload(body, f"{url}/{LEASE_NAME}")


def _drop_lease(url: str) -> None:
    import pyarrow.fs as pafs

    from theme_engine.engine.sources import LEASE_NAME

    fs, root = pafs.FileSystem.from_uri(url)
    fs.delete_file(f"{root}/{LEASE_NAME}")


def test_a_publish_lease_keeps_a_second_upload_out_until_it_ends_or_expires(s3, tmp_path: Path) -> None:
    """The lease a publisher holds in the store: a second one (another host, or a live process
    here) is refused in one line naming the holder; released, it is gone; an expired lease, and on
    this host one whose process is gone, is taken over; a held lease is renewed past its ttl."""
    import socket
    import subprocess
    import sys
    import time

    from theme_engine.engine.sources import LEASE_NAME, PublishLease

    s3.bucket("leases")
    url = "s3://leases/r"
    first = PublishLease(url, ttl=0.9, settle=0.05).acquire()
    assert LEASE_NAME in _published(url)
    time.sleep(1.5)  # past its ttl: renewed every ttl / 3 while held
    busy = r"^s3://leases/r: another process is publishing a result there \(.+, pid \d+, since .+\); two uploads would mix their files$"
    with pytest.raises(InputError, match=busy):
        PublishLease(url, settle=0.05).acquire()
    first.release()
    assert LEASE_NAME not in _published(url)

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    here = os.stat("/proc/self/ns/pid").st_ino
    for host, pid, pids, expires_in, taken in (
        ("elsewhere", 1, "", -1, True),  # expired
        (socket.gethostname(), int(gone.stdout), str(here), 300, True),  # this host and namespace, its process gone
        (socket.gethostname(), int(gone.stdout), "another-container", 300, False),  # this hostname, another namespace
        ("elsewhere", 1, "", 300, False),  # another host, unexpired
    ):
        _lease(s3, tmp_path, url, host, pid, expires_in, pids)
        if taken:
            PublishLease(url, settle=0.05).acquire().release()
            assert LEASE_NAME not in _published(url)
        else:
            with pytest.raises(InputError, match=busy):
                PublishLease(url, settle=0.05).acquire()
            _drop_lease(url)


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


def test_a_published_result_replaces_the_one_before_whole(s3, tmp_path: Path) -> None:
    """``upload_result`` leaves in the store exactly the result it publishes: parts a dataset no
    longer has, a file that became a dataset (and back) and names the result lacks all go;
    ``download_result`` reads back what was published, and names a URL without a result."""
    from theme_engine.engine.sources import download_result, upload_result

    s3.bucket("swap")
    url, names = "s3://swap/r", ("manifest.json", "documents.parquet", "report.html")

    def result(name: str, parts: int | None, report: bool) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "manifest.json").write_text(json.dumps({"result": name}))
        if parts is None:
            (folder / "documents.parquet").write_text(f"{name} as one file")
        else:
            (folder / "documents.parquet").mkdir()
            for i in range(parts):
                (folder / "documents.parquet" / f"part-{i:05d}.parquet").write_text(f"{name} part {i}")
        if report:
            (folder / "report.html").write_text("<html></html>")
        return folder

    with pytest.raises(InputError, match=r"^s3://swap/r holds no finished theme-engine run \(no manifest.json\)$"):
        download_result(url, tmp_path / "none", names, "manifest.json")
    for name, parts, report in (("a", 3, True), ("b", None, False), ("c", 1, True), ("d", 2, False)):
        upload_result(result(name, parts, report), url, names, "manifest.json")
        want = {"manifest.json"} | ({"report.html"} if report else set())
        want |= {"documents.parquet"} if parts is None else {f"documents.parquet/part-{i:05d}.parquet" for i in range(parts)}
        assert _published(url) == want, name
        back = download_result(url, tmp_path / f"back-{name}", names, "manifest.json")
        assert json.loads((back / "manifest.json").read_text()) == {"result": name}
        got = sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file())
        assert got == sorted(want)


def test_an_endpoint_whose_port_holds_403_is_not_a_refusal() -> None:
    """A dropped connection to a store on port 40379 is named as such, not as refused credentials
    (an HTTP status is a number of its own, not digits of a port)."""
    from theme_engine.engine.sources import explain

    dropped = OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect to server (127.0.0.1:40379)")
    assert "cannot reach the object store" in explain(dropped, "s3://b/x")
    refused = OSError("AWS Error UNKNOWN (HTTP status 403) during HeadObject operation: No response body.")
    assert "refused the credentials" in explain(refused, "s3://b/x")

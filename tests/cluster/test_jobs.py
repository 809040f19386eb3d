"""Runs as Ray jobs on a real local head: ``ray job submit``, ``theme-engine submit | status | logs | stop``.

The head is this module's own ``ray start --head --block`` on 127.0.0.1 (free ports, private temp
dir), stopped by killing its processes — never ``ray stop``, which would end every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raylocal import LocalHead, free_port  # tests/cluster/raylocal.py

from theme_engine.cluster.commands import jobs as jobs_mod
from theme_engine.cluster.commands.jobs import JobError, Jobs, parse_progress

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "bible-verses.jsonl"

THEME_ENGINE = str(Path(sys.executable).parent / "theme-engine")
RUN_ARGS = ["--k", "3", "--id-field", "id", "--max-iter", "20"]


# ---------------------------------------------------------------------- without Ray
SAMPLE_LOG = """\
Running entrypoint for job raysubmit_x: python -m theme_engine.cluster.commands.cli run in.jsonl --out /o
03:17:34 INFO theme_engine.cluster.runtime.ray_session: connecting to Ray at 127.0.0.1:58985
theme-engine-progress {"stage":"read","done":0,"total":null,"reused":false,"time":"03:17:36"}
03:17:46 INFO theme_engine.progress: read: 300/300 (100%)
theme-engine-progress {"stage":"read","done":300,"total":300,"reused":false,"time":"03:17:46"}
03:17:46 INFO theme_engine.cluster.runtime.driver: embed: reusing the finished stage
theme-engine-progress {"stage":"embed","done":0,"total":null,"reused":true,"time":"03:17:46"}
03:17:59 INFO theme_engine.progress: kmeans: 0/100 (0%)
theme-engine-progress {"stage":"kmeans","done":0,"total":100,"reused":false,"time":"03:17:59"}
(MapWorker(MapBatches(EmbedBatch)) pid=123) theme-engine-progress {"stage":"kmeans","done":13,"total":100,"reused":false,"time":"03:18:00"}
03:18:01 INFO theme_engine.progress: kmeans: 99/100 (99%)
theme-engine-progress {"stage":"dedup","done":8,"total":8,"reused":false,"time":"03:18:02"}
theme-engine-progress {"stage":"label","done":1,"tot
03:18:03 INFO theme_engine.cluster.runtime.driver: select_k: chose k=3 from [2, 3]
"""


def test_parse_progress_keeps_the_last_line_per_stage() -> None:
    p = parse_progress(SAMPLE_LOG)
    assert list(p) == ["read", "embed", "kmeans", "dedup"]
    assert (p["read"].done, p["read"].total, p["read"].time) == (300, 300, "03:17:46")
    assert p["embed"].reused and p["embed"].describe().startswith("reused")
    assert (p["kmeans"].done, p["kmeans"].total) == (13, 100)
    assert p["dedup"].describe() == "8/8 (100%)"
    assert parse_progress("no progress here\n") == {}
    assert "label" not in p, "a cut record is skipped"
    # the human lines are for people: they are never parsed
    assert parse_progress("03:18:01 INFO theme_engine.progress: kmeans: 99/100 (99%)\n") == {}


def test_progress_records_are_written_in_a_ray_job_or_when_asked(monkeypatch, capsys) -> None:
    from theme_engine.cluster.runtime.progress import ProgressDisplay

    monkeypatch.delenv("THEME_ENGINE_PROGRESS_RECORDS", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    ProgressDisplay(live=False)("embed", 0, 10)
    assert "theme-engine-progress" not in capsys.readouterr().err, "an interactive run writes no records"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray's job supervisor gives a job's driver
    display = ProgressDisplay(live=False)
    display("embed", 0, 10)
    display("embed", 10, 10)
    display.reused("label")
    got = parse_progress(capsys.readouterr().err)
    assert (got["embed"].done, got["embed"].total) == (10, 10) and got["label"].reused


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert jobs_mod.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://a:8265")
    assert jobs_mod.resolve_address(None) == "http://a:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://b:8265")
    assert jobs_mod.resolve_address(None) == "http://b:8265"
    assert jobs_mod.resolve_address("http://c:8265") == "http://c:8265"
    with jobs_mod._address_env_cleared():  # Ray would let these override an explicit address
        assert "RAY_ADDRESS" not in os.environ and "RAY_API_SERVER_ADDRESS" not in os.environ
    assert os.environ["RAY_ADDRESS"] == "http://a:8265"


def test_job_command_entrypoint_and_exit_codes() -> None:
    cmd = jobs_mod._validate_job_command(["--", "run", "my corpus.jsonl", "--out", "/o", "--k", "3"])
    assert cmd == ["run", "my corpus.jsonl", "--out", "/o", "--k", "3"]
    assert jobs_mod.entrypoint(cmd) == "python -m theme_engine.cluster.commands.cli run 'my corpus.jsonl' --out /o --k 3"
    with pytest.raises(SystemExit):  # a usage error is caught here, not in the job's log
        jobs_mod._validate_job_command(["run", "x", "--no-such-flag"])
    with pytest.raises(JobError):
        jobs_mod._validate_job_command(["status", "raysubmit_x"])
    with pytest.raises(JobError):
        jobs_mod._validate_job_command(["--"])
    env = jobs_mod.runtime_env(ROOT, 30)
    assert env["working_dir"] == str(ROOT) and ".git" in env["excludes"]
    assert env["env_vars"]["RAY_JOB_STOP_SIGNAL"] == "SIGINT" and env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "30"
    assert [jobs_mod.exit_code(s, c) for s, c in [("SUCCEEDED", 0), ("STOPPED", None), ("FAILED", 2), ("FAILED", None)]] == [0, 130, 2, 1]


# ---------------------------------------------------------------------- on a real head
@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2, object_store_mb=300)
    h.start()
    try:
        yield h
    finally:
        left = h.stop()
        assert not left, f"processes of the test head left running: {left}"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for every job here (never the user's)."""
    return tmp_path_factory.mktemp("job-cache")


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    return subprocess.run([THEME_ENGINE, *args], check=False, capture_output=True, text=True, timeout=timeout, env=env)


def _status(head: LocalHead, job_id: str) -> dict:
    r = _cli("status", job_id, "--address", head.dashboard_url, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def ray_cli_run(head: LocalHead, corpus: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A run submitted with Ray's own ``ray job submit`` (which waits and prints the job's log)."""
    out = tmp_path_factory.mktemp("ray-cli") / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_AUTH_MODE"] = "token"  # Ray's own CLI sends the (default-on) token only in token mode
    cmd = [
        str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", head.dashboard_url,
        "--working-dir", str(ROOT), "--",
        "theme-engine", "run", str(corpus), "--out", str(out), "--cache-dir", str(cache_dir), *RUN_ARGS,
    ]  # fmt: skip
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=env), out


@pytest.mark.slow
def test_ray_job_submit_runs_the_cli(ray_cli_run, corpus: Path) -> None:
    r, out = ray_cli_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    m = json.loads((out / "manifest.json").read_text())
    assert m["k"] == 3 and m["documents"]["input"] == len(corpus.read_text().splitlines())


@pytest.mark.slow
def test_submit_status_logs(head: LocalHead, ray_cli_run, corpus: Path, cache_dir: Path) -> None:
    """The same run again through ``theme-engine submit``: it reuses every finished stage."""
    _, out = ray_cli_run
    assert (out / "manifest.json").is_file()
    r = _cli(
        "submit", "--address", head.dashboard_url, "--working-dir", str(ROOT), "--wait",
        "--", "run", str(corpus), "--out", str(out), "--cache-dir", str(cache_dir), *RUN_ARGS,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job_id = r.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "themes (k=3" in r.stdout  # --wait printed the job's log, the run's summary included

    st = _status(head, job_id)
    assert st["status"] == "SUCCEEDED" and st["driver_exit_code"] == 0
    assert "theme_engine.cluster.commands.cli run" in st["entrypoint"]
    for stage in ("read", "embed", "kmeans", "dedup", "label"):
        assert st["progress"][stage]["reused"] is True, (stage, st["progress"])

    text = _cli("status", job_id, "--address", head.dashboard_url)
    assert text.returncode == 0 and f"job {job_id}: SUCCEEDED" in text.stdout
    assert "embed     reused" in text.stdout

    logs = _cli("logs", job_id, "--address", head.dashboard_url)
    assert logs.returncode == 0
    assert "embed: reusing the finished stage" in logs.stdout and "outputs in" in logs.stdout
    assert parse_progress(logs.stdout).keys() == st["progress"].keys()
    follow = _cli("logs", job_id, "--address", head.dashboard_url, "--follow")  # an ended job: all of it, then exit
    assert follow.returncode == 0 and "outputs in" in follow.stdout


@pytest.mark.slow
def test_clear_errors(head: LocalHead) -> None:
    r = _cli("status", "raysubmit_nosuchjob", "--address", head.dashboard_url)
    assert r.returncode == 1 and "no job 'raysubmit_nosuchjob'" in r.stderr and "Traceback" not in r.stderr
    r = _cli("stop", "raysubmit_nosuchjob", "--address", head.dashboard_url)
    assert r.returncode == 1 and "no job" in r.stderr and "Traceback" not in r.stderr
    r = _cli("logs", "raysubmit_nosuchjob", "--address", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach the Ray dashboard" in r.stderr and "Traceback" not in r.stderr
    r = _cli("submit", "--address", head.dashboard_url, "--")
    assert r.returncode == 1 and "no command to submit" in r.stderr


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 demo verses: enough that embedding takes a while (seconds on two cores)."""
    rows = [json.loads(line) for line in DEMO.read_text().splitlines()[:1000]]
    path = tmp_path_factory.mktemp("big") / "verses.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows))
    return path


@pytest.fixture
def jobs_client(head: LocalHead):
    """The jobs client in this process, for quick polling (it turns on Ray's token mode here, as
    ``ray.init`` does; the environment variable is put back afterwards)."""
    saved = os.environ.get("RAY_AUTH_MODE")
    yield Jobs(head.dashboard_url)
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


@pytest.mark.slow
def test_stop_during_embed_then_resume(head: LocalHead, jobs_client: Jobs, big_corpus: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = ["run", str(big_corpus), "--out", str(out), "--cache-dir", str(cache), *RUN_ARGS]
    r = _cli("submit", "--address", head.dashboard_url, "--working-dir", str(ROOT), "--", *cmd)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()

    # wait until the embed stage has looked up the cache and handed the rest to the embedding
    # actors (its first block takes seconds to come back: the stop lands after one block or more)
    jobs = jobs_client
    deadline = time.monotonic() + 150
    while True:
        logs = jobs.logs(job_id)
        if "to embed" in logs and "embed" in parse_progress(logs):
            break
        status = str(jobs.info(job_id).status)
        assert status in ("PENDING", "RUNNING"), logs[-3000:]
        assert time.monotonic() < deadline, f"the embed stage did not start: {logs[-3000:]}"
        time.sleep(0.5)
    st = _status(head, job_id)
    assert st["status"] == "RUNNING"
    embed = st["progress"]["embed"]
    assert embed["total"] > 900 and embed["done"] < embed["total"], embed

    r = _cli("stop", job_id, "--address", head.dashboard_url, "--wait", "--timeout", "90")
    assert r.returncode == 0, r.stderr
    st = _status(head, job_id)
    assert st["status"] == "STOPPED", st
    logs = _cli("logs", job_id, "--address", head.dashboard_url).stdout
    # the run stopped itself between batches (Ray's stop signal for our jobs is SIGINT) and said so
    assert "SIGINT received: stopping after the current batch" in logs, logs[-3000:]
    assert "embed: stopped after" in logs and "resumable" in logs, logs[-3000:]
    assert not (out / "manifest.json").exists()
    assert (out / ".theme-engine").is_dir()

    r = _cli("submit", "--address", head.dashboard_url, "--working-dir", str(ROOT), "--wait", "--", *cmd)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["cache"]["hits"] > 0, m["cache"]  # what was embedded before the stop is reused
    assert m["cache"]["hits"] + m["cache"]["misses"] == m["stages"]["embed"]["documents"]
    assert m["stages"]["read"].get("reused") is True
    st = _status(head, r.stdout.splitlines()[0].strip())
    assert st["status"] == "SUCCEEDED" and st["progress"]["embed"]["done"] == st["progress"]["embed"]["total"]

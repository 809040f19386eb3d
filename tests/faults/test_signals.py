"""A run killed (kill -9) in the middle of embedding, of k-means or of the read tasks resumes, with
the same command, to the result of an uninterrupted run; a second Ctrl-C aborts at once with one
line and no traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.runtime.driver import run

ROOT = Path(__file__).resolve().parents[2]
KMEANS = {"k": 8, "tol": 0.0, "max_iter": 300, "checkpoint_every": 1}
PART_EMBEDDED = re.compile(r"embed: [1-9]\d*/\d+ \((?:[1-8]\d|[1-9])%\)")  # 1-89% done


@pytest.fixture(scope="module")
def verses(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """700 real verses: long enough to embed for a few seconds on two cores (the progress log,
    a line every 0.2 s here, then shows a stage part done)."""
    lines = (ROOT / "demo" / "bible-verses.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("verses") / "verses.jsonl"
    path.write_text("".join(lines[:700]))
    return path


class Cli:
    """``theme-engine run`` in a child process, its log read as it comes."""

    def __init__(self, args: list[str]) -> None:
        # a progress line every 0.2 s: a stop part-way through a stage is seen however fast the machine embeds
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "THEME_ENGINE_PROGRESS_SECONDS": "0.2"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "theme_engine.cluster.commands.cli", "run", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, seen, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not seen():
            assert self.proc.poll() is None, "the run ended early:\n" + "".join(self.lines[-30:])
            assert time.monotonic() < deadline, "timed out:\n" + "".join(self.lines[-30:])
            time.sleep(0.05)

    def finish(self, timeout: float = 300.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines)


def _args(corpus: Path, out: Path, cache: Path) -> list[str]:
    sets = [f"--set=kmeans.{key}={value}" for key, value in KMEANS.items() if key != "k"]
    return [str(corpus), "--id-field", "id", "--out", str(out), "--cache-dir", str(cache), "--k", str(KMEANS["k"]), "--address", _address(), *sets]


def _address() -> str:
    """The shared Ray's address: each CLI run here joins it as its own Ray job (a killed driver's
    tasks and actors end with its job) instead of starting a Ray of its own, which costs seconds."""
    import ray

    return ray.get_runtime_context().gcs_address


def _result(out: Path) -> tuple[list, list, int]:
    docs = pq.read_table(out / "documents.parquet", columns=["id", "theme"]).to_pylist()
    pairs = pq.read_table(out / "duplicates.parquet", columns=["id", "duplicate_of"]).to_pylist()
    iterations = json.loads((out / "manifest.json").read_text())["kmeans"]["iterations"]
    return docs, pairs, iterations


@pytest.fixture(scope="module")
def reference(ray_session, make_config, verses: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple, Path]:
    """The uninterrupted result, and a cache that holds every embedding (for the k-means cases)."""
    root = tmp_path_factory.mktemp("reference")
    cfg = make_config([verses], root / "out", root / "cache", read={"id_field": "id"}, kmeans=KMEANS)
    run(cfg)
    return _result(root / "out"), root / "cache"


def _stage_done(out: Path, stage: str) -> bool:
    return (out / ".theme-engine" / stage / "done.json").exists()


# The graceful stops are tested elsewhere: SIGINT mid-embed then resume is tests/cluster/test_jobs.py's
# stop-and-resume (Ray's stop signal for a job is SIGINT), SIGTERM's exit is tests/cluster/test_run.py's, and a
# stop mid-k-means resuming at its checkpoint is test_run.py's too; here the abrupt kill of each.
def test_killed_mid_embed_resumes_to_the_same_result(reference, verses: Path, tmp_path: Path) -> None:
    expected, _ = reference
    out, cache = tmp_path / "out", tmp_path / "cache"  # a cold cache: the model really runs
    first = Cli(_args(verses, out, cache))
    first.wait_for(lambda: PART_EMBEDDED.search(first.log) is not None)  # some batches embedded and cached
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL, first.log[-3000:]
    assert not _stage_done(out, "embed"), "the signal came after embedding finished"
    assert "Traceback" not in first.log
    second = Cli(_args(verses, out, cache))
    assert second.finish() == 0, second.log[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cache"]["hits"] > 0, "what was embedded before the stop comes from the cache"
    assert manifest["cache"]["misses"] > 0
    assert _result(out) == expected


def test_killed_mid_kmeans_resumes_to_the_same_result(reference, verses: Path, tmp_path: Path) -> None:
    expected, cache = reference
    out = tmp_path / "out"
    first = Cli(_args(verses, out, cache))
    first.wait_for(lambda: (out / ".theme-engine" / "kmeans" / "checkpoint.npz").exists())
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL, first.log[-3000:]
    assert not _stage_done(out, "kmeans"), "the signal came after k-means finished"
    second = Cli(_args(verses, out, cache))
    assert second.finish() == 0, second.log[-3000:]
    assert "kmeans: resuming at iteration" in second.log
    assert _result(out) == expected


def test_a_second_ctrl_c_aborts_at_once_with_one_line(reference, verses: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = Cli(_args(verses, out, tmp_path / "cache"))
    first.wait_for(lambda: "to embed" in first.log)
    first.proc.send_signal(signal.SIGINT)
    first.wait_for(lambda: "Ctrl-C again to abort" in first.log)
    first.proc.send_signal(signal.SIGINT)
    assert first.finish(timeout=60) == 130
    assert "Traceback" not in first.log and "KeyboardInterrupt" not in first.log
    assert "aborted: the stages finished so far and every embedding already cached are kept" in first.log


def test_a_second_ctrl_c_inside_an_import_is_delivered_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised inside the import machinery, KeyboardInterrupt can land in a module-lock callback
    that prints a traceback and swallows it: the CLI delivers it again once out of the import."""
    import importlib

    from theme_engine.cluster.commands.cli import _in_import

    (tmp_path / "te_frame_probe.py").write_text("import sys\nFRAME = sys._getframe()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = importlib.import_module("te_frame_probe")
    assert _in_import(probe.FRAME)  # a frame of a module being imported
    assert not _in_import(sys._getframe())  # this test's own frame


ROWS = 40  # per file: the read's 60 tasks take seconds on two cores; what follows it, little
PART_READ = re.compile(r"read: ([1-9]\d*)/(\d+) ")  # some of the read tasks done


@pytest.fixture(scope="module")
def vector_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """60 Parquet files of 40 rows (id, text, 32-d vector from 8 loose clusters): 60 read
    tasks, a few seconds of reading on two cores."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(5)
    centers = rng.standard_normal((8, 32)).astype(np.float32)
    folder = tmp_path_factory.mktemp("vector-files")
    paths = []
    for f in range(60):
        label = rng.integers(0, 8, ROWS)
        X = centers[label] + rng.standard_normal((ROWS, 32)).astype(np.float32)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 32)
        texts = [f"topic {c} words {' '.join(f'w{c}x{k}' for k in rng.integers(0, 30, 10))}" for c in label.tolist()]
        path = folder / f"part-{f:03d}.parquet"
        pq.write_table(pa.table({"id": [f"f{f}r{r}" for r in range(ROWS)], "text": texts, "vector": vec}), path)
        paths.append(str(path))
    return paths


def test_killed_mid_read_tasks_resumes_to_the_same_result(ray_session, make_config, vector_files: list[str], tmp_path: Path) -> None:
    """kill -9 of the driver while Ray tasks read the inputs and write their parts: the next run
    reads again over what they left and gives the uninterrupted result."""
    cfg = make_config(vector_files, tmp_path / "ref", tmp_path / "cache", read={"id_field": "id"}, kmeans={"k": 8})
    run(cfg)
    expected = _result(tmp_path / "ref")
    out = tmp_path / "out"
    args = [*vector_files, "--id-field", "id", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--k", "8", "--address", _address()]
    first = Cli(args)
    first.wait_for(lambda: any(int(d) < int(t) for d, t in PART_READ.findall(first.log)))
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    assert not _stage_done(out, "read"), "the signal came after reading finished"
    assert list((out / ".theme-engine" / "read" / "vectors").glob("part-*.npy")), "no read task had written its part"
    second = Cli(args)
    assert second.finish() == 0, second.log[-3000:]
    assert _result(out) == expected

"""``--out`` is owned: a foreign non-empty folder is refused (unless --force), one run at a time
holds it (a second is told who), and its files are replaced atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.commands.cli import main
from theme_engine.cluster.runtime.driver import Driver, OutputInUse, RunError, run
from theme_engine.cluster.runtime.state import OutLock, StageStore
from theme_engine.cluster.runtime.update import update, update_config
from theme_engine.engine.config import public_config
from theme_engine.engine.corpus import build_corpus
from theme_engine.engine.output import write_outputs

ROOT = Path(__file__).resolve().parents[2]


def _foreign(tmp_path: Path) -> Path:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "manifest.json").write_text('{"mine": true}\n')
    (out / "chapter1.tex").write_text("\\section{Intro}\n")
    return out


def test_a_foreign_folder_is_refused_before_ray_and_left_untouched(corpus: Path, tmp_path: Path, caplog) -> None:
    out = _foreign(tmp_path)
    code = main(["run", str(corpus), "--out", str(out), "--cache-dir", str(tmp_path / "c")])
    assert code == 2
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"--out {out} is not empty and is not a theme-engine output" in message
    assert "chapter1.tex, manifest.json" in message and "--force" in message
    assert sorted(p.name for p in out.iterdir()) == ["chapter1.tex", "manifest.json"]
    assert (out / "manifest.json").read_text() == '{"mine": true}\n'


def test_the_api_refuses_a_foreign_folder_too_and_force_lets_it_through(make_config, corpus: Path, tmp_path: Path) -> None:
    out = _foreign(tmp_path)
    with pytest.raises(RunError, match="is not a theme-engine output"):
        Driver(make_config([corpus], out, tmp_path / "c"))
    assert not (out / ".theme-engine").exists()
    Driver(make_config([corpus], out, tmp_path / "c", force=True))
    assert (out / ".theme-engine").is_dir(), "with force the folder becomes a theme-engine output"
    Driver(make_config([corpus], out, tmp_path / "c"))  # and from then on it is one of ours


def test_an_empty_or_new_folder_is_accepted(make_config, corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    Driver(make_config([corpus], tmp_path / "empty", tmp_path / "c"))
    Driver(make_config([corpus], tmp_path / "new" / "deeper", tmp_path / "c"))


def _hold_lock(out: Path) -> subprocess.Popen:
    """Another process holding ``out``'s lock, as a running theme-engine run does."""
    script = (
        "import sys, time; from pathlib import Path; from theme_engine.cluster.runtime.state import OutLock; "
        f"OutLock(Path({str(out)!r})).acquire(); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, "theme-engine", "run", "x"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_held_out_is_refused_by_name_and_writes_nothing(make_config, corpus: Path, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    StageStore(out)  # a theme-engine output
    holder = _hold_lock(out)
    try:
        with pytest.raises(OutputInUse, match=rf"{out} is in use by another theme-engine run or update \(pid {holder.pid} on .*or pass another --out"):
            run(make_config([corpus], out, tmp_path / "c"))
        # an update is refused the same way, with advice it can follow (it takes no --out)
        (out / "manifest.json").write_text(json.dumps({"config": public_config(make_config([corpus], out, tmp_path / "c"))}))
        with pytest.raises(OutputInUse, match="wait for it to finish, then run the update again") as refused:
            update(update_config(out, [corpus]))
        assert "--out" not in str(refused.value)
        (out / "manifest.json").unlink()
        code = main(["run", str(corpus), "--out", str(out), "--cache-dir", str(tmp_path / "c")])
        assert code == 1 and "wait for it to finish" in caplog.text
        assert not (out / "metrics.prom").exists(), "the refused run must not write into the other run's output"
        holder.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock: never stale
        holder.wait(timeout=30)
        with OutLock(out):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_outputs_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that dies mid-file leaves the previous file whole (readers never see half a file)."""
    records = [{"kind": "doc", "id": f"d{i}", "text": f"document number {i} about things", "source": f"f:{i}", "error": None} for i in range(4)]
    corpus = build_corpus(records, 1, 1000)
    unique = corpus.unique
    dedup = {"duplicate_of": np.full(len(unique), -1), "similarity": np.full(len(unique), np.nan, np.float32)}
    args = (corpus, unique, np.zeros(len(unique), np.int64), np.zeros(len(unique), np.float32), dedup, [{"theme": 0, "label": "x"}])
    write_outputs(tmp_path, *args)
    before = pq.read_table(tmp_path / "documents.parquet")
    themes_before = (tmp_path / "themes.json").read_text()

    real = pq.write_table

    def dies_midway(table, where, *a, **kw):
        real(table, where, *a, **kw)
        with open(where, "r+b") as fh:  # half a file, then the process "dies"
            fh.truncate(os.path.getsize(where) // 2)
        raise OSError("disk full")

    real_block = pq.ParquetWriter.write_table

    def dies_after_a_block(self, table, *a, **kw):  # the streamed single-file writer: a block written, then death
        real_block(self, table, *a, **kw)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_midway)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", dies_after_a_block)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(tmp_path, *args)
    assert pq.read_table(tmp_path / "documents.parquet").equals(before)
    assert not list(tmp_path.glob("*.tmp"))  # the half-written files are gone
    assert (tmp_path / "themes.json").read_text() == themes_before


def test_a_dead_holders_lock_file_does_not_block(tmp_path: Path) -> None:
    """The lock file stays after a run (holder info cleared); only a live holder blocks."""
    out = tmp_path / "out"
    with OutLock(out):
        assert "pid" in (out / ".theme-engine" / "lock").read_text()
    assert (out / ".theme-engine" / "lock").read_text() == ""
    t0 = time.perf_counter()
    with OutLock(out):
        pass
    assert time.perf_counter() - t0 < 1.0


def test_an_update_honours_the_environment_over_the_runs_settings(make_config, corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    StageStore(out)
    (out / "manifest.json").write_text(json.dumps({"config": public_config(make_config([corpus], out, tmp_path / "run-cache"))}))
    assert update_config(out, [corpus]).cache.dir == (tmp_path / "run-cache").resolve()
    monkeypatch.setenv("THEME_ENGINE_CACHE__DIR", str(tmp_path / "env-cache"))
    assert Path(update_config(out, [corpus]).cache.dir) == tmp_path / "env-cache"  # as a run honours it
    assert Path(update_config(out, [corpus], {"cache": {"dir": str(tmp_path / "flag")}}).cache.dir) == tmp_path / "flag"  # a flag beats both

"""Results as generations (``cluster/runtime/state.py``), without Ray: a publish switches every name at
once, a reader that pinned a generation keeps reading it, a folder of before generations (or a
copy that followed the links) is taken over, and un-publishing leaves no result."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from theme_engine.cluster.runtime import state


def _generation(out: Path, n: int, report: bool = True) -> Path:
    folder = state.new_result(out)
    (folder / "manifest.json").write_text(json.dumps({"n": n}))
    for name in ("themes.json", "documents.parquet", "duplicates.parquet", "model.npz"):
        (folder / name).write_text(f"{name} of {n}")
    if report:
        (folder / "report.html").write_text(f"report of {n}")
    return folder


def _read(out: Path) -> set[str]:
    """What a plain reader finds through the names in OUT."""
    return {(out / name).read_text().rsplit(" ", 1)[-1] for name in ("themes.json", "documents.parquet", "duplicates.parquet", "model.npz")} | {
        str(json.loads((out / "manifest.json").read_text())["n"])
    }


def test_a_publish_switches_every_name_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / state.STATE_DIR).mkdir(parents=True)
    assert state.current_result(out) is None and not (out / "manifest.json").exists()
    first = _generation(out, 1)
    assert not (out / "manifest.json").exists()  # written is not published
    state.publish(out, first)
    assert _read(out) == {"1"} and state.current_result(out) == first.resolve()
    pinned = state.reading_base(out)
    second = _generation(out, 2, report=False)
    state.publish(out, second)
    assert _read(out) == {"2"} and (pinned / "documents.parquet").read_text().endswith("1")  # the pinned one stays readable
    assert not (out / "report.html").exists() and not (out / "report.html").is_symlink()  # not in this result: gone
    third = _generation(out, 3)
    state.publish(out, third)
    assert not first.exists() and second.exists() and _read(out) == {"3"}  # the one before is kept, older ones go
    state.link_output(out, "report.html")
    assert (out / "report.html").read_text() == "report of 3"
    for name in ("manifest.json", "documents.parquet", "result"):
        assert (out / name).is_symlink() and not os.path.isabs(os.readlink(out / name))  # relative: a copy works
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
    assert _read(copy) == {"3"}


def test_a_folder_of_before_generations_and_a_dereferenced_copy_are_taken_over(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / state.STATE_DIR).mkdir(parents=True)
    for name in state.RESULT_FILES:
        (old / name).write_text(json.dumps({"n": 0}) if name == "manifest.json" else f"{name} of 0")
    assert state.reading_base(old) == old and _read(old) == {"0"}
    state.publish(old, _generation(old, 1))
    assert _read(old) == {"1"} and all((old / n).is_symlink() for n in state.RESULT_FILES)

    followed = tmp_path / "followed"
    subprocess.run(["cp", "-rL", str(old), str(followed)], check=True)  # links followed: plain files and folder
    assert not (followed / "result").is_symlink() and state.current_result(followed) == followed / "result"
    assert _read(followed) == {"1"}
    state.publish(followed, _generation(followed, 2))
    assert (followed / "result").is_symlink() and _read(followed) == {"2"}
    state.unpublish(followed)
    assert not (followed / "manifest.json").exists() and state.current_result(followed) is None


def test_the_updates_record_lives_in_the_generation(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / state.STATE_DIR).mkdir(parents=True)
    g = _generation(out, 1)
    (g / state.UPDATES_RECORD).write_text(json.dumps({"generation": 1, "updates": [{"dir": "0001"}]}))
    assert state.committed_updates(out) is None  # not published yet: no update committed
    state.publish(out, g)
    assert state.committed_updates(out)["updates"] == [{"dir": "0001"}]
    with pytest.raises(FileNotFoundError, match="missing documents.parquet"):
        state.read_output(out, "documents.parquet", lambda p: p.read_text(), base=tmp_path)

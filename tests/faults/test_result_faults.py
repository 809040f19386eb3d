"""Faults of a finished result (issue 29's matrix): a stop at every step of an update's commit read
back with plain pandas, a damaged or partly deleted search index on a grown folder, damaged output
files, and what search cannot do — each named, with what to run, never a traceback or a partial
answer. One small run and one update of it, shared by the module."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theme_engine.cluster.commands import cli
from theme_engine.cluster.runtime import state as state_mod
from theme_engine.cluster.commands.api import Result
from theme_engine.cluster.runtime.driver import run
from theme_engine.cluster.runtime.update import NothingNew, update, update_config
from theme_engine.engine.output import read_themes
from tests.conftest import read_rows, split_corpus

SETTINGS = {"read": {"id_field": "id"}, "kmeans": {"k": 4}, "layout": {"sample_size": 100}}


@pytest.fixture(scope="module")
def parts(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return split_corpus(corpus, tmp_path_factory.mktemp("result-faults"), seed=1)


@pytest.fixture(scope="module")
def runs(ray_session, make_config, parts: dict[str, Path]) -> dict[str, Path]:
    """A run on 90% of the corpus, and a copy of it grown by the rest."""
    tmp = parts["tmp"]
    run(make_config([parts["base"]], tmp / "base", tmp / "cache", **SETTINGS))
    shutil.copytree(tmp / "base", tmp / "grown", symlinks=True)
    update(update_config(tmp / "grown", [parts["new"]], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}}))
    return {"base": tmp / "base", "grown": tmp / "grown"}


@pytest.mark.parametrize("step", ["symlink", "rename", "tidy"])
def test_a_stop_at_any_step_of_the_commit_leaves_one_whole_result(
    ray_session, parts: dict[str, Path], runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """The commit is one rename of DIR/result: killed before it, every reader (plain pandas here)
    sees the old result whole; after it, the new one whole; the same command then finishes."""
    from theme_engine.cluster.runtime import update as update_mod

    tmp = parts["tmp"]
    out = tmp / f"commit-{step}"
    shutil.copytree(runs["base"], out, symlinks=True)
    cfg = update_config(out, [parts["new"]], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}})

    def killed(*args, **kwargs):
        raise SystemExit(f"killed at {step}")

    real_symlink, real_replace = os.symlink, os.replace
    if step == "symlink":
        monkeypatch.setattr(state_mod.os, "symlink", lambda src, dst: killed() if Path(dst).name.startswith(".result.") else real_symlink(src, dst))
    elif step == "rename":
        monkeypatch.setattr(state_mod.os, "replace", lambda src, dst: killed() if Path(dst).name == "result" else real_replace(src, dst))
    else:
        monkeypatch.setattr(update_mod, "tidy_update", killed)
    with pytest.raises(SystemExit):
        update(cfg)
    monkeypatch.undo()

    def plain_read() -> tuple[int, int]:  # as a user would, with pandas and json, no theme-engine
        docs = pd.read_parquet(out / "documents.parquet")
        manifest = json.loads((out / "manifest.json").read_text())
        themes = json.loads((out / "themes.json").read_text())["themes"]
        dups = pd.read_parquet(out / "duplicates.parquet")
        assert len(docs) == manifest["documents"]["input"] and len(themes) == manifest["themes"]
        assert len(dups) == int(docs["duplicate_of"].notna().sum())
        return len(docs), len(manifest.get("updates", []))

    committed = step == "tidy"
    assert plain_read() == ((len(read_rows(parts["all"])), 1) if committed else (len(read_rows(parts["base"])), 0))
    assert len(Result.load(out).documents) == plain_read()[0]
    if committed:
        with pytest.raises(NothingNew):
            update(cfg)
    else:
        update(cfg)
    assert plain_read() == (len(read_rows(parts["all"])), 1)
    assert not list(out.glob(".*.tmp"))  # no link of the stopped commit is left behind


def test_a_damaged_index_is_named_and_made_again_on_a_grown_folder(ray_session, parts: dict[str, Path], runs: dict[str, Path], caplog) -> None:
    from theme_engine.engine.index import open_index

    out = parts["tmp"] / "damaged-index"
    shutil.copytree(runs["grown"], out, symlinks=True)
    embedded = json.loads((out / "manifest.json").read_text())["documents"]["embedded"]
    # what is left of an index that lost most of its points: ten of them
    dim = int(np.load(out / ".theme-engine" / "embed" / "vectors.npy", mmap_mode="r").shape[1])
    index = open_index(out, dim=dim, create=True, exact=True)
    v = np.eye(dim, dtype=np.float32)[:10]
    index.add(np.arange(10), v, [{"row": i, "id": f"x{i}", "theme": 0, "kept": 1, "duplicate_of": -1, "text": "x"} for i in range(10)])
    index.finish()
    index.close()
    assert cli.main(["search", str(out), "the lord spake unto moses"]) == 1
    assert f"holds 10 documents, the result {embedded}: it is damaged or partly deleted; make it again with: theme-engine index {out}" in caplog.text
    assert cli.main(["index", str(out)]) == 0  # works on a grown folder, where a run would be refused
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"]["index"]["points"] == embedded and m["stages"]["index"]["rebuilt"]
    got = Result.load(out).search("the lord spake unto moses", k=5).documents
    assert len(got) == 5 and set(got["id"]) <= set(Result.load(out).documents["id"])


def test_search_names_what_it_cannot_do(runs: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    n = len(read_themes(runs["base"])[0])
    assert cli.main(["search", str(runs["base"]), "love", "--theme", "99"]) == 1
    assert f"theme 99 does not exist: the run has themes 0 to {n - 1}: 0 (" in caplog.text
    assert cli.main(["search", str(runs["base"]), "bad \udcff bytes"]) == 1
    assert "not Unicode text" in caplog.text
    assert cli.main(["search", str(runs["base"]), "   "]) == 1 and "the query is empty" in caplog.text
    from theme_engine.engine import embedding

    def gone(*args, **kwargs):
        raise embedding.ModelUnavailable("--model-path /models/x: the folder is gone")

    monkeypatch.setattr(embedding, "model_from_ref", gone)
    assert cli.main(["search", str(runs["base"]), "love"]) == 1 and "the folder is gone" in caplog.text


@pytest.mark.parametrize(
    "name, damage, what",
    [
        ("documents.parquet", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "documents.parquet cannot be read"),
        ("themes.json", lambda p: p.write_bytes(b"\xff\xfe not json"), "themes.json cannot be read"),
        ("manifest.json", lambda p: p.write_text("[]"), "manifest.json cannot be read"),
        ("model.npz", lambda p: p.write_bytes(p.read_bytes()[:100]), "model.npz cannot be read"),
        ("duplicates.parquet", lambda p: p.unlink(), "missing duplicates.parquet"),
    ],
)
def test_a_damaged_folder_is_named_not_a_traceback(runs: dict[str, Path], tmp_path: Path, name, damage, what, caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(runs["base"], copy, symlinks=True, ignore=shutil.ignore_patterns("index", "report.html"))
    damage((copy / name).resolve())  # the published generation's own file
    with pytest.raises((ValueError, FileNotFoundError), match=what) as err:
        Result.load(copy)
    assert "run theme-engine run again" in str(err.value)

"""Expected failures of ``theme-engine run`` end in one line naming what to fix, before Ray starts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from theme_engine.cluster.commands import cli


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a document long enough to keep"}\n')
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(["run", *argv])
    return code, capsys.readouterr().err


def _ray_started() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def test_out_that_is_a_file(corpus: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    code, err = _run([str(corpus), "--out", str(out), "--cache-dir", str(tmp_path / "c")], capsys)
    assert code == cli.EXIT_USAGE and f"--out {out} is a file, not a directory" in err
    assert "Traceback" not in err and not _ray_started()
    assert out.read_text() == "not a folder"  # nothing overwritten


def test_cache_dir_that_is_a_file(corpus: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    cache.write_text("x")
    code, err = _run([str(corpus), "--out", str(tmp_path / "o"), "--cache-dir", str(cache)], capsys)
    assert code == cli.EXIT_USAGE and f"--cache-dir {cache} is a file" in err and "--no-cache" in err
    assert "Traceback" not in err and not _ray_started()


def test_cache_dir_is_not_checked_with_no_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("x")
    cfg = cli.load_config({"out": str(tmp_path / "o"), "cache": {"dir": str(cache), "enabled": False}})
    assert cli.path_problem(cfg) is None


def test_negative_seed_is_refused_before_ray(corpus: Path, tmp_path: Path, capsys) -> None:
    code, err = _run([str(corpus), "--out", str(tmp_path / "o"), "--seed", "-3"], capsys)
    assert code == cli.EXIT_USAGE and "seed" in err and "greater than or equal to 0" in err
    assert "Traceback" not in err and not _ray_started()


def test_default_log_leaves_out_faiss_loader_lines() -> None:
    cli._setup_logging(False)
    assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
    assert logging.getLogger("theme_engine").isEnabledFor(logging.INFO)


def test_out_under_a_file_and_a_new_out_is_not_created_by_the_check(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cfg = cli.load_config({"out": str(blocker / "sub" / "out"), "cache": {"enabled": False}})
    assert f"{blocker} is a file" in cli.path_problem(cfg)
    fresh = cli.load_config({"out": str(tmp_path / "new" / "out"), "cache": {"enabled": False}})
    assert cli.path_problem(fresh) is None and not (tmp_path / "new").exists()


def test_summary_names_the_first_bad_records() -> None:
    from types import SimpleNamespace

    manifest = {
        "documents": {"input": 5, "kept": 3, "near_duplicates": 0, "exact_duplicates": 0, "filtered": 0, "bad_records": 2},
        "themes": 1,
        "k": 1,
        "kmeans": {"iterations": 1, "converged": True},
        "dedup": {"threshold": 0.9, "pairs": 0, "groups": 0},
        "stages": {},
        "bad_records": {
            "count": 2,
            "examples": [{"source": "in.jsonl:2", "error": "invalid JSON"}, {"source": "in.jsonl:4", "error": "no text field"}],
        },
    }
    text = cli.summary(SimpleNamespace(manifest=manifest, themes=[{"theme": 0, "size": 3, "label": "a, b"}], out="o"))
    assert "2 bad records skipped" in text and "in.jsonl:2: invalid JSON" in text and "in.jsonl:4: no text field" in text
    assert "manifest.json" in text


def test_a_model_that_cannot_be_had_is_one_line_before_ray(corpus: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network
    base = [str(corpus), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    code, err = _run([*base, "--model", "intfloat/multilingual-e5-large"], capsys)
    assert code == cli.EXIT_ERROR and "intfloat/multilingual-e5-large is not in" in err and "--model-path DIR" in err
    code, err = _run([*base, "--model", "no-such/model"], capsys)
    assert code == cli.EXIT_ERROR and "unknown embedding model 'no-such/model'" in err and "theme-engine models" in err
    code, err = _run([*base, "--model-path", str(tmp_path / "nowhere")], capsys)
    assert code == cli.EXIT_ERROR and "no such folder" in err
    for line in err.strip().splitlines():
        assert "Traceback" not in line
    assert not _ray_started() and not (tmp_path / "o").exists()

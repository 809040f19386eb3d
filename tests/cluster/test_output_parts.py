"""Outputs as partitioned Parquet datasets (``output.form = parts``): written by Ray tasks, they
read back equal to the single-file outputs of the same run, and the result's readers (the
library's ``Result``, search — here on an index a Ray task built, as large runs do — the report,
an update) take them as they take single files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import split_corpus
from theme_engine.cluster.commands import cli
from theme_engine.cluster.commands.api import Result
from theme_engine.cluster.runtime.driver import run
from theme_engine.cluster.runtime.update import update, update_config

pytestmark = pytest.mark.slow

NAMES = ("documents.parquet", "duplicates.parquet")


def _tables(out: Path) -> dict[str, dict]:
    return {name: pq.read_table(out / name).to_pydict() for name in NAMES}


def test_parts_equal_the_single_files_and_every_reader_takes_them(ray_session, make_config, corpus: Path, tmp_path: Path, capsys) -> None:
    split = split_corpus(corpus, tmp_path)
    out = tmp_path / "out"

    def cfg(form: str):
        return make_config([split["base"]], out, tmp_path / "cache", read={"id_field": "id"}, kmeans={"k": 6}, output={"form": form, "part_rows": 80}, index={"task_from": 0})

    run(cfg("file"))
    single = _tables(out)
    assert all((out / name).is_file() for name in NAMES)
    result = run(cfg("parts"))  # every stage reused; the write stage writes the parts
    assert result.manifest["stages"]["write"]["form"] == "parts"
    assert result.manifest["stages"]["index"]["built_by"] == "task"  # the search below reads an index a Ray task built
    assert all(result.manifest["stages"][s].get("reused") for s in ("read", "embed", "kmeans", "dedup", "label"))
    for name in NAMES:
        parts = sorted(p.name for p in (out / name).iterdir())
        assert parts == [f"part-{i:05d}.parquet" for i in range(len(parts))]
    assert len(list((out / "documents.parquet").iterdir())) == -(-len(single["documents.parquet"]["id"]) // 80)
    assert _tables(out) == single
    assert single["duplicates.parquet"]["id"], "the corpus's translations are duplicates"

    # the library, search and the report read the folders
    res = Result.load(out)
    assert res.documents["id"].tolist() == single["documents.parquet"]["id"]
    assert len(res.duplicates) == len(single["duplicates.parquet"]["id"])
    assert cli.main(["search", str(out), "love thy neighbour", "--k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["documents"]) == 3
    assert cli.main(["report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert single["documents.parquet"]["id"][0] in html

    # an update of a partitioned result writes parts too, over the grown corpus
    grown = update(update_config(out, [split["new"]], {"output": {"form": "parts", "part_rows": 80}}))
    assert grown.manifest["stages"]["write"]["form"] == "parts"
    docs = pq.read_table(out / "documents.parquet").to_pydict()
    new_ids = [json.loads(line)["id"] for line in split["new"].read_text().splitlines()]
    assert docs["id"][: len(single["documents.parquet"]["id"])] == single["documents.parquet"]["id"]
    assert docs["id"][len(single["documents.parquet"]["id"]) :] == new_ids

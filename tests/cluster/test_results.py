"""What a run leaves to look at and ask: the map's coordinates, the theme hierarchy, report.html
and the search index — through the driver, the CLI and the library API."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from theme_engine.cluster.commands import cli
from theme_engine.cluster.commands.api import Result, search
from theme_engine.cluster.runtime.driver import run
from theme_engine.engine.docstore import DocStore
from theme_engine.engine.output import read_themes


def _book(doc_id: str) -> str:
    return doc_id.split(":", 1)[1].split(".", 1)[0]  # "kjv:Gen.37.1" -> "Gen"


@pytest.fixture(scope="module")
def finished(ray_session, make_config, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("results")
    out = tmp / "out"
    run(make_config([corpus], out, tmp / "cache", read={"id_field": "id"}, kmeans={"k": 6}, layout={"sample_size": 150}))
    return out


def test_the_map_and_the_hierarchy_are_in_the_outputs(finished: Path) -> None:
    m = json.loads((finished / "manifest.json").read_text())
    assert {"report.html", "index"} <= set(m["outputs"])
    assert m["stages"]["index"]["search"] == "exact"  # far below index.hnsw_min_points
    lay = m["stages"]["layout"]
    assert lay["quality"]["knn10_preserved"] > lay["quality"]["pca_knn10_preserved"]
    docs = pq.read_table(finished / "documents.parquet").to_pandas()
    placed = docs.dropna(subset=["theme"])
    assert placed["x"].notna().all() and placed["y"].notna().all()
    themes, hierarchy = read_themes(finished)
    k = len(themes)
    assert len(hierarchy) == k - 1 and hierarchy[-1]["parent"] is None
    assert sorted(hierarchy[-1]["themes"]) == list(range(k)) and hierarchy[-1]["size"] == sum(t["size"] for t in themes)
    ids = {t["theme"] for t in themes} | {n["id"] for n in hierarchy}
    for node in hierarchy:
        assert set(node["children"]) <= ids and node["label"] and -1.0 <= node["similarity"] <= 1.0
    assert all(t["parent"] in {n["id"] for n in hierarchy} for t in themes)
    res = Result.load(finished)
    assert list(res.hierarchy["id"]) == [n["id"] for n in hierarchy]
    html = (finished / "report.html").read_text()
    assert all(t["label"] in html or json.dumps(t["label"])[1:-1] in html for t in themes)


def test_a_documents_own_text_ranks_it_first_and_neighbours_share_its_book(finished: Path) -> None:
    docs = pq.read_table(finished / "documents.parquet").to_pandas()
    kept = docs.index[docs["kept"]].to_numpy()
    rng = np.random.default_rng(0)
    probe = np.sort(rng.choice(kept, size=25, replace=False))
    texts = {}
    for rows, part in DocStore(finished / ".theme-engine" / "read" / "docs.parquet").iter_texts(probe):
        texts.update(zip(rows.tolist(), part))
    books = Counter(_book(i) for i in docs["id"])
    chance = sum((c / len(docs)) ** 2 for c in books.values())
    precision = []
    for row in probe:
        found = search(finished, texts[row], k=11)
        top = found.documents
        assert top["score"].iloc[0] == pytest.approx(1.0, abs=1e-3)
        assert row in top["row"][top["score"] >= top["score"].iloc[0] - 1e-4].tolist()  # first, or tied with a copy
        neighbours = top[top["row"] != row].iloc[:10]
        precision.append(float(np.mean([_book(i) == _book(docs["id"][row]) for i in neighbours["id"]])))
        assert len(found.themes) == 3 and found.themes["score"].is_monotonic_decreasing
    p10 = float(np.mean(precision))
    print(f"precision@10 by book: {p10:.3f} (chance {chance:.3f})")
    assert p10 > 2 * chance


def test_filters_run_inside_the_index(finished: Path) -> None:
    themes, _ = read_themes(finished)
    theme = themes[1]["theme"]
    got = search(finished, "the lord spake unto moses", k=30, theme=theme)
    assert len(got.documents) and (got.documents["theme"] == theme).all()
    kept = search(finished, "the lord spake unto moses", k=50, kept_only=True)
    assert kept.documents["kept"].all()
    every = search(finished, "the lord spake unto moses", k=50)
    assert not every.documents["kept"].all()  # the planted KJV/ASV pairs: duplicates are found, and filtered above


def test_search_and_report_commands(finished: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["search", str(finished), "love thy neighbour", "--k", "5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["documents"]) == 5 and {"id", "score", "theme", "label", "text"} <= set(data["documents"][0])
    assert cli.main(["search", str(finished), "love thy neighbour", "--theme", "0", "--kept-only"]) == 0
    assert "nearest documents in theme 0 (kept only)" in capsys.readouterr().out
    (finished / "report.html").unlink()
    assert cli.main(["report", str(finished), "--max-points", "100"]) == 0
    assert capsys.readouterr().out.strip() == (finished.resolve() / "report.html").as_uri()
    assert (finished / "report.html").stat().st_size > 100_000


def test_commands_on_a_folder_that_is_not_a_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert cli.main(["search", str(tmp_path), "anything"]) == 2
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a finished theme-engine output" in caplog.text


def test_an_in_memory_run_can_be_searched(ray_session, corpus: Path, tmp_path: Path) -> None:
    import theme_engine

    frame = pd.read_json(corpus, lines=True)
    result = theme_engine.run(frame, id_field="id", k=4, cache_dir=tmp_path / "cache")
    assert result.out is None
    i = next(i for i, t in enumerate(frame["text"]) if (frame["text"] == t).sum() == 1)
    found = result.search(frame["text"][i], k=3)
    assert frame["id"][i] in found.documents["id"].tolist()[:2]
    workdir = result._workdir
    assert workdir is not None and workdir.exists()
    del result, found
    import gc

    gc.collect()
    assert not workdir.exists()  # the temporary folder goes with the Result

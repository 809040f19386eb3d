"""Long documents through the whole job and an update: a shared opening is not a duplicate, the
same body under another header is one (kind fuzzy), found by MinHash where the cosine rule is off."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from theme_engine.cluster.runtime.driver import run
from theme_engine.cluster.runtime.update import update, update_config
from tests.conftest import DEMO

VERSES = [json.loads(line)["text"] for line in DEMO.read_text().splitlines()]


class _Verses:
    """Consecutive real verses, never the same twice."""

    def __init__(self) -> None:
        self.at = 0

    def take(self, words: int) -> str:
        out: list[str] = []
        while sum(len(v.split()) for v in out) < words:
            out.append(VERSES[self.at])
            self.at += 1
        return " ".join(out)


def _write(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("long")
    v = _Verses()
    opening = v.take(160)  # longer than half the model's window
    docs = [{"id": f"shared{k}", "text": opening + " " + v.take(260)} for k in range(6)]
    bodies = [v.take(320) for _ in range(3)]
    for k, body in enumerate(bodies):
        docs.append({"id": f"orig{k}", "text": "Welcome to the archive; read its terms first. " + body})
        docs.append({"id": f"copy{k}", "text": "NOTICE: a mirrored copy kept by a third party. " + body + " (end of mirror)"})
    docs += [{"id": f"other{k}", "text": v.take(120)} for k in range(6)]
    new = [
        {"id": "newcopy", "text": "Seen on a mirror. " + bodies[0] + " Footer text."},
        {"id": "newshared", "text": opening + " " + v.take(260)},
    ]
    return {"run": _write(tmp / "long.jsonl", docs), "new": _write(tmp / "new.jsonl", new), "tmp": tmp}


def _pairs(out: Path) -> dict[str, tuple[str, str, float]]:
    d = pd.read_parquet(out / "duplicates.parquet")
    return {i: (o, k, j) for i, o, k, j in zip(d["id"], d["duplicate_of"], d["kind"], d["text_jaccard"])}


def test_long_documents_run_and_update(ray_session, make_config, corpora: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run and the update compare their pairs' texts in Ray tasks that read them where they
    run (chunks of one pair); the MinHash-only run in between, in the driver."""
    from theme_engine.cluster.runtime.stages import dedup as dedup_stage

    tmp = corpora["tmp"]
    monkeypatch.setattr(dedup_stage, "EDIT_CHUNK", 1)
    cfg = make_config([corpora["run"]], tmp / "out", tmp / "cache", read={"id_field": "id"}, kmeans={"k": 2}, layout={"enabled": False})
    run(cfg)
    m = json.loads((tmp / "out" / "manifest.json").read_text())
    long = m["stages"]["embed"]["long_texts"]
    assert long["mode"] == "windows" and long["over_window"] == 12 and long["windows"] >= 24 and long["tokens_per_second"] > 0
    pairs = _pairs(tmp / "out")
    assert {k: v[0] for k, v in pairs.items()} == {f"copy{k}": f"orig{k}" for k in range(3)}  # no shared-opening pair
    assert all(kind == "fuzzy" and jac >= 0.8 for _, kind, jac in pairs.values())
    wt = m["stages"]["dedup"]["whole_text"]
    assert wt["long_pairs_rejected"] >= 1 and wt["fuzzy_candidates"] >= 3  # the shared openings had a high cosine
    assert m["stages"]["dedup"]["lexical_tasks"] >= 2 and m["stages"]["dedup"]["texts_read"] == 0  # no text reached the driver
    docs = pd.read_parquet(tmp / "out" / "documents.parquet").set_index("id")
    assert docs.loc[[f"shared{k}" for k in range(6)], "kept"].all()

    # the same body under another header, the cosine rule out of reach: MinHash alone finds it
    monkeypatch.setattr(dedup_stage, "EDIT_CHUNK", 10**9)
    cfg = make_config(
        [corpora["run"]], tmp / "out2", tmp / "cache", read={"id_field": "id"}, kmeans={"k": 2}, layout={"enabled": False},
        dedup={"threshold": 0.99999, "lexical": False},
    )  # fmt: skip
    run(cfg)
    pairs = _pairs(tmp / "out2")
    assert {k: v[0] for k, v in pairs.items()} == {f"copy{k}": f"orig{k}" for k in range(3)}
    d = pd.read_parquet(tmp / "out2" / "duplicates.parquet")
    assert (d["similarity"] < 0.99999).all() and (d["kind"] == "fuzzy").all()
    m2 = json.loads((tmp / "out2" / "manifest.json").read_text())
    assert m2["stages"]["embed"]["cache"]["hits"] == m2["stages"]["embed"]["documents"]  # pooled vectors were cached

    # an update applies the same rules to new documents against the existing ones
    monkeypatch.setattr(dedup_stage, "EDIT_CHUNK", 1)
    update(update_config(tmp / "out", [corpora["new"]], {"cache": {"dir": str(tmp / "cache")}}))
    mu = json.loads((tmp / "out" / "manifest.json").read_text())["stages"]["dedup"]
    assert mu["lexical_tasks"] >= 1 and mu["texts_read"] == 0
    pairs = _pairs(tmp / "out")
    assert pairs["newcopy"][0] in {"orig0", "copy0"} and pairs["newcopy"][1] == "fuzzy"
    assert "newshared" not in pairs


def test_a_banner_every_document_opens_with_is_left_out(ray_session, make_config, tmp_path: Path) -> None:
    """Themes by the bodies: the corpus's boilerplate, found by the run and kept for its updates."""
    from theme_engine.cluster.commands.cli import summary  # noqa: PLC0415

    v = _Verses()
    banner = v.take(200)
    docs = [{"id": f"d{k}", "text": f"{banner} {v.take(220)}"} for k in range(24)] + [{"id": f"p{k}", "text": v.take(220)} for k in range(4)]
    new = [{"id": "new-banner", "text": f"{banner} {v.take(220)}"}, {"id": "new-plain", "text": v.take(220)}]
    cfg = make_config(
        [_write(tmp_path / "c.jsonl", docs)], tmp_path / "out", tmp_path / "cache", read={"id_field": "id"}, kmeans={"k": 2},
        layout={"enabled": False},
    )  # fmt: skip
    result = run(cfg)
    bp = result.manifest["stages"]["embed"]["long_texts"]["boilerplate"]
    assert bp["ngrams"] >= 150 and bp["documents"] == 24 and bp["words_left_out"] >= 24 * 200
    assert "24 read without the boilerplate the corpus repeats" in summary(result)
    assert not (tmp_path / "out" / "duplicates.parquet").exists() or pd.read_parquet(tmp_path / "out" / "duplicates.parquet").empty
    update(update_config(tmp_path / "out", [_write(tmp_path / "new.jsonl", new)], {"cache": {"dir": str(tmp_path / "cache")}}))
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["updates"][-1]["long_texts"]["boilerplate"]["documents"] == 1  # by the run's boilerplate (one document could not find any)

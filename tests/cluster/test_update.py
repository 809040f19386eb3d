"""``theme-engine update``: a run on 90% of a corpus grown by the other 10% against a full run on
all of it, repeated input, a new dense region (drift), a stop mid-update and mid-commit, refit
always, the CLI and the API."""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from theme_engine.cluster.commands import cli
from theme_engine.cluster.runtime import state as state_mod
from theme_engine.cluster.commands.api import Result, ThemeModel
from theme_engine.cluster.runtime.driver import RunError, run
from theme_engine.cluster.runtime.update import NothingNew, update, update_config
from theme_engine.engine.events import Interrupted
from tests.conftest import read_rows, split_corpus, write_rows

# dedup.tasks_from 0: the candidate pairs capped by tasks, which save each document's best
# candidate cosines in parts that the update's cap reads
SETTINGS = {"read": {"id_field": "id"}, "kmeans": {"k": 6}, "layout": {"sample_size": 150}, "dedup": {"tasks_from": 0}}


@pytest.fixture(scope="module")
def parts(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test corpus in a seeded order, split 90/10 (its ASV copies of KJV verses fall on both sides)."""
    return split_corpus(corpus, tmp_path_factory.mktemp("update-parts"), seed=0)


@pytest.fixture(scope="module")
def grown(ray_session, make_config, parts: dict[str, Path]) -> dict[str, Path]:
    """A run on the 90%, copied before it grows; the same run grown by the 10% (refit never); a
    full run on all of it."""
    import shutil

    tmp = parts["tmp"]
    base_out, out, full = tmp / "base", tmp / "grown", tmp / "full"
    run(make_config([parts["base"]], base_out, tmp / "cache", **SETTINGS))
    shutil.copytree(base_out, out)
    result = update(update_config(out, [parts["new"]], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}}))
    run(make_config([parts["all"]], full, tmp / "cache", **SETTINGS))
    return {"base": base_out, "out": out, "full": full, "entry": result.entry}


def _pairs(out: Path, kinds: tuple[int, ...] = (1, 2)) -> set[tuple[str, str, int]]:
    """The near-duplicate pairs (id, id, kind) a run found, from its stage arrays."""
    state = out / ".theme-engine"
    current = state_mod.committed_updates(out)
    if current:
        last = current["updates"][-1]["dir"]
        arrays = np.load(state / "updates" / last / "grown.npz")
    else:
        arrays = np.load(state / "dedup" / "result.npz")
    docs = pd.read_parquet(out / "documents.parquet")
    embedded = np.flatnonzero(docs["status"].isin(["ok", "near_duplicate"]).to_numpy())
    ids = docs["id"].to_numpy()[embedded]
    return {
        (*sorted((ids[i], ids[j])), int(k))
        for i, j, k in zip(arrays["pairs_i"].tolist(), arrays["pairs_j"].tolist(), arrays["pairs_kind"].tolist())
        if k in kinds
    }


def test_a_grown_run_keeps_its_themes_and_finds_a_full_runs_duplicates(grown: dict[str, Path], parts: dict[str, Path]) -> None:
    base = pd.read_parquet(grown["base"] / "documents.parquet")
    after = pd.read_parquet(grown["out"] / "documents.parquet")
    full = pd.read_parquet(grown["full"] / "documents.parquet")
    new_ids = {r["id"] for r in read_rows(parts["new"])}
    assert len(after) == len(full) == len(base) + len(new_ids)
    assert after["id"].tolist() == full["id"].tolist()  # the base's documents, then the new ones, in order
    # existing documents keep their themes and their kept/duplicate decisions (refit never)
    head = after.iloc[: len(base)]
    assert head["theme"].equals(base["theme"]) and head["kept"].equals(base["kept"]) and head["duplicate_of"].equals(base["duplicate_of"])
    # every new document's theme is what the grown model assigns it
    new = after.iloc[len(base) :]
    texts = {r["id"]: r["text"] for r in read_rows(parts["new"])}
    embedded = new[new["status"] != "exact_duplicate"]
    model = ThemeModel.load(grown["out"])
    model.cache_dir = grown["out"].parent / "cache"
    assigned = model.assign(texts=[texts[i] for i in embedded["id"]])
    assert assigned["theme"].tolist() == embedded["theme"].astype(int).tolist()
    np.testing.assert_allclose(assigned["distance"].to_numpy(), embedded["distance"].to_numpy(), atol=1e-4)
    # near-duplicate pairs across the parts and among the new ones: the full run's, exactly
    cross = lambda pairs: {p for p in pairs if (p[0] in new_ids) or (p[1] in new_ids)}  # noqa: E731
    got_near, want_near = cross(_pairs(grown["out"], (1,))), cross(_pairs(grown["full"], (1,)))
    assert want_near, "the split must put near-duplicates (ASV/KJV) on both sides"
    assert got_near == want_near
    manifest = json.loads((grown["out"] / "manifest.json").read_text())
    assert manifest["updates"][0]["near_duplicates"]["search_tasks"] >= 1  # the new rows searched by Ray tasks (dedup.tasks_from 0)
    got_lex, want_lex = cross(_pairs(grown["out"], (2,))), cross(_pairs(grown["full"], (2,)))
    assert got_lex == want_lex
    # keep "first": new documents rank after the existing ones, as in the full run's input order
    assert after["duplicate_of"].fillna("").tolist() == full["duplicate_of"].fillna("").tolist()
    assert after["kept"].tolist() == full["kept"].tolist()
    # the run's best candidate cosines, which the update's cap counted, were saved by the cap tasks
    state = grown["base"] / ".theme-engine" / "dedup"
    assert len(list((state / "candidate_top").glob("part-*.npz"))) >= 2 and "candidate_top" not in np.load(state / "result.npz").files


def test_the_manifest_keeps_a_history_and_the_report_and_index_grow(grown: dict[str, Path], parts: dict[str, Path]) -> None:
    m = json.loads((grown["out"] / "manifest.json").read_text())
    assert len(m["updates"]) == 1
    e = m["updates"][0]
    assert e["generation"] == 1 and e["refit"] == "never" and e["inputs"][0]["name"] == "new.jsonl"
    assert e["read"]["documents"] == len(read_rows(parts["new"])) and e["seconds"] > 0
    assert set(e["stages"]) >= {"read", "embed", "assign", "dedup", "label", "layout", "write", "index"}
    assert m["documents"]["input"] == len(read_rows(parts["all"]))
    assert 0 <= e["drift"]["far_share"] <= 1 and e["drift"]["expected_share"] == pytest.approx(0.05)
    html = (grown["out"] / "report.html").read_text()
    new_id = read_rows(parts["new"])[0]["id"]
    assert new_id in html or json.dumps(new_id)[1:-1] in html
    docs = pd.read_parquet(grown["out"] / "documents.parquet")
    assert docs.dropna(subset=["theme"])[["x", "y"]].notna().all().all()
    res = Result.load(grown["out"])
    text = read_rows(parts["new"])[0]["text"]
    hits = res.search(text, k=3, cache_dir=grown["out"].parent / "cache")
    assert new_id in hits.documents["id"].tolist()


def test_repeating_the_input_adds_nothing_and_says_so(grown: dict[str, Path], parts: dict[str, Path]) -> None:
    before = (grown["out"] / "manifest.json").read_bytes()
    folders = sorted(p.name for p in state_mod.updates_root(grown["out"]).iterdir())
    generations = sorted(p.name for p in state_mod.results_root(grown["out"]).iterdir())
    with pytest.raises(NothingNew, match=r"nothing new in .*new\.jsonl: 25 documents are already in"):
        update(update_config(grown["out"], [parts["new"]], {"cache": {"dir": str(grown["out"].parent / "cache")}}))
    assert (grown["out"] / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in state_mod.updates_root(grown["out"]).iterdir()) == folders  # nothing left behind
    assert sorted(p.name for p in state_mod.results_root(grown["out"]).iterdir()) == generations
    # precomputed vectors are refused before they are read: an update embeds texts with the run's model
    vectors = grown["out"].parent / "more.npy"
    np.save(vectors, np.ones((3, 384), dtype=np.float32))
    with pytest.raises(RunError, match="an update takes texts"):
        update(update_config(grown["out"], [vectors], {"cache": {"dir": str(grown["out"].parent / "cache")}}))
    assert (grown["out"] / "manifest.json").read_bytes() == before


def test_a_run_into_a_grown_folder_is_refused_by_name(grown: dict[str, Path], parts: dict[str, Path], make_config) -> None:
    with pytest.raises(RunError, match=r"grown by 1 update\(s\).*--force"):
        run(make_config([parts["base"]], grown["out"], grown["out"].parent / "cache", **SETTINGS))


def test_a_new_dense_region_gets_new_themes_under_refit_auto(ray_session, make_config, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import shutil

    tmp = parts["tmp"]
    out = tmp / "drift"
    shutil.copytree(grown["base"], out)
    new = write_rows(tmp / "docstrings.jsonl", [{"id": f"doc:{i}", "text": t} for i, t in enumerate(_docstrings(80))])
    result = update(update_config(out, [new], {"update": {"refit": "auto"}, "cache": {"dir": str(tmp / "cache")}}))
    e = result.entry
    assert e["drift"]["drift"] and e["drift"]["far_share"] > 0.5, e["drift"]
    assert e["new_themes"] >= 1, e["proposal"]
    after = pd.read_parquet(out / "documents.parquet")
    base = pd.read_parquet(grown["base"] / "documents.parquet")
    assert after.iloc[: len(base)]["theme"].equals(base["theme"])  # existing documents keep their themes
    k_old = int(base["theme"].max()) + 1
    themes_new = after.iloc[len(base) :].dropna(subset=["theme"])["theme"]
    assert (themes_new >= k_old).mean() > 0.6
    themes = json.loads((out / "themes.json").read_text())["themes"]
    assert [t["theme"] for t in themes] == list(range(k_old + e["new_themes"]))
    # on the map, a new theme is one group: its documents' nearest neighbours are its own
    xy, th = after[["x", "y"]].to_numpy(), after["theme"].to_numpy()
    fresh = np.flatnonzero(th >= k_old)
    d = np.linalg.norm(xy[fresh, None, :] - xy[None, :, :], axis=2)
    d[np.arange(len(fresh)), fresh] = np.inf
    d[:, ~np.isfinite(xy).all(axis=1)] = np.inf  # documents off the map (bad records)
    assert (th[d.argmin(axis=1)] == th[fresh]).mean() >= 0.9


def _docstrings(n: int) -> list[str]:
    """A topic the verses do not have: the standard library's own docstrings (real English, another domain)."""
    texts: list[str] = []
    for mod in (os, os.path, str, list, dict, json, threading):
        for name in sorted(dir(mod)):
            doc = inspect.getdoc(getattr(mod, name, None)) or ""
            first = " ".join(doc.split("\n\n")[0].split())
            if 60 <= len(first) <= 400 and first not in texts:
                texts.append(first)
    return texts[:n]


def test_far_documents_forced_into_themes_are_flagged_and_do_not_rename_them(ray_session, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import shutil

    from theme_engine.cluster.runtime.update import update_summary

    tmp = parts["tmp"]
    out = tmp / "far-forced"
    shutil.copytree(grown["base"], out)
    before = {t["theme"]: t for t in json.loads((out / "themes.json").read_text())["themes"]}
    docstrings = _docstrings(80)
    new = write_rows(tmp / "far-forced.jsonl", [{"id": f"doc:{i}", "text": t} for i, t in enumerate(docstrings)])
    result = update(update_config(out, [new], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}}))
    e = result.entry
    assert e["far_in_existing_themes"] == e["drift"]["far"] > 40  # never: every far one is put in an existing theme
    docs = pd.read_parquet(out / "documents.parquet")
    embedded = docs["status"] != "exact_duplicate"  # an exact copy carries its text's flag
    assert docs.loc[embedded, "far_from_theme"].sum() == e["far_in_existing_themes"] and not docs["far_from_theme"].iloc[: -len(docstrings)].any()
    flagged = set(docs.loc[docs["far_from_theme"], "id"])
    text_of = {json.loads(line)["id"]: json.loads(line)["text"] for line in parts["base"].read_text().splitlines()}
    text_of.update({f"doc:{i}": t for i, t in enumerate(docstrings)})
    after = json.loads((out / "themes.json").read_text())["themes"]
    for t in after:
        assert not flagged & set(t["representatives"])  # they do not stand for a theme
        # nor name it: every word of its label is a word of its members that are not flagged
        members = docs[(docs["theme"] == t["theme"]) & docs["kept"] & ~docs["far_from_theme"]]["id"]
        words = {w for i in members for w in re.findall(r"\w+", text_of[i].lower())}
        assert set(re.findall(r"\w+", t["label"].lower())) <= words, t["label"]
        assert t["size"] >= before[t["theme"]]["size"]
    assert "flagged far_from_theme in documents.parquet, not used to name them" in update_summary(result)
    assert "refit never: new documents join their nearest theme" in update_summary(result)  # said once
    assert "refit never: refit never" not in update_summary(result)

    # one new document far from every theme is no evidence of drift
    one = write_rows(tmp / "one.jsonl", [{"id": "one", "text": docstrings[0] + " (again, reworded)"}])
    e1 = update(update_config(out, [one], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}})).entry
    assert e1["drift"]["new"] == 1 and e1["drift"]["verdict"] in ("too few to tell", "no") and not e1["drift"]["drift"]


def test_a_stop_mid_update_leaves_the_run_readable_and_the_update_resumable(ray_session, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import shutil

    tmp = parts["tmp"]
    out = tmp / "stopped"
    shutil.copytree(grown["base"], out)
    before = Result.load(out)
    cfg = update_config(out, [parts["new"]], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}})
    stop = threading.Event()
    done: list[str] = []

    def on_stage(name: str, record: dict) -> None:
        done.append(name)
        if name == "dedup":
            stop.set()

    with pytest.raises(Interrupted):
        update(cfg, stop=stop, on_stage=on_stage)
    assert done[-1] == "dedup"
    still = Result.load(out)
    assert len(still.documents) == len(before.documents) and "updates" not in still.manifest
    reused: list[str] = []
    result = update(cfg, on_stage=lambda name, rec: rec.get("reused") and reused.append(name))
    assert {"read", "embed", "assign", "dedup"} <= set(reused)
    grown_docs = pd.read_parquet(grown["out"] / "documents.parquet")
    assert pd.read_parquet(out / "documents.parquet").drop(columns=["x", "y"]).equals(grown_docs.drop(columns=["x", "y"]))
    assert result.entry["generation"] == 1


def test_refit_always_refits_from_the_existing_centroids(ray_session, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import shutil

    tmp = parts["tmp"]
    out = tmp / "always"
    shutil.copytree(grown["base"], out)
    result = update(update_config(out, [parts["new"]], {"update": {"refit": "always"}, "cache": {"dir": str(tmp / "cache")}}))
    e = result.entry
    base = pd.read_parquet(grown["base"] / "documents.parquet")
    after = pd.read_parquet(out / "documents.parquet")
    head = after.iloc[: len(base)].dropna(subset=["theme"])
    same = (head["theme"] == base.dropna(subset=["theme"])["theme"]).mean()
    assert same > 0.8 and e["existing_moved"] == int((head["theme"] != base.dropna(subset=["theme"])["theme"]).sum())
    model = ThemeModel.load(out)
    model.cache_dir = tmp / "cache"
    rows = read_rows(parts["all"])
    embedded = after[after["status"] != "exact_duplicate"].dropna(subset=["theme"])
    text = {r["id"]: r["text"] for r in rows}
    assigned = model.assign(texts=[text[i] for i in embedded["id"]])
    assert (assigned["theme"].to_numpy() == embedded["theme"].astype(int).to_numpy()).mean() > 0.99


def test_the_cli_updates_and_says_when_nothing_is_new(ray_session, parts: dict[str, Path], grown: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    import shutil

    tmp = parts["tmp"]
    out = tmp / "cli"
    shutil.copytree(grown["base"], out)
    cache = str(tmp / "cache")
    held = Result.load(out)
    assert cli.main(["update", str(out), str(parts["new"]), "--refit", "never", "--cache-dir", cache]) == 0
    printed = capsys.readouterr().out
    assert "update 1 of" in printed and "25 new documents" in printed
    metrics = (out / "metrics.prom").read_text()  # counts the grown result, not the run before it
    grown_docs = json.loads((out / "manifest.json").read_text())["documents"]
    assert f"theme_engine_documents_unique {float(grown_docs['embedded'])}" in metrics
    assert 'theme_engine_run_status{status="succeeded"} 1.0' in metrics
    with pytest.raises(ValueError, match="newer result than this one"):  # a Result held from before the update
        held.search("the lord spake unto moses")
    assert len(Result.load(out).search("the lord spake unto moses", k=3).documents) == 3
    assert cli.main(["update", str(out), str(parts["new"]), "--cache-dir", cache]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert cli.main(["update", str(tmp / "no-such-run"), str(parts["new"])]) == 2


def test_the_api_grows_an_in_memory_result(ray_session, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import theme_engine

    rows = read_rows(parts["all"])
    frame = pd.DataFrame(rows)
    cache = str(parts["tmp"] / "cache")
    head = frame.iloc[:200][["text"]].copy()
    head.iloc[7, 0] = None  # a bad record: its row position is used all the same
    first = theme_engine.run(head, k=5, cache_dir=cache)
    assert len(first.documents) == 199 and first.manifest["bad_records"]["count"] == 1
    more = first.update(frame.iloc[200:][["text"]], refit="never", cache_dir=cache)
    assert len(more.documents) == len(rows) - 1 and more.out is None
    assert more.documents["id"].tolist() == [str(i) for i in range(len(rows)) if i != 7]
    assert more.documents.iloc[:199]["theme"].equals(first.documents["theme"])
    assert len(more.manifest["updates"]) == 1
    assert more.search(rows[-1]["text"], k=1, cache_dir=cache).documents["id"].iloc[0] == str(len(rows) - 1)


def test_new_documents_are_set_against_the_run_by_id_and_text(ray_session, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import shutil

    tmp = parts["tmp"]
    out = tmp / "ids"
    shutil.copytree(grown["base"], out)
    base_rows = read_rows(parts["base"])
    fresh = read_rows(parts["new"])[0]["text"]
    rows = [
        {"id": "copy-of-existing", "text": base_rows[3]["text"]},  # an existing text under a new id: its exact duplicate
        {"id": base_rows[5]["id"], "text": "A text the run has never seen, under an id it already has."},  # a conflict
        base_rows[7],  # already present: same id, same text
        {"id": "fresh-1", "text": fresh},
        {"id": "fresh-2", "text": fresh.upper()},  # the same folded text: an exact duplicate of fresh-1
    ]
    new = write_rows(tmp / "mixed.jsonl", rows)
    result = update(update_config(out, [new], {"update": {"refit": "never"}, "cache": {"dir": str(tmp / "cache")}}))
    r = result.entry["read"]
    assert (r["documents"], r["present"], r["id_conflicts"], r["exact_of_existing"], r["exact_duplicate"]) == (3, 1, 1, 1, 2)
    docs = pd.read_parquet(out / "documents.parquet").set_index("id")
    assert docs.loc["copy-of-existing", "duplicate_of"] == base_rows[3]["id"] and docs.loc["copy-of-existing", "status"] == "exact_duplicate"
    assert docs.loc["fresh-2", "duplicate_of"] == "fresh-1" and bool(docs.loc["fresh-1", "kept"])
    assert docs.loc["copy-of-existing", "theme"] == docs.loc[base_rows[3]["id"], "theme"]
    bad = result.manifest["bad_records"]
    assert any("mixed.jsonl:2" == b["source"] and "already in the run" in b["error"] for b in bad["examples"])
    assert len(docs) == len(base_rows) + 3


def test_a_forced_run_into_a_grown_folder_starts_over(ray_session, make_config, parts: dict[str, Path], grown: dict[str, Path]) -> None:
    import shutil

    tmp = parts["tmp"]
    out = tmp / "forced"
    shutil.copytree(grown["out"], out)
    run(make_config([parts["base"]], out, tmp / "cache", force=True, **SETTINGS))
    m = json.loads((out / "manifest.json").read_text())
    assert "updates" not in m and m["documents"]["input"] == len(read_rows(parts["base"]))
    assert not (out / ".theme-engine" / "updates").exists()
    assert m["stages"]["index"].get("reused") is not True and m["stages"]["index"]["points"] <= len(read_rows(parts["base"]))


def test_an_update_stopped_before_indexing_is_indexed_by_the_next(
    ray_session, parts: dict[str, Path], grown: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from theme_engine.cluster.runtime import update as update_mod

    tmp = parts["tmp"]
    out = tmp / "index-pending"
    shutil.copytree(grown["base"], out)
    cache = tmp / "cache"
    cfg = update_config(out, [parts["new"]], {"update": {"refit": "never"}, "cache": {"dir": str(cache)}})
    real = update_mod.grow_index
    monkeypatch.setattr(update_mod, "grow_index", lambda *a, **k: (_ for _ in ()).throw(SystemExit("killed before indexing")))
    with pytest.raises(SystemExit):
        update(cfg)
    monkeypatch.setattr(update_mod, "grow_index", real)
    row = read_rows(parts["new"])[0]
    res = Result.load(out)
    assert len(res.documents) == len(read_rows(parts["all"])) and res.manifest["updates"][0]["stages"]["index"] == {"pending": True}
    assert row["id"] not in res.search(row["text"], k=5, cache_dir=cache).documents["id"].tolist()  # behind, never ahead
    with pytest.raises(NothingNew):
        update(cfg)  # nothing new, but the index is finished first
    res = Result.load(out)
    assert res.manifest["updates"][0]["stages"]["index"]["upserted"] > 0
    assert row["id"] in res.search(row["text"], k=5, cache_dir=cache).documents["id"].tolist()


def test_the_api_refuses_what_an_update_cannot_change(grown: dict[str, Path], parts: dict[str, Path]) -> None:
    import theme_engine

    with pytest.raises(TypeError, match="cannot change dup_threshold"):
        theme_engine.update(grown["out"], parts["new"], dup_threshold=0.8)
    with pytest.raises(TypeError, match="cannot change embed"):
        theme_engine.update(grown["out"], parts["new"], config={"embed": {"model": "x"}})
    with pytest.raises(RunError, match="no finished theme-engine run"):
        theme_engine.update(parts["tmp"] / "nowhere", pd.DataFrame({"text": ["a b c d e f"]}))
    assert not (parts["tmp"] / "nowhere").exists()

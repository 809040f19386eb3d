"""report.html: one self-contained page from a run's output folder (no browser here; see
test_report_browser.py for the page in headless Chromium)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from theme_engine.engine import report as report_mod  # noqa: E402
from theme_engine.engine.docstore import DocStore  # noqa: E402
from theme_engine.engine.report import REPORT_FILE, render_report, sample_points  # noqa: E402

HOSTILE = "Evil </script><b>bold</b> & \"double\" 'single' <!-- not a comment --> </SCRIPT > end"
LABELS = ["god, lord, israel", "bread, fish, loaves", "king, david, house", 'x <y> & "z"']
WORDS = [
    "god lord israel altar priest covenant temple holy offering sabbath".split(),
    "bread fish loaves basket hungry multitude table wine supper eat".split(),
    "king david house throne crown saul solomon kingdom reign army".split(),
    "sea ship wind storm waves boat sail water shore night".split(),
]
CENTERS = np.array([[-5.0, -5.0], [5.0, -5.0], [-5.0, 5.0], [5.0, 5.0]])


def make_output(
    out: Path, *, n: int = 300, seed: int = 0, old_themes: bool = False, texts: bool = True, manifest: bool = True
) -> dict[str, Any]:
    """A small output folder written by hand: ``n`` documents in 4 themes; the last one filtered
    (no theme, no coordinates); d010 has an exact copy (the second to last) and d011 a near and a
    lexical duplicate; d005 holds hostile text; d007 sits apart from everything on the map."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    ids = [f"d{i:03d}" for i in range(n)]
    theme: list[int | None] = [i % 4 for i in range(n)]
    xy = CENTERS[[i % 4 for i in range(n)]] + rng.normal(0, 1.0, (n, 2))
    xy[7] = CENTERS[3] + [6.0, 6.0]  # the outlier (theme 3)
    doc_texts = []
    for i in range(n):
        words = rng.choice(WORDS[i % 4], size=int(rng.integers(8, 120)))
        doc_texts.append(f"Document {i}: " + " ".join(words) + ".")
    doc_texts[5] = HOSTILE
    status = ["ok"] * n
    dup_of: list[str | None] = [None] * n
    kept = [True] * n
    # exact copy of d010, near and lexical duplicates of d011, one filtered document
    ex, near, lex, filt = n - 2, n - 3, n - 4, n - 1
    doc_texts[ex] = doc_texts[10]
    doc_texts[near] = doc_texts[11] + " amen"
    doc_texts[lex] = doc_texts[11].replace("Document", "Doc")
    for i, (of, st) in {ex: (10, "exact_duplicate"), near: (11, "near_duplicate"), lex: (11, "near_duplicate")}.items():
        status[i], dup_of[i], kept[i], theme[i] = st, ids[of], False, theme[of]
    xy[ex] = xy[10]
    status[filt], theme[filt], kept[filt] = "filtered_short", None, False
    doc_texts[filt] = "tiny"
    x = xy[:, 0].astype(np.float32)
    y = xy[:, 1].astype(np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[filt] = True
    pq.write_table(
        pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "theme": pa.array(theme, pa.int64()),
                "distance": pa.array(rng.random(n).astype(np.float32), pa.float32(), mask=mask),
                "duplicate_of": pa.array(dup_of, pa.string()),
                "kept": pa.array(kept, pa.bool_()),
                "status": pa.array(status, pa.string()),
                "source": pa.array([f"verses.jsonl:{i + 1}" for i in range(n)], pa.string()),
                "x": pa.array(x, pa.float32(), mask=mask),
                "y": pa.array(y, pa.float32(), mask=mask),
            }
        ),
        out / "documents.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "id": pa.array([ids[near], ids[lex], ids[ex]], pa.string()),
                "duplicate_of": pa.array([ids[11], ids[11], ids[10]], pa.string()),
                "similarity": pa.array([0.97, 0.93, 1.0], pa.float32()),
                "kind": pa.array(["near", "lexical", "exact"], pa.string()),
                "lexical_similarity": pa.array([None, 0.9, 1.0], pa.float32()),
                "edits": pa.array([None, 1, 0], pa.int64()),
            }
        ),
        out / "duplicates.parquet",
    )
    sizes = [sum(1 for t in theme if t == k) for k in range(4)]
    themes = []
    for k in range(4):
        members = [ids[i] for i in range(n) if theme[i] == k]
        themes.append(
            {
                "theme": k,
                "label": LABELS[k],
                "keywords": WORDS[k][:5],
                "keyword_scores": [round(0.5 / (j + 1), 4) for j in range(5)],
                "keyword_lifts": [round(4.0 - 0.5 * j, 2) for j in range(5)],
                "size": sizes[k],
                "unique_size": sizes[k] - (1 if k in (2, 3) else 0),
                "merged_from": [k],
                "representatives": ([ids[5]] if k == 1 else []) + [m for m in members if m != ids[5]][:3],
                "parent": {0: 4, 1: 4, 2: 5, 3: 5}[k],
            }
        )
    hierarchy = [
        {"id": 4, "children": [0, 1], "similarity": 0.71, "size": sizes[0] + sizes[1], "themes": [0, 1], "label": "god, bread", "keywords": ["god", "bread"], "keyword_scores": [0.3, 0.2]},
        {"id": 5, "children": [2, 3], "similarity": 0.64, "size": sizes[2] + sizes[3], "themes": [2, 3], "label": "king, sea", "keywords": ["king", "sea"], "keyword_scores": [0.3, 0.2]},
        {"id": 6, "children": [4, 5], "similarity": 0.42, "size": sum(sizes), "themes": [0, 1, 2, 3], "label": "root: god, king", "keywords": ["god", "king"], "keyword_scores": [0.2, 0.1]},
    ]
    (out / "themes.json").write_text(json.dumps(themes if old_themes else {"themes": themes, "hierarchy": hierarchy}, indent=2))
    if texts:
        store = DocStore(_docs_path(out))
        store.path.parent.mkdir(parents=True, exist_ok=True)
        with store.writer() as write:
            write(
                {
                    "id": ids,
                    "source": [f"verses.jsonl:{i + 1}" for i in range(n)],
                    "text": doc_texts,
                    "status": [s if s != "near_duplicate" else "ok" for s in status],
                    "exact_of": [10 if i == ex else -1 for i in range(n)],
                    "length": [len(t) for t in doc_texts],
                }
            )
    m = example_manifest(k=4, n=n)
    if manifest:
        (out / "manifest.json").write_text(json.dumps(m, indent=2))
    return {"ids": ids, "texts": doc_texts, "theme": theme, "labels": LABELS, "outlier": ids[7], "hostile": ids[5], "manifest": m}


def example_manifest(k: int, n: int) -> dict[str, Any]:
    return {
        "config": {"inputs": ["verses.jsonl"], "seed": 0, "dedup": {"threshold": 0.9}},
        "stages": {
            "read": {"seconds": 0.41, "device": "none"},
            "embed": {"seconds": 12.5, "device": "cpu", "reused": True},
            "select_k": {"seconds": 3.2, "device": "cpu"},
            "kmeans": {"seconds": 1.1, "device": "cpu"},
            "label": {"seconds": 0.7, "device": "none"},
            "dedup": {"seconds": 0.3, "device": "cpu"},
            "write": {"seconds": 0.2, "device": "none"},
        },
        "k": k,
        "themes": k,
        "select_k": {
            "criterion": "modularity",
            "reason": f"highest mean modularity 0.41 at k={k}",
            "range": [2, 8],
            "candidates": [{"k": c, "modularity": 0.4 - 0.01 * abs(c - k), "modularities": [0.4 - 0.01 * abs(c - k) + d for d in (-0.01, 0.0, 0.012)]} for c in (2, 3, 4, 6, 8)],
            "k": k,
        },
        "documents": {"input": n, "kept": n - 4, "embedded": n - 2, "near_duplicates": 2, "exact_duplicates": 1, "filtered": 1, "bad_records": 2},
        "bad_records": {"count": 2, "examples": [{"source": "verses.jsonl:301", "error": "invalid JSON <oops> & co"}, {"source": "verses.jsonl:305", "error": "no text"}]},
        "dedup": {"threshold": 0.9, "pairs": 3, "groups": 2},
    }


def _docs_path(out: Path) -> Path:
    return out / ".theme-engine" / "read" / "docs.parquet"


def data_blocks(page: str) -> dict[str, Any]:
    """The page's JSON data blocks by id, parsed."""
    blocks = re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>', page, flags=re.S)
    return {name: json.loads(text) for name, text in blocks}


def outside_plotly(page: str) -> str:
    """The page without its inlined plotly.js (which must be there exactly once)."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    assert page.count(js) == 1
    return page.replace(js, "")


@pytest.fixture
def run_dir(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "out"
    return out, make_output(out)


def test_render_writes_one_self_contained_page(run_dir):
    out, info = run_dir
    rec = render_report(out)
    path = out / REPORT_FILE
    assert path.is_file() and not (out / (REPORT_FILE + ".tmp")).exists()
    json.dumps(rec)  # JSON-serialisable
    assert rec["path"] == str(path)
    assert rec["bytes"] == path.stat().st_size
    assert (rec["points_shown"], rec["points_total"], rec["sampled"], rec["seed"]) == (299, 299, False, 0)
    assert rec["excerpt_chars"] == 300 and rec["seconds"] >= 0
    page = path.read_text(encoding="utf-8")
    rest = outside_plotly(page)
    # nothing outside plotly.js names a URL at all, and nothing loads anything
    assert "http://" not in rest and "https://" not in rest and "//cdn" not in rest
    for pattern in (r"\bsrc\s*=", r"\bhref\s*=\s*(?![\"']?#)", r"@import", r"url\(", r"<link\b", r"<img\b", r"<iframe\b", r"\bimport\s*\("):
        assert not re.search(pattern, rest, flags=re.I), pattern
    for pattern in (r"<script[^>]*\bsrc\s*=", r"<link[^>]*\bhref\s*=\s*[\"']?https?:", r"@import\s+url\(\s*[\"']?https?:"):
        assert not re.search(pattern, page, flags=re.I), pattern
    assert "default-src 'none'" in page  # the Content-Security-Policy forbids fetching
    # the hostile text never appears raw: each </script> ends one of the page's own scripts
    assert "<b>bold</b>" not in page
    assert len(re.findall(r"</script", page, flags=re.I)) == len(re.findall(r"<script\b", page, flags=re.I)) == 4


def test_data_blocks_round_trip(run_dir):
    out, info = run_dir
    render_report(out)
    blocks = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert set(blocks) == {"report-data", "points-data"}
    data, points = blocks["report-data"], blocks["points-data"]
    assert [t["label"] for t in data["themes"]] == LABELS
    assert [n["id"] for n in data["hierarchy"]] == [4, 5, 6]
    assert data["manifest"] == info["manifest"]
    assert data["meta"]["texts"] is True and data["meta"]["texts_note"] is None
    # the map: every placed document once, in documents.parquet order; the filtered one is not there
    ids = info["ids"]
    assert points["id"] == ids[:-1]
    assert points["theme"] == info["theme"][:-1]
    assert len(points["x"]) == len(points["y"]) == len(points["excerpt"]) == len(points["status"]) == 299
    j = points["id"].index(info["hostile"])
    assert points["excerpt"][j] == " ".join(info["texts"][5].split())  # hostile text survives exactly
    for e, t in zip(points["excerpt"], info["texts"]):
        folded = " ".join(t.split())
        assert e == folded if len(folded) <= 300 else (len(e) <= 301 and e.endswith("\u2026") and folded.startswith(e[:-1]))
    statuses = [points["statuses"][s] for s in points["status"]]
    assert statuses[-3:] == ["near_duplicate", "near_duplicate", "exact_duplicate"] and set(statuses[:-3]) == {"ok"}
    assert points["dup_of"] == {"296": "d011", "297": "d011", "298": "d010"}
    # label positions: each theme's median point
    docs = pq.read_table(out / "documents.parquet").to_pandas()
    med = docs[docs.theme == 0][["x", "y"]].median()
    assert data["label_pos"]["0"] == pytest.approx([med.x, med.y], abs=1e-5)
    # representatives with excerpts; d005 (hostile) among theme 1's
    reps = data["themes"][1]["representatives"]
    assert reps[0]["id"] == "d005" and reps[0]["excerpt"].startswith("Evil </script><b>") and reps[0]["source"] == "verses.jsonl:6"
    # duplicate groups, largest first, the most similar first, with their evidence
    dd = data["duplicates"]
    assert (dd["pairs"], dd["groups_total"], dd["kinds"]) == (3, 2, {"near": 1, "lexical": 1, "exact": 1})
    g0, g1 = dd["groups"]
    assert g0["kept"]["id"] == "d011" and [m["id"] for m in g0["members"]] == ["d297", "d296"]
    assert g0["members"][1] | {"excerpt": None} == {
        "id": "d296", "theme": 3, "status": "near_duplicate", "source": "verses.jsonl:297", "excerpt": None,
        "similarity": pytest.approx(0.93, abs=1e-6), "kind": "lexical", "lexical_similarity": pytest.approx(0.9, abs=1e-6), "edits": 1,
    }
    assert g0["members"][0]["lexical_similarity"] is None and g0["members"][0]["edits"] is None
    assert g1["kept"]["id"] == "d010" and g1["members"][0]["kind"] == "exact" and g1["members"][0]["excerpt"] == g1["kept"]["excerpt"]


def test_sampling_is_seeded_and_keeps_every_theme(run_dir):
    out, info = run_dir
    shown = {}
    for seed in (0, 0, 1):
        rec = render_report(out, max_points=40, seed=seed)
        assert (rec["points_shown"], rec["points_total"], rec["sampled"], rec["seed"]) == (40, 299, True, seed)
        points = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))["points-data"]
        assert len(points["id"]) == 40 and set(points["theme"]) == {0, 1, 2, 3}
        assert points["id"] == sorted(points["id"]) and "d299" not in points["id"]  # documents.parquet order; no coordinates, no point
        shown.setdefault(seed, []).append(points["id"])
    assert shown[0][0] == shown[0][1]
    assert shown[1][0] != shown[0][0]
    page = (out / REPORT_FILE).read_text(encoding="utf-8")
    meta = data_blocks(page)["report-data"]["meta"]
    assert (meta["sampled"], meta["seed"], meta["points_shown"], meta["points_total"]) == (True, 1, 40, 299)


def test_sample_points():
    themes = np.array([0] * 1000 + [1] * 10 + [2])  # a one-point theme stays in
    for seed in range(5):
        s = sample_points(themes, 50, seed)
        assert len(s) == 50 and len(np.unique(s)) == 50 and np.all(np.diff(s) > 0)
        assert set(themes[s]) == {0, 1, 2}
        assert np.array_equal(s, sample_points(themes, 50, seed))
    assert not np.array_equal(sample_points(themes, 50, 0), sample_points(themes, 50, 1))
    assert np.array_equal(sample_points(themes, 5000, 0), np.arange(len(themes)))
    assert sorted(set(themes[sample_points(themes, 2, 3)])) != [0]  # fewer points than themes: distinct themes
    assert len(sample_points(themes, 2, 3)) == 2 and len(sample_points(themes, 0, 3)) == 0


def test_old_style_themes_list(tmp_path):
    out = tmp_path / "out"
    make_output(out, old_themes=True)
    rec = render_report(out)
    data = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))["report-data"]
    assert [t["label"] for t in data["themes"]] == LABELS and data["hierarchy"] == []
    assert rec["points_shown"] == 299


def test_missing_docs_parquet_renders_without_texts(tmp_path):
    out = tmp_path / "out"
    make_output(out, texts=False)
    assert not _docs_path(out).exists()
    rec = render_report(out)
    blocks = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))
    data, points = blocks["report-data"], blocks["points-data"]
    assert data["meta"]["texts"] is False and "unavailable" in data["meta"]["texts_note"]
    assert rec["points_shown"] == 299 and set(points["excerpt"]) == {""}
    assert all("excerpt" not in r for t in data["themes"] for r in t["representatives"])
    assert data["duplicates"]["groups"][0]["kept"]["id"] == "d011"


def test_docs_parquet_of_another_run_is_not_used(tmp_path):
    out = tmp_path / "out"
    make_output(out)
    with DocStore(_docs_path(out)).writer() as write:  # 2 documents: not this documents.parquet's
        write({"id": ["a", "b"], "source": ["s:1", "s:2"], "text": ["x", "y"], "status": ["ok", "ok"], "exact_of": [-1, -1], "length": [1, 1]})
    render_report(out)
    meta = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))["report-data"]["meta"]
    assert meta["texts"] is False and "holds 2 documents" in meta["texts_note"]


def test_manifest_given_or_missing(tmp_path):
    out = tmp_path / "out"
    make_output(out, manifest=False)
    render_report(out)
    assert data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))["report-data"]["manifest"] == {}
    live = {"stages": {"read": {"seconds": 1.5, "device": "none"}}, "k": 4, "odd": float("nan"), "path": Path("/x")}
    render_report(out, manifest=live)
    m = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))["report-data"]["manifest"]
    assert m == {"stages": {"read": {"seconds": 1.5, "device": "none"}}, "k": 4, "odd": None, "path": "/x"}


def test_almost_empty_folder(tmp_path):
    """Only a themes.json: no map, no duplicates, still a page."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "themes.json").write_text(json.dumps([{"theme": 0, "label": "one", "size": 3}]))
    rec = render_report(out)
    assert (rec["points_shown"], rec["points_total"], rec["sampled"]) == (0, 0, False)
    data = data_blocks((out / REPORT_FILE).read_text(encoding="utf-8"))["report-data"]
    assert data["duplicates"]["available"] is False and data["meta"]["has_coordinates"] is False
    with pytest.raises(FileNotFoundError):
        render_report(tmp_path / "nowhere")


def test_excerpts_shortened_to_fit():
    heads = ["word " * 100] * 200
    points = {"x": [0.0] * 200, "y": [0.0] * 200, "id": [f"d{i}" for i in range(200)]}
    full = len(report_mod._fit_excerpts(points, heads, 300, 10**9)[1])
    chars, block = report_mod._fit_excerpts(points, heads, 300, full // 2)
    assert chars < 300 and len(block) <= full // 2
    excerpts = data_blocks(block.decode())["points-data"]["excerpt"]
    assert all(len(e) <= chars + 1 for e in excerpts)


def test_report_module_does_not_import_ray():
    code = "import sys, theme_engine.engine.report; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

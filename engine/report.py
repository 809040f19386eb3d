"""``report.html``: one self-contained page about a run's output folder, for people to look at.

The page opens from ``file://`` with no network request at all: plotly.js, the styles, the script
and the data are all inlined (the data as ``<script type="application/json">`` blocks, with every
``<`` escaped, so no text can end them), and its Content-Security-Policy forbids fetching anything.
The script builds the DOM with ``textContent`` only, so documents' texts are never parsed as HTML.

It shows a 2-D map of the documents (a seeded sample of at most ``max_points``, every theme in it),
the themes with their keywords and representative documents, the theme hierarchy, the
near-duplicate groups with their evidence, and the run (stages, document counts, choice of k, bad
records). Texts are read from the run's stored documents only for what the page shows.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .docstore import DocChain, run_documents

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
DOCS_FILE = Path(".theme-engine") / "read" / "docs.parquet"  # the run's stored documents (texts)
MAX_BYTES = 30_000_000  # the whole page; the map's excerpts are shortened to stay under it
MIN_EXCERPT_CHARS = 40  # map excerpts are never cut shorter than this to fit MAX_BYTES
MAX_DUPLICATE_GROUPS = 500  # near-duplicate groups listed (the largest first)
MAX_GROUP_MEMBERS = 10  # duplicates listed per group (the most similar first)
MAX_REPRESENTATIVES = 5  # representative documents listed per theme
DOC_COLUMNS = ("id", "theme", "duplicate_of", "status", "source", "x", "y")  # of documents.parquet
DUP_COLUMNS = ("id", "duplicate_of", "similarity", "kind", "lexical_similarity", "edits", "text_jaccard")  # of duplicates.parquet


def render_report(
    out: Path,
    *,
    manifest: dict[str, Any] | None = None,
    max_points: int = 50_000,
    seed: int = 0,
    excerpt_chars: int = 300,
    stored: DocChain | None = None,
    folder: str | None = None,
) -> dict[str, Any]:
    """Write ``out/report.html`` (a temporary file, then renamed) and return what it holds: its
    path and bytes, the map's points shown and in all, whether they are a seeded sample, the
    seed, the map's excerpt length (shortened when the page would pass ``MAX_BYTES``) and the
    seconds it took. ``manifest`` is the run's manifest; ``None`` reads ``out/manifest.json``.
    ``stored``: the stored documents (texts); ``None`` reads the run's (and its updates') in ``out``.
    ``folder``: the run's folder name the page shows (``out``'s by default; an update renders into
    its staging folder)."""
    t0 = time.perf_counter()
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no output folder {out}")
    if manifest is None:
        manifest = _read_json(out / "manifest.json") or {}
    themes, hierarchy = _read_themes(out)
    docs = _read_table(out / "documents.parquet", DOC_COLUMNS)
    dups = _read_table(out / "duplicates.parquet", DUP_COLUMNS)
    n_docs = docs.num_rows if docs is not None else 0
    store, texts_note = _doc_store(out, n_docs, stored)

    theme_of = _int_column(docs, "theme", -1)

    # the map: documents with coordinates, a seeded sample of them
    x, y = _float_column(docs, "x"), _float_column(docs, "y")
    placed = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    shown = placed[sample_points(theme_of[placed], max_points, seed)] if len(placed) else placed
    label_pos = _label_positions(theme_of[placed], x[placed], y[placed])

    # the rows whose texts the page shows
    rep_ids = {str(t.get("theme")): _representative_ids(t)[:MAX_REPRESENTATIVES] for t in themes}
    listed, n_groups = _duplicate_groups(dups)
    wanted_ids = {i for r in rep_ids.values() for i in r} | {g["kept"] for g in listed} | {m["id"] for g in listed for m in g["members"]}
    row_of = _rows_of(docs, sorted(wanted_ids))
    extra = np.unique(np.fromiter((r for r in row_of.values() if r >= 0), dtype=np.int64))
    about = dict(zip(extra.tolist(), zip(_take(docs, "status", extra, "ok"), _take(docs, "source", extra, None))))
    texts = _read_texts(store, np.union1d(shown, extra), excerpt_chars) if store is not None else {}

    def doc(doc_id: str) -> dict[str, Any]:
        row = row_of.get(doc_id, -1)
        if row < 0:
            return {"id": doc_id, "missing": True}
        st, source = about[row]
        rec: dict[str, Any] = {"id": doc_id, "theme": int(theme_of[row]) if theme_of[row] >= 0 else None, "status": st}
        if source is not None:
            rec["source"] = source
        if row in texts:
            rec["excerpt"] = _excerpt(texts[row], excerpt_chars)
        return rec

    theme_recs = []
    for t in themes:
        rec = {key: v for key, v in t.items() if key != "representatives"}
        rec["representatives"] = [doc(i) for i in rep_ids[str(t.get("theme"))]]
        rec["representatives_total"] = len(_representative_ids(t))
        theme_recs.append(rec)

    dup_recs = []
    for g in listed:
        members = []
        for m in g["members"]:
            members.append({**doc(m["id"]), **{key: v for key, v in m.items() if key != "id"}})
        dup_recs.append({"kept": doc(g["kept"]), "size": g["size"], "members": members})

    data = {
        "meta": {
            "folder": folder or out.resolve().name,
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "points_shown": int(len(shown)),
            "points_total": int(len(placed)),
            "documents": n_docs,
            "sampled": bool(len(shown) < len(placed)),
            "seed": seed,
            "has_coordinates": docs is not None and "x" in docs.column_names and "y" in docs.column_names,
            "texts": store is not None,
            "texts_note": texts_note,
            "excerpt_chars": excerpt_chars,
        },
        "themes": theme_recs,
        "hierarchy": hierarchy,
        "label_pos": label_pos,
        "duplicates": {
            "pairs": dups.num_rows if dups is not None else 0,
            "groups_total": n_groups,
            "groups": dup_recs,
            "kinds": _kind_counts(dups),
            "max_groups": MAX_DUPLICATE_GROUPS,
            "max_members": MAX_GROUP_MEMBERS,
            "available": dups is not None,
        },
        "manifest": manifest,
    }

    status, dup_of = _take(docs, "status", shown, "ok"), _take(docs, "duplicate_of", shown, None)
    statuses = sorted(set(status))
    code = {s: i for i, s in enumerate(statuses)}
    heads = [texts.get(int(r), "") for r in shown]
    points = {
        "x": _rounded(x[shown]),
        "y": _rounded(y[shown]),
        "theme": theme_of[shown].tolist(),
        "id": _take(docs, "id", shown, ""),
        "statuses": statuses,
        "status": [code[st] for st in status],
        "dup_of": {str(j): d for j, d in enumerate(dup_of) if d is not None},
    }
    data["meta"]["excerpt_chars_map"] = excerpt_chars
    head, tail = _page_head(data), [_script(_plotly_js()), _script(APP_JS), b"</body>\n</html>\n"]
    fixed = len(head) + len(_json_block("report-data", data)) + sum(len(p) for p in tail)
    chars, points_block = _fit_excerpts(points, heads, excerpt_chars, MAX_BYTES - fixed - 1024)
    data["meta"]["excerpt_chars_map"] = chars
    parts = [head, _json_block("report-data", data), points_block, *tail]

    path = out / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
    os.replace(tmp, path)
    size = path.stat().st_size
    record = {
        "path": str(path),
        "bytes": int(size),
        "points_shown": int(len(shown)),
        "points_total": int(len(placed)),
        "sampled": bool(len(shown) < len(placed)),
        "seed": seed,
        "excerpt_chars": chars,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info(
        "report: %s (%.1f MB, %d of %d points%s, excerpts %d chars) in %.1f s",
        path,
        size / 1e6,
        record["points_shown"],
        record["points_total"],
        f", seeded sample (seed {seed})" if record["sampled"] else "",
        chars,
        record["seconds"],
    )
    return record


def sample_points(themes: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_points`` of the points whose themes are ``themes``: all
    of them when they fit, else a seeded random sample that holds at least one point of every
    theme (while ``max_points`` allows) and otherwise follows the themes' sizes."""
    themes = np.asarray(themes)
    n = len(themes)
    if n <= max_points:
        return np.arange(n)
    if max_points <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(n)
    _, first = np.unique(themes[order], return_index=True)  # each theme's first point in the order
    first = np.sort(first)
    if len(first) >= max_points:
        return np.sort(order[first[:max_points]])
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    rest = np.flatnonzero(~taken)[: max_points - len(first)]
    return np.sort(order[np.concatenate([first, rest])])


# ----------------------------------------------------------------------------- inputs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _read_themes(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(themes, hierarchy inner nodes); a ``themes.json`` from before the hierarchy is a list."""
    data = _read_json(out / "themes.json")
    if data is None:
        log.warning("report: no themes.json in %s", out)
        return [], []
    if isinstance(data, list):
        return data, []
    return list(data.get("themes", [])), list(data.get("hierarchy") or [])


def _read_table(path: Path, columns: tuple[str, ...]) -> Any:
    """The ``columns`` of the parquet file at ``path`` that it has; ``None`` without the file."""
    import pyarrow.parquet as pq

    if not path.is_file():
        log.warning("report: no %s", path)
        return None
    names = pq.ParquetFile(path).schema_arrow.names
    return pq.read_table(path, columns=[c for c in columns if c in names])


def _take(table: Any, name: str, rows: np.ndarray, default: Any) -> list[Any]:
    """Column ``name`` at ``rows`` as Python values (``default`` for each without the column)."""
    if table is None or name not in table.column_names:
        return [default] * len(rows)
    import pyarrow as pa

    return table.column(name).take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()


def _doc_store(out: Path, n_docs: int, stored: DocChain | None) -> tuple[DocChain | None, str | None]:
    """The run's stored documents when they are there and line up with ``documents.parquet``;
    else ``None`` and why the page has no texts."""
    store = stored if stored is not None else run_documents(out)
    if store is None:
        log.warning("report: no %s: the report shows no texts", out / DOCS_FILE)
        return None, f"texts unavailable: {DOCS_FILE.as_posix()} not found in the output folder"
    if store.n != n_docs:
        log.warning("report: the stored documents are %d, documents.parquet %d: the report shows no texts", store.n, n_docs)
        return None, f"texts unavailable: {DOCS_FILE.as_posix()} holds {store.n} documents, documents.parquet {n_docs}"
    return store, None


def _int_column(table: Any, name: str, null: int) -> np.ndarray:
    if table is None or name not in table.column_names:
        return np.full(table.num_rows if table is not None else 0, null, dtype=np.int64)
    col = table.column(name)
    return col.fill_null(null).to_numpy().astype(np.int64) if col.null_count else col.to_numpy().astype(np.int64)


def _float_column(table: Any, name: str) -> np.ndarray:
    if table is None or name not in table.column_names:
        return np.full(table.num_rows if table is not None else 0, np.nan, dtype=np.float64)
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> nan


def _representative_ids(theme: dict[str, Any]) -> list[str]:
    return [r["id"] if isinstance(r, dict) else str(r) for r in theme.get("representatives") or []]


def _rows_of(docs: Any, wanted: list[str]) -> dict[str, int]:
    """Row in ``documents.parquet`` of each id in ``wanted`` (-1 where it is not there)."""
    if not wanted:
        return {}
    if docs is None:
        return dict.fromkeys(wanted, -1)
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = docs.column("id")
    hit = pc.is_in(ids, value_set=pa.array(wanted, pa.string())).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(hit)
    found = dict(zip(ids.take(pa.array(rows)).to_pylist(), rows.tolist()))
    return {i: found.get(i, -1) for i in wanted}


def _read_texts(store: DocChain, rows: np.ndarray, chars: int) -> dict[int, str]:
    """The first characters of the texts of ``rows`` (enough for an excerpt of ``chars``)."""
    head = 2 * chars + 16
    out: dict[int, str] = {}
    if not len(rows):
        return out
    for sel, batch in store.iter_texts(np.asarray(rows, dtype=np.int64)):
        for r, t in zip(sel.tolist(), batch):
            t = t or ""
            # whitespace folded; the ellipsis is added when the text goes on
            folded = " ".join(t[:head].split())
            out[r] = folded + ("\u2026" if len(t) > head else "")
    return out


def _excerpt(text: str, chars: int) -> str:
    more = text.endswith("\u2026")
    body = text[:-1] if more else text
    if len(body) > chars:
        return body[:chars].rstrip() + "\u2026"
    return text


def _label_positions(themes: np.ndarray, x: np.ndarray, y: np.ndarray) -> dict[str, list[float]]:
    """Each theme's median point on the map (over all its placed documents, not the sample)."""
    if not len(themes):
        return {}
    order = np.argsort(themes, kind="stable")
    t = themes[order]
    cuts = np.flatnonzero(np.diff(t)) + 1
    out = {}
    for part in np.split(order, cuts):
        theme = int(themes[part[0]])
        if theme >= 0:
            out[str(theme)] = [float(np.median(x[part])), float(np.median(y[part]))]
    return out


def _duplicate_groups(dups: Any) -> tuple[list[dict[str, Any]], int]:
    """The ``MAX_DUPLICATE_GROUPS`` largest groups of duplicates by kept document (ties: first
    seen), each with at most ``MAX_GROUP_MEMBERS`` members, the most similar first; and how many
    groups there are in all."""
    if dups is None or dups.num_rows == 0:
        return [], 0
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(dups.column("duplicate_of").combine_chunks())
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    kept_ids = enc.dictionary.to_pylist()
    counts = np.bincount(codes, minlength=len(kept_ids))
    order = np.lexsort((np.arange(len(counts)), -counts))
    top = order[:MAX_DUPLICATE_GROUPS]
    rank = np.full(len(counts), -1, dtype=np.int64)
    rank[top] = np.arange(len(top))
    sim = _float_column(dups, "similarity")
    members_at = np.flatnonzero(rank[codes] >= 0)
    # by group, then similarity (highest first), then file order
    members_at = members_at[np.lexsort((members_at, -np.nan_to_num(sim[members_at], nan=-2.0), rank[codes[members_at]]))]
    cols = {c: dups.column(c) for c in ("id", "kind", "lexical_similarity", "edits", "text_jaccard") if c in dups.column_names}
    groups: list[dict[str, Any]] = [{"kept": kept_ids[g], "size": int(counts[g]), "members": []} for g in top]
    for i in members_at.tolist():
        g = groups[rank[codes[i]]]
        if len(g["members"]) >= MAX_GROUP_MEMBERS:
            continue
        m: dict[str, Any] = {"id": cols["id"][i].as_py(), "similarity": _num(sim[i])}
        for c in ("kind", "lexical_similarity", "edits", "text_jaccard"):
            if c in cols:
                m[c] = _num(cols[c][i].as_py())
        g["members"].append(m)
    return groups, len(counts)


def _kind_counts(dups: Any) -> dict[str, int]:
    if dups is None or "kind" not in dups.column_names:
        return {}
    import pyarrow.compute as pc

    vc = pc.value_counts(dups.column("kind")).to_pylist()
    return {str(v["values"]): int(v["counts"]) for v in vc}


# ----------------------------------------------------------------------------- the page


def _num(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return round(v, 6) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _clean(obj: Any) -> Any:
    """``obj`` as plain JSON: NaN and infinities as null, numpy scalars and paths as Python's."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return str(obj)


def _rounded(v: np.ndarray) -> list[float]:
    """Map coordinates with 5 significant digits of the map's extent (they are only drawn)."""
    if not len(v):
        return []
    extent = float(np.max(v) - np.min(v)) or 1.0
    decimals = max(0, 5 - int(math.floor(math.log10(extent))) - 1)
    return np.round(v, decimals).tolist()


def _json_text(obj: Any) -> str:
    # "<" escaped everywhere: no text can close the script block or open a comment in it
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _json_block(block_id: str, obj: Any, cleaned: bool = False) -> bytes:
    text = _json_text(obj if cleaned else _clean(obj))
    return f'<script type="application/json" id="{block_id}">{text}</script>\n'.encode("utf-8", "replace")


def _fit_excerpts(points: dict[str, Any], heads: list[str], chars: int, budget: int) -> tuple[int, bytes]:
    """The points block with excerpts of ``chars`` characters, shortened until it fits ``budget``
    bytes (never below ``MIN_EXCERPT_CHARS``); returns the excerpt length used and the block."""
    while True:
        block = _json_block("points-data", {**points, "excerpt": [_excerpt(h, chars) for h in heads]}, cleaned=True)
        if len(block) <= budget or chars <= MIN_EXCERPT_CHARS or not heads:
            if len(block) > budget:
                log.warning("report: the map's data is %.1f MB even with %d-character excerpts", len(block) / 1e6, chars)
            return chars, block
        base = len(_json_block("points-data", {**points, "excerpt": [""] * len(heads)}, cleaned=True))
        room = budget - base
        per_char = (len(block) - base) / max(1, sum(min(len(h), chars) for h in heads)) * len(heads)
        new = int(room / per_char * 0.98) if per_char > 0 else MIN_EXCERPT_CHARS
        new = max(MIN_EXCERPT_CHARS, min(new, chars - 10))
        log.info("report: map excerpts shortened from %d to %d characters to keep the page under %.0f MB", chars, new, MAX_BYTES / 1e6)
        chars = new


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _script(code: str) -> bytes:
    if "</script" in code.lower():  # never the case for plotly.js or the page's own script
        raise ValueError("inline script holds </script")
    return f"<script>{code}</script>\n".encode("utf-8")


def _page_head(data: dict[str, Any]) -> bytes:
    title = html.escape(f"theme-engine report: {data['meta']['folder']}")
    return PAGE_HEAD.replace("@TITLE@", title).encode("utf-8")


# Nothing may be fetched: scripts and styles are inline; images, workers only from data:/blob:
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; worker-src blob:; connect-src data: blob:; "
    "base-uri 'none'; form-action 'none'"
)

PAGE_HEAD = (
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content=\""""
    + CSP
    + """\">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>
:root { --fg: #1d2330; --muted: #5d6675; --line: #dde1e8; --bg: #f6f7f9; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--fg); background: var(--bg); }
header { padding: 14px 24px 10px; background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 10; }
header h1 { margin: 0; font-size: 19px; }
header nav { margin-top: 4px; }
header nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
#summary { color: var(--muted); margin: 2px 0 0; }
main { padding: 0 24px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; margin: 18px 0; padding: 12px 16px 16px; }
section > h2 { font-size: 16px; margin: 0 0 8px; }
.note { color: var(--muted); margin: 4px 0 8px; }
.warn { color: #9a5b00; }
.map-wrap { display: flex; gap: 12px; align-items: stretch; }
#map { flex: 1 1 auto; min-width: 0; height: 640px; }
#hover-panel { flex: 0 0 300px; border-left: 1px solid var(--line); padding-left: 12px; overflow-y: auto; max-height: 640px; }
#hover-panel h3 { font-size: 13px; margin: 0 0 6px; color: var(--muted); font-weight: 600; }
#hover-text .hover-id { font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 600; word-break: break-all; }
#hover-text .hover-theme { margin-top: 4px; }
#hover-text .hover-status { color: var(--muted); margin-top: 2px; }
#hover-text .hover-excerpt { margin-top: 8px; white-space: pre-wrap; overflow-wrap: anywhere; }
#hover-tip { position: fixed; z-index: 20; pointer-events: none; max-width: 360px; background: rgba(255,255,255,0.96); border: 1px solid #9aa3b2; border-radius: 4px; padding: 6px 8px; font-size: 12px; box-shadow: 0 2px 8px rgba(0,0,0,0.15); overflow-wrap: anywhere; }
#hover-tip .tip-id { font-weight: 600; font-family: ui-monospace, Menlo, Consolas, monospace; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: baseline; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 5px 8px; border-bottom: 1px solid var(--line); }
th { background: #f0f2f5; font-weight: 600; white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \\2195"; color: #9aa3b2; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--fg); }
th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--fg); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.filter-row { display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }
#theme-filter { width: 320px; padding: 5px 8px; border: 1px solid #b9c0cc; border-radius: 4px; font: inherit; }
.keywords { display: flex; flex-wrap: wrap; gap: 4px; list-style: none; margin: 0; padding: 0; max-width: 420px; }
.keywords li { background: #eef2f9; border-radius: 3px; padding: 1px 6px; font-size: 12px; }
.keywords .score, .keywords .lift { color: var(--muted); margin-left: 4px; font-variant-numeric: tabular-nums; }
.reps { margin: 0; padding-left: 18px; }
.reps li { margin-bottom: 4px; }
.doc-id { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
.excerpt { color: #333a46; font-size: 12.5px; overflow-wrap: anywhere; }
.source { color: var(--muted); font-size: 12px; margin-left: 6px; }
#hierarchy details { margin-left: 16px; }
#hierarchy > details, #hierarchy > .leaf { margin-left: 0; }
#hierarchy summary { cursor: pointer; padding: 2px 0; }
#hierarchy .node-label { font-weight: 600; }
#hierarchy .node-meta, #hierarchy .leaf-meta { color: var(--muted); margin-left: 8px; font-size: 12.5px; }
#hierarchy .leaf { margin-left: 16px; padding: 2px 0 2px 14px; }
.dup-group { display: grid; grid-template-columns: 1fr 1fr; gap: 6px 14px; border-top: 1px solid var(--line); padding: 10px 0; }
.dup-kept { grid-column: 1; background: #f3f8f1; border-radius: 4px; padding: 6px 8px; align-self: start; }
.dup-member { grid-column: 2; background: #fbf5ee; border-radius: 4px; padding: 6px 8px; }
.dup-role { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); margin-right: 6px; }
.evidence { color: var(--muted); font-size: 12px; margin: 2px 0; }
.more { color: var(--muted); font-size: 12px; grid-column: 2; }
.run-grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 16px; }
.run-grid h3 { font-size: 14px; margin: 4px 0 6px; }
#k-chart { height: 320px; }
#counts, #dedup { width: auto; min-width: 60%; }
pre { background: #f3f4f6; padding: 8px; border-radius: 4px; overflow: auto; max-height: 420px; font-size: 12px; }
</style>
</head>
<body>
<header>
<h1 id="title">@TITLE@</h1>
<p id="summary"></p>
<nav><a href="#map-section">Map</a><a href="#themes">Themes</a><a href="#hierarchy-section">Hierarchy</a><a href="#duplicates-section">Near-duplicates</a><a href="#run">Run</a></nav>
</header>
<main>
<section id="map-section">
<h2>Map of the documents</h2>
<p id="sample-note" class="note"></p>
<p id="texts-note" class="note warn" hidden></p>
<div class="map-wrap">
<div id="map"></div>
<aside id="hover-panel"><h3>Hovered document</h3><div id="hover-text"><span class="note">Hover over a point to read its document.</span></div></aside>
</div>
</section>
<section id="themes">
<h2>Themes</h2>
<div class="filter-row"><input id="theme-filter" type="search" placeholder="Filter themes by text…" aria-label="Filter themes"><span id="theme-count" class="note"></span></div>
<table id="themes-table">
<thead><tr>
<th class="sortable num" data-key="theme" data-type="num">#</th>
<th class="sortable num" data-key="size" data-type="num">Size</th>
<th class="sortable" data-key="label" data-type="str">Label</th>
<th class="sortable" data-key="keywords" data-type="str">Keywords (score, lift)</th>
<th class="sortable" data-key="reps" data-type="str">Representative documents</th>
</tr></thead>
<tbody></tbody>
</table>
</section>
<section id="hierarchy-section">
<h2>Theme hierarchy</h2>
<p class="note" id="hierarchy-note"></p>
<div id="hierarchy"></div>
</section>
<section id="duplicates-section">
<h2>Near-duplicates</h2>
<p class="note" id="duplicates-note"></p>
<div id="duplicates"></div>
</section>
<section id="run">
<h2>The run</h2>
<div class="run-grid">
<div><h3>Stages</h3><table id="stages"><thead><tr><th>Stage</th><th class="num">Seconds</th><th>Device</th><th>Reused</th></tr></thead><tbody></tbody></table></div>
<div><h3>Documents</h3><table id="counts"><tbody></tbody></table><h3>Near-duplicate detection</h3><table id="dedup"><tbody></tbody></table></div>
</div>
<h3>Choice of k</h3>
<p class="note" id="k-note"></p>
<div id="k-chart"></div>
<h3>Bad records</h3>
<p class="note" id="bad-note"></p>
<table id="bad-records"><thead><tr><th>Source</th><th>Error</th></tr></thead><tbody></tbody></table>
<details id="config"><summary>Configuration</summary><pre id="config-json"></pre></details>
</section>
</main>
<div id="hover-tip" hidden></div>
"""
)

APP_JS = r"""
(function () {
  'use strict';
  var T0 = performance.now();
  function readJSON(id) { var el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; }
  var D = readJSON('report-data');
  var P = readJSON('points-data');
  var M = D.manifest || {};
  var themeById = {};
  (D.themes || []).forEach(function (t) { themeById[t.theme] = t; });

  // DOM from text only: h('td', {class: 'num'}, ['12']) - strings become text nodes
  function h(tag, attrs, kids) {
    var el = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined || attrs[k] === false) return;
      if (k === 'text') el.textContent = attrs[k];
      else if (k === 'class') el.className = attrs[k];
      else el.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      el.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    });
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function fmt(v, d) {
    if (v === null || v === undefined || v === '') return '';
    if (typeof v === 'number') return d === undefined && Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(d === undefined ? 3 : d);
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  // plotly's labels read a little HTML: entities keep user text as text
  function plotlyText(s) { return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;'); }
  function color(t) {
    if (t === null || t === undefined || t < 0) return '#9aa0aa';
    return 'hsl(' + ((t * 137.508) % 360).toFixed(1) + ',' + (t % 3 === 1 ? 55 : 68) + '%,' + (t % 2 ? 40 : 50) + '%)';
  }
  function swatch(t) { var s = h('span', {class: 'swatch'}); s.style.background = color(t); return s; }
  function themeName(t) {
    if (t === null || t === undefined || t < 0) return 'no theme';
    var th = themeById[t];
    return '#' + t + (th && th.label ? ' ' + th.label : '');
  }
  function docBlock(d, role) {
    var kids = [];
    if (role) kids.push(h('span', {class: 'dup-role', text: role}));
    kids.push(h('span', {class: 'doc-id', text: d.id}));
    if (d.source) kids.push(h('span', {class: 'source', text: d.source}));
    if (d.theme !== undefined && d.theme !== null) kids.push(h('span', {class: 'source', text: 'theme ' + themeName(d.theme)}));
    var div = h('div', null, kids);
    var ex = d.missing ? '(not in documents.parquet)' : (d.excerpt !== undefined ? d.excerpt : (D.meta.texts ? '' : '(text unavailable)'));
    return [div, h('div', {class: 'excerpt', text: ex})];
  }
  function guard(name, fn) {
    try { return fn(); } catch (e) { console.error('report: ' + name + ' failed: ' + (e && e.stack || e)); }
  }

  // ---------------------------------------------------------------- header
  function buildSummary() {
    var docs = M.documents || {};
    var parts = [];
    if (docs.input !== undefined) parts.push(fmt(docs.input) + ' documents read');
    if (docs.kept !== undefined) parts.push(fmt(docs.kept) + ' kept');
    var nt = M.themes !== undefined ? M.themes : (D.themes || []).length;
    parts.push(fmt(nt) + ' themes' + (M.k !== undefined ? ' (k=' + M.k + ')' : ''));
    parts.push(fmt(D.duplicates.pairs) + ' documents not kept as duplicates of ' + fmt(D.duplicates.groups_total) + ' kept ones');
    parts.push('generated ' + D.meta.generated);
    document.getElementById('summary').textContent = parts.join(' \u00b7 ');
  }

  // ---------------------------------------------------------------- themes table
  function buildThemes() {
    var table = document.getElementById('themes-table');
    var tbody = table.tBodies[0];
    var rows = (D.themes || []).map(function (t) {
      var kw = h('ul', {class: 'keywords'});
      (t.keywords || []).forEach(function (k, i) {
        var li = h('li', {class: 'keyword'}, [h('span', {class: 'kw', text: k})]);
        var sc = (t.keyword_scores || [])[i];
        if (sc !== undefined && sc !== null) li.appendChild(h('span', {class: 'score', title: 'c-TF-IDF score', text: fmt(sc, 3)}));
        var lf = (t.keyword_lifts || [])[i];
        if (lf !== undefined && lf !== null) li.appendChild(h('span', {class: 'lift', title: 'lift: P(theme | term) / P(theme)', text: '\u00d7' + fmt(lf, 1)}));
        kw.appendChild(li);
      });
      var reps = h('ol', {class: 'reps'});
      (t.representatives || []).forEach(function (d) { reps.appendChild(h('li', null, docBlock(d))); });
      var more = (t.representatives_total || 0) - (t.representatives || []).length;
      if (more > 0) reps.appendChild(h('li', {class: 'note', text: '\u2026 ' + more + ' more in themes.json'}));
      var size = [fmt(t.size)];
      if (t.unique_size !== undefined && t.unique_size !== t.size) size.push(h('div', {class: 'note', text: fmt(t.unique_size) + ' unique'}));
      var merged = (t.merged_from && t.merged_from.length > 1) ? h('div', {class: 'note', text: 'merged from ' + t.merged_from.join(', ')}) : null;
      var tr = h('tr', {class: 'theme-row', 'data-theme': t.theme}, [
        h('td', {class: 'num'}, [swatch(t.theme), String(t.theme)]),
        h('td', {class: 'num'}, size),
        h('td', {class: 'theme-label'}, [t.label || '', merged]),
        h('td', null, [kw]),
        h('td', null, [reps])
      ]);
      tr._sort = {theme: t.theme, size: t.size || 0, label: (t.label || '').toLowerCase(), keywords: (t.keywords || []).join(' ').toLowerCase(),
                  reps: (t.representatives || []).map(function (d) { return d.id; }).join(' ')};
      tr._text = tr.textContent.toLowerCase();
      return tr;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
    var count = document.getElementById('theme-count');
    function showCount() {
      var shown = rows.filter(function (r) { return !r.hidden; }).length;
      count.textContent = shown === rows.length ? rows.length + ' themes' : shown + ' of ' + rows.length + ' themes';
    }
    showCount();
    var filter = document.getElementById('theme-filter');
    filter.addEventListener('input', function () {
      var q = filter.value.trim().toLowerCase();
      rows.forEach(function (r) { r.hidden = q !== '' && r._text.indexOf(q) < 0; });
      showCount();
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener('click', function () {
        var key = th.getAttribute('data-key'), num = th.getAttribute('data-type') === 'num';
        var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
        Array.prototype.forEach.call(table.tHead.rows[0].cells, function (o) { o.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
        rows.sort(function (a, b) {
          var x = a._sort[key], y = b._sort[key];
          var c = num ? x - y : (x < y ? -1 : x > y ? 1 : 0);
          return c * dir || a._sort.theme - b._sort.theme;
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
      });
    });
  }

  // ---------------------------------------------------------------- hierarchy
  function buildHierarchy() {
    var root = document.getElementById('hierarchy');
    var note = document.getElementById('hierarchy-note');
    var nodes = D.hierarchy || [];
    if (!nodes.length) { note.textContent = 'No theme hierarchy in this run.'; return; }
    var byId = {}, child = {};
    nodes.forEach(function (n) { byId[n.id] = n; (n.children || []).forEach(function (c) { child[c] = true; }); });
    note.textContent = nodes.length + ' merges of ' + (D.themes || []).length + ' themes: each node joins two groups of themes at the cosine similarity of their mean centroids.';
    function leaf(t) {
      var th = themeById[t];
      return h('div', {class: 'leaf', 'data-theme': t}, [swatch(t), h('span', {class: 'leaf-label', text: themeName(t)}),
        h('span', {class: 'leaf-meta', text: th ? fmt(th.size) + ' docs' : ''})]);
    }
    function render(id, depth) {
      var n = byId[id];
      if (!n) return leaf(id);
      var det = h('details', {class: 'node', 'data-node': id, open: depth < 2 ? 'open' : null}, [
        h('summary', null, [h('span', {class: 'node-label', text: n.label || ('node ' + id)}),
          h('span', {class: 'node-meta', text: 'similarity ' + fmt(n.similarity, 3) + ' \u00b7 ' + fmt(n.size) + ' docs \u00b7 ' + (n.themes || []).length + ' themes'})])
      ]);
      (n.children || []).forEach(function (c) { det.appendChild(render(c, depth + 1)); });
      return det;
    }
    var tops = nodes.filter(function (n) { return !child[n.id]; }).reverse();  // the root is the last node
    tops.forEach(function (n) { root.appendChild(render(n.id, 0)); });
    (D.themes || []).forEach(function (t) { if (!child[t.theme]) root.appendChild(leaf(t.theme)); });
  }

  // ---------------------------------------------------------------- duplicates
  function buildDuplicates() {
    var dd = D.duplicates, box = document.getElementById('duplicates');
    var note = document.getElementById('duplicates-note');
    if (!dd.available) { note.textContent = 'No duplicates.parquet in this run.'; return; }
    var kinds = Object.keys(dd.kinds || {}).map(function (k) { return fmt(dd.kinds[k]) + ' ' + k; }).join(', ');
    // documents (rows of duplicates.parquet, exact copies with them) by the kept document they repeat; the
    // CLI's summary counts the pairs of evidence between embedded texts, which link more documents than this
    var msg = fmt(dd.pairs) + ' documents not kept' + (kinds ? ' (' + kinds + ')' : '') + ', as duplicates of ' + fmt(dd.groups_total) + ' kept documents';
    if (dd.groups_total > dd.groups.length) msg += '; showing the ' + dd.groups.length + ' largest groups';
    msg += '; up to ' + dd.max_members + ' duplicates each, the most similar first.';
    if (M.dedup && M.dedup.threshold !== undefined) msg += ' Near duplicates: cosine \u2265 ' + M.dedup.threshold + '.';
    note.textContent = msg;
    dd.groups.forEach(function (g) {
      var grp = h('div', {class: 'dup-group', 'data-kept': g.kept.id});
      var kept = h('div', {class: 'dup-kept'}, docBlock(g.kept, 'kept'));
      kept.style.gridRow = 'span ' + Math.max(1, g.members.length + (g.size > g.members.length ? 1 : 0));
      grp.appendChild(kept);
      g.members.forEach(function (m) {
        var ev = [m.kind || 'duplicate'];
        if (m.similarity !== null && m.similarity !== undefined) ev.push('cosine ' + fmt(m.similarity, 3));
        if (m.lexical_similarity !== null && m.lexical_similarity !== undefined) ev.push('word Jaccard ' + fmt(m.lexical_similarity, 3));
        if (m.edits !== null && m.edits !== undefined) ev.push(m.edits + ' word edit' + (m.edits === 1 ? '' : 's'));
        if (m.kind === 'fuzzy' && m.text_jaccard !== null && m.text_jaccard !== undefined) ev.push('whole-text Jaccard ' + fmt(m.text_jaccard, 3));
        var b = docBlock(m, 'duplicate');
        grp.appendChild(h('div', {class: 'dup-member', 'data-kind': m.kind || ''}, [b[0], h('div', {class: 'evidence', text: ev.join(' \u00b7 ')}), b[1]]));
      });
      if (g.size > g.members.length) grp.appendChild(h('div', {class: 'more', text: '\u2026 ' + (g.size - g.members.length) + ' more in duplicates.parquet'}));
      box.appendChild(grp);
    });
  }

  // ---------------------------------------------------------------- the run
  function kvRows(tbody, pairs) {
    pairs.forEach(function (p) { if (p[1] !== undefined) tbody.appendChild(h('tr', {'data-key': p[0]}, [h('td', {text: p[0]}), h('td', {class: 'num', text: fmt(p[1])})])); });
  }
  function buildRun() {
    var st = document.getElementById('stages').tBodies[0], total = 0;
    Object.keys(M.stages || {}).forEach(function (name) {
      var s = M.stages[name] || {};
      if (!s.reused && typeof s.seconds === 'number') total += s.seconds;
      st.appendChild(h('tr', {'data-stage': name}, [h('td', {text: name}), h('td', {class: 'num', text: typeof s.seconds === 'number' ? s.seconds.toFixed(2) : ''}),
        h('td', {text: s.device || ''}), h('td', {text: s.reused ? 'reused' : ''})]));
    });
    if (st.rows.length) st.appendChild(h('tr', null, [h('th', {text: 'total (not reused)'}), h('th', {class: 'num', text: total.toFixed(2)}), h('th'), h('th')]));
    else st.appendChild(h('tr', null, [h('td', {colspan: 4, class: 'note', text: 'No stages recorded.'})]));
    var d = M.documents || {};
    kvRows(document.getElementById('counts').tBodies[0], [['read', d.input], ['kept', d.kept], ['embedded', d.embedded], ['near duplicates', d.near_duplicates],
      ['exact duplicates', d.exact_duplicates], ['filtered', d.filtered], ['bad records', d.bad_records], ['on the map', D.meta.points_total]]);
    var dd = document.getElementById('dedup').tBodies[0];
    Object.keys(M.dedup || {}).forEach(function (k) { kvRows(dd, [[k, M.dedup[k]]]); });
    // bad records
    var bad = M.bad_records || {}, ex = bad.examples || [];
    var bt = document.getElementById('bad-records').tBodies[0];
    ex.forEach(function (b) { bt.appendChild(h('tr', null, [h('td', {class: 'doc-id', text: b.source || ''}), h('td', {text: b.error || ''})])); });
    var bn = document.getElementById('bad-note');
    var count = bad.count !== undefined ? bad.count : ex.length;
    bn.textContent = count ? fmt(count) + ' bad records skipped' + (ex.length < count ? '; the first ' + ex.length + ' listed' : '') + '.' : 'No bad records.';
    if (!ex.length) document.getElementById('bad-records').hidden = true;
    if (M.config !== undefined) document.getElementById('config-json').textContent = JSON.stringify(M.config, null, 2);
    else document.getElementById('config').hidden = true;
  }
  function buildK() {
    var sk = M.select_k || {}, note = document.getElementById('k-note'), div = document.getElementById('k-chart');
    var chosen = sk.k !== undefined ? sk.k : M.k;
    var bits = [];
    if (chosen !== undefined) bits.push('k = ' + chosen);
    if (sk.criterion) bits.push('criterion: ' + sk.criterion);
    if (sk.range) bits.push('range: ' + fmt(sk.range));
    if (sk.reason) bits.push(sk.reason);
    var cands = (sk.candidates || []).filter(function (c) { return typeof c.k === 'number'; });
    if (!cands.length) { note.textContent = (bits.join(' \u00b7 ') || 'No choice of k recorded') + (bits.length ? '' : '.'); div.hidden = true; return null; }
    note.textContent = bits.join(' \u00b7 ');
    var key = ['modularities', 'silhouettes', 'scores'].filter(function (k) { return cands.some(function (c) { return Array.isArray(c[k]) && c[k].length; }); })[0];
    var single = ['modularity', 'silhouette', 'score'].filter(function (k) { return cands.some(function (c) { return typeof c[k] === 'number'; }); })[0];
    var name = key ? key.replace(/ies$/, 'y').replace(/s$/, '') : (single || 'score');
    cands = cands.slice().sort(function (a, b) { return a.k - b.k; });
    var ks = [], mean = [], lo = [], hi = [];
    cands.forEach(function (c) {
      var v = key && Array.isArray(c[key]) && c[key].length ? c[key] : (typeof c[single] === 'number' ? [c[single]] : []);
      if (!v.length) return;
      var m = v.reduce(function (a, b) { return a + b; }, 0) / v.length;
      ks.push(c.k); mean.push(m); lo.push(m - Math.min.apply(null, v)); hi.push(Math.max.apply(null, v) - m);
    });
    var traces = [{type: 'scatter', mode: 'lines+markers', name: 'mean ' + name + ' (min\u2013max over draws)', x: ks, y: mean,
      error_y: {type: 'data', symmetric: false, array: hi, arrayminus: lo, thickness: 1, width: 4}, line: {color: '#2f5fb3'}, marker: {size: 6}}];
    var shapes = [];
    var ci = ks.indexOf(chosen);
    if (ci >= 0) {
      traces.push({type: 'scatter', mode: 'markers', name: 'chosen k = ' + chosen, x: [chosen], y: [mean[ci]], marker: {size: 15, symbol: 'star', color: '#d1495b'}});
      shapes.push({type: 'line', xref: 'x', yref: 'paper', x0: chosen, x1: chosen, y0: 0, y1: 1, line: {color: '#d1495b', dash: 'dot', width: 1}});
    }
    var logx = ks.length > 2 && ks[ks.length - 1] / Math.max(1, ks[0]) > 8;
    return Plotly.newPlot(div, traces, {margin: {l: 60, r: 20, t: 10, b: 45}, shapes: shapes, showlegend: true, legend: {orientation: 'h', y: 1.12},
      xaxis: {title: {text: 'k'}, type: logx ? 'log' : 'linear'}, yaxis: {title: {text: name}}}, {displaylogo: false, responsive: true});
  }

  // ---------------------------------------------------------------- map
  function hasWebGL() {
    try { var c = document.createElement('canvas'); return !!(c.getContext('webgl') || c.getContext('experimental-webgl')); } catch (e) { return false; }
  }
  function buildMap() {
    var note = document.getElementById('sample-note');
    var tn = document.getElementById('texts-note');
    if (D.meta.texts_note) { tn.textContent = D.meta.texts_note.charAt(0).toUpperCase() + D.meta.texts_note.slice(1) + ': the map and lists show ids only.'; tn.hidden = false; }
    var div = document.getElementById('map');
    var n = P.x.length;
    if (!n) {
      note.textContent = D.meta.has_coordinates ? 'No document has map coordinates.' : 'This run has no map coordinates (documents.parquet has no x, y).';
      div.style.height = 'auto'; document.getElementById('hover-panel').hidden = true;
      return null;
    }
    var m = D.meta;
    var msg = m.sampled ? 'Showing ' + fmt(m.points_shown) + ' of ' + fmt(m.points_total) + ' documents, seeded sample (seed ' + m.seed + '), every theme in it.'
                        : 'Showing all ' + fmt(m.points_total) + ' documents with map coordinates.';
    var missing = m.documents - m.points_total;
    if (missing > 0) msg += ' ' + fmt(missing) + (missing === 1 ? ' document has' : ' documents have') + ' no coordinates (filtered, or not embedded).';
    if (m.excerpt_chars_map < m.excerpt_chars) msg += ' Excerpts shortened to ' + m.excerpt_chars_map + ' characters to keep the page small.';
    var gl = hasWebGL();
    if (!gl) msg += ' WebGL is unavailable: drawing with SVG (slower).';
    note.textContent = msg;
    var groups = {};
    for (var i = 0; i < n; i++) { var t = P.theme[i]; (groups[t] = groups[t] || []).push(i); }
    var keys = Object.keys(groups).map(Number).sort(function (a, b) { return (a < 0) - (b < 0) || a - b; });
    var size = n > 30000 ? 3 : n > 5000 ? 4 : 6;
    var traces = keys.map(function (t) {
      var idx = groups[t], th = themeById[t];
      var name = t < 0 ? 'no theme' : '#' + t + ' ' + (th && th.label ? th.label : '');
      if (name.length > 40) name = name.slice(0, 39) + '\u2026';
      return {type: gl ? 'scattergl' : 'scatter', mode: 'markers', name: plotlyText(name), hoverinfo: 'none',
        x: idx.map(function (j) { return P.x[j]; }), y: idx.map(function (j) { return P.y[j]; }), customdata: idx,
        marker: {size: size, color: color(t), opacity: 0.75}};
    });
    var nl = Object.keys(D.label_pos || {}).length;
    var annotations = Object.keys(D.label_pos || {}).map(function (k) {
      var th = themeById[k], p = D.label_pos[k];
      var label = th && th.label ? th.label : '#' + k;
      return {x: p[0], y: p[1], text: plotlyText(label), showarrow: false, font: {size: nl > 30 ? 10 : nl > 12 ? 11 : 12, color: '#111'},
        bgcolor: 'rgba(255,255,255,0.78)', bordercolor: color(Number(k)), borderwidth: 1, borderpad: 2};
    });
    var layout = {margin: {l: 10, r: 10, t: 34, b: 10}, hovermode: 'closest', dragmode: 'zoom', annotations: annotations,
      xaxis: {showgrid: false, zeroline: false, showticklabels: false}, yaxis: {showgrid: false, zeroline: false, showticklabels: false},
      legend: {itemsizing: 'constant', font: {size: 11}, y: 0.95, yanchor: 'top'}, showlegend: keys.length <= 60, plot_bgcolor: '#fff', paper_bgcolor: '#fff'};
    var tip = document.getElementById('hover-tip');
    var panel = document.getElementById('hover-text');
    function show(j, ev) {
      var t = P.theme[j], st = P.statuses[P.status[j]], dup = P.dup_of[j];
      var status = 'status: ' + st + (dup ? ', duplicate of ' + dup : '');
      var ex = P.excerpt[j] || (D.meta.texts ? '' : '(text unavailable)');
      clear(panel);
      panel.appendChild(h('div', {class: 'hover-id', text: P.id[j]}));
      panel.appendChild(h('div', {class: 'hover-theme'}, [swatch(t), themeName(t)]));
      panel.appendChild(h('div', {class: 'hover-status', text: status}));
      panel.appendChild(h('div', {class: 'hover-excerpt', text: ex}));
      clear(tip);
      tip.appendChild(h('div', {class: 'tip-id', text: P.id[j]}));
      tip.appendChild(h('div', null, [swatch(t), themeName(t)]));
      tip.appendChild(h('div', {class: 'note', text: status}));
      tip.appendChild(h('div', {text: ex.length > 160 ? ex.slice(0, 159) + '\u2026' : ex}));
      var e = ev && ev.event;
      if (e && typeof e.clientX === 'number') {
        tip.hidden = false;
        var x = e.clientX + 14, y = e.clientY + 14;
        var w = tip.offsetWidth, hh = tip.offsetHeight;
        var right = Math.min(window.innerWidth, document.getElementById('hover-panel').getBoundingClientRect().left);
        if (x + w > right - 4) x = e.clientX - w - 14;  // left of the cursor: the side panel stays readable
        if (y + hh > window.innerHeight - 4) y = e.clientY - hh - 14;
        tip.style.left = Math.max(4, x) + 'px'; tip.style.top = Math.max(4, y) + 'px';
      } else tip.hidden = true;
    }
    return Plotly.newPlot(div, traces, layout, {responsive: true, displaylogo: false, scrollZoom: true}).then(function (gd) {
      gd.on('plotly_hover', function (ev) { var p = ev && ev.points && ev.points[0]; if (p) show(p.customdata !== undefined ? p.customdata : gd.data[p.curveNumber].customdata[p.pointNumber], ev); });
      gd.on('plotly_unhover', function () { tip.hidden = true; });
      gd.on('plotly_relayout', function () { tip.hidden = true; });
      return gd;
    });
  }

  guard('summary', buildSummary);
  guard('run', buildRun);
  guard('themes', buildThemes);
  guard('hierarchy', buildHierarchy);
  guard('duplicates', buildDuplicates);
  var plots = [guard('map', buildMap), guard('k chart', buildK)].filter(Boolean);
  window.themeReport = {data: D, points: P, parsedMs: T0};
  Promise.all(plots).then(function () {
    window.themeReport.readyMs = performance.now();
    document.documentElement.setAttribute('data-ready', '1');
  }, function (e) { console.error('report: plotting failed: ' + (e && e.stack || e)); });
})();
"""

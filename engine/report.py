"""``report.html``: one self-contained page about a run's output folder, for people to look at.

The page opens from ``file://`` with no network request at all: plotly.js, the styles, the script
and the data are all inlined (the data as ``<script type="application/json">`` blocks, with every
``<`` escaped, so no text can end them), and its Content-Security-Policy forbids fetching anything.
The script builds the DOM with ``textContent`` only, so documents' texts are never parsed as HTML.

It shows a 2-D map of the documents (a seeded sample of at most ``max_points``, every theme in it),
the themes with their keywords and representative documents, the theme hierarchy, the
near-duplicate groups with their evidence, and the run (stages, document counts, choice of k, bad
records). Texts are read from the run's stored documents only for what the page shows.

The page's HTML, CSS and JavaScript are files in ``engine/assets/report/`` (``page.html`` with the
CSS put in at ``@STYLE@`` and the title at ``@TITLE@``; ``app.js``); this module builds the data.
"""

from __future__ import annotations

import html
from importlib import resources
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .docstore import DocChain, run_documents
from .output import parquet_names
from . import seeds

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
    order = seeds.rng(seed, "report_points").permutation(n)
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

    if not path.exists():
        log.warning("report: no %s", path)
        return None
    names = parquet_names(path)
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


def _asset(name: str) -> str:
    """A file of the page (``engine/assets/report/``: its HTML, CSS and JavaScript)."""
    return resources.files("theme_engine.engine").joinpath("assets", "report", name).read_text(encoding="utf-8")


# the page up to its data: the HTML with the CSS inlined (the page fetches nothing); its script
PAGE_HEAD = _asset("page.html").replace("@STYLE@", _asset("report.css"))
APP_JS = _asset("app.js")

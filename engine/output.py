"""The run's output files: ``themes.json``, ``documents.parquet``, ``duplicates.parquet``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .corpus import Corpus
from .dedup import KIND_FUZZY, KIND_LEXICAL, KIND_NEAR
from .vectors import save_npz


def write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


KINDS = ("near", "lexical", "fuzzy", "exact")  # a document's duplicate kind by code 0..3 (-1: none)
_KIND_CODE = {KIND_NEAR: 0, KIND_LEXICAL: 1, KIND_FUZZY: 2}  # the dedup stage's pair kinds as KINDS codes


def document_columns(
    exact_of: np.ndarray,
    unique: np.ndarray,
    themes: np.ndarray,
    distances: np.ndarray,
    dedup: dict[str, np.ndarray],
    coords: np.ndarray | None = None,
    far_from_theme: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per input document (``exact_of``: each one's first document of the same text, -1 if none),
    the numbers ``documents.parquet`` and ``duplicates.parquet`` hold: ``theme``, ``distance``,
    ``dup_of`` (a row, -1 when kept), ``similarity``, ``lexical``, ``edits``, ``whole`` (the
    whole-text Jaccard), ``kind`` (a :data:`KINDS` code), ``x``/``y`` and ``far`` when given.

    ``themes``, ``distances`` and ``dedup`` arrays are indexed by position in ``unique`` (the
    embedded documents), as are the map's ``coords`` (n, 2) and ``far_from_theme``."""
    n = len(exact_of)
    theme = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, np.nan, dtype=np.float32)
    dup_of = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    lex = np.full(n, np.nan, dtype=np.float32)
    edits = np.full(n, -1, dtype=np.int64)
    whole = np.full(n, np.nan, dtype=np.float32)
    kind = np.full(n, -1, dtype=np.int8)
    theme[unique] = themes
    dist[unique] = distances
    near = dedup["duplicate_of"] >= 0
    dup_of[unique[near]] = unique[dedup["duplicate_of"][near]]
    sim[unique[near]] = dedup["similarity"][near]
    # evidence per document (dedup stage): near (cosine), lexical (light edits), fuzzy (whole-text Jaccard)
    codes = dedup["kind"] if "kind" in dedup else np.full(len(unique), KIND_NEAR, dtype=np.int8)
    kind[unique[near]] = [_KIND_CODE.get(int(c), 0) for c in codes[near]]
    if "text_jaccard" in dedup:
        whole[unique[near]] = dedup["text_jaccard"][near]
    if "lexical_similarity" in dedup:
        lex[unique[near]] = dedup["lexical_similarity"][near]
        edits[unique[near]] = dedup["edits"][near]
    exact = np.flatnonzero(np.asarray(exact_of) >= 0)
    first = np.asarray(exact_of)[exact]
    theme[exact] = theme[first]
    dist[exact] = dist[first]
    # an exact copy points at the kept document of its text's group (its first occurrence, or
    # that one's kept representative when the first occurrence is itself a near-duplicate)
    dup_of[exact] = np.where(dup_of[first] >= 0, dup_of[first], first)
    sim[exact] = np.where(dup_of[first] >= 0, sim[first], 1.0)
    # the same folded text: Jaccard 1 and no edit to the first occurrence
    lex[exact] = np.where(dup_of[first] >= 0, lex[first], 1.0)
    edits[exact] = np.where(dup_of[first] >= 0, edits[first], 0)
    whole[exact] = np.where(dup_of[first] >= 0, whole[first], 1.0)
    kind[exact] = KINDS.index("exact")
    cols = {"theme": theme, "distance": dist, "dup_of": dup_of, "similarity": sim, "lexical": lex, "edits": edits, "whole": whole, "kind": kind}
    if coords is not None:
        xy = np.full((n, 2), np.nan, dtype=np.float32)
        xy[unique] = coords
        xy[exact] = xy[first]  # an exact copy sits on the text it repeats
        cols["x"], cols["y"] = xy[:, 0].copy(), xy[:, 1].copy()
    if far_from_theme is not None:
        far = np.zeros(n, dtype=bool)
        far[unique] = far_from_theme
        far[exact] = far[first]
        cols["far"] = far
    return cols


def document_tables(
    cols: dict[str, np.ndarray], ids: list[str], sources: list[str], status: list[str], id_of: Callable[[np.ndarray], list[str | None]]
) -> tuple[Any, Any]:
    """``documents.parquet``'s and ``duplicates.parquet``'s rows for a run of documents: their
    :func:`document_columns` (sliced to them), ids, sources and statuses; ``id_of(rows)`` names
    the documents they duplicate (None for -1)."""
    import pyarrow as pa

    theme, dist, dup_of = cols["theme"], cols["distance"], cols["dup_of"]
    names = np.asarray(["", *KINDS], dtype=object)[cols["kind"].astype(np.int64) + 1]
    near = np.isin(names, ("near", "lexical", "fuzzy"))
    kept = (np.asarray(status, dtype=object) == "ok") & (dup_of < 0)
    documents = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "theme": pa.array(np.where(theme >= 0, theme, 0), pa.int64(), mask=theme < 0),
            "distance": pa.array(dist, pa.float32(), mask=np.isnan(dist)),
            "duplicate_of": pa.array(id_of(dup_of), pa.string()),
            "kept": pa.array(kept, pa.bool_()),
            "status": pa.array(["near_duplicate" if nd else s for nd, s in zip(near.tolist(), status)], pa.string()),
            "source": pa.array(sources, pa.string()),
            **(
                {"x": pa.array(cols["x"], pa.float32(), mask=np.isnan(cols["x"])), "y": pa.array(cols["y"], pa.float32(), mask=np.isnan(cols["y"]))}
                if "x" in cols
                else {}
            ),
            **({"far_from_theme": pa.array(cols["far"], pa.bool_())} if "far" in cols else {}),
        }
    )
    d = np.flatnonzero(dup_of >= 0)
    lex, edits, whole, sim = cols["lexical"][d], cols["edits"][d], cols["whole"][d], cols["similarity"][d]
    duplicates = pa.table(
        {
            "id": pa.array(ids, pa.string()).take(pa.array(d, pa.int64())),
            "duplicate_of": pa.array(id_of(dup_of[d]), pa.string()),
            "similarity": pa.array(sim, pa.float32()),
            "kind": pa.array(names[d].tolist(), pa.string()),
            "lexical_similarity": pa.array(lex, pa.float32(), mask=np.isnan(lex)),
            "edits": pa.array(edits, pa.int64(), mask=edits < 0),
            # Jaccard of the two whole texts' 24-character shingles: what decides a pair with a long text
            "text_jaccard": pa.array(whole, pa.float32(), mask=np.isnan(whole)),
        }
    )
    return documents, duplicates


def output_counts(cols: dict[str, np.ndarray], status: list[str], n_unique: int, bad: int) -> dict[str, int]:
    """The documents' counts for the manifest."""
    kinds = cols["kind"]
    kept = (np.asarray(status, dtype=object) == "ok") & (cols["dup_of"] < 0)
    return {
        "input": len(status),
        "kept": int(kept.sum()),
        "embedded": int(n_unique),
        "near_duplicates": int(((kinds >= 0) & (kinds < KINDS.index("exact"))).sum()),
        "exact_duplicates": int((kinds == KINDS.index("exact")).sum()),
        "filtered": int(sum(1 for s in status if s.startswith("filtered_"))),
        "bad_records": bad,
    }


def write_themes(out: Path, theme_list: list[dict[str, Any]], hierarchy: list[dict[str, Any]] | None) -> None:
    tmp = Path(out) / "themes.json.tmp"
    tmp.write_text(json.dumps({"themes": theme_list, "hierarchy": hierarchy or []}, indent=2) + "\n")
    os.replace(tmp, Path(out) / "themes.json")


def write_outputs(
    out: Path,
    corpus: Corpus,
    unique: np.ndarray,
    themes: np.ndarray,
    distances: np.ndarray,
    dedup: dict[str, np.ndarray],
    theme_list: list[dict[str, Any]],
    hierarchy: list[dict[str, Any]] | None = None,
    coords: np.ndarray | None = None,
    far_from_theme: np.ndarray | None = None,
) -> dict[str, int]:
    """The three data files as single files written here; returns document counts for the
    manifest (see :func:`document_columns`; every input document gets a row in
    ``documents.parquet``; ``themes.json`` holds the themes and the ``hierarchy``'s inner nodes;
    ``far_from_theme``, an update's, becomes a column of that name)."""
    cols = document_columns(corpus.exact_of, unique, themes, distances, dedup, coords, far_from_theme)
    write_document_files(out, cols, corpus)
    write_themes(out, theme_list, hierarchy)
    return output_counts(cols, corpus.status, len(unique), len(corpus.bad))


WRITE_BLOCK = 65_536  # documents whose output rows are built at once (a row group of each file)


def write_document_files(out: Path, cols: dict[str, np.ndarray], corpus: Corpus) -> None:
    """``documents.parquet`` and ``duplicates.parquet`` as single files in ``out``, from the
    documents' :func:`document_columns`, built and appended a block of documents at a time (the
    writer holds one block's rows, never every document's)."""
    import pyarrow.parquet as pq

    def id_of(rows: np.ndarray) -> list[str | None]:
        rows = np.asarray(rows, dtype=np.int64)
        return [i if r >= 0 else None for i, r in zip(corpus.ids.take(np.maximum(rows, 0)), rows.tolist())]

    paths = [Path(out) / "documents.parquet", Path(out) / "duplicates.parquet"]
    tmps = [p.with_name(p.name + ".tmp") for p in paths]
    writers: list[Any] = [None, None]
    n = len(corpus.ids)
    try:
        for a in range(0, max(n, 1), WRITE_BLOCK):
            b = min(a + WRITE_BLOCK, n)
            block = {name: values[a:b] for name, values in cols.items()}
            tables = document_tables(block, corpus.ids[a:b], corpus.sources[a:b], corpus.status[a:b], id_of)
            for i, table in enumerate(tables):
                if writers[i] is None:
                    writers[i] = pq.ParquetWriter(tmps[i], table.schema)
                writers[i].write_table(table)
    except BaseException:
        for w in writers:
            if w is not None:
                w.close()
        for tmp in tmps:  # the files before stay whole; the half-written ones go
            tmp.unlink(missing_ok=True)
        raise
    for w in writers:
        w.close()
    for tmp, path in zip(tmps, paths):
        os.replace(tmp, path)


def save_columns(folder: Path, cols: dict[str, np.ndarray]) -> None:
    """:func:`document_columns` as one ``.npy`` per column in ``folder`` (what the write tasks read)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in cols.items():
        np.save(folder / f"{name}.npy", values)


def write_document_part(
    docs: Any, columns: Path, targets: Path, a: int, b: int, documents_out: Path, duplicates_out: Path
) -> dict[str, int]:
    """One part of the partitioned outputs, written by whoever runs it (a Ray task): documents
    ``[a, b)`` of the stored documents ``docs`` (a ``DocStore`` or ``DocChain``), their columns
    read from the ``.npy`` files of ``columns`` (memory-mapped: a slice each), the ids of the
    documents they duplicate from ``targets`` (``row``, ``id``: every document some other
    duplicates, from the driver)."""
    import pyarrow.parquet as pq

    cols = {p.stem: np.array(np.load(p, mmap_mode="r")[a:b]) for p in sorted(Path(columns).glob("*.npy"))}
    rows = docs.read_rows(a, b, ["id", "source", "status"])
    ids, sources, status = (rows.column(c).to_pylist() for c in ("id", "source", "status"))
    t = pq.read_table(targets)
    target_rows, target_ids = t.column("row").to_numpy(), t.column("id").to_pylist()

    def id_of(want: np.ndarray) -> list[str | None]:
        pos = np.searchsorted(target_rows, want)
        return [None if r < 0 else (ids[r - a] if a <= r < b else target_ids[p]) for r, p in zip(want.tolist(), pos.tolist())]

    documents, duplicates = document_tables(cols, ids, sources, status, id_of)
    write_parquet(documents, Path(documents_out))
    write_parquet(duplicates, Path(duplicates_out))
    return {"documents": documents.num_rows, "duplicates": duplicates.num_rows}


MODEL_FILE = "model.npz"
THEMES_FILE = "themes.json"


def read_themes(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(themes, the hierarchy's inner nodes) of the run in ``out``; a ``themes.json`` written
    before the hierarchy existed (a plain list of themes) has none."""
    data = json.loads((Path(out) / THEMES_FILE).read_text())
    if isinstance(data, list):
        return data, []
    return data["themes"], data.get("hierarchy", [])


def write_model(out: Path, centroids: np.ndarray, embed_model: str | None) -> None:
    """``model.npz``: the themes' centroids (row t is theme t, unit-free means of its documents'
    vectors) and the embedding model that made the vectors ("" for precomputed ones): what
    assigning new documents to the run's themes needs (``ThemeModel``)."""
    save_npz(Path(out) / MODEL_FILE, centroids=np.asarray(centroids, dtype=np.float32), embed_model=np.str_(embed_model or ""))


def parquet_names(path: Path) -> list[str]:
    """The column names of a Parquet output: one file, or a folder of parts (its first part's)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        return pq.read_schema(parts[0]).names if parts else []
    return pq.read_schema(path).names

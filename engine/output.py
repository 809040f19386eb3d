"""The run's output files: ``themes.json``, ``documents.parquet``, ``duplicates.parquet``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import Corpus
from .dedup import KIND_NAMES, KIND_NEAR


def _write_parquet(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


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
    """Write the three data files; returns document counts for the manifest.

    ``themes``, ``distances`` and ``dedup`` arrays are indexed by position in ``unique`` (the
    embedded documents), as are the map's ``coords`` (n, 2) when given; every input document gets
    a row in ``documents.parquet``. ``themes.json`` holds the themes and the ``hierarchy``'s inner nodes.
    ``far_from_theme`` (an update's: new documents beyond their existing theme's cut-off) becomes a
    column of that name.
    """
    import pyarrow as pa

    n = len(corpus.ids)
    theme = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, np.nan, dtype=np.float32)
    dup_of = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    lex = np.full(n, np.nan, dtype=np.float32)
    edits = np.full(n, -1, dtype=np.int64)
    whole = np.full(n, np.nan, dtype=np.float32)
    kind = np.array([""] * n, dtype=object)
    theme[unique] = themes
    dist[unique] = distances
    near = dedup["duplicate_of"] >= 0
    dup_of[unique[near]] = unique[dedup["duplicate_of"][near]]
    sim[unique[near]] = dedup["similarity"][near]
    # evidence per document (dedup stage): near (cosine), lexical (light edits), fuzzy (whole-text Jaccard)
    codes = dedup["kind"] if "kind" in dedup else np.full(len(unique), KIND_NEAR, dtype=np.int8)
    kind[unique[near]] = [KIND_NAMES.get(int(c)) or "near" for c in codes[near]]
    if "text_jaccard" in dedup:
        whole[unique[near]] = dedup["text_jaccard"][near]
    if "lexical_similarity" in dedup:
        lex[unique[near]] = dedup["lexical_similarity"][near]
        edits[unique[near]] = dedup["edits"][near]
    exact = np.flatnonzero(corpus.exact_of >= 0)
    first = corpus.exact_of[exact]
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
    kind[exact] = "exact"
    xy = None
    if coords is not None:
        xy = np.full((n, 2), np.nan, dtype=np.float32)
        xy[unique] = coords
        xy[exact] = xy[first]  # an exact copy sits on the text it repeats
    far = None
    if far_from_theme is not None:
        far = np.zeros(n, dtype=bool)
        far[unique] = far_from_theme
        far[exact] = far[first]
    status = np.asarray(corpus.status, dtype=object)
    kept = (status == "ok") & (dup_of < 0)
    ids = np.asarray(corpus.ids, dtype=object)

    def nullable_ids(idx: np.ndarray) -> list[str | None]:
        return [ids[i] if i >= 0 else None for i in idx]

    documents = pa.table(
        {
            "id": pa.array(corpus.ids, pa.string()),
            "theme": pa.array(np.where(theme >= 0, theme, 0), pa.int64(), mask=theme < 0),
            "distance": pa.array(dist, pa.float32(), mask=np.isnan(dist)),
            "duplicate_of": pa.array(nullable_ids(dup_of), pa.string()),
            "kept": pa.array(kept, pa.bool_()),
            "status": pa.array([("near_duplicate" if kind[i] in ("near", "lexical", "fuzzy") else s) for i, s in enumerate(status)], pa.string()),
            "source": pa.array(corpus.sources, pa.string()),
            **(
                {"x": pa.array(xy[:, 0], pa.float32(), mask=np.isnan(xy[:, 0])), "y": pa.array(xy[:, 1], pa.float32(), mask=np.isnan(xy[:, 1]))}
                if xy is not None
                else {}
            ),
            **({"far_from_theme": pa.array(far, pa.bool_())} if far is not None else {}),
        }
    )
    _write_parquet(documents, Path(out) / "documents.parquet")
    d_idx = np.flatnonzero(dup_of >= 0)
    duplicates = pa.table(
        {
            "id": pa.array(ids[d_idx].tolist(), pa.string()),
            "duplicate_of": pa.array(ids[dup_of[d_idx]].tolist(), pa.string()),
            "similarity": pa.array(sim[d_idx], pa.float32()),
            "kind": pa.array(kind[d_idx].tolist(), pa.string()),
            "lexical_similarity": pa.array(lex[d_idx], pa.float32(), mask=np.isnan(lex[d_idx])),
            "edits": pa.array(edits[d_idx], pa.int64(), mask=edits[d_idx] < 0),
            # Jaccard of the two whole texts' 24-character shingles: what decides a pair with a long text
            "text_jaccard": pa.array(whole[d_idx], pa.float32(), mask=np.isnan(whole[d_idx])),
        }
    )
    _write_parquet(duplicates, Path(out) / "duplicates.parquet")
    tmp = Path(out) / "themes.json.tmp"
    tmp.write_text(json.dumps({"themes": theme_list, "hierarchy": hierarchy or []}, indent=2) + "\n")
    os.replace(tmp, Path(out) / "themes.json")
    return {
        "input": n,
        "kept": int(kept.sum()),
        "embedded": int(len(unique)),
        "near_duplicates": int(near.sum()),
        "exact_duplicates": int(len(exact)),
        "filtered": int(sum(1 for s in corpus.status if s.startswith("filtered_"))),
        "bad_records": len(corpus.bad),
    }


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
    path = Path(out) / MODEL_FILE
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, centroids=np.asarray(centroids, dtype=np.float32), embed_model=np.str_(embed_model or ""))
    os.replace(tmp, path)

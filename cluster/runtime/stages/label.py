"""label: clusters whose centroids are near-identical merged into one theme, each theme's
distance per row, c-TF-IDF keywords from a sample of its kept documents, representatives, and
the theme list (``themes.json``'s content)."""

from __future__ import annotations

from dataclasses import dataclass

from functools import partial
from typing import Any, Protocol

import numpy as np

from theme_engine.engine.config import RunConfig
from theme_engine.engine.corpus import Corpus
from theme_engine.engine.docstore import DocChain, DocStore
from theme_engine.engine.hierarchy import merge_tree, parents
from theme_engine.engine.kmeans import call_all
from theme_engine.engine.labels import (
    Analyzer,
    KeywordSet,
    ThemeKeywords,
    assemble_themes,
    count_batches,
    keywords_from_counts,
    keyword_sample,
    label_from_keywords,
    label_lift,
    merge_map,
    merged_centroids,
    representatives,
    STOP_AUTO,
    stop_word_sample,
    stop_words_for,
)
from theme_engine.actors.tasks import count_terms_task, keywords_task

from .. import ray_session
from ..state import fingerprint
from .base import RunContext, RunError, Section, Stage, StageControl
from .read import Documents


@dataclass
class Labels:
    """The label stage's product: the theme list (each with its label, keywords and ``parent`` in
    the hierarchy), the hierarchy's inner nodes, and (a run's) per embedded document its theme
    after merging and distance to the theme's centroid, and the themes' centroids."""

    themes: list[dict[str, Any]]
    hierarchy: list[dict[str, Any]]
    row_themes: np.ndarray | None = None
    distances: np.ndarray | None = None
    centroids: np.ndarray | None = None


class Label(Stage):
    name = "label"
    settings = {"label": Section("label", exclude=frozenset({"tasks_from"}))}

    def manifest_part(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"label_lift": record.get("label_lift")}

    def fingerprint(self, ctx: RunContext) -> str:
        vector_input = ctx.product("read").vector_input
        return fingerprint("label", ctx.fp("kmeans"), ctx.fp("dedup"), self.settings_part(ctx.cfg), vector_input, "hierarchy")

    def load(self, ctx: RunContext) -> Labels:
        a = ctx.store.load_arrays("label", "result")
        return Labels(ctx.store.load_json("label", "themes"), ctx.store.load_json("label", "hierarchy"), a["themes"], a["distances"], a["centroids"])

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, store = ctx.cfg, ctx.store
        lc = cfg.label
        control = ctx.control("label")
        docs = ctx.product("read")
        corpus, unique = docs.corpus, docs.unique
        vectors, km, dd = ctx.product("embed"), ctx.product("kmeans"), ctx.product("dedup")
        control.report(0, 3)
        centroids, labels = km.centroids, km.labels
        k = centroids.shape[0]
        sizes = np.bincount(labels, minlength=k)
        mapping = merge_map(centroids, sizes, lc.merge_threshold)
        themes = mapping[labels]
        n_themes = int(mapping.max()) + 1
        new_centroids = merged_centroids(centroids, sizes, mapping)
        distances, recomputed = _theme_distances(ctx, vectors, labels, centroids, mapping, new_centroids)
        control.report(1, 3)
        kept = dd.duplicate_of < 0
        keywords_of = _keyword_counter(ctx, ctx.docs(), control)
        theme_list, hierarchy, info = label_themes(cfg, corpus, unique, keywords_of, themes, distances, new_centroids, kept, mapping)
        control.report(2, 3)
        store.save_json("label", "themes", theme_list)
        store.save_json("label", "hierarchy", hierarchy)
        store.save_arrays("label", "result", themes=themes, distances=distances, centroids=new_centroids)
        control.report(3, 3)
        return {"device": "cpu", "themes": n_themes, "merged": int(k - n_themes), "distances_recomputed": recomputed, **info}


class UpdateLabel(Stage):
    """An update's form of the stage: every theme labelled again from its grown membership (the
    same sample rule and vectoriser as a run), new themes with them; the hierarchy over all."""

    name = "label"
    settings = Label.settings

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-label", ctx.fp("assign"), ctx.fp("dedup"), self.settings_part(ctx.cfg))

    def load(self, ctx: RunContext) -> Labels:
        return Labels(ctx.store.load_json("label", "themes"), ctx.store.load_json("label", "hierarchy"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        grown = ctx.grown
        docs: Documents = ctx.product("read")
        control = ctx.control("label")
        control.report(0, 1)
        asg, dd = ctx.product("assign"), ctx.product("dedup")
        corpus = grown.corpus_with(docs.corpus)
        unique = grown.unique_with(docs.corpus)
        chain = grown.chain_with(ctx.docs().path)
        k_old = len(grown.arrays["centroids"])
        clusters = {c: t["theme"] for t in grown.themes for c in t.get("merged_from", [t["theme"]])}
        n_clusters = max(clusters, default=-1) + 1
        mapping = np.asarray([clusters.get(c, -1) for c in range(n_clusters)], dtype=np.int64)
        extra = len(asg.centroids) - k_old
        mapping = np.concatenate([mapping, k_old + np.arange(extra)]).astype(np.int64)
        kept = dd.duplicate_of < 0
        named_by = kept & ~asg.far_from_theme  # far documents forced into a theme do not name it
        theme_list, hierarchy, info = label_themes(
            ctx.cfg, corpus, unique, _keyword_counter(ctx, chain, control), asg.themes, asg.distances, asg.centroids, kept, mapping, labelled=named_by
        )
        ctx.store.save_json("label", "themes", theme_list)
        ctx.store.save_json("label", "hierarchy", hierarchy)
        control.report(1, 1)
        before = {t["theme"]: t["label"] for t in grown.themes}
        renamed = sum(1 for t in theme_list if t["theme"] in before and before[t["theme"]] != t["label"])
        return {"device": "cpu", "themes": len(theme_list), "relabelled": renamed, **info}


def label_themes(
    cfg: RunConfig,
    corpus: Corpus,
    unique: np.ndarray,
    keywords_of: KeywordCounter,
    themes: np.ndarray,
    distances: np.ndarray,
    centroids: np.ndarray,
    kept: np.ndarray,
    mapping: np.ndarray,
    labelled: np.ndarray | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """The theme list (keywords from a seeded sample of the kept documents, counted by
    ``keywords_of``; representatives; each theme's ``parent``), the hierarchy's inner nodes, and
    the record's keyword counts.
    ``themes``, ``distances`` and ``kept`` are per embedded document (positions in ``unique``),
    ``centroids`` the themes', ``mapping`` each k-means cluster's theme. ``labelled``: the kept
    documents whose words and places may name their theme (default: every kept one; an update
    leaves out new documents far from the existing theme they were put in)."""
    lc = cfg.label
    n_themes = len(centroids)
    # the hierarchy's merges need only the themes' centroids and sizes; its inner nodes are
    # labelled from the same texts as the themes, in the same pass
    sizes_kept = np.bincount(themes[kept], minlength=n_themes)
    merges = merge_tree(centroids, np.maximum(sizes_kept, 1))
    groups = [list(m.themes) for m in merges]
    sampled, counted = 0, {"stop_words": "none"}
    named = kept if labelled is None else kept & labelled
    if corpus.lengths[unique].max(initial=0) > 0:
        idx = np.flatnonzero(named)
        idx = idx[keyword_sample(themes[idx], n_themes, lc.max_documents, cfg.seed)]
        sampled = len(idx)
        kw, counted = keywords_of(unique[idx], themes[idx], n_themes, groups)
        keywords = KeywordSet(kw.keywords, kw.scores, kw.lifts)
        inner = KeywordSet(kw.groups.keywords, kw.groups.scores, kw.groups.lifts) if kw.groups else _no_keywords(0)
    else:  # precomputed vectors without texts: no words to label with
        keywords, inner = _no_keywords(n_themes), _no_keywords(len(merges))
    reps = representatives(themes, distances, named, n_themes, lc.representatives)
    theme_list = assemble_themes(corpus, unique, themes, kept, mapping, keywords, reps, lc.label_words)
    parent = parents(merges, n_themes)
    for t in theme_list:
        t["parent"] = parent[t["theme"]]
    size = {t["theme"]: t["size"] for t in theme_list}
    hierarchy = [
        {
            "id": m.id,
            "children": list(m.children),
            "parent": parent[m.id],
            "similarity": round(m.similarity, 6),
            "size": int(sum(size[t] for t in m.themes)),
            "themes": list(m.themes),
            "label": label_from_keywords(inner.keywords[i], lc.label_words, m.id) if inner.keywords[i] else f"themes {', '.join(map(str, m.themes))}",
            "keywords": inner.keywords[i],
            "keyword_scores": [round(v, 6) for v in inner.scores[i]],
            "keyword_lifts": [round(v, 3) for v in inner.lifts[i]],
        }
        for i, m in enumerate(merges)
    ]
    info = {"keyword_documents": sampled, **counted, "label_lift": label_lift(keywords.lifts)}
    return theme_list, hierarchy, info


def _theme_distances(
    ctx: RunContext, vectors: Any, labels: np.ndarray, centroids: np.ndarray, mapping: np.ndarray, themes_c: np.ndarray
) -> tuple[np.ndarray, int]:
    """Each embedded document's distance to its theme's centroid, computed by the shard actors
    that hold the vectors (``Shard.theme_distances``: no vector reaches the driver, and the
    driver ships no per-document array). A shard finds its rows' k-means clusters again; a row
    whose cluster differs from the stage's (a tie broken otherwise) is computed here from its
    vector. Returns the distances and the count of such rows."""
    parts = call_all(ctx.shards, "theme_distances", centroids, mapping, themes_c)
    again = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    distances = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
    if len(again) != len(labels):
        raise RunError("the shards' vectors do not match the k-means stage's documents; delete OUT/.theme-engine and re-run")
    off = np.flatnonzero(again != labels)
    if off.size:
        distances[off] = np.linalg.norm(vectors.take(off) - themes_c[mapping[labels[off]]], axis=1)
    return distances, int(off.size)


LABEL_ROWS = 25_000  # sampled documents one counting task reads


class KeywordCounter(Protocol):
    def __call__(self, rows: np.ndarray, themes: np.ndarray, n_themes: int, groups: list[list[int]]) -> tuple[ThemeKeywords, dict[str, str]]: ...


def _keyword_counter(ctx: RunContext, docs: DocStore | DocChain, control: StageControl) -> KeywordCounter:
    """The keywords of the stored documents ``rows`` (sorted), the ``i``-th in theme
    ``themes[i]``, and of the ``groups`` of themes, with the record's note of the stop words
    (``label.stop_words``; ``auto`` reads a few thousand of the texts) and of who counted. The term counts are a
    map over blocks of the documents and one reduce: in the driver, a batch of texts at a time,
    or, from ``label.tasks_from`` documents, in Ray tasks that read their block where it is
    stored and keep its counts there until the reduce task takes them (``actors/tasks.py``)."""
    lc = ctx.cfg.label

    def count(rows: np.ndarray, themes: np.ndarray, n_themes: int, groups: list[list[int]]) -> tuple[ThemeKeywords, dict[str, str]]:
        auto = isinstance(lc.stop_words, str) and lc.stop_words.strip().lower() == STOP_AUTO
        sample = [t for _, part in docs.iter_texts(rows[stop_word_sample(len(rows))]) for t in part] if auto else []
        stop_words, language = stop_words_for(lc.stop_words, sample)
        if len(rows) < lc.tasks_from:
            tc = count_batches(docs.iter_texts(rows), themes, n_themes, Analyzer(stop_words, lc.ngram_max))
            return keywords_from_counts(tc, lc.keywords, groups=groups), {"stop_words": language, "counted_by": "driver"}
        kw = _counted_by_tasks(ctx, docs, control, rows, themes, n_themes, stop_words, groups)
        return kw, {"stop_words": language, "counted_by": "tasks"}

    return count


def _counted_by_tasks(
    ctx: RunContext,
    docs: DocStore | DocChain,
    control: StageControl,
    rows: np.ndarray,
    themes: np.ndarray,
    n_themes: int,
    stop_words: frozenset[str],
    groups: list[list[int]],
) -> ThemeKeywords:
    lc = ctx.cfg.label
    counter = count_terms_task.options(num_returns=2)
    blocks = [slice(a, a + LABEL_ROWS) for a in range(0, len(rows), LABEL_ROWS)]
    held: dict[int, Any] = {}
    small = np.int32 if len(rows) == 0 or int(rows[-1]) < 2**31 else np.int64  # half the bytes the driver ships

    def submit(b: int) -> Any:
        sel = blocks[b]
        done, counts = counter.remote(docs, rows[sel].astype(small), themes[sel].astype(np.int32), n_themes, stop_words, lc.ngram_max)
        held[b] = counts  # stays on the worker until the reduce
        return done

    ctx.gather({b: partial(submit, b) for b in range(len(blocks))}, control, window=ray_session.task_window())  # a block short of texts fails in count_batches
    reduce = partial(keywords_task.remote, lc.keywords, groups, *[held[b] for b in range(len(blocks))])
    return ctx.gather({0: reduce}, control)[0]


def _no_keywords(n: int) -> KeywordSet:
    return KeywordSet([[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)])

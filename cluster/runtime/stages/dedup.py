"""dedup: near-duplicate pairs (every pair at or above ``dedup.threshold``; with the lexical rule
also close pairs whose words nearly match), grouped, with a kept document per group and the
evidence of each duplicate. Pairs come from the shard actors: every shard against every shard
(``all_pairs``) or rows routed to nearest-centroid partitions searched by Ray tasks. With the
lexical rule, the partitioned search's candidate pairs stay on the workers: tasks cap and screen
them by document bucket (``engine/candidates.py``), and the driver gets the near pairs and the
ids of the few left to a comparison of texts. Texts are compared (light edits, the whole-text
rule, each duplicate's evidence) by Ray tasks that read them where they run, from two chunks of
pairs up (:func:`_spread_stored`); fewer pairs are compared in the driver."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray

from theme_engine.actors.shard import search_partitions
from theme_engine.actors.tasks import (
    cap_bucket_task,
    minhash_keys_task,
    new_groups_task,
    partition_centroids_task,
    screen_bucket_task,
    stored_pairs_task,
    word_part_task,
)
from theme_engine.engine import seeds
from theme_engine.engine.dedup import (
    KIND_FUZZY,
    KIND_LEXICAL,
    DedupRule,
    HybridPairs,
    cap_candidates,
    duplicate_evidence,
    group_duplicates,
    hybrid_pairs,
    keep_rank,
    screened_pairs,
)
from theme_engine.engine.candidates import Screened
from theme_engine.engine.cache import default_cache_dir
from theme_engine.engine.device import count_fallbacks
from theme_engine.engine.docstore import DocChain, DocStore
from theme_engine.engine.embedding import ModelUnavailable, configured_model
from theme_engine.engine.events import StageControl
from theme_engine.engine.fuzzy import (
    Verdicts,
    WholeTextRule,
    check_long_pairs,
    confirm_candidates,
    link_jaccard,
    long_pair_jaccard,
    merge_fuzzy,
)
from theme_engine.engine.kmeans import sample_handles
from theme_engine.engine.manifest import summary_of
from theme_engine.engine.lexical import WordIndex, light_edits, pair_evidence
from theme_engine.engine.minhash import MinHashParams, candidate_pairs, jaccard, length_blocks
from theme_engine.engine.vectors import part_files, rows_of_parts
from theme_engine.engine.windows import TextWindows
from theme_engine.engine.partition import Routes, default_n_partitions, merge_pairs
from theme_engine.engine.update import GroupSearch, NewGroup, extend_groups, merge_top, new_pairs, partition_existing, save_top_part, top_candidates

from .. import ray_session
from ..state import fingerprint, remove
from .base import RunContext, RunError, Section, Stage
from .grown import TOP_DIR
from .read import Documents

log = logging.getLogger(__name__)

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Duplicates:
    """The dedup stage's product: every array it stored (``arrays``: per embedded document the
    document it duplicates, the similarity, group, kind and evidence; the pairs; an update's
    partitions), from which the outputs are written."""

    arrays: dict[str, np.ndarray]

    @property
    def duplicate_of(self) -> np.ndarray:
        """Per embedded document, the embedded document it duplicates, or -1 (kept)."""
        return self.arrays["duplicate_of"]


class Dedup(Stage):
    name = "dedup"
    settings = {"dedup": Section("dedup", exclude=frozenset({"batch_rows", "tasks_from"}))}
    uses_gpu = True

    def manifest_part(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"dedup": summary_of(record)}

    def summary(self, manifest: dict[str, Any]) -> list[str]:
        dd = manifest["dedup"]
        if dd.get("lexical"):
            lines = [
                f"near-duplicate evidence: {dd['pairs']} pairs of texts linking {dd['groups']} groups ({dd.get('near_pairs', 0)} at cosine >= "
                f"{dd['threshold']}, {dd.get('lexical_pairs', 0)} light edits at cosine >= {dd['candidate_threshold']})"
            ]
        else:
            lines = [f"near-duplicate evidence: {dd['pairs']} pairs of texts at cosine >= {dd['threshold']} linking {dd['groups']} groups"]
        wt = dd.get("whole_text") or {}
        if wt.get("applied") and (wt.get("long_pairs_checked") or dd.get("fuzzy_pairs")):
            lines.append(
                f"texts longer than the model's window ({wt['window_tokens']} tokens): {dd.get('fuzzy_pairs', 0)} pairs decided by "
                f"whole-text shingle Jaccard >= {wt['text_threshold']}, {wt.get('long_pairs_rejected', 0)} cosine pairs refused "
                f"without it (a shared opening is not a duplicate)"
            )
        return lines

    def fingerprint(self, ctx: RunContext) -> str:
        cfg = ctx.cfg
        # the "central" keep policy ranks by distance to the k-means centroid
        return fingerprint("dedup", ctx.fp("embed"), self.settings_part(ctx.cfg), ctx.fp("kmeans") if cfg.dedup.keep == "central" else "")

    def verify(self, ctx: RunContext) -> str | None:
        want = int(ctx.store.load_json("dedup", "done").get("candidate_top_parts", 0))
        folder = ctx.store.dir("dedup") / TOP_DIR
        found = len(part_files(folder, ".npz")) if folder.is_dir() else 0
        return f"{folder} holds {found} of its {want} parts" if found != want else None

    def load(self, ctx: RunContext) -> Duplicates:
        """Per row ``duplicate_of`` (-1 when kept), ``similarity``, ``group``, the evidence
        (``kind``, ``lexical_similarity``, ``edits``), and the pairs found."""
        return Duplicates(ctx.store.load_arrays("dedup", "result"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        dc = ctx.cfg.dedup
        control = ctx.control("dedup")
        docs = ctx.product("read")
        corpus, unique = docs.corpus, docs.unique
        rule = DedupRule.from_settings(dc, has_texts=bool(corpus.lengths[unique].max(initial=0) > 0))
        search = _all_pairs if dc.method == "all_pairs" else _partitioned_pairs
        clock = _Clock()
        texts_read, edit_tasks = [0], [0]
        store = ctx.docs()
        # light edits of pairs of documents: from two chunks of pairs up, by tasks that read the
        # texts where they run
        fetch = _text_fetcher(ctx, unique, control, texts_read) if rule.lexical else None
        edits_at = _spread_stored(ctx, control, edit_tasks, light_edits, store, unique, fetch, *rule.edit_args) if fetch is not None else None
        top_dir = ctx.store.dir("dedup") / TOP_DIR  # each document's best candidate cosines, for updates
        remove(top_dir)
        if search is _partitioned_pairs and rule.cap is not None and len(unique) >= dc.tasks_from and edits_at is not None:
            # the candidate pairs are capped and screened by tasks where they are found: the
            # driver gets the near pairs and the ids of those whose texts the tasks compare
            screened, info = _partitioned_screened(ctx, control, rule, top_dir)
            clock.lap("search")
            hp = screened_pairs(screened, rule.threshold, edits_at)
        else:
            (pi, pj, ps), info = search(ctx, control, rule)
            clock.lap("search")
            words = None
            if rule.lexical:
                below = ps < rule.threshold
                words = _word_index(ctx, unique, np.unique(np.concatenate([pi[below], pj[below]])), control, rule.words_needed)
                clock.lap("words")
            # each document's nearest below-threshold pairs: the pairs the lexical rule may accept,
            # and (below) what an update's cap counts
            capped = cap_candidates(pi, pj, ps, rule.threshold, rule.neighbors) if rule.lexical else None
            hp = hybrid_pairs(
                pi, pj, ps, rule.threshold, rule.candidate, words, None, rule.max_edits, rule.min_words, rule.neighbors, None, capped, edits_at
            )
            if capped is not None:
                top = top_candidates(pi[capped], pj[capped], ps[capped], rule.threshold, len(unique), rule.neighbors)
                has = np.flatnonzero(np.isfinite(top[:, 0]))
                top_dir.mkdir(parents=True, exist_ok=True)
                save_top_part(top_dir / "part-00000.npz", has, top[has])
                info["candidate_top_parts"] = 1
        clock.lap("lexical")
        vectors = ctx.product("embed")
        wt = whole_text_pass(ctx, control, hp, fetch, store, unique, corpus.lengths[unique], vectors, clock, edit_tasks, texts_read)
        hp, fetch = wt.pairs, wt.fetch
        km = ctx.product("kmeans")
        rank = keep_rank(dc.keep, len(unique), lengths=corpus.lengths[unique], distances=km.distances)
        res = group_duplicates(len(unique), hp.i, hp.j, hp.cos, rank, dc.grouping, vectors=vectors)
        clock.lap("group")
        # each duplicate's evidence: its texts and its kept document's read by the tasks that compare them
        stored = _spread_stored(ctx, control, edit_tasks, pair_evidence, store, unique, fetch) if fetch is not None else None
        ev = duplicate_evidence(res.duplicate_of, hp, fetch, rule.max_edits, rule.min_words, evidence_at=stored)
        if wt.params is not None and fetch is not None:
            ev["text_jaccard"] = link_jaccard(res.duplicate_of, _spread_stored(ctx, control, edit_tasks, jaccard, store, unique, fetch, wt.params))
        clock.lap("evidence")
        ctx.store.save_arrays(
            "dedup",
            "result",
            duplicate_of=res.duplicate_of,
            similarity=res.similarity,
            group=res.group,
            kind=ev["kind"],
            lexical_similarity=ev["lexical_similarity"],
            edits=ev["edits"],
            **({"text_jaccard": ev["text_jaccard"]} if "text_jaccard" in ev else {}),
            **wt.arrays,
            pairs_i=hp.i,
            pairs_j=hp.j,
            pairs_sim=hp.cos,
            pairs_kind=hp.kind,
        )
        served = info.pop("served", [])
        fallbacks = count_fallbacks({"stage": "dedup", "reason": r["fallback"]} for r in served if r.get("fallback"))
        return {
            "device": ",".join(sorted({r["device"] for r in served})) or "cpu",
            **({"fallbacks": fallbacks} if fallbacks else {}),
            **rule.record(),
            **({"texts_read": texts_read[0], "lexical_tasks": edit_tasks[0]} if rule.lexical else {}),
            "keep": dc.keep,
            "grouping": dc.grouping,
            **info,
            **hp.counts,
            "pairs": res.n_pairs,
            "groups": res.n_groups,
            "near_duplicates": int((res.duplicate_of >= 0).sum()),
            "lexical_duplicates": int((ev["kind"] == KIND_LEXICAL).sum()),
            "fuzzy_duplicates": int((ev["kind"] == KIND_FUZZY).sum()),
            "whole_text": wt.record,
            "phase_seconds": clock.laps,
        }


class UpdateDedup(Stage):
    """An update's form of the stage: near-duplicates that involve a new document, with a full
    run's threshold, lexical rule, keep policy and evidence (``engine/update.py``: routing into the
    existing rows' partitions, extending the groups); the existing documents' decisions stay."""

    name = "dedup"
    settings = Dedup.settings

    def fingerprint(self, ctx: RunContext) -> str:
        dc = ctx.cfg.dedup
        return fingerprint("update-dedup", ctx.fp("embed"), ctx.fp("assign") if dc.keep == "central" else "", self.settings_part(ctx.cfg))

    def load(self, ctx: RunContext) -> Duplicates:
        return Duplicates(ctx.store.load_arrays("dedup", "result"))

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, dc = ctx.cfg, ctx.cfg.dedup
        grown = ctx.grown
        docs: Documents = ctx.product("read")
        control = ctx.control("dedup")
        X = np.asarray(ctx.product("embed"), dtype=np.float32)
        A = grown.arrays
        n_old, m = grown.n_vectors, len(X)
        n = n_old + m
        rule = DedupRule.from_settings(dc, has_texts=bool(grown.corpus.lengths.max(initial=0) > 0))
        lexical, margin = rule.lexical, rule.margin
        control.report(0, 3)
        t0 = time.perf_counter()
        if "partition_centroids" in A:
            P_c = A["partition_centroids"]
            routes = Routes(A["routes_row"], A["routes_part"], A["routes_primary"], n_old, len(P_c), int(A["routes_capped"]), margin, dc.spill)
        else:  # the first update: partitions of the existing rows
            P_c, routes = partition_existing(grown.vectors, grown.iter_vectors, n_old, dc.partitions, dc.spill, margin, cfg.seed, control.check)
        route_s = time.perf_counter() - t0
        control.report(1, 3)
        t0 = time.perf_counter()
        search_tasks = [0]
        if m:
            threads = max(1, min(os.cpu_count() or 1, cfg.ray.num_cpus or os.cpu_count() or 1))
            spread = None
            if n >= dc.tasks_from:
                gather = partial(ctx.gather, control=control, window=ray_session.task_window())
                spread = search_by_tasks(grown.vector_blocks(), rule.search, rule.cap, dc.batch_rows, gather, ray_session.cluster_cpus(), search_tasks)
            (pi, pj, ps), R_new = new_pairs(
                grown.vectors, routes, X, n_old, P_c, rule.search, margin, dc.spill,
                batch_rows=dc.batch_rows, n_jobs=threads, check=control.check, cap=rule.cap, spread=spread,
            )  # fmt: skip
        else:
            pi, pj, ps = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
            R_new = Routes(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool), 0, len(P_c), 0, margin, dc.spill)
        search_s = time.perf_counter() - t0
        control.report(2, 3)
        unique = grown.unique_with(docs.corpus)
        chain = grown.chain_with(ctx.docs().path)
        top = A.get("candidate_top") if lexical else None
        fetch = words = edits_at = None
        texts_read, tasks = [0], [0]
        if lexical:
            keep = cap_candidates(pi, pj, ps, rule.threshold, rule.neighbors, existing_top=top)
            if top is None:
                log.info("dedup: the run kept no candidate lists (made before updates): new pairs are capped on their own side only")
            pi, pj, ps = pi[keep], pj[keep], ps[keep]
            below = ps < rule.threshold
            docs_below = np.unique(np.concatenate([pi[below], pj[below]]))
            words = _word_index_over(chain, unique, docs_below, control, rule.words_needed)
            fetch = _text_fetcher_over(chain, unique, control, texts_read)
            edits_at = _spread_stored(ctx, control, tasks, light_edits, chain, unique, fetch, *rule.edit_args)
        # the pairs left are capped already, counting the existing candidates: a second cap, without
        # them, would keep every one of them
        capped = np.ones(pi.size, dtype=bool) if lexical else None
        hp = hybrid_pairs(
            pi, pj, ps, rule.threshold, rule.candidate, words, None, rule.max_edits, rule.min_words, rule.neighbors, None, capped, edits_at
        )
        def rows_of(idx: np.ndarray) -> np.ndarray:  # vectors of global positions, old or new
            idx = np.asarray(idx, dtype=np.int64)
            out = np.empty((idx.size, X.shape[1]), dtype=np.float32)
            old = idx < n_old
            if old.any():
                out[old] = grown.vectors(idx[old])
            out[~old] = X[idx[~old] - n_old]
            return out

        lengths = np.concatenate([grown.corpus.lengths[grown.unique], docs.corpus.lengths[docs.unique]])
        existing = (A["fuzzy_rows"], A["fuzzy_keys"]) if "fuzzy_rows" in A else None
        wt = whole_text_pass(ctx, control, hp, fetch, chain, unique, lengths, rows_of, _Clock(), tasks, texts_read, existing, n_old)
        hp, fetch = wt.pairs, wt.fetch
        # keep order: every existing document first, the new ones by the run's policy among themselves
        km_dist = ctx.product("assign").distances[n_old:]
        new_rank = keep_rank(dc.keep, m, lengths=docs.corpus.lengths[docs.unique], distances=km_dist)
        dup, sim, group, n_groups = extend_groups(
            A["duplicate_of"], A["similarity"], A["pairs_i"], A["pairs_j"], hp.i, hp.j, hp.cos, new_rank, dc.grouping, grown.vectors, X
        )
        all_i = np.concatenate([A["pairs_i"], hp.i])
        all_j = np.concatenate([A["pairs_j"], hp.j])
        all_s = np.concatenate([A["pairs_sim"], hp.cos])
        all_k = np.concatenate([A["pairs_kind"], hp.kind])
        new_dup = np.full(n, -1, dtype=np.int64)
        new_dup[n_old:] = dup[n_old:]
        stored = _spread_stored(ctx, control, tasks, pair_evidence, chain, unique, fetch) if fetch is not None else None
        ev = duplicate_evidence(new_dup, hp, fetch, rule.max_edits, rule.min_words, evidence_at=stored)
        arrays_jac: dict[str, np.ndarray] = {}
        if wt.params is not None and fetch is not None:
            old_jac = A["text_jaccard"] if "text_jaccard" in A else np.full(n_old, np.nan, dtype=np.float32)
            new_jac = link_jaccard(new_dup, _spread_stored(ctx, control, tasks, jaccard, chain, unique, fetch, wt.params))
            arrays_jac = {"text_jaccard": np.concatenate([old_jac, new_jac[n_old:]]), **wt.arrays}
        kind = np.concatenate([A["kind"], ev["kind"][n_old:]])
        lex = np.concatenate([A["lexical_similarity"], ev["lexical_similarity"][n_old:]])
        edits = np.concatenate([A["edits"], ev["edits"][n_old:]])
        arrays: dict[str, np.ndarray] = {
            "duplicate_of": dup, "similarity": sim, "group": group, "kind": kind, "lexical_similarity": lex, "edits": edits,
            "pairs_i": all_i, "pairs_j": all_j, "pairs_sim": all_s, "pairs_kind": all_k,
            "partition_centroids": P_c.astype(np.float32),
            "routes_row": np.concatenate([routes.row_ids, R_new.row_ids]),
            "routes_part": np.concatenate([routes.part_ids, R_new.part_ids]).astype(np.int32),
            "routes_primary": np.concatenate([routes.is_primary, R_new.is_primary]),
            "routes_capped": np.int64(routes.n_capped + R_new.n_capped),  # rows with more boundaries near than dc.spill
            **arrays_jac,
        }  # fmt: skip
        if lexical:
            base_top = top if top is not None else np.full((n_old, rule.neighbors), -np.inf, np.float32)
            arrays["candidate_top"] = merge_top(base_top, n, pi, pj, ps, rule.threshold)
        ctx.store.save_arrays("dedup", "result", **arrays)
        control.report(3, 3)
        new_dups = int((dup[n_old:] >= 0).sum())
        return {
            "device": "cpu",
            **rule.record(),
            "keep": dc.keep,
            "grouping": dc.grouping,
            "method": "partitioned (new rows routed into the existing rows' partitions)",
            "partitions": int(len(P_c)),
            "margin": round(margin, 6),
            "exact": rule.exact(routes.n_capped + R_new.n_capped),
            "route_seconds": round(route_s, 3),
            "search_seconds": round(search_s, 3),
            "search_tasks": search_tasks[0],
            "texts_read": texts_read[0],
            "lexical_tasks": tasks[0],
            **hp.counts,
            "new_pairs": int(len(hp.i)),
            "cross_pairs": int((hp.i < n_old).sum()),
            "pairs": int(len(all_i)),
            "groups": n_groups,
            "new_near_duplicates": new_dups,
            "new_duplicates_of_existing": int(((dup[n_old:] >= 0) & (dup[n_old:] < n_old)).sum()),
            "near_duplicates": int((dup >= 0).sum()),
            "whole_text": wt.record,
        }


SEARCH_TASK_ROWS = 200_000  # rows (new and existing) an update's search task reads at least


def search_by_tasks(
    blocks: list[Any], threshold: float, cap: tuple[float, int] | None, batch_rows: int, run: Callable[[dict[int, Any]], dict[int, Any]], cpus: int, tasks: list[int]
) -> GroupSearch:
    """An update's search of its partitions by Ray tasks (``new_pairs``'s ``spread``): the groups
    in bundles of about an equal share of the rows they read (two per CPU, at least
    ``SEARCH_TASK_ROWS``), each filled with its new rows' vectors as it is submitted; each task
    reads the existing rows of its partitions from the stored vector parts ``blocks``, so none of
    them passes through the driver. ``run`` gathers the tasks (submits by key -> results by
    key); their count is added to ``tasks``."""

    def spread(groups: list[NewGroup], fill: Callable[[NewGroup], NewGroup]) -> list[Any]:
        share = max(SEARCH_TASK_ROWS, -(-sum(g.work for g in groups) // (2 * cpus)))
        bundles = [groups[a:b] for a, b in length_blocks([g.work for g in groups], share) if b > a]
        reader = partial(rows_of_parts, blocks)

        def submit(bundle: list[NewGroup]) -> Any:
            return new_groups_task.remote(reader, threshold, batch_rows, cap, *[fill(g) for g in bundle])

        tasks[0] += len(bundles)
        got = run({i: partial(submit, b) for i, b in enumerate(bundles)})
        return [got[i] for i in range(len(bundles))]

    return spread


class _Clock:
    """Seconds per phase of the stage, for its record."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._t, 3)
        self._t = now


def whole_text_rule(ctx: RunContext) -> tuple[WholeTextRule, TextWindows] | None:
    """The whole-text rule and the run's model window, or None for precomputed vectors (no
    model, so no window to judge a text's length by: the cosine and light-edit rules alone)."""
    cfg = ctx.cfg
    if ctx.product("read").vector_input:
        return None
    dc = cfg.dedup
    try:
        spec = configured_model(cfg.embed, cfg.cache.dir or default_cache_dir())
        windows = TextWindows.for_model(spec, cfg.embed.window_overlap, cfg.embed.max_windows)
    except (ModelUnavailable, ValueError) as exc:
        raise RunError(f"dedup: {exc}") from None
    return WholeTextRule(dc.text_threshold, MinHashParams(dc.shingle_chars, dc.minhash_bands, dc.minhash_rows), dc.fuzzy), windows


@dataclass
class WholeTextPass:
    """What :func:`whole_text_pass` hands back: the pairs, the stage record's part, the arrays an
    update builds on, the text fetcher (made when there was none) and the rule's shingle
    parameters (None when the rule did not apply)."""

    pairs: HybridPairs
    record: dict[str, Any]
    arrays: dict[str, np.ndarray]
    fetch: Callable[[np.ndarray], dict[int, str]] | None
    params: MinHashParams | None = None


def whole_text_pass(
    ctx: RunContext,
    control: StageControl,
    hp: HybridPairs,
    fetch: Callable[[np.ndarray], dict[int, str]] | None,
    store: DocStore | DocChain,
    unique: np.ndarray,
    lengths: np.ndarray,
    vectors: Any,
    clock: "_Clock",
    tasks: list[int],
    texts_read: list[int],
    existing: tuple[np.ndarray, np.ndarray] | None = None,
    n_old: int = 0,
) -> WholeTextPass:
    """The whole-text rule and the fuzzy candidates (:func:`apply_whole_text`) where the run has a
    model window, for the run's dedup stage and an update's alike. The pairs' verdicts come from
    tasks that read the texts where they run (:func:`_spread_stored`)."""
    whole = whole_text_rule(ctx)
    if whole is None:
        return WholeTextPass(hp, {"applied": False, "note": "no model window to judge by: precomputed vectors"}, {}, fetch)
    rule, windows = whole
    fetch = fetch or _text_fetcher_over(store, unique, control, texts_read)
    verdicts = _spread_stored(ctx, control, tasks, long_pair_jaccard, store, unique, fetch, windows.is_long, rule.params)
    pairs, record, arrays = apply_whole_text(ctx, control, rule, windows, hp, verdicts, store, unique, lengths, vectors, clock, existing, n_old)
    return WholeTextPass(pairs, record, arrays, fetch, rule.params)


def apply_whole_text(
    ctx: RunContext,
    control: StageControl,
    rule: WholeTextRule,
    windows: TextWindows,
    hp: HybridPairs,
    verdicts: Verdicts,
    store: DocStore | DocChain,
    unique: np.ndarray,
    lengths: np.ndarray,
    vectors: Any,
    clock: "_Clock",
    existing: tuple[np.ndarray, np.ndarray] | None = None,
    n_old: int = 0,
) -> tuple[HybridPairs, dict[str, Any], dict[str, np.ndarray]]:
    """The whole-text rule over the pairs ``hp`` of documents ``0 .. len(unique) - 1`` (cosine pairs
    with a long text kept only on whole-text evidence), then the fuzzy candidates: MinHash band
    keys of every document that may be longer than the window, computed by Ray tasks, bucketed,
    each candidate confirmed by its exact Jaccard. An update passes ``n_old``, the documents that
    were there before it (only pairs with a later document are looked at), and ``existing``, the
    positions and band keys the run kept of them (None: a run made before they were kept, whose
    documents are keyed again). Returns the pairs, the record and the arrays an update builds on."""
    maybe_long = np.asarray(lengths) >= windows.budget
    hp, check = check_long_pairs(hp, rule, verdicts, maybe_long)
    clock.lap("long_pairs")
    record: dict[str, Any] = {
        "applied": True,
        "text_threshold": rule.threshold,
        "window_tokens": windows.budget,
        "shingle_chars": rule.params.shingle,
        **check.counts,
    }
    arrays: dict[str, np.ndarray] = {}
    if not rule.fuzzy:
        return hp, {**record, "fuzzy": False}, arrays
    maybe = np.flatnonzero(maybe_long)
    if existing is not None:
        maybe = maybe[maybe >= n_old]
    keys, served = _minhash_keys(ctx, control, store, unique, maybe, np.asarray(lengths)[maybe], rule.params)
    clock.lap("minhash")
    rows, all_keys = maybe, keys
    if existing is not None:
        rows, all_keys = np.concatenate([existing[0], maybe]), np.concatenate([existing[1], keys])
    ci, cj = candidate_pairs(all_keys, ids=rows)
    if n_old:
        new = cj >= n_old  # i < j: a pair with a new document has it second
        ci, cj = ci[new], cj[new]
    fz = confirm_candidates(ci, cj, rule, verdicts)
    hp = merge_fuzzy(hp, fz, cos=lambda i, j: np.einsum("ij,ij->i", _rows(vectors, i), _rows(vectors, j)))
    clock.lap("fuzzy")
    arrays = {"fuzzy_rows": rows.astype(np.int64), "fuzzy_keys": all_keys}
    devices = sorted({d for d, _ in served}) or ["cpu"]
    fallbacks = count_fallbacks({"stage": "dedup", "reason": r} for _, r in served if r)
    record.update(
        fuzzy=True,
        minhash={"bands": rule.params.bands, "rows": rule.params.rows, "knee": round(rule.params.knee, 4)},
        fuzzy_documents=int(maybe.size),
        fuzzy_device=",".join(devices),
        **({"fuzzy_fallbacks": fallbacks} if fallbacks else {}),
        **fz.counts,
    )
    return hp, record, arrays


def _rows(vectors: Any, idx: np.ndarray) -> np.ndarray:
    """Rows ``idx`` of the vectors (an array, or a callable taking row positions)."""
    return np.asarray(vectors(idx) if callable(vectors) else vectors[np.asarray(idx)], dtype=np.float32)


MINHASH_BLOCK_CHARS = 2_000_000  # characters of text one signature task takes


def _minhash_keys(
    ctx: RunContext, control: StageControl, store: DocStore | DocChain, unique: np.ndarray, docs: np.ndarray, lengths: np.ndarray, params: MinHashParams
) -> tuple[np.ndarray, list[tuple[str, str | None]]]:
    """Band keys (uint64, (len(docs), bands)) of documents ``docs`` (sorted positions in ``unique``;
    ``lengths``: their texts' lengths), a block of stored documents per Ray task, which reads their
    texts where it runs (no text passes through the driver), on the tasks' GPUs where the cluster has them."""
    if docs.size == 0:
        return np.zeros((0, params.bands), dtype=np.uint64), []
    task = minhash_keys_task.options(num_gpus=ctx.plan.task_resources.gpus) if ctx.plan.use_gpu else minhash_keys_task
    rows = unique[docs]
    blocks = length_blocks(lengths, MINHASH_BLOCK_CHARS)
    submits = {b: partial(task.remote, store, rows[lo:hi], params, device=ctx.cfg.device) for b, (lo, hi) in enumerate(blocks)}
    got = ctx.gather(submits, control)
    keys = np.concatenate([got[b][0] for b in range(len(blocks))])
    return keys, [(got[b][1], got[b][2]) for b in range(len(blocks))]


EDIT_CHUNK = 4_000  # text pairs one task compares (a few tenths of a second of work)
MAX_EDIT_CHUNK = 50_000  # text pairs one task compares at most (it holds their texts)


def _spread_stored(
    ctx: RunContext, control: StageControl, tasks: list[int], local: Callable[..., Any], store: DocStore | DocChain, unique: np.ndarray,
    fetch: Callable[[np.ndarray], dict[int, str]], *bound: Any,
) -> Callable[..., Any]:
    """``local(texts_a, texts_b, *bound, *args)`` over pairs of documents given as positions in
    ``unique`` (``at(docs_a, docs_b, *args)``): fewer than two chunks' worth in the driver, with the
    texts through ``fetch``; more spread over Ray tasks of :data:`EDIT_CHUNK` to
    :data:`MAX_EDIT_CHUNK` pairs (4 per CPU of the cluster when they fit) that read their pairs'
    texts from ``store`` where they run, so that no text passes through the driver. The results
    come back concatenated in order (element by element when ``local`` returns a tuple);
    ``tasks[0]`` counts the tasks."""

    def at(docs_a: np.ndarray, docs_b: np.ndarray, *more: Any) -> Any:
        args = (*bound, *more)
        n = len(docs_a)
        if n < 2 * EDIT_CHUNK:
            texts = fetch(np.unique(np.concatenate([docs_a, docs_b])))
            return local([texts[int(x)] for x in docs_a], [texts[int(x)] for x in docs_b], *args)
        chunks_n = max(min(4 * ray_session.cluster_cpus(), n // EDIT_CHUNK), -(-n // MAX_EDIT_CHUNK))
        bounds = np.linspace(0, n, chunks_n + 1).astype(int).tolist()
        chunks = list(zip(bounds[:-1], bounds[1:]))
        submits = {
            c: partial(stored_pairs_task.remote, local, store, unique[docs_a[lo:hi]], unique[docs_b[lo:hi]], *args) for c, (lo, hi) in enumerate(chunks)
        }
        got = ctx.gather(submits, control)
        tasks[0] += len(chunks)
        parts = [got[c] for c in range(len(chunks))]
        if isinstance(parts[0], tuple):
            return tuple(np.concatenate(p) for p in zip(*parts))
        return np.concatenate(parts)

    return at


def _word_index(ctx: RunContext, unique: np.ndarray, docs: np.ndarray, control: StageControl, char_words: int | None = None) -> WordIndex:
    return _word_index_over(ctx.docs(), unique, docs, control, char_words)


def _text_fetcher(ctx: RunContext, unique: np.ndarray, control: StageControl, count: list[int]) -> Callable[[np.ndarray], dict[int, str]]:
    return _text_fetcher_over(ctx.docs(), unique, control, count)


def _word_index_over(
    store: DocStore | DocChain, unique: np.ndarray, docs: np.ndarray, control: StageControl, char_words: int | None = None
) -> WordIndex:
    """Word counts and multisets (no texts) of documents ``docs`` (sorted positions in
    ``unique``), streamed from the stored documents a batch at a time; character counts only for
    documents of fewer than ``char_words`` words (``WordIndex.from_texts``)."""
    parts = []
    for rows, texts in store.iter_texts(unique[docs]):
        parts.append(WordIndex.from_texts(np.searchsorted(unique, rows), texts, char_words))  # unique is sorted
        control.check()
    words = WordIndex.concat(parts)
    if not np.array_equal(words.rows, docs):
        raise RunError("docs.parquet does not match the dedup stage's documents; delete OUT/.theme-engine and re-run")
    return words


def _text_fetcher_over(
    store: DocStore | DocChain, unique: np.ndarray, control: StageControl, count: list[int]
) -> Callable[[np.ndarray], dict[int, str]]:
    """``fetch(sorted positions in unique) -> {position: text}`` streamed from the stored
    documents; texts already fetched are kept (they are those of the pairs compared and of the
    duplicates: few) and not read again. ``count[0]`` counts the texts read."""
    held: dict[int, str] = {}

    def fetch(docs: np.ndarray) -> dict[int, str]:
        todo = np.asarray([d for d in np.asarray(docs, dtype=np.int64).tolist() if d not in held], dtype=np.int64)
        if todo.size:
            for rows, texts in store.iter_texts(unique[todo]):
                held.update(zip(np.searchsorted(unique, rows).tolist(), texts))
                control.check()
            count[0] += int(todo.size)
        return held

    return fetch


def _all_pairs(ctx: RunContext, control: StageControl, rule: DedupRule) -> tuple[Pairs, dict[str, Any]]:
    """Every shard against every shard, exact (O(n^2) work): every pair at or above the rule's
    search threshold (below ``rule.cap[0]`` only each row's ``cap[1]`` nearest, ``engine.dedup.cap_candidates``)."""
    dc = ctx.cfg.dedup
    threshold, cap = rule.search, rule.cap
    shards = ctx.shards
    S = len(shards.sizes)
    jobs = [(i, j) for i in range(S) for j in range(i, S)]
    results = ctx.gather({(i, j): partial(shards.pairs, i, j, threshold, dc.batch_rows, cap) for i, j in jobs}, control)
    parts = [results[job] for job in jobs]
    pairs = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
    info: dict[str, Any] = {"method": "all_pairs", "exact": True, "served": [p[3] for p in parts]}
    if threshold < rule.threshold:
        info["candidates_exact"] = True
    return pairs, info


@dataclass
class _Routed:
    """The partitioned search up to its tasks: the rows routed to partitions by the shards."""

    partitions: int
    groups: int
    routed: list[Any]
    stats: list[dict[str, Any]]
    options: dict[str, Any]  # the search tasks' resources
    clock: "_Clock"

    def record(self, rule: DedupRule, threshold: float, n: int, spill: int | None, served: list[dict[str, Any]]) -> dict[str, Any]:
        capped = sum(st["capped"] for st in self.stats)
        placements = sum(st["placements"] for st in self.stats)
        return {
            "method": "partitioned",
            "partitions": self.partitions,
            "margin": round(rule.margin, 6),
            "spill": spill,
            "placements_per_row": round(placements / max(n, 1), 3),
            "capped_rows": capped,
            "exact": rule.exact(capped),
            **({"candidates_exact": rule.exact(capped, threshold)} if threshold < rule.threshold else {}),
            "served": served,
            "search_seconds": self.clock.laps,
            # summed over the partition tasks: sorting their placements, the search (with reading the
            # vectors), the candidate cap
            "partition_task_seconds": {k: round(sum(s["seconds"][k] for s in served), 3) for k in ("sort", "search", "cap")},
        }


def _route(ctx: RunContext, rule: DedupRule) -> _Routed:
    """A sample of the shards' rows, its partition centroids, and every row routed by its shard
    (``engine/partition.py`` for the recall argument)."""
    cfg, dc = ctx.cfg, ctx.cfg.dedup
    shards = ctx.shards
    n = sum(shards.sizes)
    P = min(dc.partitions or default_n_partitions(n), n)
    clock = _Clock()
    # the sample goes from the shards to a task, and its centroids from the task to the shards
    sample = sample_handles(shards, min(n, max(32 * P, 10_000)), seeds.derive(cfg.seed, "partition_sample"))
    cref = partition_centroids_task.remote(P, cfg.seed, *sample)
    ray.wait([cref], fetch_local=False)
    clock.lap("centroids")
    groups = max(1, min(P, 4 * ray_session.cluster_cpus()))
    routed = [shards.route(i, cref, dc.spill, rule.margin, groups) for i in range(len(shards.sizes))]
    stats = ray.get([r[-1] for r in routed])
    clock.lap("route")
    options = {"num_gpus": ctx.plan.task_resources.gpus} if ctx.plan.use_gpu else {}
    return _Routed(P, groups, routed, stats, options, clock)


def _partitioned_pairs(ctx: RunContext, control: StageControl, rule: DedupRule) -> tuple[Pairs, dict[str, Any]]:
    """Rows routed to nearest-centroid partitions by the shards, searched exactly per partition
    by Ray tasks; only the routed rows move (see engine/partition.py for the recall argument).

    Partitions are searched at the rule's search threshold (the candidate threshold when the
    lexical rule is on; below ``cap[0]`` only each row's ``cap[1]`` nearest pairs are kept, by each
    task and then over the merged pairs; from ``dedup.tasks_from`` documents
    :func:`_partitioned_screened` searches instead). The default margin is the safe one for
    ``dedup.threshold``: every pair at or above it is found (``exact``); a candidate pair below it is found when its two rows meet in a partition
    (``candidates_exact`` only with a margin safe for the search threshold, which costs many more
    placements: bench/README.md, "Choices measured in the code")."""
    dc = ctx.cfg.dedup
    threshold, cap = rule.search, rule.cap
    shards = ctx.shards
    r = _route(ctx, rule)
    search = search_partitions.options(**r.options)
    submits = {
        g: partial(search.remote, threshold, dc.batch_rows, shards.offsets, *[x[g] for x in r.routed], *shards.refs, device=ctx.cfg.device, cap=cap)
        for g in range(r.groups)
    }
    parts: list[Pairs] = []
    infos: dict[int, dict[str, Any]] = {}

    def fold(g: int, got: tuple[Any, ...]) -> None:
        infos[g] = got[3]
        parts.append(got[:3])

    ctx.gather(submits, control, fold=fold)
    r.clock.lap("partitions")
    pairs = merge_pairs(parts)
    if cap is not None:  # each task capped its own partitions' pairs: the cap over all of them
        keep = cap_candidates(*pairs, *cap)
        pairs = (pairs[0][keep], pairs[1][keep], pairs[2][keep])
    r.clock.lap("merge")
    return pairs, r.record(rule, threshold, sum(shards.sizes), dc.spill, [infos[g] for g in range(r.groups)])


WORD_ROWS = 65_536  # stored documents one word-index task reads
CAP_PAIRS = 4_000_000  # candidate pairs (counted twice: one per document) a cap task takes, about


def _partitioned_screened(ctx: RunContext, control: StageControl, rule: DedupRule, top_dir: Path) -> tuple[Screened, dict[str, Any]]:
    """The partitioned search with the lexical rule, its candidate pairs capped and screened
    where they are (``engine/candidates.py``): the search tasks keep their pairs on their nodes,
    split by document bucket; a cap task per bucket keeps each document's nearest and sends each
    kept pair to its owner bucket; a screen task per owner reads the documents' word index
    (saved by tasks beside the stored documents) and hands back only the near pairs and the few
    the screen leaves to a comparison of texts. Each cap task saves its documents' best candidate
    cosines as a part under ``top_dir`` (what an update's cap counts). Returns the pairs and the
    search's record."""
    cfg, dc = ctx.cfg, ctx.cfg.dedup
    threshold = rule.search
    shards = ctx.shards
    n = sum(shards.sizes)
    words = _word_parts(ctx, control, rule)
    r = _route(ctx, rule)
    buckets = max(2 * ray_session.cluster_cpus(), -(-2 * n * rule.neighbors // CAP_PAIRS))
    search = search_partitions.options(**r.options, num_returns=buckets + 1)
    found: dict[int, list[Any]] = {}

    def submit_search(g: int) -> Any:
        refs = search.remote(
            threshold, dc.batch_rows, shards.offsets, *[x[g] for x in r.routed], *shards.refs, device=cfg.device, cap=rule.cap, buckets=buckets
        )
        found[g] = refs[1:]  # the pairs stay where the task ran
        return refs[0]

    infos = ctx.gather({g: partial(submit_search, g) for g in range(r.groups)}, control)
    r.clock.lap("partitions")
    cap = cap_bucket_task.options(num_returns=buckets + 1)
    kept: dict[int, list[Any]] = {}
    top_dir.mkdir(parents=True, exist_ok=True)

    def submit_cap(b: int) -> Any:
        refs = cap.remote(b, buckets, rule.threshold, rule.neighbors, str(top_dir / f"part-{b:05d}.npz"), *[found[g][b] for g in range(r.groups)])
        kept[b] = refs[1:]
        return refs[0]

    ctx.gather({b: partial(submit_cap, b) for b in range(buckets)}, control)
    found.clear()  # the search tasks' pairs may go
    r.clock.lap("cap")
    screened = ctx.gather(
        {
            b: partial(screen_bucket_task.remote, rule.threshold, words, rule.max_edits, rule.min_words, *[kept[c][b] for c in range(buckets)])
            for b in range(buckets)
        },
        control,
    )
    kept.clear()
    r.clock.lap("screen")
    shutil.rmtree(ctx.store.dir("dedup") / "words", ignore_errors=True)
    got = [screened[b] for b in range(buckets)]
    both = Screened(
        merge_pairs([x.near for x in got]),
        merge_pairs([x.compare for x in got]),
        sum(x.candidates for x in got),
        sum(x.checked for x in got),
    )
    record = r.record(rule, threshold, n, dc.spill, [infos[g] for g in range(r.groups)])
    return both, {**record, "buckets": buckets, "candidate_top_parts": buckets}


def _word_parts(ctx: RunContext, control: StageControl, rule: DedupRule) -> list[tuple[str, int, int]]:
    """The embedded documents' word index, saved in parts under the stage's folder by tasks that
    read the stored documents (``word_part_task``): ``(folder, first, end)`` per part."""
    docs = ctx.product("read")
    unique = docs.unique
    root = ctx.store.dir("dedup") / "words"
    shutil.rmtree(root, ignore_errors=True)
    firsts = list(range(0, len(unique), WORD_ROWS))
    store = ctx.docs()
    spans = [(int(unique[f]), int(unique[min(f + WORD_ROWS, len(unique)) - 1]) + 1, f) for f in firsts]
    counts = ctx.gather(
        {k: partial(word_part_task.remote, store, a, b, f, rule.words_needed, root / f"part-{k:05d}") for k, (a, b, f) in enumerate(spans)},
        control,
        window=ray_session.task_window(),
    )
    parts = [(str(root / f"part-{k:05d}"), f, f + counts[k]) for k, (_, _, f) in enumerate(spans)]
    if sum(counts.values()) != len(unique):
        raise RunError("docs.parquet does not match the dedup stage's documents; delete OUT/.theme-engine and re-run")
    return parts

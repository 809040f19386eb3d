"""``theme-engine update DIR NEW_INPUT...``: a finished run grown by new documents, at a cost that
follows the new documents rather than the corpus.

The new documents are read and embedded as a run would (the cache serves repeats), each assigned
to its nearest theme; those far from every theme are tested for drift, and ``--refit auto`` adds
new themes found among them (``engine/update.py``); near-duplicates are searched between the new
documents and the whole corpus with a full run's guarantees, existing themes are labelled again
from their grown membership, the new documents placed on the map and added to the search index.

State: an update's stages live in ``OUT/.theme-engine/updates/NNNN`` (resumable, as a run's
are); its outputs are staged in its ``out/`` folder and moved into OUT by one journalled commit
(``state.commit_update``), so a stop at any point leaves the previous result readable and the
same command finishes the update. ``updates/current.json`` lists the committed updates; the
documents and vectors of each stay in its folder, and the corpus-wide arrays of the latest one
(themes, duplicates, map, partitions) in its ``grown.npz``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from theme_engine.engine.boilerplate import Boilerplate
from theme_engine.engine.config import RunConfig, load_config, public_config
from theme_engine.engine.corpus import Corpus, clean_text, dedup_key
from theme_engine.engine.dedup import DedupRule, cap_candidates, duplicate_evidence, hybrid_pairs, keep_rank
from theme_engine.engine.docstore import DocChain, DocStore
from theme_engine.engine.embedding import model_ref
from theme_engine.engine.fuzzy import link_jaccard
from theme_engine.engine.output import read_themes, write_model, write_outputs
from theme_engine.engine.partition import default_n_partitions, partition_centroids, route, Routes
from theme_engine.engine.update import (
    drift_test,
    extend_ranked,
    far_cutoffs,
    merge_top,
    nearest,
    new_pairs,
    pair_groups,
    propose_themes,
)

from .args import UPDATE_FLAGS
from .stages import RunContext, RunError, Stage
from .stages.dedup import _Clock, whole_text_pass
from .stages.embed import Embed
from .stages.label import label_themes
from .stages.read import Documents, Read, save_keys
from .state import (
    STATE_DIR,
    UPDATES_RECORD,
    OutLock,
    OutputBusy,
    StageStore,
    atomic_write_json,
    committed_updates,
    fingerprint,
    output_path,
    publish,
    result_file,
    roll_forward,
    save_committed_updates,
    updates_root,
)

log = logging.getLogger(__name__)

GROWN_FILE = "grown.npz"
# what an update may set besides the run's own settings (``theme_engine.update``; the CLI's flags)
UPDATE_SECTIONS = ("update", "read", "ray", "cache", "report")
UPDATE_KEYWORDS = (*(flag.lstrip("-").replace("-", "_") for flag in UPDATE_FLAGS), "no_cache")


class NothingNew(RunError):
    """Every document of the update's inputs is already in the run: nothing was changed."""


# ----------------------------------------------------------------------------- the grown corpus


@dataclass
class Part:
    """One block of the corpus: the run's own documents, or an update's."""

    docs: Path  # docs.parquet: every document of the block, in input order
    vectors: Path  # vectors.npy: one row per embedded document of the block
    keys: Path | None  # keys.npz: exact-duplicate key -> row of the corpus of its first document


@dataclass
class Grown:
    """A finished run as the next update finds it: its parts (the run's, then each committed
    update's), the corpus over all of them, and the corpus-wide arrays (per embedded document:
    ``themes``, ``distances``, the duplicate decisions and evidence, ``coords``; the pairs; the
    themes' ``centroids``; the partitions the duplicate search routes into, once an update made
    them)."""

    out: Path
    parts: list[Part]
    corpus: Corpus
    unique: np.ndarray  # rows of the corpus that are embedded, in order: the arrays' rows
    arrays: dict[str, np.ndarray]
    themes: list[dict[str, Any]]
    hierarchy: list[dict[str, Any]]
    manifest: dict[str, Any]
    generation: int
    token: str  # what this state is, for the fingerprints of the update built on it
    vector_input: bool
    layout_sample: np.ndarray | None = None  # rows (of ``unique``) the map was fitted on
    _vectors: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def docs(self) -> DocChain:
        return DocChain([p.docs for p in self.parts])

    def vector_blocks(self) -> list[np.ndarray]:
        if not self._vectors:
            self._vectors = [np.load(p.vectors, mmap_mode="r") for p in self.parts]
        return self._vectors

    @property
    def n_vectors(self) -> int:
        return int(sum(len(v) for v in self.vector_blocks()))

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of the sorted embedded rows ``rows``."""
        blocks = self.vector_blocks()
        out = np.empty((len(rows), blocks[0].shape[1]), dtype=np.float32)
        lo = 0
        for block in blocks:
            a, b = np.searchsorted(rows, [lo, lo + len(block)])
            if b > a:
                out[a:b] = block[rows[a:b] - lo]
            lo += len(block)
        return out

    def iter_vectors(self, rows: int = 65_536) -> Any:
        """(first row, block) over every embedded row, in order."""
        start = 0
        for block in self.vector_blocks():
            for a in range(0, len(block), rows):
                yield start + a, np.asarray(block[a : a + rows], dtype=np.float32)
            start += len(block)


def load_grown(out: Path) -> Grown:
    """The run in ``out`` with its committed updates (a stopped commit is finished first)."""
    out = Path(out)
    if roll_forward(out):
        finished = committed_updates(out) or {"updates": []}
        if finished["updates"]:
            log.warning("update %d of %s stopped while committing; its commit is now finished", len(finished["updates"]), out)
            _tidy(updates_root(out), finished["updates"][-1]["dir"], finished["updates"])
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise RunError(f"{out} holds no finished theme-engine run (no manifest.json): run theme-engine run INPUT... --out {out} first")
    manifest = json.loads(manifest_path.read_text())
    state = out / STATE_DIR
    store = StageStore(out)
    vector_input = bool(manifest.get("stages", {}).get("embed", {}).get("skipped"))
    base_vectors = state / ("read" if vector_input else "embed") / "vectors.npy"
    needed = [state / "read" / "docs.parquet", base_vectors, state / "label" / "result.npz", state / "dedup" / "result.npz"]
    missing = [str(p.relative_to(out)) for p in needed if not p.is_file()]
    if missing:
        raise RunError(
            f"{out} lacks the stage files an update builds on ({', '.join(missing)}); run theme-engine run again into {out} to rebuild them"
        )
    keys = state / "read" / "keys.npz"
    parts = [Part(state / "read" / "docs.parquet", base_vectors, keys if keys.is_file() else None)]
    current = committed_updates(out)
    generation = 0
    if current is None:
        label = store.load_arrays("label", "result")
        dedup = store.load_arrays("dedup", "result")
        arrays = {
            "themes": label["themes"],
            "distances": label["distances"],
            "centroids": label["centroids"],
            **{k: dedup[k] for k in ("duplicate_of", "similarity", "group", "kind", "lexical_similarity", "edits")},
            **{k: dedup[k] for k in ("pairs_i", "pairs_j", "pairs_sim", "pairs_kind")},
        }
        for key in ("candidate_top", "text_jaccard", "fuzzy_rows", "fuzzy_keys"):
            if key in dedup:
                arrays[key] = dedup[key]
        if store.has("layout", "result"):
            arrays["coords"] = store.load_arrays("layout", "result")["coords"]
        themes = store.load_json("label", "themes")
        hierarchy = store.load_json("label", "hierarchy")
        done = {d.name: json.loads((d / "done.json").read_text()).get("fingerprint") for d in sorted(state.iterdir()) if (d / "done.json").is_file()}
        token = fingerprint("grown", 0, done)  # every stage of the run: a re-run of any changes what an update builds on
    else:
        generation = int(current["generation"])
        root = updates_root(out)
        for u in current["updates"]:
            parts.append(Part(root / u["docs"], root / u["vectors"], root / u["keys"]))
        last = root / current["updates"][-1]["dir"]
        with np.load(last / GROWN_FILE, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        themes, hierarchy = read_themes(out)
        token = fingerprint("grown", generation, current["updates"][-1]["dir"], current["updates"][-1]["fingerprint"])
    bad = list(manifest.get("bad_records", {}).get("examples", []))
    chain = DocChain([p.docs for p in parts])
    corpus = chain.load_corpus(bad)
    unique = np.flatnonzero(np.asarray([s == "ok" for s in corpus.status], dtype=bool))
    grown = Grown(out, parts, corpus, unique, arrays, themes, hierarchy, manifest, generation, token, vector_input)
    layout = manifest.get("stages", {}).get("layout", {})
    if "coords" in arrays and not layout.get("skipped"):
        from theme_engine.engine.layout import _sample_rows  # noqa: PLC0415

        n_base = len(np.load(base_vectors, mmap_mode="r"))
        cfg = manifest.get("config", {})
        grown.layout_sample = _sample_rows(n_base, int(cfg.get("layout", {}).get("sample_size", 30_000)), int(cfg.get("seed", 0)))
    if grown.n_vectors != len(unique) or len(arrays["themes"]) != len(unique):
        raise RunError(f"{out}: the stored vectors ({grown.n_vectors}) and documents ({len(unique)}) disagree; run theme-engine run again into {out}")
    return grown


def _existing_keys(grown: Grown) -> dict[str, int]:
    """Exact-duplicate key -> corpus row of its first document, over every part (the run's keys
    are recomputed from its texts when it was made before they were stored)."""
    keys: dict[str, int] = {}
    for part, offset in zip(grown.parts, grown.docs.offsets[:-1]):
        if part.keys is not None and part.keys.is_file():
            with np.load(part.keys, allow_pickle=False) as data:
                keys.update(zip((k.decode() for k in data["key"].tolist()), data["row"].tolist()))
            continue
        log.info("update: computing the exact-duplicate keys of %s (made before they were stored)", part.docs)
        store = DocStore(part.docs)
        corpus = store.load_corpus([])
        rows = np.flatnonzero(np.asarray([s == "ok" for s in corpus.status], dtype=bool))
        for sel, texts in store.iter_texts(rows):
            for r, t in zip(sel.tolist(), texts):
                keys.setdefault(dedup_key(t), int(r + offset))
    return keys


# ----------------------------------------------------------------------------- stages


class UpdateRead(Read):
    """The new inputs read as a run reads them, then set against the corpus: a document whose id
    is already there with the same text is *already present* and left out; one whose id is there
    with another text is a bad record; one whose text is already there is an exact duplicate of
    it. ``docs.parquet`` then holds the new documents only, ``exact_of`` as rows of the whole
    corpus."""

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-read", super().fingerprint(ctx), ctx.product("grown").token)

    def run(self, ctx: RunContext) -> dict[str, Any]:
        record = super().run(ctx)
        grown: Grown = ctx.product("grown")
        control = ctx.control("read")
        store = ctx.docs()
        corpus = store.load_corpus(ctx.store.load_json("read", "bad"))
        offset = len(grown.corpus.ids)
        where = {doc_id: i for i, doc_id in enumerate(grown.corpus.ids)}
        clash = [i for i, doc_id in enumerate(corpus.ids) if doc_id in where]
        old_text: dict[int, str] = {}
        if clash:
            rows = np.asarray(sorted(where[corpus.ids[i]] for i in clash), dtype=np.int64)
            for sel, texts in grown.docs.iter_texts(rows):
                old_text.update(zip(sel.tolist(), texts))
        keys = _existing_keys(grown)
        bad = list(corpus.bad)
        counts = {"present": 0, "id_conflicts": 0, "exact_of_existing": 0}
        statuses: dict[str, int] = {}
        new_keys: dict[str, int] = {}
        clash_set = set(clash)
        kept = 0
        with store.writer() as write:  # docs.parquet again, a batch at a time (the writer renames at the end)
            for sel, texts in store.iter_texts(np.arange(len(corpus.ids), dtype=np.int64)):
                cols: dict[str, list[Any]] = {"id": [], "source": [], "text": [], "status": [], "exact_of": [], "length": []}
                for i, text in zip(sel.tolist(), texts):
                    doc_id, status = corpus.ids[i], corpus.status[i]
                    if i in clash_set:
                        first = where[doc_id]
                        if clean_text(old_text.get(first, "")) == clean_text(text) or (status.startswith("filtered_") and not old_text.get(first)):
                            counts["present"] += 1
                            continue
                        counts["id_conflicts"] += 1
                        bad.append(
                            {
                                "source": corpus.sources[i],
                                "error": f"id {doc_id!r} is already in the run ({grown.corpus.sources[first]}) with another text; "
                                "give new documents ids of their own (updating a document is not supported)",
                            }
                        )
                        continue
                    exact = -1
                    if not status.startswith("filtered_"):
                        key = dedup_key(text)
                        if key in keys:
                            exact = keys[key]
                            counts["exact_of_existing"] += 1
                        elif key in new_keys:
                            exact = new_keys[key]
                        else:
                            new_keys[key] = offset + kept
                        status = "ok" if exact < 0 else "exact_duplicate"
                    statuses[status] = statuses.get(status, 0) + 1
                    kept += 1
                    for c, v in zip(cols, (doc_id, corpus.sources[i], text, status, exact, len(text))):
                        cols[c].append(v)
                write(cols)
                control.check()
        ctx.store.save_json("read", "bad", bad)
        save_keys(ctx.store.dir("read") / "keys.npz", new_keys)
        return {"device": "cpu", "read": record.get("documents", 0), "documents": kept, "bad": len(bad), **statuses, **counts}

    def load(self, ctx: RunContext) -> Documents:
        corpus = ctx.docs().load_corpus(ctx.store.load_json("read", "bad"))
        return Documents(self.files, self.vector_input, corpus)


class UpdateEmbed(Embed):
    """The new documents' vectors (the cache serves repeats); none when every new document is an
    exact duplicate."""

    def fingerprint(self, ctx: RunContext) -> str:
        if ctx.product("read").vector_input:
            raise RunError("an update takes texts: a run of precomputed vectors grows by a new run of all of its vectors")
        fp = super().fingerprint(ctx)
        made_by = ctx.product("grown").manifest.get("stages", {}).get("embed", {}).get("model")
        if made_by and made_by != self.spec.model_id:
            raise RunError(
                f"the run's vectors were made by {made_by}, but its model's files now give {self.spec.model_id}: new documents "
                "would be compared with another model's vectors; restore the model's files, or run the whole corpus again"
            )
        return fp

    def load(self, ctx: RunContext) -> np.ndarray:
        return np.load(self._path(ctx))  # the new documents' only: small enough to hold

    def _boilerplate(self, ctx: RunContext) -> Boilerplate:
        """The run's boilerplate: new documents are read as the run read its own."""
        if ctx.cfg.embed.boilerplate_share <= 0:
            return Boilerplate()
        path = ctx.product("grown").out / STATE_DIR / "embed" / "boilerplate.npy"
        try:
            return Boilerplate(np.load(path))
        except (OSError, ValueError) as exc:
            raise RunError(f"the run's boilerplate n-grams ({path}) cannot be read ({exc}); run theme-engine run again to rebuild them") from None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        if len(self.docs.unique) == 0:
            np.save(self._path(ctx), np.zeros((0, self.spec.dim), dtype=np.float32))
            return {"device": "none", "documents": 0, "embedded": 0, "skipped": "no new text to embed", "model": self.spec.model_id}
        return super().run(ctx)


class Assign(Stage):
    """Each new document's nearest theme; the far ones, the drift test and (``--refit``) new
    themes; with ``always`` the centroids refitted over the whole corpus from the existing ones."""

    name = "assign"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("assign", ctx.fp("embed"), ctx.cfg.update.model_dump(mode="json"), ctx.cfg.seed, ctx.product("grown").token)

    def load(self, ctx: RunContext) -> dict[str, np.ndarray]:
        return ctx.store.load_arrays("assign", "result")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, uc = ctx.cfg, ctx.cfg.update
        grown: Grown = ctx.product("grown")
        control = ctx.control("assign")
        X = np.asarray(ctx.product("embed"), dtype=np.float32)
        C = grown.arrays["centroids"].astype(np.float32)
        old_themes, old_dist = grown.arrays["themes"], grown.arrays["distances"]
        k = len(C)
        control.report(0, 3)
        theme, dist = nearest(X, C) if len(X) else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        cut = far_cutoffs(old_dist, old_themes, k, uc.far_quantile)
        far = dist > cut[theme] if len(X) else np.zeros(0, dtype=bool)
        drift = drift_test(int(far.sum()), len(X), 1.0 - uc.far_quantile, uc.drift_share)
        control.report(1, 3)
        proposal: dict[str, Any] = {"decision": "new documents join their nearest theme"}
        C_new = np.zeros((0, C.shape[1]), np.float32)
        if uc.refit != "never" and far.sum() >= uc.min_theme_size:
            spread = _typical_spread(old_dist, old_themes, k)
            found = propose_themes(X[far], C, spread, min_size=uc.min_theme_size, max_new=uc.max_new_themes, seed=cfg.seed, neighbors=15)
            C_new, proposal = found.centroids, found.info
        elif uc.refit != "never":
            proposal = {"decision": f"{int(far.sum())} far documents: fewer than update.min_theme_size ({uc.min_theme_size}) for a new theme"}
        C_all = np.concatenate([C, C_new]) if len(C_new) else C
        control.report(2, 3)
        themes = np.concatenate([old_themes, np.zeros(len(X), np.int64)])
        distances = np.concatenate([old_dist, np.zeros(len(X), np.float32)])
        refit: dict[str, Any] = {}
        if uc.refit == "always":
            C_all, themes, distances, refit = _refit(grown, X, C_all, cfg.kmeans.max_iter, cfg.kmeans.tol, control)
        elif len(X):
            themes[len(old_themes) :], distances[len(old_themes) :] = nearest(X, C_all)
        # new documents beyond the cut-off of the existing theme they were put in (no new theme took
        # them): flagged, and kept out of that theme's labels, which they would otherwise rename
        t_new, d_new = themes[len(old_themes) :], distances[len(old_themes) :]
        forced = (t_new < k) & (d_new > cut[np.minimum(t_new, k - 1)]) if len(X) else np.zeros(0, dtype=bool)
        before = grown.arrays.get("far_from_theme")
        far_from_theme = np.concatenate([before if before is not None else np.zeros(len(old_themes), dtype=bool), forced])
        ctx.store.save_arrays(
            "assign", "result", centroids=C_all.astype(np.float32), themes=themes, distances=distances, far=far, cutoffs=cut, far_from_theme=far_from_theme
        )
        control.report(3, 3)
        if drift["drift"] and not len(C_new):
            log.warning(
                "update: %.0f%% of the new documents are far from every theme (more than update.drift_share = %.0f%%) but form no "
                "theme as tight as the existing ones (%s); theme-engine run over the whole corpus would refit",
                100 * drift["far_share"], 100 * uc.drift_share, proposal.get("decision"),
            )  # fmt: skip
        moved = int((themes[: len(old_themes)] != old_themes).sum())
        return {
            "device": "cpu",
            "refit": uc.refit,
            "far_quantile": uc.far_quantile,
            "drift": drift,
            "proposal": proposal,
            "themes_before": int(k),
            "new_themes": int(len(C_all) - k),
            "existing_moved": moved,
            "far_in_existing_themes": int(forced.sum()),
            **refit,
        }


def _typical_spread(distances: np.ndarray, themes: np.ndarray, k: int) -> float:
    """The median, over the themes, of the median distance of a theme's documents to its centroid."""
    order = np.argsort(themes, kind="stable")
    bounds = np.searchsorted(themes[order], np.arange(k + 1))
    meds = [float(np.median(distances[order[bounds[t] : bounds[t + 1]]])) for t in range(k) if bounds[t + 1] > bounds[t]]
    return float(np.median(meds)) if meds else float("inf")


def _refit(grown: Grown, X: np.ndarray, C: np.ndarray, max_iter: int, tol: float, control: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """``--refit always``: Lloyd iterations over every document (the run's, the updates', the new
    ones) from the centroids ``C`` (the existing themes', then the new ones), so theme t stays
    theme t; costs a pass over the corpus per iteration."""

    def blocks() -> Any:
        yield from grown.iter_vectors()
        if len(X):
            yield grown.n_vectors, X

    n = grown.n_vectors + len(X)
    it = 0
    shift = float("inf")
    for it in range(1, max_iter + 1):  # noqa: B007 (the count is returned)
        sums = np.zeros(C.shape, dtype=np.float64)
        counts = np.zeros(len(C), dtype=np.int64)
        for _, block in blocks():
            lab, _ = nearest(block, C)
            np.add.at(sums, lab, block)
            counts += np.bincount(lab, minlength=len(C))
            control.check()
        C_next = C.copy()
        filled = counts > 0
        C_next[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
        shift = float(np.abs(C_next - C).max())
        C = C_next
        if shift <= tol:
            break
    themes = np.empty(n, dtype=np.int64)
    distances = np.empty(n, dtype=np.float32)
    for start, block in blocks():
        themes[start : start + len(block)], distances[start : start + len(block)] = nearest(block, C)
    return C, themes, distances, {"refit_iterations": it, "refit_converged": shift <= tol}


class UpdateDedup(Stage):
    """Near-duplicates that involve a new document, with a full run's threshold, lexical rule,
    keep policy and evidence; the existing documents' decisions stay."""

    name = "dedup"

    def fingerprint(self, ctx: RunContext) -> str:
        dc = ctx.cfg.dedup
        return fingerprint("update-dedup", ctx.fp("embed"), ctx.fp("assign") if dc.keep == "central" else "", ctx.cfg.stage_fingerprint_part("dedup"))

    def load(self, ctx: RunContext) -> dict[str, np.ndarray]:
        return ctx.store.load_arrays("dedup", "result")

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, dc = ctx.cfg, ctx.cfg.dedup
        grown: Grown = ctx.product("grown")
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
        else:  # the first update: partitions of the existing rows (a sample fits them; routing is one pass)
            P = min(dc.partitions or default_n_partitions(n_old), n_old)
            rng = np.random.default_rng(cfg.seed + 1)
            sample_rows = np.sort(rng.choice(n_old, size=min(n_old, max(32 * P, 10_000)), replace=False))
            P_c = partition_centroids(grown.vectors(sample_rows), P, seed=cfg.seed)
            routes = None
            for start, block in grown.iter_vectors():
                r = route(block, P_c, dc.spill, margin=margin, offset=start)
                routes = r if routes is None else routes.concat(r)
                control.check()
        route_s = time.perf_counter() - t0
        control.report(1, 3)
        t0 = time.perf_counter()
        if m:
            threads = max(1, min(os.cpu_count() or 1, cfg.ray.num_cpus or os.cpu_count() or 1))
            (pi, pj, ps), R_new = new_pairs(
                grown.vectors, routes, X, n_old, P_c, rule.search, margin, dc.spill,
                batch_rows=dc.batch_rows, n_jobs=threads, check=control.check, cap=rule.cap,
            )  # fmt: skip
        else:
            pi, pj, ps = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
            R_new = Routes(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, bool), 0, len(P_c), 0, margin, dc.spill)
        search_s = time.perf_counter() - t0
        control.report(2, 3)
        unique = _grown_unique(grown, docs)
        chain = _grown_chain(grown, ctx)
        top = A.get("candidate_top") if lexical else None
        fetch = words = None
        texts_read = [0]
        if lexical:
            from .stages.dedup import _text_fetcher_over, _word_index_over  # noqa: PLC0415

            keep = cap_candidates(pi, pj, ps, rule.threshold, rule.neighbors, existing_top=top)
            if top is None:
                log.info("dedup: the run kept no candidate lists (made before updates): new pairs are capped on their own side only")
            pi, pj, ps = pi[keep], pj[keep], ps[keep]
            below = ps < rule.threshold
            docs_below = np.unique(np.concatenate([pi[below], pj[below]]))
            words = _word_index_over(chain, unique, docs_below, control, rule.words_needed)
            fetch = _text_fetcher_over(chain, unique, control, texts_read)
        # the pairs left are capped already, counting the existing candidates: a second cap, without
        # them, would keep every one of them
        capped = np.ones(pi.size, dtype=bool) if lexical else None
        hp = hybrid_pairs(pi, pj, ps, rule.threshold, rule.candidate, words, fetch, rule.max_edits, rule.min_words, rule.neighbors, None, capped)
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
        wt = whole_text_pass(ctx, control, hp, fetch, chain, unique, lengths, rows_of, _Clock(), [0], texts_read, existing, n_old)
        hp, fetch = wt.pairs, wt.fetch
        # keep order: every existing document first, the new ones by the run's policy among themselves
        km_dist = ctx.product("assign")["distances"][n_old:]
        new_rank = keep_rank(dc.keep, m, lengths=docs.corpus.lengths[docs.unique], distances=km_dist)
        new_order = n_old + np.argsort(new_rank, kind="stable")
        all_i = np.concatenate([A["pairs_i"], hp.i])
        all_j = np.concatenate([A["pairs_j"], hp.j])
        all_s = np.concatenate([A["pairs_sim"], hp.cos])
        all_k = np.concatenate([A["pairs_kind"], hp.kind])
        rank = np.empty(n, dtype=np.int64)
        rank[:n_old] = np.arange(n_old)
        rank[new_order] = n_old + np.arange(m)
        if dc.grouping == "ranked":
            dup, sim = extend_ranked(A["duplicate_of"], A["similarity"], n_old, hp.i, hp.j, hp.cos, new_order)
        group, n_groups = pair_groups(n, all_i, all_j, rank)
        if dc.grouping == "components":
            dup, sim = _extend_components(A["duplicate_of"], A["similarity"], n_old, group, rank, grown, X)
        new_dup = np.full(n, -1, dtype=np.int64)
        new_dup[n_old:] = dup[n_old:]
        ev = duplicate_evidence(new_dup, hp, fetch, rule.max_edits, rule.min_words)
        arrays_jac: dict[str, np.ndarray] = {}
        if wt.jaccard is not None:
            old_jac = A["text_jaccard"] if "text_jaccard" in A else np.full(n_old, np.nan, dtype=np.float32)
            arrays_jac = {"text_jaccard": np.concatenate([old_jac, link_jaccard(new_dup, fetch, wt.jaccard)[n_old:]]), **wt.arrays}
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
            "threshold": rule.threshold,
            "lexical": lexical,
            **({"candidate_threshold": rule.candidate} if lexical else {}),
            "keep": dc.keep,
            "grouping": dc.grouping,
            "method": "partitioned (new rows routed into the existing rows' partitions)",
            "partitions": int(len(P_c)),
            "margin": round(margin, 6),
            "exact": rule.exact(routes.n_capped + R_new.n_capped),
            "route_seconds": round(route_s, 3),
            "search_seconds": round(search_s, 3),
            "texts_read": texts_read[0],
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


def _extend_components(
    duplicate_of: np.ndarray, similarity: np.ndarray, n_old: int, group: np.ndarray, rank: np.ndarray, grown: Grown, X: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``components`` grouping for new documents: each new document in a group is a duplicate of
    the group's best-ranked kept document (an existing one when the group has one, the first in
    input order; existing decisions stay, so a group a new document joins may keep two)."""
    n = len(group)
    dup = np.full(n, -1, dtype=np.int64)
    sim = np.full(n, np.nan, dtype=np.float32)
    dup[:n_old], sim[:n_old] = duplicate_of[:n_old], similarity[:n_old]
    kept_old = np.flatnonzero((group[:n_old] >= 0) & (duplicate_of[:n_old] < 0))
    best: dict[int, int] = {}
    for r in kept_old[np.argsort(rank[kept_old], kind="stable")].tolist():
        best.setdefault(int(group[r]), r)
    new_rows = np.flatnonzero(group[n_old:] >= 0) + n_old
    for r in new_rows[np.argsort(rank[new_rows], kind="stable")].tolist():
        g = int(group[r])
        if g not in best:
            best[g] = r
        elif best[g] != r:
            dup[r] = best[g]
    linked = np.flatnonzero(dup[n_old:] >= 0) + n_old
    if linked.size:
        a = X[linked - n_old]
        reps = dup[linked]
        b = np.empty_like(a)
        old = reps < n_old
        if old.any():
            order = np.argsort(reps[old])
            got = grown.vectors(reps[old][order])
            b[np.flatnonzero(old)[order]] = got
        b[~old] = X[reps[~old] - n_old]
        sim[linked] = np.einsum("ij,ij->i", a, b)
    return dup, sim


class UpdateLabel(Stage):
    """Every theme labelled again from its grown membership (the same sample rule and vectoriser
    as a run), new themes with them; the hierarchy over all."""

    name = "label"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-label", ctx.fp("assign"), ctx.fp("dedup"), ctx.cfg.stage_fingerprint_part("label"))

    def load(self, ctx: RunContext) -> dict[str, Any]:
        return {"themes": ctx.store.load_json("label", "themes"), "hierarchy": ctx.store.load_json("label", "hierarchy")}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        grown: Grown = ctx.product("grown")
        docs: Documents = ctx.product("read")
        control = ctx.control("label")
        control.report(0, 1)
        asg, dd = ctx.product("assign"), ctx.product("dedup")
        corpus = _grown_corpus(grown, docs)
        unique = _grown_unique(grown, docs)
        chain = _grown_chain(grown, ctx)
        k_old = len(grown.arrays["centroids"])
        clusters = {c: t["theme"] for t in grown.themes for c in t.get("merged_from", [t["theme"]])}
        n_clusters = max(clusters, default=-1) + 1
        mapping = np.asarray([clusters.get(c, -1) for c in range(n_clusters)], dtype=np.int64)
        extra = len(asg["centroids"]) - k_old
        mapping = np.concatenate([mapping, k_old + np.arange(extra)]).astype(np.int64)
        kept = dd["duplicate_of"] < 0
        named_by = kept & ~asg["far_from_theme"]  # far documents forced into a theme do not name it
        theme_list, hierarchy, info = label_themes(
            ctx.cfg, corpus, unique, chain, asg["themes"], asg["distances"], asg["centroids"], kept, mapping, labelled=named_by
        )
        ctx.store.save_json("label", "themes", theme_list)
        ctx.store.save_json("label", "hierarchy", hierarchy)
        control.report(1, 1)
        before = {t["theme"]: t["label"] for t in grown.themes}
        renamed = sum(1 for t in theme_list if t["theme"] in before and before[t["theme"]] != t["label"])
        return {"device": "cpu", "themes": len(theme_list), "relabelled": renamed, **info}


def _grown_unique(grown: Grown, docs: Documents) -> np.ndarray:
    """Corpus rows of the embedded documents, the run's then the new ones: the arrays' rows."""
    return np.concatenate([grown.unique, len(grown.corpus.ids) + docs.unique])


def _grown_chain(grown: Grown, ctx: RunContext) -> DocChain:
    """The stored documents of the run, its updates and this one."""
    return DocChain([*(p.docs for p in grown.parts), ctx.store.dir("read") / "docs.parquet"])


def _grown_corpus(grown: Grown, docs: Documents) -> Corpus:
    new = docs.corpus
    return Corpus(
        ids=grown.corpus.ids + new.ids,
        sources=grown.corpus.sources + new.sources,
        texts=None,
        status=grown.corpus.status + new.status,
        exact_of=np.concatenate([grown.corpus.exact_of, new.exact_of]),
        bad=grown.corpus.bad + new.bad,
        lengths=np.concatenate([grown.corpus.lengths, new.lengths]),
    )


class UpdateLayout(Stage):
    """The new documents on the run's map, each at the weighted mean of its nearest documents of
    the map's fitted sample (as a run places the documents outside its sample)."""

    name = "layout"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-layout", ctx.fp("embed"), ctx.fp("assign"), ctx.product("grown").token)

    def load(self, ctx: RunContext) -> np.ndarray | None:
        return ctx.store.load_arrays("layout", "result")["coords"] if ctx.store.has("layout", "result") else None

    def run(self, ctx: RunContext) -> dict[str, Any]:
        grown: Grown = ctx.product("grown")
        if grown.layout_sample is None or "coords" not in grown.arrays:
            return {"device": "none", "skipped": "the run has no map"}
        from theme_engine.engine.layout import place, place_groups  # noqa: PLC0415

        X = np.asarray(ctx.product("embed"), dtype=np.float32)
        sample = grown.layout_sample
        xy = place(grown.vectors(sample), grown.arrays["coords"][sample], X) if len(X) else np.zeros((0, 2), np.float32)
        # a new theme's documents would each sit beside the old document nearest them, scattered
        # over the map: they get a place of their own, as one group
        themes_new = ctx.product("assign")["themes"][grown.n_vectors :]
        fresh = themes_new >= len(grown.arrays["centroids"])
        if fresh.any():
            xy[fresh] = place_groups(grown.arrays["coords"], X[fresh], themes_new[fresh], xy[fresh])
        ctx.store.save_arrays("layout", "result", coords=np.concatenate([grown.arrays["coords"], xy]).astype(np.float32))
        return {"device": "cpu", "placed": int(len(X)), "sample_size": int(len(sample)), "new_theme_documents": int(fresh.sum())}


class UpdateWrite(Stage):
    """The grown run's outputs, staged in the update's ``out/`` folder (moved into OUT at commit)."""

    name = "write"
    always_runs = True

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("update-write", ctx.fp("label"), ctx.fp("layout"))

    def load(self, ctx: RunContext) -> dict[str, int]:
        return self.counts

    def run(self, ctx: RunContext) -> dict[str, Any]:
        grown: Grown = ctx.product("grown")
        docs: Documents = ctx.product("read")
        asg, dd, label = ctx.product("assign"), ctx.product("dedup"), ctx.product("label")
        staging = ctx.result_dir  # the grown result's generation, published at the commit
        corpus = _grown_corpus(grown, docs)
        unique = _grown_unique(grown, docs)
        self.counts = write_outputs(
            staging, corpus, unique, asg["themes"], asg["distances"], dd, label["themes"], hierarchy=label["hierarchy"], coords=ctx.product("layout"),
            far_from_theme=asg["far_from_theme"],
        )  # fmt: skip
        # the run's bad records are listed in its manifest only up to read.max_bad_examples: count them from there
        self.counts["bad_records"] = int(grown.manifest.get("bad_records", {}).get("count", 0)) + len(docs.corpus.bad)
        write_model(staging, asg["centroids"], model_ref(ctx.cfg.embed, ctx.records["embed"].get("model", "")))
        moved = np.flatnonzero(asg["themes"][: grown.n_vectors] != grown.arrays["themes"])  # a refit's: re-indexed
        grown_arrays = {
            "themes": asg["themes"], "distances": asg["distances"], "centroids": asg["centroids"], "moved": moved,
            "far_from_theme": asg["far_from_theme"],
            **dd,
            **({"coords": ctx.product("layout")} if ctx.product("layout") is not None else {}),
        }  # fmt: skip
        tmp = ctx.store.root / "grown.tmp.npz"
        np.savez(tmp, **grown_arrays)
        os.replace(tmp, ctx.store.root / GROWN_FILE)
        return {"device": "cpu", **self.counts}


def grow_index(out: Path, grown: Grown, qdrant_url: str | None, whole: bool = False) -> dict[str, Any]:
    """After an update's commit: its new documents, and the documents whose theme it changed (a
    refit), upserted into the run's search index (Qdrant Edge in OUT, or the server collection)
    from the committed state. Idempotent: a stop before it finishes leaves the index without
    them (never ahead of the outputs), and the next update does it again first. ``whole``: the
    index made afresh from every document of the result (``theme-engine index``)."""
    from theme_engine.engine.index import INDEX_DIR, IndexUnavailable, open_index  # noqa: PLC0415

    record = grown.manifest.get("stages", {}).get("index") or {}
    A = grown.arrays
    first = 0 if whole else grown.n_vectors - len(grown.vector_blocks()[-1])  # the last part's embedded rows
    rows = np.union1d(A["moved"] if "moved" in A and not whole else np.zeros(0, np.int64), np.arange(first, grown.n_vectors))
    url = None
    if record.get("backend") == "server":
        url = qdrant_url or os.environ.get("QDRANT_URL")
        if not url:
            raise RunError(f"the run's index is on a Qdrant server (collection {record['collection']}): pass --qdrant-url")
    t0 = time.perf_counter()
    try:
        if whole:
            if url is None:
                shutil.rmtree(Path(out) / INDEX_DIR, ignore_errors=True)
            dim = int(grown.vector_blocks()[0].shape[1])
            index = open_index(out, url, record.get("collection"), dim=dim, create=True, exact=record.get("search") == "exact")
        else:
            index = open_index(out, url, record.get("collection"))
    except IndexUnavailable as exc:
        raise RunError(str(exc)) from None
    unique, ids, chars = grown.unique, grown.corpus.ids, int(record.get("excerpt_chars", 300))
    try:
        for doc_rows, texts in grown.docs.iter_texts(unique[rows]):
            pos = np.searchsorted(unique, doc_rows)
            dup = A["duplicate_of"][pos]
            payloads = [
                {"row": int(r), "id": ids[r], "theme": int(A["themes"][p]), "kept": int(d < 0), "duplicate_of": int(unique[d]) if d >= 0 else -1, "text": t[:chars]}
                for r, p, d, t in zip(doc_rows.tolist(), pos.tolist(), dup.tolist(), texts)
            ]
            index.add(doc_rows, grown.vectors(pos), payloads)
        index.finish()
        points = index.count()
    finally:
        index.close()
    return {"device": "cpu", "seconds": round(time.perf_counter() - t0, 3), "backend": record.get("backend"), "upserted": int(len(rows)), "points": points}


def rebuild_index(out: Path, qdrant_url: str | None = None) -> dict[str, Any]:
    """The search index of the result in ``out`` made again from its stored vectors and outputs
    (the run's and every update's), under the folder's lock; the published manifest's index
    record says so. What to run when the index is damaged or partly deleted, grown folder or not."""
    out = Path(out)
    try:
        lock = OutLock(out, advice="then run theme-engine index again").acquire()
    except OutputBusy as exc:
        raise RunError(str(exc)) from None
    try:
        grown = load_grown(out)
        if (grown.manifest.get("stages", {}).get("index") or {}).get("points") is None:
            raise RunError(f"the run in {out} has no search index (index.enabled was false): run theme-engine run again with it on")
        record = grow_index(out, grown, qdrant_url, whole=True)
        if record["points"] != grown.n_vectors:
            raise RunError(f"the rebuilt index of {out} holds {record['points']} documents, the result {grown.n_vectors}")
        current = committed_updates(out)
        if current and current["updates"][-1].get("index") == "pending":
            current["updates"][-1]["index"] = "done"
            save_committed_updates(out, current)
        manifest = json.loads(result_file(out, "manifest.json").read_text())
        manifest["stages"]["index"] = {**manifest["stages"]["index"], "points": record["points"], "rebuilt": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(result_file(out, "manifest.json"), manifest)
        return record
    finally:
        lock.release()


# ----------------------------------------------------------------------------- the update


UPDATE_PIPELINE: tuple[type[Stage], ...] = (UpdateRead, UpdateEmbed, Assign, UpdateDedup, UpdateLabel, UpdateLayout, UpdateWrite)


@dataclass
class UpdateResult:
    out: Path
    manifest: dict[str, Any]
    entry: dict[str, Any]  # this update's record in the manifest's ``updates``
    nothing_new: bool = False


def update_config(out: Path, inputs: list[Path], overrides: dict[str, Any] | None = None) -> RunConfig:
    """The run's own settings (its manifest's config) with the update's inputs and ``overrides``
    (the reading, where and how to run, the update's own section)."""
    manifest_path = Path(out) / "manifest.json"
    if not manifest_path.is_file():
        raise RunError(f"{out} holds no finished theme-engine run (no manifest.json): run theme-engine run INPUT... --out {out} first")
    values = json.loads(output_path(Path(out), "manifest.json").read_text())["config"]
    # the environment beats the run's recorded settings in the sections an update may change, as
    # it beats a TOML file for a run (THEME_ENGINE_CACHE__DIR=…): flag > environment > the run's
    for section in UPDATE_SECTIONS:
        for key in list(values.get(section) or {}):
            if f"THEME_ENGINE_{section}__{key}".upper() in {k.upper() for k in os.environ}:
                del values[section][key]
    for section, key in (("cache", "qdrant_url"), ("ray", "address")):
        if "***" in str(values.get(section, {}).get(key) or ""):
            values[section][key] = None  # redacted in the manifest: pass it again
    if values.get("ray", {}).get("address") is None:
        values.setdefault("ray", {})["address"] = os.environ.get("RAY_ADDRESS") or None
    if values.get("cache", {}).get("qdrant_url") is None:
        values.setdefault("cache", {})["qdrant_url"] = os.environ.get("QDRANT_URL") or None
    from theme_engine.engine.config import deep_merge  # noqa: PLC0415

    # a run made before long texts were embedded as windows truncated them: its new documents must too
    values.setdefault("embed", {}).setdefault("long", "truncate")
    # and one made before boilerplate was left out of long texts read them whole
    values["embed"].setdefault("boilerplate_share", 0.0)
    values = deep_merge(values, overrides or {})
    values["inputs"] = [str(p) for p in inputs]
    values["out"] = str(out)
    values["force"] = True
    return load_config(values)


class Updater:
    """Runs one update of ``cfg.out`` (holding its lock), then commits it."""

    def __init__(self, cfg: RunConfig, stop: threading.Event | None = None, sink: Callable[[str, int, int], None] | None = None,
                 on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.stop = stop or threading.Event()
        self.sink = sink
        self.on_stage = on_stage

    def run(self) -> UpdateResult:
        from . import ray_session
        from .driver import Driver, OutputInUse

        try:
            lock = OutLock(self.out, advice="then run the update again (nothing of it was done)").acquire()
        except OutputBusy as exc:
            raise OutputInUse(str(exc)) from None
        t_start = time.perf_counter()
        started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            grown = load_grown(self.out)
            if grown.vector_input:
                raise RunError(
                    f"the run in {self.out} was made from precomputed vectors: new texts cannot be embedded the way they were; "
                    "run theme-engine run over all of the vectors instead"
                )
            self._finish_index(grown)  # an earlier update stopped after its commit, before its documents were indexed
            generation = grown.generation + 1
            folder = f"{generation:04d}"
            root = updates_root(self.out) / folder
            # the driver's stage loop (reuse, records, fall-backs) over this update's own store
            driver = Driver(self.cfg, self.stop, self.sink, self.on_stage, pipeline=UPDATE_PIPELINE, store=StageStore(self.out, root))
            driver.ctx.products["grown"] = grown
            connection = ray_session.connect(self.cfg.ray)
            driver.ctx.ray = connection.record()
            try:
                driver.run_stage(driver.stages[0])
                read = driver.ctx.records["read"]
                if not read.get("documents"):
                    shutil.rmtree(root, ignore_errors=True)  # nothing to commit: no folder of it stays behind
                    raise NothingNew(self._nothing_new(read))
                for stage in driver.stages[1:]:
                    driver.run_stage(stage)
            finally:
                driver.ctx.close()
                if connection.started:
                    import ray

                    ray.shutdown()
            result = self._commit(driver.ctx, grown, generation, folder, time.perf_counter() - t_start, started_at)
            self._finish_index(load_grown(self.out), result)
            return result
        finally:
            lock.release()

    def _finish_index(self, grown: Grown, result: UpdateResult | None = None) -> None:
        """The last committed update's documents into the search index, when it still lacks them;
        its record (in ``current.json`` and the manifest's history) then says ``indexed``."""
        current = committed_updates(self.out)
        if not current or current["updates"][-1].get("index") != "pending":
            return
        if result is None:
            log.info("update %d was committed but its documents not yet indexed: indexing them first", grown.generation)
        record = grow_index(self.out, grown, self.cfg.cache.qdrant_url)
        current["updates"][-1]["index"] = "done"
        # the published generation's record and manifest say so (rewritten in place, each atomically)
        save_committed_updates(self.out, current)
        manifest = json.loads(result_file(self.out, "manifest.json").read_text())
        manifest["updates"][-1]["stages"]["index"] = record
        atomic_write_json(result_file(self.out, "manifest.json"), manifest)
        if result is not None:
            result.manifest, result.entry = manifest, manifest["updates"][-1]

    def _nothing_new(self, read: dict[str, Any]) -> str:
        names = ", ".join(str(p) for p in self.cfg.inputs)
        return (
            f"nothing new in {names}: {read.get('present', 0)} documents are already in {self.out}"
            + (f", {read.get('id_conflicts', 0)} reuse an id with another text" if read.get("id_conflicts") else "")
            + (f", {read.get('bad', 0) - read.get('id_conflicts', 0)} other bad records" if read.get("bad", 0) > read.get("id_conflicts", 0) else "")
            + "; the run is unchanged"
        )

    def _commit(self, ctx: RunContext, grown: Grown, generation: int, folder: str, seconds: float, started_at: str) -> UpdateResult:
        from theme_engine.engine.report import render_report  # noqa: PLC0415

        from .state import file_digest  # noqa: PLC0415

        staging = ctx.result_dir
        records = ctx.records
        counts = ctx.product("write")
        asg = records["assign"]
        index_record = grown.manifest.get("stages", {}).get("index") or {}
        indexed = bool(index_record) and not index_record.get("skipped")
        entry = {
            "generation": generation,
            "started": started_at,
            "seconds": round(seconds, 3),
            "inputs": [{"name": f.name, "digest": file_digest(f.path)} for f in ctx.product("read").files],
            "refit": asg["refit"],
            "read": {k: records["read"].get(k, 0) for k in ("documents", "present", "id_conflicts", "exact_of_existing", "exact_duplicate", "bad", "ok")},
            "ray": ctx.ray,
            "embedded": records["embed"].get("embedded", 0),
            **({"long_texts": records["embed"]["long_texts"]} if records["embed"].get("long_texts") else {}),
            "drift": asg["drift"],
            "proposal": asg["proposal"],
            "themes_before": asg["themes_before"],
            "new_themes": asg["new_themes"],
            "existing_moved": asg["existing_moved"],
            "far_in_existing_themes": asg.get("far_in_existing_themes", 0),
            "near_duplicates": {k: records["dedup"][k] for k in ("new_pairs", "cross_pairs", "new_near_duplicates", "new_duplicates_of_existing", "exact")},
            "relabelled": records["label"].get("relabelled", 0),
            "stages": {
                **{name: {k: v for k, v in rec.items() if k in ("seconds", "reused", "device", "skipped")} for name, rec in records.items()},
                "index": {"pending": True} if indexed else {"skipped": "the run has no search index"},
            },
        }
        manifest = dict(grown.manifest)
        manifest["documents"] = counts
        manifest["themes"] = len(ctx.product("label")["themes"])
        manifest["bad_records"] = {"count": counts["bad_records"], "examples": (ctx.product("read").corpus.bad + grown.corpus.bad)[: self.cfg.read.max_bad_examples]}  # this update's first
        manifest["updates"] = [*grown.manifest.get("updates", []), entry]
        manifest["update_config"] = public_config(self.cfg)["update"]
        if self.cfg.report.enabled and (self.out / "report.html").exists():
            chain = _grown_chain(grown, ctx)
            render_report(staging, manifest=manifest, max_points=self.cfg.report.max_points, seed=self.cfg.seed, excerpt_chars=self.cfg.report.excerpt_chars, stored=chain, folder=self.out.resolve().name)
        atomic_write_json(staging / "manifest.json", manifest)
        current = committed_updates(self.out) or {"generation": 0, "updates": []}
        read_dir = Path(folder) / "read"
        vectors = Path(folder) / "embed" / "vectors.npy"
        current = {
            "generation": generation,
            "updates": [
                *current["updates"],
                {
                    "dir": folder,
                    "docs": str(read_dir / "docs.parquet"),
                    "keys": str(read_dir / "keys.npz"),
                    "vectors": str(vectors),
                    "fingerprint": ctx.fp("write"),
                    "index": "pending" if indexed else "none",
                },
            ],
        }
        # the commit: the generation holds the outputs and the record of its updates, published in one
        # rename (a report the update did not render is not in it: the page of before would mislead)
        atomic_write_json(staging / UPDATES_RECORD, current)
        publish(self.out, staging)
        _tidy(updates_root(self.out), folder, current["updates"])
        log.info("update %d of %s committed in %.1f s", generation, self.out, seconds)
        return UpdateResult(self.out, manifest, entry)


def _tidy(root: Path, folder: str, updates: list[dict[str, Any]]) -> None:
    """After a commit, keep of each update what later ones read: its documents, keys and vectors,
    and the latest one's corpus-wide arrays; its stages' own arrays (each as large as the corpus)
    and the emptied staging folder go."""
    for stage in ("assign", "dedup", "label", "layout", "write", "index", "out"):
        shutil.rmtree(root / folder / stage, ignore_errors=True)
    for u in updates[:-1]:
        (root / u["dir"] / GROWN_FILE).unlink(missing_ok=True)


def update(cfg: RunConfig, stop: threading.Event | None = None, sink: Callable[[str, int, int], None] | None = None,
           on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> UpdateResult:  # fmt: skip
    return Updater(cfg, stop, sink, on_stage).run()


def _describe_ray(record: dict[str, Any]) -> str:
    from .ray_session import describe  # noqa: PLC0415  (as the update's own connect: Ray is imported when used)

    return describe(record)


def _verdict(drift: dict[str, Any]) -> str:
    verdict = drift.get("verdict") or ("yes" if drift.get("drift") else "no")
    return f"too few new documents to tell (p = {drift['p_value']:.2g})" if verdict == "too few to tell" else verdict


def update_summary(result: UpdateResult) -> str:
    e, m = result.entry, result.manifest
    r, nd, dr = e["read"], e["near_duplicates"], e["drift"]
    lines = [
        f"update {e['generation']} of {result.out}: {r['documents']} new documents ({r.get('present', 0)} already present, "
        f"{r.get('id_conflicts', 0)} id conflicts, {r.get('bad', 0) - r.get('id_conflicts', 0)} other bad records); {e['embedded']} embedded",
        f"duplicates: {r.get('exact_duplicate', 0)} exact ({r.get('exact_of_existing', 0)} of existing documents), "
        f"{nd['new_near_duplicates']} near ({nd['new_duplicates_of_existing']} of existing documents, {nd['cross_pairs']} pairs across)",
        f"far from every theme: {dr['far']} of {dr['new']} ({100 * dr['far_share']:.1f}%); drift (above {100 * dr['share_threshold']:.0f}%, "
        f"p < {dr.get('alpha', 0.01)}): {_verdict(dr)}; refit {e['refit']}: {e['proposal'].get('decision', '')}",
        *(
            [f"{e['far_in_existing_themes']} far documents put in existing themes: flagged far_from_theme in documents.parquet, not used to name them"]
            if e.get("far_in_existing_themes")
            else []
        ),
        f"{m['themes']} themes ({e['new_themes']:+d}), {e['relabelled']} relabelled; {m['documents']['input']} documents in all; {e['seconds']:.1f} s",
        *([_describe_ray(e["ray"])] if e.get("ray") else []),
    ]
    return "\n".join(lines)


__all__ = ["UPDATE_KEYWORDS", "UPDATE_SECTIONS", "NothingNew", "UPDATE_PIPELINE", "UpdateResult", "Updater", "load_grown", "update", "update_config", "update_summary"]

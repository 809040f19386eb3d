"""Near-duplicates: every pair with cosine >= threshold (exact, FAISS range search), then groups
and one kept document per duplicate set by a named policy.

Grouping (``DedupConfig.grouping``):
  * ``ranked`` (default) — documents are walked in keep order (the policy's ranking); each one
    that matches an already-kept document at or above the threshold becomes a duplicate of the
    best such match, otherwise it is kept. Every removed document is within the threshold of its
    kept representative, so natural near-neighbours cannot chain distinct documents together
    (the SemDeDup / NeMo Curator scheme).
  * ``components`` — union-find connected components of the pair graph; one kept per component.
    Simple, but chains of near-neighbours can merge distinct documents into one group.

Groups (reported in ``duplicates.parquet``) are always the connected components.

Evidence (:func:`hybrid_pairs`): a pair is a near-duplicate when its cosine is at or above
``threshold`` (kind ``near``; the exact search guarantees every such pair), or — with the lexical
rule on — when its cosine is at or above ``candidate_threshold`` and its two texts are *light
edits* of each other: a few typos, dropped, inserted or swapped words, but no word replaced by a
different one (kind ``lexical``; ``engine.lexical``). The search runs at the candidate threshold,
so every candidate pair is found exactly as well; texts are compared for the candidates only.
Embeddings move more than one expects under such edits (MiniLM puts a copy with 2-3 typos of a
Bible verse below cosine 0.9 half the time), while distinct documents with a high cosine (the
next verse, another package's description from the same template) differ by replaced words.
``bench/dedup_quality.py`` measures both rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .deps import require
from .device import CPU, Device, gpu_errors
from .events import NULL_CONTROL, StageControl
from .partition import range_index

if TYPE_CHECKING:
    from .candidates import Screened
    from .lexical import WordIndex

# evidence kinds of a pair (``pairs_kind`` in the dedup stage's arrays, ``kind`` in duplicates.parquet)
# (fuzzy: whole-text shingle Jaccard decided it, for pairs involving a text longer than the model's
# window, engine.fuzzy)
KIND_NONE, KIND_NEAR, KIND_LEXICAL, KIND_FUZZY = 0, 1, 2, 3
KIND_NAMES = {KIND_NONE: "", KIND_NEAR: "near", KIND_LEXICAL: "lexical", KIND_FUZZY: "fuzzy"}


def _faiss() -> Any:
    # heavy import, only where needed; a clear MissingDependency when neither extra is installed
    return require("faiss")


def range_pairs(
    Q: np.ndarray,
    q_offset: int,
    B: np.ndarray,
    b_offset: int,
    threshold: float,
    batch_rows: int = 4096,
    control: StageControl = NULL_CONTROL,
    device: Device = CPU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, cos) with cos >= threshold between rows of ``Q`` and ``B`` (global ids
    ``q_offset + row``, ``b_offset + row``), keeping only ``i < j``. Exact (flat inner product:
    FAISS range search on CPU, its k-NN emulation on a cuda ``device``, which raises
    ``GpuUnavailable`` when the GPU cannot serve — see ``engine.partition.range_index``)."""
    if device.kind != "cuda":
        return _range_pairs(Q, q_offset, B, b_offset, threshold, batch_rows, control, device)
    with gpu_errors("near-duplicate search on GPU"):
        return _range_pairs(Q, q_offset, B, b_offset, threshold, batch_rows, control, device)


def _range_pairs(
    Q: np.ndarray,
    q_offset: int,
    B: np.ndarray,
    b_offset: int,
    threshold: float,
    batch_rows: int,
    control: StageControl,
    device: Device,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _faiss()  # a clear MissingDependency when neither extra is installed
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    B = np.ascontiguousarray(B, dtype=np.float32)
    index = range_index(B.shape[1], device, batch_rows)
    index.add(B)
    out_i, out_j, out_s = [], [], []
    for start in range(0, Q.shape[0], batch_rows):
        control.check()
        lims, sims, ids = index.range(Q[start : start + batch_rows], threshold)
        rows = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(lims.astype(np.int64))) + start + q_offset
        cols = ids.astype(np.int64) + b_offset
        keep = (rows < cols) & (sims >= threshold)
        out_i.append(rows[keep])
        out_j.append(cols[keep])
        out_s.append(sims[keep])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(out_i).astype(np.int64), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)


def brute_force_pairs(X: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Reference: every (i, j), i < j, with x_i . x_j >= threshold, from the exact products
    (a block of rows against the rows after them at a time)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    out: set[tuple[int, int]] = set()
    for a in range(0, len(X), 2048):
        S = X[a : a + 2048] @ X[a:].T  # row a + r against row a + c
        r, c = np.nonzero(S >= threshold)
        keep = c > r
        out.update(zip((a + r[keep]).tolist(), (a + c[keep]).tolist()))
    return out


@dataclass(frozen=True)
class DedupRule:
    """What decides a near-duplicate, derived once from the ``dedup`` settings
    (:meth:`from_settings`) and used by the run's dedup stage, an update's and the evidence code:
    the cosine ``threshold``; the lexical rule's ``candidate`` threshold (None when the rule is off
    or the input has no texts) and its edits, words and neighbours; the routing ``margin``."""

    threshold: float
    candidate: float | None
    max_edits: int
    min_words: int
    neighbors: int
    margin: float
    lexical_note: str = ""  # why the lexical rule is off, when it is

    @classmethod
    def from_settings(cls, dc: Any, has_texts: bool) -> "DedupRule":
        """The rule of a ``DedupConfig``; the lexical rule needs texts (precomputed vectors
        without a text column have none)."""
        from .partition import safe_margin  # noqa: PLC0415

        lexical = bool(dc.lexical and has_texts)
        note = "" if lexical else ("off (dedup.lexical = false)" if not dc.lexical else "unavailable: the input has vectors but no texts")
        return cls(
            threshold=float(dc.threshold),
            candidate=float(dc.candidate_threshold) if lexical else None,
            max_edits=int(dc.lexical_max_edits),
            min_words=int(dc.lexical_min_words),
            neighbors=int(dc.lexical_neighbors),
            margin=float(dc.margin) if dc.margin is not None else safe_margin(dc.threshold),
            lexical_note=note,
        )

    @property
    def lexical(self) -> bool:
        return self.candidate is not None

    @property
    def search(self) -> float:
        """The cosine the pair search must reach (:func:`search_threshold`)."""
        return search_threshold(self.threshold, self.candidate)

    @property
    def cap(self) -> tuple[float, int] | None:
        """Below ``cap[0]`` the search keeps only each row's ``cap[1]`` nearest pairs (the lexical
        rule's candidates), or None when it keeps every pair it finds."""
        return (self.threshold, self.neighbors) if self.candidate is not None and self.candidate < self.threshold else None

    @property
    def edit_args(self) -> tuple[int, int, bool]:
        """``engine.lexical.light_edits``' arguments after the texts: max edits, min words, and
        that the pairs were screened."""
        return self.max_edits, self.min_words, True

    @property
    def words_needed(self) -> int:
        """Words a text must have to be a light edit of another (``min_words`` + ``max_edits``)."""
        return self.min_words + self.max_edits

    def exact(self, capped_rows: int, threshold: float | None = None) -> bool:
        """Whether a partitioned search found every pair at ``threshold`` (the rule's by default):
        no row had more boundaries near than it could spill to, and the margin is safe."""
        from .partition import safe_margin  # noqa: PLC0415

        return capped_rows == 0 and self.margin >= safe_margin(self.threshold if threshold is None else threshold)

    def record(self) -> dict[str, Any]:
        """The rule as a stage records it in the manifest."""
        if not self.lexical:
            return {"threshold": self.threshold, "lexical": False, "lexical_note": f"lexical evidence {self.lexical_note}; the cosine rule alone"}
        return {
            "threshold": self.threshold,
            "lexical": True,
            "candidate_threshold": self.candidate,
            "lexical_max_edits": self.max_edits,
            "lexical_min_words": self.min_words,
            "lexical_neighbors": self.neighbors,
        }


def search_threshold(threshold: float, candidate_threshold: float | None) -> float:
    """The cosine the pair search must reach: the candidate threshold when the lexical rule is on
    (``candidate_threshold`` given; never above ``threshold``), else ``threshold``."""
    if candidate_threshold is None:
        return float(threshold)
    return float(min(threshold, candidate_threshold))


# (texts a, texts b, max_edits, min_words, screened) -> int8 light edits per pair, -1 for none:
# engine.lexical.light_edits, or a stand-in that runs it elsewhere
EditsFn = Callable[[Sequence[str], Sequence[str], int, int, bool], np.ndarray]
# (texts a, texts b, max_edits, min_words) -> (float32 character 3-gram Jaccard, int8 light edits)
# per pair: engine.lexical.pair_evidence, or a stand-in that runs it elsewhere
EvidenceFn = Callable[[Sequence[str], Sequence[str], int, int], tuple[np.ndarray, np.ndarray]]
# (documents a, documents b) -> int8 light edits per pair (-1 for none), with the texts read by
# whoever answers (the cluster's tasks read them where they run)
EditsAt = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class HybridPairs:
    """The near-duplicate pairs :func:`hybrid_pairs` accepts, in the order given."""

    i: np.ndarray  # int64
    j: np.ndarray  # int64
    cos: np.ndarray  # float32
    kind: np.ndarray  # int8: KIND_NEAR, KIND_LEXICAL or KIND_FUZZY
    candidates: int  # pairs examined (cosine >= the search threshold)
    lexical_checked: int  # pairs below the cosine threshold, among each document's nearest, screened
    lexical_compared: int  # of those, pairs whose texts were compared word by word

    @property
    def counts(self) -> dict[str, int]:
        return {
            "candidate_pairs": self.candidates,
            "lexical_checked": self.lexical_checked,
            "lexical_compared": self.lexical_compared,
            "near_pairs": int((self.kind == KIND_NEAR).sum()),
            "lexical_pairs": int((self.kind == KIND_LEXICAL).sum()),
            "fuzzy_pairs": int((self.kind == KIND_FUZZY).sum()),
        }


def _float_key(x: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float32 values ``x`` (no NaN; -0.0 counts as 0.0)."""
    u = (np.asarray(x, dtype=np.float32) + np.float32(0.0)).view(np.uint32).astype(np.uint64)
    return np.where(u >> np.uint64(31), u ^ np.uint64(0xFFFFFFFF), u | np.uint64(0x80000000))


def order_by_doc_then_cos(a: np.ndarray, s: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``np.lexsort((b, -s, a))``: by document ``a``, then cosine ``s`` descending, then (with
    ``b``) by the other document. One argsort of a 64-bit key (several times faster than lexsort
    on millions of pairs), the few ties of ``a`` and ``s`` then ordered by ``b``; lexsort itself for
    ids outside ``[0, 2**32)`` or a NaN cosine."""
    a = np.asarray(a, dtype=np.int64)
    s = np.asarray(s, dtype=np.float32)
    if a.size == 0 or a.min() < 0 or a.max() >= 2**32 or np.isnan(s).any():
        return np.lexsort((-s, a)) if b is None else np.lexsort((b, -s, a))
    key = (a.astype(np.uint64) << np.uint64(32)) | _float_key(-s)
    order = np.argsort(key)
    if b is None:
        return order
    k = key[order]
    tie = np.flatnonzero(k[1:] == k[:-1])
    if tie.size:  # runs of equal keys, each ordered by b in place
        at = np.unique(np.concatenate([tie, tie + 1]))
        sub = order[at]
        order[at] = sub[np.lexsort((sub, np.asarray(b)[sub], k[at]))]  # then by position, as lexsort is stable
    return order


def cap_candidates(
    pi: np.ndarray, pj: np.ndarray, cos: np.ndarray, threshold: float, neighbors: int, existing_top: np.ndarray | None = None
) -> np.ndarray:
    """Which pairs to keep: every pair at or above ``threshold``, and of the pairs below it those
    among the ``neighbors`` most similar below-threshold pairs of either document (ties: the
    smaller other id first). Bounds the candidates to ``neighbors`` per document, whatever the
    density of the corpus; applying it to any superset of a document's pairs keeps its own
    choice, so a partition can apply it before the merge.

    ``existing_top`` ((m, neighbors), ``engine.update.top_candidates``): documents ``0 .. m-1``
    also have below-threshold pairs that are not given (among themselves, in an update), whose
    best cosines these are; they rank ahead of a given pair at the same or a lower cosine (their
    other document has the smaller id)."""
    if neighbors < 1:
        raise ValueError(f"neighbors must be >= 1, got {neighbors}")
    pi, pj = np.asarray(pi, dtype=np.int64), np.asarray(pj, dtype=np.int64)
    cos = np.asarray(cos, dtype=np.float32)
    keep = cos >= np.float32(threshold)
    below = np.flatnonzero(~keep)
    if below.size == 0:
        return keep
    a = np.concatenate([pi[below], pj[below]])
    b = np.concatenate([pj[below], pi[below]])
    s = np.concatenate([cos[below], cos[below]])
    which = np.concatenate([below, below])
    order = order_by_doc_then_cos(a, s, b)
    a, s, which = a[order], s[order], which[order]
    start = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    rank = np.arange(a.size) - np.repeat(start, np.diff(np.r_[start, a.size]))
    if existing_top is not None:
        old = a < len(existing_top)
        rank[old] += (existing_top[a[old]] >= s[old, None]).sum(axis=1)
    keep[which[rank < neighbors]] = True
    return keep


def hybrid_pairs(
    pi: np.ndarray,
    pj: np.ndarray,
    cos: np.ndarray,
    threshold: float,
    candidate_threshold: float | None = None,
    words: "WordIndex | None" = None,
    fetch: Callable[[np.ndarray], Mapping[int, str]] | None = None,
    max_edits: int = 3,
    min_words: int = 8,
    neighbors: int = 16,
    edits: "EditsFn | None" = None,
    capped: np.ndarray | None = None,
    edits_at: "EditsAt | None" = None,
) -> HybridPairs:
    """The near-duplicates among candidate pairs ``(pi, pj, cos)`` — every pair at or above
    :func:`search_threshold`, as the search returns them: ``KIND_NEAR`` where ``cos >= threshold``;
    else ``KIND_LEXICAL`` where ``cos >= candidate_threshold``, the pair is among the
    ``neighbors`` nearest below-threshold pairs of one of its documents (:func:`cap_candidates`),
    and the two texts are light edits of each other (``engine.lexical.light_edit`` with
    ``max_edits``, ``min_words``).

    ``words`` holds the word multisets of (at least) every document in a pair below
    ``threshold``; the pairs it cannot rule out have their texts compared, read through
    ``fetch(sorted document ids) -> {id: text}`` (called once) and compared by ``edits``
    (:func:`engine.lexical.light_edits` by default; the cluster passes one that spreads the pairs
    over Ray tasks), or by ``edits_at(docs_a, docs_b)`` when given (light edits as int8, -1 for
    none; the cluster's reads the texts where its tasks run). ``capped``: the
    :func:`cap_candidates` mask of these pairs when the caller has it already. Without ``words``,
    ``fetch`` or ``edits_at``, or ``candidate_threshold``, the cosine rule alone applies."""
    pi = np.asarray(pi, dtype=np.int64)
    pj = np.asarray(pj, dtype=np.int64)
    cos = np.asarray(cos, dtype=np.float32)
    if not (pi.shape == pj.shape == cos.shape) or pi.ndim != 1:
        raise ValueError(f"pi, pj and cos disagree: {pi.shape}, {pj.shape}, {cos.shape}")
    kind = np.where(cos >= np.float32(threshold), KIND_NEAR, KIND_NONE).astype(np.int8)
    checked = compared = 0
    if words is not None and (fetch is not None or edits_at is not None) and candidate_threshold is not None:
        cand = (kind == KIND_NONE) & (cos >= np.float32(candidate_threshold))
        cand &= cap_candidates(pi, pj, cos, threshold, neighbors) if capped is None else capped
        idx = np.flatnonzero(cand)
        checked = int(idx.size)
        idx = idx[words.screen(pi[idx], pj[idx], max_edits, min_words)]
        compared = int(idx.size)
        kind[idx[_light_edit_pairs(pi[idx], pj[idx], fetch, max_edits, min_words, edits, edits_at)]] = KIND_LEXICAL
    keep = kind != KIND_NONE
    return HybridPairs(pi[keep], pj[keep], cos[keep], kind[keep], int(pi.size), checked, compared)


def _light_edit_pairs(
    pi: np.ndarray, pj: np.ndarray, fetch: "Callable[[np.ndarray], Mapping[int, str]] | None", max_edits: int, min_words: int,
    edits: "EditsFn | None", edits_at: "EditsAt | None" = None,
) -> np.ndarray:
    """Which of the screened pairs ``(pi, pj)`` are light edits: ``edits_at(pi, pj)`` when given
    (the cluster's reads the texts where its tasks run), else their texts (read through
    ``fetch``, once) compared by ``edits`` (``engine.lexical.light_edits`` by default)."""
    from .lexical import light_edits  # noqa: PLC0415

    if pi.size == 0:
        return np.zeros(0, dtype=bool)
    if edits_at is not None:
        return np.asarray(edits_at(pi, pj)) >= 0
    if fetch is None:
        raise ValueError("comparing texts needs fetch or edits_at")
    texts = fetch(np.unique(np.concatenate([pi, pj])))
    found = (edits or light_edits)([texts[x] for x in pi.tolist()], [texts[x] for x in pj.tolist()], max_edits, min_words, True)
    return np.asarray(found) >= 0


def screened_pairs(screened: "Screened", threshold: float, edits_at: "EditsAt") -> HybridPairs:
    """:func:`hybrid_pairs`' result from pairs capped and screened elsewhere
    (``engine.candidates``): the near pairs, and the screened pairs that ``edits_at`` finds light
    edits, in pair order, with the counts of every pair examined."""
    near_i, near_j, near_s = screened.near
    ci, cj, cs = screened.compare
    lex = np.asarray(edits_at(ci, cj)) >= 0 if ci.size else np.zeros(0, dtype=bool)
    i, j, s = np.concatenate([near_i, ci[lex]]), np.concatenate([near_j, cj[lex]]), np.concatenate([near_s, cs[lex]])
    order = np.lexsort((j, i))
    i, j, s = i[order], j[order], s[order]
    kind = np.where(s >= np.float32(threshold), KIND_NEAR, KIND_LEXICAL).astype(np.int8)
    return HybridPairs(i, j, s, kind, screened.candidates, screened.checked, screened.compared)


def pair_lookup(pi: np.ndarray, pj: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each (a[k], b[k]) in either order, its position in the pair list (pi, pj), or -1."""
    pi, pj = np.asarray(pi, dtype=np.int64), np.asarray(pj, dtype=np.int64)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    out = np.full(lo.size, -1, dtype=np.int64)
    if pi.size == 0 or lo.size == 0:
        return out
    m = int(max(pi.max(), pj.max(), hi.max())) + 1
    if m > 2**31:
        raise ValueError(f"document ids up to {m} do not fit the pair key")
    key = np.minimum(pi, pj) * m + np.maximum(pi, pj)
    order = np.argsort(key, kind="stable")
    key = key[order]
    q = lo * m + hi
    pos = np.minimum(np.searchsorted(key, q), key.size - 1)
    ok = (key[pos] == q) & (lo >= 0)
    out[ok] = order[pos[ok]]
    return out


def duplicate_evidence(
    duplicate_of: np.ndarray,
    pairs: HybridPairs,
    fetch: Callable[[np.ndarray], Mapping[int, str]] | None = None,
    max_edits: int = 3,
    min_words: int = 8,
    evidence: "EvidenceFn | None" = None,
    evidence_at: Callable[[np.ndarray, np.ndarray, int, int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Per document, the evidence linking it to its kept document (``duplicate_of``):
    ``kind`` (int8: the kind of that pair; ``KIND_NEAR`` for a link through a chain of pairs,
    which only ``grouping="components"`` makes), ``lexical_similarity`` (float32 Jaccard of
    character 3-grams) and ``edits`` (int8 light edits; -1 where the texts are no light edit of
    each other) — both from the texts read through ``fetch`` (nan / -1 without it), computed by
    ``evidence`` (:func:`engine.lexical.pair_evidence` by default; the cluster passes one that
    spreads the pairs over Ray tasks), or with ``fetch``, by ``evidence_at(docs, kept_docs,
    max_edits, min_words)`` (the cluster's reads the texts where its tasks run, so they never pass
    through the caller). ``KIND_NONE`` / nan / -1 for kept documents."""
    from .lexical import pair_evidence  # noqa: PLC0415

    dup = np.asarray(duplicate_of, dtype=np.int64)
    n = dup.size
    kind = np.zeros(n, dtype=np.int8)
    lexical = np.full(n, np.nan, dtype=np.float32)
    counted = np.full(n, -1, dtype=np.int8)
    m = np.flatnonzero(dup >= 0)
    if m.size == 0:
        return {"kind": kind, "lexical_similarity": lexical, "edits": counted}
    r = dup[m]
    pos = pair_lookup(pairs.i, pairs.j, m, r)
    kind[m] = np.where(pos >= 0, pairs.kind[np.maximum(pos, 0)], KIND_NEAR) if pairs.i.size else KIND_NEAR
    if fetch is not None and evidence_at is not None:
        lexical[m], counted[m] = evidence_at(m, r, max_edits, min_words)
    elif fetch is not None:
        texts = fetch(np.unique(np.concatenate([m, r])))
        ta, tb = [texts[int(x)] for x in m], [texts[int(x)] for x in r]
        lexical[m], counted[m] = (evidence or pair_evidence)(ta, tb, max_edits, min_words)
    return {"kind": kind, "lexical_similarity": lexical, "edits": counted}


@dataclass
class DedupResult:
    duplicate_of: np.ndarray  # int64, -1 where the document is kept
    similarity: np.ndarray  # float32 cosine to the kept representative, nan where kept
    group: np.ndarray  # int64 connected-component id, -1 for documents in no pair
    n_pairs: int
    n_groups: int


def keep_rank(policy: str, n: int, lengths: Sequence[int] | None = None, distances: np.ndarray | None = None) -> np.ndarray:
    """Position of each document in keep order (0 is kept first) for a named policy."""
    order_idx = np.arange(n)
    if policy == "first":
        order = order_idx
    elif policy == "longest":
        if lengths is None:
            raise ValueError("keep='longest' needs the document texts")
        order = np.lexsort((order_idx, -np.asarray(lengths)))
    elif policy == "central":
        if distances is None:
            raise ValueError("keep='central' needs the distances to the theme centroids")
        order = np.lexsort((order_idx, np.asarray(distances)))
    else:
        raise ValueError(f"unknown keep policy {policy!r}; use first, longest or central")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return rank


def walk_ranked(
    order: np.ndarray, bounds: np.ndarray, b: np.ndarray, s: np.ndarray, rank: np.ndarray,
    kept: np.ndarray, duplicate_of: np.ndarray, similarity: np.ndarray,
) -> None:  # fmt: skip
    """The ranked walk, in place: each document of ``order`` (keep order) whose pairs (``b``, ``s``
    at ``bounds[m]:bounds[m + 1]``, sorted by document) reach a kept document ranked before it is a
    duplicate of the most similar one, else kept."""
    for m in np.asarray(order, dtype=np.int64).tolist():
        lo, hi = bounds[m], bounds[m + 1]
        nb, ns = b[lo:hi], s[lo:hi]
        ok = kept[nb] & (rank[nb] < rank[m])
        if ok.any():
            best = int(np.argmax(np.where(ok, ns, -np.inf)))
            duplicate_of[m] = nb[best]
            similarity[m] = ns[best]
        else:
            kept[m] = True


def group_duplicates(
    n: int,
    pi: np.ndarray,
    pj: np.ndarray,
    sims: np.ndarray,
    rank: np.ndarray,
    grouping: str = "ranked",
    vectors: np.ndarray | None = None,
) -> DedupResult:
    """Decide which documents are kept, given all pairs at or above the threshold."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    duplicate_of = np.full(n, -1, dtype=np.int64)
    similarity = np.full(n, np.nan, dtype=np.float32)
    group = np.full(n, -1, dtype=np.int64)
    if len(pi) == 0:
        return DedupResult(duplicate_of, similarity, group, 0, 0)
    graph = coo_matrix((np.ones(len(pi), dtype=np.int8), (pi, pj)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[pi] = True
    in_pair[pj] = True
    # number the groups by their best-ranked member, so ids are stable and dense
    members = np.flatnonzero(in_pair)
    comps = comp[members]
    firsts = {}
    for m in members[np.argsort(rank[members], kind="stable")]:
        firsts.setdefault(int(comp[m]), len(firsts))
    group[members] = np.array([firsts[int(c)] for c in comps], dtype=np.int64)

    if grouping == "components":
        best = {}
        for m in members:
            c = int(comp[m])
            if c not in best or rank[m] < rank[best[c]]:
                best[c] = m
        reps = np.array([best[int(comp[m])] for m in members], dtype=np.int64)
        dup = members != reps
        duplicate_of[members[dup]] = reps[dup]
        if vectors is not None:
            similarity[members[dup]] = np.einsum("ij,ij->i", vectors[members[dup]], vectors[reps[dup]])
        else:
            sim_of = {(min(a, b), max(a, b)): s for a, b, s in zip(pi.tolist(), pj.tolist(), sims.tolist())}
            for m, r in zip(members[dup].tolist(), reps[dup].tolist()):
                similarity[m] = sim_of.get((min(m, r), max(m, r)), np.nan)
    elif grouping == "ranked":
        # adjacency (both directions) with similarities, walked in keep order
        a = np.concatenate([pi, pj])
        b = np.concatenate([pj, pi])
        s = np.concatenate([sims, sims])
        order = np.lexsort((b, a))
        a, b, s = a[order], b[order], s[order]
        bounds = np.searchsorted(a, np.arange(n + 1))
        kept = np.zeros(n, dtype=bool)
        walk_ranked(members[np.argsort(rank[members], kind="stable")], bounds, b, s, rank, kept, duplicate_of, similarity)
    else:
        raise ValueError(f"unknown grouping {grouping!r}; use ranked or components")
    return DedupResult(duplicate_of, similarity, group, int(len(pi)), int(len(firsts)))

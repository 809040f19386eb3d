"""Duplicates of long texts decided on whole-text evidence, and the fuzzy (MinHash) candidates.

A sentence-embedding model reads a text's first window of tokens only (or, with windows, pools
them): two long texts that share an opening — a banner, a disclaimer, a template's header — get
a cosine near 1.0 however different their bodies. So a pair in which either text is longer than
the model's window (:class:`engine.windows.TextWindows`) is a duplicate only when the Jaccard
similarity of the two *whole* texts' shingle sets (``engine.minhash``: 24-character shingles of
the folded text) reaches :attr:`WholeTextRule.threshold`; a light edit of the whole text
(``engine.lexical``) is whole-text evidence too. Pairs of two texts within the window keep the
cosine and light-edit rules unchanged.

Copies the embedding cannot see (the same body under another header, footer or disclaimer)
come from a third candidate source: MinHash LSH over every text that may be longer than the
window, each candidate confirmed by its exact Jaccard before it counts (kind ``fuzzy``).

Everything here asks about pairs of documents through callables (``verdicts``: whether a pair
has a long text, and its whole-text Jaccard; :func:`fetched_verdicts` answers from texts in this
process), so the cluster can answer with Ray tasks that read the texts where they run, and the
engine stays Ray-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .dedup import KIND_FUZZY, KIND_NEAR, HybridPairs, pair_lookup
from .minhash import MinHashParams, band_keys, candidate_pairs, jaccard, signatures

Fetch = Callable[[np.ndarray], Mapping[int, str]]
# (documents a, documents b) -> per pair: whether either text is longer than the model's window
# (bool), and the whole-text shingle Jaccard of the pairs that have one (float32, nan elsewhere)
Verdicts = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# (documents, kept documents) -> float32 whole-text shingle Jaccard per pair
JaccardAt = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class WholeTextRule:
    """What a pair involving a long text needs, and how the fuzzy candidates are found."""

    threshold: float = 0.6  # whole-text shingle Jaccard at or above which such a pair is a duplicate
    params: MinHashParams = field(default_factory=MinHashParams)
    fuzzy: bool = True  # MinHash LSH candidates over the long texts


@dataclass
class LongPairCheck:
    """The near pairs a long text takes part in, with their whole-text verdicts."""

    checked: int = 0  # near pairs involving a long text
    confirmed: int = 0  # of those, whole-text Jaccard at or above the threshold
    rejected: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return {"long_pairs_checked": self.checked, "long_pairs_confirmed": self.confirmed, "long_pairs_rejected": self.rejected}


def remembered(is_long: Callable[[list[str]], np.ndarray]) -> Callable[[list[str]], np.ndarray]:
    """``is_long`` that tokenizes each distinct text once, however often it is asked about."""
    seen: dict[str, bool] = {}

    def ask(texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in seen]
        if todo:
            seen.update(zip(todo, np.asarray(is_long(todo), dtype=bool).tolist()))
        return np.array([seen[t] for t in texts], dtype=bool)

    return ask


def long_pair_jaccard(
    a: Sequence[str], b: Sequence[str], is_long: Callable[[list[str]], np.ndarray], params: MinHashParams
) -> tuple[np.ndarray, np.ndarray]:
    """Per text pair ``(a[p], b[p])``: whether either text is long (``is_long``: the model's
    ``TextWindows.is_long``), and the two whole texts' shingle Jaccard where one is (nan
    elsewhere). Each distinct text is tokenized once."""
    ask = remembered(is_long)
    with_long = ask(list(a)) | ask(list(b)) if len(a) else np.zeros(0, dtype=bool)
    jac = np.full(len(a), np.nan, dtype=np.float32)
    idx = np.flatnonzero(with_long)
    if idx.size:
        jac[idx] = jaccard([a[k] for k in idx.tolist()], [b[k] for k in idx.tolist()], params)
    return with_long, jac


def fetched_verdicts(fetch: Fetch, is_long: Callable[[list[str]], np.ndarray], params: MinHashParams) -> Verdicts:
    """:data:`Verdicts` from texts read through ``fetch`` into this process."""

    def verdicts(docs_a: np.ndarray, docs_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        texts = fetch(np.unique(np.concatenate([docs_a, docs_b])))
        return long_pair_jaccard([texts[int(x)] for x in docs_a], [texts[int(x)] for x in docs_b], is_long, params)

    return verdicts


def check_long_pairs(
    hp: HybridPairs, rule: WholeTextRule, verdicts: Verdicts, maybe_long: np.ndarray | None = None
) -> tuple[HybridPairs, LongPairCheck]:
    """``hp`` with each cosine pair (``KIND_NEAR``) that involves a long text kept only when its
    whole texts agree (it becomes ``KIND_FUZZY``: the Jaccard decided it); light-edit pairs are
    whole-text evidence already and stay. ``maybe_long`` (bool per document): the documents that
    may be long (by their length in characters); only the pairs with one are asked about."""
    near = np.flatnonzero(hp.kind == KIND_NEAR)
    check = LongPairCheck()
    if maybe_long is not None:
        maybe = np.asarray(maybe_long, dtype=bool)
        near = near[maybe[hp.i[near]] | maybe[hp.j[near]]]
    if near.size == 0:
        return hp, check
    with_long, jac = verdicts(hp.i[near], hp.j[near])
    involved, jac = near[with_long], jac[with_long]
    check.checked = int(involved.size)
    ok = jac >= np.float32(rule.threshold)
    check.confirmed, check.rejected = int(ok.sum()), int((~ok).sum())
    kind = hp.kind.copy()
    kind[involved[ok]] = KIND_FUZZY
    keep = np.ones(hp.i.size, dtype=bool)
    keep[involved[~ok]] = False
    return replace(hp, i=hp.i[keep], j=hp.j[keep], cos=hp.cos[keep], kind=kind[keep]), check


@dataclass
class FuzzyPairs:
    """Pairs the MinHash candidates added, confirmed by their whole-text Jaccard."""

    i: np.ndarray  # int64, i < j
    j: np.ndarray
    jaccard: np.ndarray  # float32
    candidates: int = 0  # LSH candidate pairs
    confirmed: int = 0  # of those, Jaccard at or above the threshold with a long text among the two

    @property
    def counts(self) -> dict[str, int]:
        return {"fuzzy_candidates": self.candidates, "fuzzy_confirmed": self.confirmed}


def confirm_candidates(ci: np.ndarray, cj: np.ndarray, rule: WholeTextRule, verdicts: Verdicts) -> FuzzyPairs:
    """The LSH candidates ``(ci, cj)`` whose exact whole-text Jaccard reaches the rule's threshold
    and in which at least one text is longer than the window (two texts within it are judged by
    the embedding and the light-edit rule, as before)."""
    ci, cj = np.asarray(ci, dtype=np.int64), np.asarray(cj, dtype=np.int64)
    empty = FuzzyPairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), int(ci.size), 0)
    if ci.size == 0:
        return empty
    with_long, jac = verdicts(ci, cj)
    ok = with_long & (jac >= np.float32(rule.threshold))  # nan (no long text) is never at it
    return FuzzyPairs(ci[ok], cj[ok], jac[ok].astype(np.float32), empty.candidates, int(ok.sum()))


def merge_fuzzy(hp: HybridPairs, fz: FuzzyPairs, cos: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> HybridPairs:
    """``hp`` and the confirmed fuzzy pairs it lacks (``KIND_FUZZY``, with their cosine from
    ``cos(i, j)``); a pair in both keeps its ``hp`` kind."""
    if fz.i.size == 0:
        return hp
    new = pair_lookup(hp.i, hp.j, fz.i, fz.j) < 0
    fi, fj = fz.i[new], fz.j[new]
    if fi.size == 0:
        return hp
    return replace(
        hp,
        i=np.concatenate([hp.i, fi]),
        j=np.concatenate([hp.j, fj]),
        cos=np.concatenate([hp.cos, np.asarray(cos(fi, fj), dtype=np.float32)]),
        kind=np.concatenate([hp.kind, np.full(fi.size, KIND_FUZZY, dtype=np.int8)]),
    )


def link_jaccard(duplicate_of: np.ndarray, jaccard_at: JaccardAt) -> np.ndarray:
    """Per document, the whole-text shingle Jaccard with the document it is a duplicate of
    (float32; nan where it is kept), computed by ``jaccard_at(docs, kept_docs)``."""
    dup = np.asarray(duplicate_of, dtype=np.int64)
    out = np.full(dup.size, np.nan, dtype=np.float32)
    m = np.flatnonzero(dup >= 0)
    if m.size:
        out[m] = jaccard_at(m, dup[m])
    return out


def whole_text_local(hp: HybridPairs, texts: Sequence[str], vectors: np.ndarray, windows: Any, rule: WholeTextRule = WholeTextRule()) -> HybridPairs:
    """The whole-text rule and the fuzzy candidates over an in-memory corpus, in this process:
    what the dedup stage does with Ray tasks (benchmarks and small corpora). ``windows``: the
    model's :class:`engine.windows.TextWindows`; ``vectors``: the unit vectors, for the fuzzy
    pairs' cosine."""
    fetch = lambda docs: {int(d): texts[int(d)] for d in docs}  # noqa: E731
    verdicts = fetched_verdicts(fetch, remembered(windows.is_long), rule.params)
    maybe = np.fromiter((windows.may_be_long(t) for t in texts), dtype=bool, count=len(texts))
    hp, _ = check_long_pairs(hp, rule, verdicts, maybe)
    if not rule.fuzzy:
        return hp
    docs = np.flatnonzero(maybe)
    keys = band_keys(signatures([texts[d] for d in docs], rule.params), rule.params)
    ci, cj = candidate_pairs(keys, ids=docs)
    fz = confirm_candidates(ci, cj, rule, verdicts)
    return merge_fuzzy(hp, fz, cos=lambda i, j: np.einsum("ij,ij->i", vectors[i], vectors[j]))

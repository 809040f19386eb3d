"""Near-duplicates that survive light edits: the engine's hybrid rule (cosine, or a lower cosine
confirmed by character n-gram Jaccard) against the cosine-only rule at 0.9, on planted copies.

Evaluation sets (one per kind of text; ``bench/corpora.py`` loads them from registry packages):

| set | documents |
| --- | --- |
| ``bbc-sentences`` | the sentences (40-400 characters) of a seeded sample of BBC news articles, ~4,000 |
| ``bible`` | ~2,850 KJV verses of nine books |
| ``debian`` | ~4,000 Debian package long descriptions (~60 words) |
| ``debian-short`` | ~4,000 Debian package synopses (~6 words) |

Originals whose folded text (``engine.corpus.dedup_key``) repeats an earlier one are dropped, as
the engine's exact-duplicate step would. For every kind of edit a seeded sample of ``--per-kind``
originals (disjoint across kinds, so each original has at most one copy) gets one copy with 2-3
edits of that kind:

| edit | what one edit does |
| --- | --- |
| ``typo`` | one character inserted, deleted, substituted or two adjacent ones transposed, inside a word of 3+ letters (inserted/substituted letters are drawn from the text's own letters: no alphabet assumed) |
| ``drop`` | one word deleted (at least 3 words stay) |
| ``insert`` | one word of another document of the set inserted at a random place |
| ``swap`` | two adjacent words swapped |
| ``case-punct`` | a word's case changed, a punctuation mark added or removed, or two words joined by / split at a hyphen |
| ``mixed`` | each of the 2-3 edits of a random one of the five kinds above |

Copies are cleaned as the engine cleans texts (``engine.corpus.clean_text``). A copy whose folded
text equals its original's is an exact duplicate: the engine's read stage collapses it before
embedding, so it counts as found by both rules (column ``exact``). The other copies are embedded
with the engine's embedder (the bundled model; cached under ``bench/results/embeddings``) and the
pairs of originals + copies are found with the engine's own kernels: ``engine.dedup.range_pairs``
(exact FAISS range search over all rows, at the rule's search threshold), ``engine.lexical.NgramSets``
and ``engine.dedup.hybrid_pairs`` — the functions the dedup stage calls.

Figures per set and per kind of edit, for each rule:

  * **recall** — copies whose pair with their original is reported (exact copies count as found);
  * **precision** — of the reported pairs that involve a copy, the share that is the copy and its
    own original (a copy that also matches another document costs precision);
  * **false matches** — pairs reported among the originals themselves (distinct documents of the
    corpus: adjacent verses, other packages' descriptions, sentences of the same story), per
    1,000 originals, and as a fraction of all pairs of originals. Real corpora hold some true
    near-duplicates too (the BBC set repeats stories, Debian repeats descriptions across package
    flavours); the examples printed for the hybrid's extra pairs show which are which.

    cd /work/main && .venv/bin/python bench/dedup_quality.py              # all four sets
    cd /work/main && .venv/bin/python bench/dedup_quality.py --grid       # + the defaults' trade-off grid

Results JSON: ``bench/results/dedup_quality.json``.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _common import RESULTS, cpu_busy_percent, machine_basics, result_header, write_result

import corpora  # noqa: E402  (after _common: it puts the repository on sys.path)
from theme_engine.engine.config import DedupConfig  # noqa: E402
from theme_engine.engine.corpus import clean_text, dedup_key  # noqa: E402
from theme_engine.engine.dedup import KIND_LEXICAL, KIND_NEAR, group_duplicates, hybrid_pairs, keep_rank, range_pairs, search_threshold  # noqa: E402
from theme_engine.engine.embedding import get_model  # noqa: E402
from theme_engine.engine.fuzzy import whole_text_local  # noqa: E402
from theme_engine.engine.windows import TextWindows  # noqa: E402
from theme_engine.engine.lexical import WordIndex, char_jaccard  # noqa: E402
from theme_engine.engine.partition import default_n_partitions, partitioned_pairs, safe_margin  # noqa: E402

log = logging.getLogger("bench.dedup_quality")

SETS = ("bbc-sentences", "bible", "debian", "debian-short")
KINDS = ("typo", "drop", "insert", "swap", "case-punct", "mixed")
BASE_KINDS = KINDS[:-1]
PUNCT = ",.;:!?'"
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


# ----------------------------------------------------------------------------- sets


@dataclass
class EvalSet:
    name: str
    texts: list[str]  # originals
    ids: list[str]


def _collapse_exact(name: str, ids: list[str], texts: list[str]) -> EvalSet:
    seen: set[str] = set()
    keep_t, keep_i = [], []
    for i, t in zip(ids, texts):
        t = clean_text(t)
        k = dedup_key(t)
        if t and k not in seen:
            seen.add(k)
            keep_t.append(t)
            keep_i.append(i)
    return EvalSet(name, keep_t, keep_i)


def load_set(name: str, seed: int, bbc_sentences: int = 4000) -> EvalSet:
    if name == "bbc-sentences":
        c = corpora.load("bbc")
        order = np.random.default_rng(seed).permutation(len(c.texts))
        ids, texts = [], []
        for a in order:  # whole articles, so that adjacent sentences (hard negatives) come together
            for s_no, s in enumerate(_SENTENCE.split(c.texts[a])):
                if 40 <= len(s) <= 400:
                    ids.append(f"{c.ids[a]}#{s_no}")
                    texts.append(s)
            if len(texts) >= bbc_sentences:
                break
        return _collapse_exact(name, ids, texts)
    c = corpora.load(name)
    return _collapse_exact(name, c.ids, c.texts)


# ----------------------------------------------------------------------------- edits


def _is_word(tok: str) -> bool:
    return sum(ch.isalpha() for ch in tok) >= 3


def _typo(words: list[str], rng: random.Random, letters: str) -> bool:
    cands = [k for k, w in enumerate(words) if _is_word(w)]
    if not cands:
        return False
    k = rng.choice(cands)
    w = words[k]
    pos = [p for p, ch in enumerate(w) if ch.isalpha()]
    op = rng.choice(("insert", "delete", "substitute", "transpose"))
    p = rng.choice(pos)
    if op == "insert":
        w = w[:p] + rng.choice(letters) + w[p:]
    elif op == "delete":
        w = w[:p] + w[p + 1 :]
    elif op == "substitute":
        others = [ch for ch in letters if ch.lower() != w[p].lower()]
        if not others:
            return False
        w = w[:p] + rng.choice(others) + w[p + 1 :]
    else:
        pairs = [q for q in pos if q + 1 < len(w) and w[q + 1].isalpha() and w[q] != w[q + 1]]
        if not pairs:
            return False
        q = rng.choice(pairs)
        w = w[:q] + w[q + 1] + w[q] + w[q + 2 :]
    words[k] = w
    return True


def _drop(words: list[str], rng: random.Random) -> bool:
    if len(words) <= 3:
        return False
    del words[rng.randrange(len(words))]
    return True


def _insert(words: list[str], rng: random.Random, pool: list[str]) -> bool:
    words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return True


def _swap(words: list[str], rng: random.Random) -> bool:
    cands = [k for k in range(len(words) - 1) if words[k].casefold() != words[k + 1].casefold()]
    if not cands:
        return False
    k = rng.choice(cands)
    words[k], words[k + 1] = words[k + 1], words[k]
    return True


def _case_punct(words: list[str], rng: random.Random) -> bool:
    op = rng.choice(("case", "case", "punct", "punct", "hyphen"))
    k = rng.randrange(len(words))
    w = words[k]
    if op == "case":
        variants = {w.upper(), w.lower(), w[:1].upper() + w[1:].lower()} - {w}
        if not variants:
            return False
        words[k] = rng.choice(sorted(variants))
    elif op == "punct":
        marks = [p for p, ch in enumerate(w) if unicodedata.category(ch).startswith("P")]
        if marks and rng.random() < 0.5:
            p = rng.choice(marks)
            words[k] = w[:p] + w[p + 1 :]
        else:
            words[k] = w + rng.choice(PUNCT)
    else:
        hyphenated = [q for q, x in enumerate(words) if "-" in x.strip("-")]
        if hyphenated and rng.random() < 0.5:
            q = rng.choice(hyphenated)
            words[q : q + 1] = words[q].split("-", 1)
        elif len(words) >= 2:
            q = rng.randrange(len(words) - 1)
            words[q : q + 2] = [words[q] + "-" + words[q + 1]]
        else:
            return False
    return True


def edit(text: str, kind: str, rng: random.Random, pool: list[str]) -> tuple[str, list[str]]:
    """One copy of ``text`` with 2-3 edits of ``kind`` (``mixed``: each edit of a random kind)."""
    words = text.split()
    letters = "".join(ch for ch in text if ch.isalpha()) or "e"
    applied = []
    for _ in range(rng.choice((2, 3))):
        k = rng.choice(BASE_KINDS) if kind == "mixed" else kind
        for _attempt in range(5):
            ok = {
                "typo": lambda: _typo(words, rng, letters),
                "drop": lambda: _drop(words, rng),
                "insert": lambda: _insert(words, rng, pool),
                "swap": lambda: _swap(words, rng),
                "case-punct": lambda: _case_punct(words, rng),
            }[k]()
            if ok:
                applied.append(k)
                break
    return clean_text(" ".join(words)), applied


@dataclass
class Planted:
    set: EvalSet
    copies: list[str]
    source: np.ndarray  # original index per copy
    kind: np.ndarray  # KINDS index per copy
    exact: np.ndarray  # bool: copy folds to its original's text


def plant(es: EvalSet, per_kind: int, seed: int) -> Planted:
    rng = random.Random(f"{seed}:{es.name}")
    n = len(es.texts)
    chosen = rng.sample(range(n), min(n, per_kind * len(KINDS)))
    pool = [w for t in es.texts for w in t.split() if _is_word(w)]
    copies, source, kinds, exact = [], [], [], []
    for ki, kind in enumerate(KINDS):
        for o in chosen[ki * per_kind : (ki + 1) * per_kind]:
            c, _ = edit(es.texts[o], kind, rng, pool)
            copies.append(c)
            source.append(o)
            kinds.append(ki)
            exact.append(dedup_key(c) == dedup_key(es.texts[o]))
    return Planted(es, copies, np.array(source, np.int64), np.array(kinds, np.int64), np.array(exact, bool))


def embed(name: str, texts: list[str], long: str = "windows") -> np.ndarray:
    """Unit vectors through ``corpora.embedded`` (the engine's embedder; cached by the texts). With
    ``long="truncate"``, the texts beyond the model's window get the model's truncated vector (what
    the engine gave them before windows; the others' vectors are the same either way)."""
    lc = corpora.LabelledCorpus(name, texts, np.zeros(len(texts), np.int64), ["-"], [str(i) for i in range(len(texts))])
    X = np.array(corpora.embedded(lc), dtype=np.float32)
    if long == "truncate":
        over = np.flatnonzero(TextWindows.for_model(get_model()).is_long(texts))
        if over.size:
            sub = corpora.LabelledCorpus(name + "-long", [texts[i] for i in over], np.zeros(over.size, np.int64), ["-"], [str(i) for i in over])
            X[over] = corpora.embedded(sub, long="truncate")
    return X


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Data:
    planted: Planted
    X: np.ndarray  # originals, then the non-exact copies
    copy_row: np.ndarray  # row of each copy in X (-1 for exact copies)
    n_orig: int
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # all pairs >= the lowest cosine any rule needs
    texts: list[str]  # per row of X
    words: WordIndex


def prepare(p: Planted, lowest: float, long: str = "windows") -> Data:
    n = len(p.set.texts)
    Xo = embed(f"dq-{p.set.name}-orig", p.set.texts, long)
    keep = np.flatnonzero(~p.exact)
    Xc = embed(f"dq-{p.set.name}-copies", [p.copies[k] for k in keep], long)
    X = np.ascontiguousarray(np.vstack([Xo, Xc]), dtype=np.float32)
    copy_row = np.full(len(p.copies), -1, np.int64)
    copy_row[keep] = n + np.arange(keep.size)
    pairs = range_pairs(X, 0, X, 0, lowest)
    texts = p.set.texts + [p.copies[k] for k in keep]
    return Data(p, X, copy_row, n, pairs, texts, WordIndex.from_texts(np.arange(len(texts)), texts))


@dataclass
class Rule:
    name: str
    threshold: float
    candidate: float | None = None  # None: the cosine rule alone
    max_edits: int = 3
    min_words: int = 8
    neighbors: int = 16
    whole_text: bool = False  # and the engine's whole-text rule for texts beyond the model's window, with its fuzzy candidates


def evaluate(d: Data, rule: Rule) -> dict[str, Any]:
    """One rule on one set: the engine's pair rule and grouping, then figures per kind of edit."""
    pi, pj, ps = d.pairs
    m = ps >= search_threshold(rule.threshold, rule.candidate)
    hp = hybrid_pairs(pi[m], pj[m], ps[m], rule.threshold, rule.candidate, d.words, lambda rows: {r: d.texts[r] for r in rows.tolist()},
                      rule.max_edits, rule.min_words, rule.neighbors)
    if rule.whole_text:
        hp = whole_text_local(hp, d.texts, d.X, TextWindows.for_model(get_model()))
    n, p = d.n_orig, d.planted
    rows = d.X.shape[0]
    row_copy = np.full(rows, -1, np.int64)  # copy index of a row, -1 for originals
    row_copy[d.copy_row[d.copy_row >= 0]] = np.flatnonzero(d.copy_row >= 0)
    ci, cj = row_copy[hp.i], row_copy[hp.j]
    both_orig = (ci < 0) & (cj < 0)
    # true pair: an original and its own copy (i < j, and copies come after the originals)
    true = (ci < 0) & (cj >= 0)
    true[true] = p.source[cj[true]] == hp.i[true]
    found = np.zeros(len(p.copies), bool)
    found[cj[true]] = True
    found |= p.exact
    # what duplicates.parquet would say: ranked grouping, originals first ("first" in input order)
    res = group_duplicates(rows, hp.i, hp.j, hp.cos, keep_rank("first", rows), "ranked")
    dup = res.duplicate_of
    kept_of = np.where(dup >= 0, dup, np.arange(rows))  # an original's kept document
    crow = np.maximum(d.copy_row, 0)
    removed = (d.copy_row >= 0) & (dup[crow] >= 0)
    right = removed & (dup[crow] == kept_of[p.source])
    out: dict[str, Any] = {"per_kind": {}, "pairs": int(hp.i.size), **hp.counts}
    for ki, kind in enumerate([*KINDS, "all"]):
        sel = np.ones(len(p.copies), bool) if kind == "all" else p.kind == ki
        inv = ((ci >= 0) & sel[np.maximum(ci, 0)]) | ((cj >= 0) & sel[np.maximum(cj, 0)])
        reported = int(inv.sum())
        correct = int((inv & true).sum())
        out["per_kind"][kind] = {
            "copies": int(sel.sum()),
            "exact": int((sel & p.exact).sum()),
            "recall": float(found[sel].mean()) if sel.any() else float("nan"),
            "missed": int((sel & ~found).sum()),
            "pairs_with_copy": reported,
            "pair_precision": correct / reported if reported else float("nan"),
            "removed": int((sel & removed).sum()),
            "assigned_precision": float((sel & right).sum() / (sel & removed).sum()) if (sel & removed).any() else float("nan"),
            "found_lexical": int((inv & true & (hp.kind == KIND_LEXICAL)).sum()),
        }
    fm = int(both_orig.sum())
    out["false_matches"] = fm
    out["false_per_1000"] = 1000.0 * fm / n
    out["false_fraction"] = fm / (n * (n - 1) / 2)
    out["false_lexical"] = int((both_orig & (hp.kind == KIND_LEXICAL)).sum())
    out["originals_removed"] = int((dup[:n] >= 0).sum())
    out["_orig_pairs"] = (hp.i[both_orig], hp.j[both_orig], hp.cos[both_orig], hp.kind[both_orig])
    return out


def partitioned(d: Data, rule: Rule, n_partitions: int | None) -> dict[str, Any]:
    """The engine's partitioned search (``engine.partition.partitioned_pairs``) at the rule's
    search threshold with the engine's default margin — safe for ``rule.threshold``, not for
    the candidates — then the same rule: which of the brute-force rule's pairs it keeps."""
    t_search = search_threshold(rule.threshold, rule.candidate)
    P = n_partitions or default_n_partitions(d.X.shape[0])
    pp = partitioned_pairs(d.X, t_search, n_partitions=P, spill=None, margin=safe_margin(rule.threshold), seed=0, n_jobs=1)
    fetch = lambda rows: {r: d.texts[r] for r in rows.tolist()}  # noqa: E731
    got = hybrid_pairs(pp.i, pp.j, pp.cos, rule.threshold, rule.candidate, d.words, fetch, rule.max_edits, rule.min_words, rule.neighbors)
    pi, pj, ps = d.pairs
    m = ps >= t_search
    ref = hybrid_pairs(pi[m], pj[m], ps[m], rule.threshold, rule.candidate, d.words, fetch, rule.max_edits, rule.min_words, rule.neighbors)
    have = set(zip(got.i.tolist(), got.j.tolist()))
    out: dict[str, Any] = {"partitions": P, "guests_per_row": round(pp.n_spilled / d.X.shape[0], 3)}
    for code, name in ((KIND_NEAR, "near"), (KIND_LEXICAL, "lexical")):
        want = [(a, b) for a, b, k in zip(ref.i.tolist(), ref.j.tolist(), ref.kind.tolist()) if k == code]
        out[f"{name}_pairs"] = len(want)
        out[f"{name}_found"] = sum(p in have for p in want) / len(want) if want else float("nan")
    # copies found with their original
    p = d.planted
    ok = d.copy_row >= 0
    found = np.array([(int(o), int(r)) in have for o, r in zip(p.source[ok], d.copy_row[ok])])
    out["copy_recall"] = float((found.sum() + p.exact.sum()) / len(p.copies))
    return out


def jaccard_rule(d: Data, threshold: float, candidate: float, lexical: float) -> dict[str, Any]:
    """The alternative the issue suggests, for comparison: cosine >= threshold, or cosine >=
    ``candidate`` and character 3-gram Jaccard (``engine.lexical.char_jaccard``) >= ``lexical``."""
    pi, pj, ps = d.pairs
    m = ps >= candidate
    pi, pj, ps = pi[m], pj[m], ps[m]
    keep = ps >= threshold
    below = np.flatnonzero(~keep)
    keep[below] = char_jaccard([d.texts[k] for k in pi[below]], [d.texts[k] for k in pj[below]]) >= lexical
    pi, pj = pi[keep], pj[keep]
    p, n = d.planted, d.n_orig
    have = set(zip(pi.tolist(), pj.tolist()))
    ok = d.copy_row >= 0
    found = sum((int(o), int(r)) in have for o, r in zip(p.source[ok], d.copy_row[ok])) + int(p.exact.sum())
    return {"recall": found / len(p.copies), "false_matches": int(((pi < n) & (pj < n)).sum())}


def _fmt(x: float, digits: int = 4) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def print_set(name: str, d: Data, base: dict[str, Any], hyb: dict[str, Any]) -> None:
    n = d.n_orig
    print()
    print(f"== {name}: {n} originals, {len(d.planted.copies)} copies "
          f"({int(d.planted.exact.sum())} exact after folding), median {int(np.median([len(t) for t in d.planted.set.texts]))} chars, "
          f"{int(np.median([len(t.split()) for t in d.planted.set.texts]))} words")
    head = (f"{'edit':<10} {'copies':>6} {'exact':>5} | {'recall':>6} {'pair P':>6} {'asgn P':>6} | "
            f"{'recall':>6} {'pair P':>6} {'asgn P':>6} {'lexical':>7} {'missed':>6}")
    print(f"{'':<23}| {'cosine >= 0.9':^22} | {'hybrid':^36}")
    print(head)
    print("-" * len(head))
    for kind in [*KINDS, "all"]:
        a, b = base["per_kind"][kind], hyb["per_kind"][kind]
        print(f"{kind:<10} {a['copies']:>6} {a['exact']:>5} | {_fmt(a['recall']):>6} {_fmt(a['pair_precision']):>6} "
              f"{_fmt(a['assigned_precision']):>6} | {_fmt(b['recall']):>6} {_fmt(b['pair_precision']):>6} "
              f"{_fmt(b['assigned_precision']):>6} {b['found_lexical']:>7} {b['missed']:>6}")
    for rule, r in (("cosine >= 0.9", base), ("hybrid", hyb)):
        print(f"false matches among the {n} originals, {rule}: {r['false_matches']} pairs "
              f"({r['false_per_1000']:.2f} per 1,000 documents, {r['false_fraction']:.2e} of all pairs; "
              f"{r['false_lexical']} by lexical evidence); originals removed: {r['originals_removed']}")
    have = set(zip(*(x.tolist() for x in base["_orig_pairs"][:2])))
    hi, hj, hc, _ = hyb["_orig_pairs"]
    extra = [k for k in range(hi.size) if (int(hi[k]), int(hj[k])) not in have]
    texts = d.planted.set.texts
    for k in extra[:6]:
        print(f"  extra: cos {hc[k]:.3f}  {texts[hi[k]][:64]!r} | {texts[hj[k]][:64]!r}")


def pooled(results: list[dict[str, Any]]) -> dict[str, float]:
    alls = [r["per_kind"]["all"] for r in results]
    copies = sum(a["copies"] for a in alls)
    rem = sum(a["removed"] for a in alls)
    right = sum(a["removed"] * a["assigned_precision"] for a in alls if a["removed"])
    return {
        "recall": 1 - sum(a["missed"] for a in alls) / copies,
        "assigned_precision": right / rem if rem else float("nan"),
        "false_matches": sum(r["false_matches"] for r in results),
        "min_recall": min(a["recall"] for a in alls),
        "min_assigned_precision": min(a["assigned_precision"] for a in alls),
    }


def main() -> int:
    dc = DedupConfig()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--per-kind", type=int, default=150, help="copies per kind of edit per set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=dc.threshold, help="the cosine rule's threshold (both rules)")
    ap.add_argument("--candidate-threshold", type=float, default=dc.candidate_threshold)
    ap.add_argument("--max-edits", type=int, default=dc.lexical_max_edits)
    ap.add_argument("--min-words", type=int, default=dc.lexical_min_words)
    ap.add_argument("--neighbors", type=int, default=dc.lexical_neighbors)
    ap.add_argument("--grid", action="store_true", help="also print pooled figures over a grid of the rule's settings")
    ap.add_argument("--out", type=Path, default=RESULTS / "dedup_quality.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    header = result_header("dedup_quality", vars(args))
    machine = machine_basics() | {"cpu_busy_percent_before_start": cpu_busy_percent()}
    print(f"command: {header['command']}")
    print(f"code: {header['revision']}; engine from {header['engine_imported_from']}")
    print(f"machine: {machine['platform']}, {machine['processor']}, {machine['cpu_count']} CPUs, Python {machine['python']}, "
          f"load {machine['loadavg_1_5_15']}, CPU busy before start {machine['cpu_busy_percent_before_start']}%")
    base_rule = Rule("cosine", args.threshold)
    hyb_rule = Rule("hybrid", args.threshold, args.candidate_threshold, args.max_edits, args.min_words, args.neighbors)
    whole_rule = Rule("whole-text", args.threshold, args.candidate_threshold, args.max_edits, args.min_words, args.neighbors, True)
    print(f"rules: cosine >= {args.threshold}  vs  hybrid: cosine >= {args.threshold}, or cosine >= {args.candidate_threshold} "
          f"(each document's {args.neighbors} nearest) and <= {args.max_edits} light edits (word drops/insertions from "
          f"{args.min_words} words on)")
    print("recall: copies found with their original; pair P: share of the reported pairs with a copy that are the copy and "
          "its original; asgn P: share of the copies removed as duplicates whose kept document is their original's "
          "(ranked grouping, originals first); lexical: copies found by lexical evidence only")

    grid_c = [0.6, 0.65, 0.7, 0.75, 0.8]
    grid_w = [6, 7, 8, 9, 10, 12, 10**6]
    lowest = min(args.candidate_threshold, *grid_c) if args.grid else search_threshold(args.threshold, args.candidate_threshold)
    t0 = time.perf_counter()
    out_sets: dict[str, Any] = {}
    datas: dict[str, Data] = {}
    for name in args.sets:
        es = load_set(name, args.seed)
        p = plant(es, args.per_kind, args.seed)
        d = prepare(p, lowest, "truncate")  # the engine before long texts were judged whole
        datas[name] = d
        base = evaluate(d, base_rule)
        hyb = evaluate(d, hyb_rule)
        print_set(name, d, base, hyb)
        whole = evaluate(prepare(p, lowest, "windows"), whole_rule)  # the engine now
        over = int(TextWindows.for_model(get_model()).is_long(d.texts).sum())
        print(f"the engine now (windows pooled, whole-text rule; {over} of {len(d.texts)} texts beyond the model's window): recall "
              f"{whole['per_kind']['all']['recall']:.4f} ({whole['per_kind']['all']['recall'] - hyb['per_kind']['all']['recall']:+.4f}), "
              f"pair P {whole['per_kind']['all']['pair_precision']:.4f} ({whole['per_kind']['all']['pair_precision'] - hyb['per_kind']['all']['pair_precision']:+.4f}), "
              f"false matches {whole['false_matches']} ({whole['false_matches'] - hyb['false_matches']:+d}), fuzzy pairs {whole['fuzzy_pairs']}")
        parts = [partitioned(d, hyb_rule, P) for P in (None, 1000)]
        print("engine's partitioned search (margin safe for cosine " + f"{args.threshold}" + "): " + "; ".join(
            f"{r['partitions']} partitions ({r['guests_per_row']} guests/row): copy recall {r['copy_recall']:.4f}, "
            f"near pairs found {r['near_found']:.4f}, lexical pairs found {r['lexical_found']:.4f}" for r in parts)
            + f"  (brute force: copy recall {hyb['per_kind']['all']['recall']:.4f})")
        jac = {f"{c}/{lx}": jaccard_rule(d, args.threshold, c, lx) for c, lx in ((0.8, 0.6), (0.7, 0.7))}
        print("n-gram alternative, cosine >= 0.9 or (cosine >= c and 3-gram Jaccard >= J): " + "; ".join(
            f"c/J {k}: recall {v['recall']:.4f}, false matches {v['false_matches']} ({v['false_matches'] - base['false_matches']:+d})"
            for k, v in jac.items()))
        out_sets[name] = {
            "originals": d.n_orig,
            "copies": len(p.copies),
            "cosine_only": {k: v for k, v in base.items() if not k.startswith("_")},
            "hybrid": {k: v for k, v in hyb.items() if not k.startswith("_")},
            "hybrid_whole_text": {k: v for k, v in whole.items() if not k.startswith("_")},
            "hybrid_partitioned": parts,
            "jaccard_alternative": jac,
        }
    summary = {
        "cosine_only": pooled([out_sets[s]["cosine_only"] for s in args.sets]),
        "hybrid": pooled([out_sets[s]["hybrid"] for s in args.sets]),
    }
    print()
    for r, v in summary.items():
        print(f"pooled, {r}: recall {v['recall']:.4f} (lowest set {v['min_recall']:.4f}), assigned precision "
              f"{v['assigned_precision']:.4f} (lowest {v['min_assigned_precision']:.4f}), false matches {v['false_matches']}")
    grid = []
    if args.grid:
        base_fm = {s: out_sets[s]["cosine_only"]["false_matches"] for s in args.sets}
        print()
        print(f"grid (max edits {args.max_edits}, {args.neighbors} neighbours; min words for a drop/insertion, 10^6: none): "
              "per set, recall / false matches added to cosine 0.9's")
        print(f"{'cand':>5} {'words':>7} " + " ".join(f"{s:>20}" for s in args.sets) + f" {'pooled recall':>14}")
        for c in grid_c:
            for w in grid_w:
                res = [evaluate(datas[s], Rule("grid", args.threshold, c, args.max_edits, w, args.neighbors)) for s in args.sets]
                pr = pooled(res)
                per = {s: {"recall": r["per_kind"]["all"]["recall"], "false_matches": r["false_matches"],
                           "assigned_precision": r["per_kind"]["all"]["assigned_precision"]} for s, r in zip(args.sets, res)}
                grid.append({"candidate_threshold": c, "min_words": w, **pr, "per_set": per})
                cells = [f"{per[s]['recall']:.4f} / {per[s]['false_matches'] - base_fm[s]:+4d}" for s in args.sets]
                print(f"{c:>5.2f} {w:>7} " + " ".join(f"{x:>20}" for x in cells) + f" {pr['recall']:>14.4f}")
    seconds = time.perf_counter() - t0
    print(f"\n{seconds:.1f} s")
    write_result(args.out, header | {"machine": machine, "rules": [vars(base_rule), vars(hyb_rule)], "sets": out_sets,
                                     "summary": summary, "grid": grid, "seconds": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())

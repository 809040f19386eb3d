"""Theme labels: merge near-identical themes, c-TF-IDF keywords, representative documents.

c-TF-IDF (as in BERTopic): all documents of a theme form one class document; a term's weight in
a class is its frequency there (L1-normalised per class) times ``log(1 + A / f_t)``, with ``A`` the
average number of words per class and ``f_t`` the term's frequency over all classes.

A label names what sets a theme apart, so each weight is then gated by the term's **lift** in the
theme, ``P(theme | a document contains the term) / P(theme)``: it is multiplied by
``1 - 1/lift``, which is 0 for a term spread evenly over the themes (lift 1: "unto", "said" in
every theme), and approaches 1 as the theme owns the term; terms with lift <= 1 never lead. The
lift of each keyword is reported beside its score, and :func:`label_lift` summarises the first
keywords' lifts for the manifest.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .corpus import Corpus
from . import seeds


def merge_map(centroids: np.ndarray, sizes: np.ndarray, threshold: float) -> np.ndarray:
    """New theme number for each old theme: themes whose centroids have cosine >= ``threshold``
    are merged (transitively), and the merged themes are numbered by size, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    k = centroids.shape[0]
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = centroids / np.where(norms > 0, norms, 1.0)
    cos = unit @ unit.T
    i, j = np.nonzero(np.triu(cos >= threshold, k=1))
    _, comp = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(k, k)), directed=False)
    comp_sizes = np.bincount(comp, weights=sizes, minlength=comp.max() + 1)
    first_member = np.full(comp.max() + 1, k)
    np.minimum.at(first_member, comp, np.arange(k))
    order = np.lexsort((first_member, -comp_sizes))  # biggest first, ties by lowest old id
    new_id = np.empty_like(order)
    new_id[order] = np.arange(len(order))
    return new_id[comp]


def merged_centroids(centroids: np.ndarray, sizes: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Size-weighted mean of the centroids merged into each new theme."""
    k_new = int(mapping.max()) + 1
    out = np.zeros((k_new, centroids.shape[1]), dtype=np.float64)
    weight = np.zeros(k_new)
    w = np.maximum(sizes.astype(np.float64), 1e-12)
    np.add.at(out, mapping, centroids * w[:, None])
    np.add.at(weight, mapping, w)
    return (out / weight[:, None]).astype(np.float32)


@dataclass
class ThemeKeywords:
    keywords: list[list[str]]
    scores: list[list[float]]
    lifts: list[list[float]] = field(default_factory=list)  # P(theme | term) / P(theme) per keyword
    groups: ThemeKeywords | None = None  # the same for each group of themes asked for (``groups=``)


def _empty(n: int) -> ThemeKeywords:
    return ThemeKeywords([[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)])


# Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar, Tibetan):
# a run of them is split into overlapping character bigrams, the usual unit for indexing such
# text without a dictionary; every other script is split into words.
_UNSPACED = (
    "\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u31f0-\u31ff"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
)
_RUN = re.compile(f"[{_UNSPACED}]+")
_WORD_PATTERN = "(?<!\\w)[^\\W\\d_][\\w'-]*[^\\W_](?!\\w)"
_WORD = re.compile(_WORD_PATTERN)
_TOKEN = re.compile(f"(?P<run>[{_UNSPACED}]+)|(?P<word>{_WORD_PATTERN})")
STOP_NONE = "none"
STOP_AUTO = "auto"


class Analyzer:
    """Text to c-TF-IDF terms: lower-cased words of two or more letters (digits and underscores
    cannot start or end one) and their adjacent pairs up to ``ngram_max`` words, stop words
    removed first (as scikit-learn's CountVectorizer does); runs of a script without spaces become
    character bigrams (a single character stays as it is), never paired into n-grams."""

    def __init__(self, stop_words: frozenset[str], ngram_max: int) -> None:
        self.stop_words, self.ngram_max = stop_words, ngram_max

    def __call__(self, text: str) -> list[str]:
        text = text.lower()
        out: list[str] = []
        if _RUN.search(text) is None:  # words only (most texts): one findall, no match objects
            stop = self.stop_words
            self._ngrams([w for w in _WORD.findall(text) if w not in stop], out)
            return out
        words: list[str] = []
        for m in _TOKEN.finditer(_RUN.sub(lambda r: f" {r.group(0)} ", text)):
            run = m.group("run")
            if run is None:
                if m.group("word") not in self.stop_words:
                    words.append(m.group("word"))
                continue
            self._ngrams(words, out)
            words = []
            grams = [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]
            # a pair goes when it is a stop word or made of stop characters only: Chinese lists are
            # single characters that also occur inside content words (上海, 人民)
            out.extend(g for g in grams if g not in self.stop_words and not set(g) <= self.stop_words)
        self._ngrams(words, out)
        return out

    def _ngrams(self, words: list[str], out: list[str]) -> None:
        out.extend(words)
        if self.ngram_max >= 2:
            out.extend([a + " " + b for a, b in zip(words, words[1:])])
        for n in range(3, self.ngram_max + 1):
            out.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def stop_word_languages() -> list[str]:
    """The languages :func:`stop_words_for` knows (the ``stop-words`` package's lists)."""
    from stop_words import AVAILABLE_LANGUAGES

    return sorted(AVAILABLE_LANGUAGES)


def stop_words_for(setting: str | Sequence[str], texts: Sequence[str] = ()) -> tuple[frozenset[str], str]:
    """The stop words of ``label.stop_words`` and what they are: a language name or code
    ("english", "de", ...), ``none``, a list of words, or ``auto``: the language whose stop words
    are the largest share of the words of (a sample of) ``texts``, if that share is at least 15%
    (text in any language is about a third to a half stop words; a language that covers little is
    not the text's), else none. English uses scikit-learn's list, as labels always have."""
    if not isinstance(setting, str):
        return frozenset(w.lower() for w in setting), "custom"
    name = setting.strip().lower()
    if name == STOP_NONE:
        return frozenset(), STOP_NONE
    if name == STOP_AUTO:
        return _detect_stop_words(texts)
    return _language_stop_words(name), _language_name(name)


def _language_name(name: str) -> str:
    from stop_words import LANGUAGE_MAPPING

    return LANGUAGE_MAPPING.get(name, name)


def _language_stop_words(name: str) -> frozenset[str]:
    language = _language_name(name)
    if language == "english":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)
    from stop_words import StopWordError, get_stop_words

    try:
        return frozenset(w.lower() for w in get_stop_words(language, cache=True))
    except StopWordError:
        raise ValueError(
            f"label.stop_words: no stop words for {name!r}; use a language of {', '.join(stop_word_languages())}, "
            "'auto', 'none' or a list of words"
        ) from None


STOP_SAMPLE = 2000  # texts whose words pick the stop-word language


def stop_word_sample(n: int) -> np.ndarray:
    """Positions, among ``n`` texts, of those ``auto`` stop words are detected from (evenly
    spaced, about ``STOP_SAMPLE``): a caller holding no texts reads only these."""
    return np.arange(0, n, max(1, n // STOP_SAMPLE))


def _detect_stop_words(texts: Sequence[str]) -> tuple[frozenset[str], str]:
    counts: dict[str, int] = {}
    n_tokens = 0
    for i in stop_word_sample(len(texts)).tolist():
        text = texts[i]
        for m in _TOKEN.finditer(_RUN.sub(lambda r: f" {r.group(0)} ", text.lower())):
            for tok in [m.group("word")] if m.group("run") is None else list(m.group("run")):  # a run: its characters
                n_tokens += 1
                counts[tok] = counts.get(tok, 0) + 1
    best, best_share = STOP_NONE, 0.0
    for language in stop_word_languages():
        words = _language_stop_words(language)
        share = sum(c for t, c in counts.items() if t in words) / max(n_tokens, 1)
        if share > best_share:
            best, best_share = language, share
    if best_share < 0.15:
        return frozenset(), STOP_NONE
    return _language_stop_words(best), best


@dataclass
class TermCounts:
    """Sums over a block of documents, per theme: each term's occurrences (``counts``) and the
    documents holding it (``present``), both themes x ``vocab`` (CSR, int64), and the documents
    (``docs``). Blocks add up (:func:`merge_counts`), so a corpus's keywords are a map-reduce over
    its blocks: the label stage's tasks count the blocks where the texts are, and only these sums
    travel."""

    vocab: np.ndarray  # distinct terms (object array), in no particular order
    counts: Any
    present: Any
    docs: np.ndarray


def count_block(texts: Sequence[str], themes: np.ndarray, n_themes: int, analyzer: Any) -> TermCounts:
    """The :class:`TermCounts` of ``texts``, the ``i``-th in theme ``themes[i]``."""
    from array import array

    from scipy import sparse

    vocab: dict[str, int] = {}
    cols = array("i")
    indptr = array("q", [0])
    for text in texts:  # a term's column: the order it first occurs in
        cols.extend([vocab.setdefault(term, len(vocab)) for term in analyzer(text)])
        indptr.append(len(cols))
    n_docs = len(indptr) - 1
    themes = np.asarray(themes, dtype=np.int64)
    ptr = np.frombuffer(indptr, dtype=np.int64)
    X = sparse.csr_matrix(
        (np.ones(len(cols), dtype=np.int64), np.frombuffer(cols, dtype=np.int32) if len(cols) else np.zeros(0, np.int32), ptr),
        shape=(n_docs, len(vocab)),
    )
    X.sum_duplicates()  # documents x terms
    onehot = sparse.csr_matrix((np.ones(n_docs, dtype=np.int64), (themes, np.arange(n_docs))), shape=(n_themes, n_docs))
    held = X.copy()
    held.data[:] = 1
    words = np.empty(len(vocab), dtype=object)
    words[:] = list(vocab)
    return TermCounts(words, (onehot @ X).tocsr(), (onehot @ held).tocsr(), np.bincount(themes, minlength=n_themes).astype(np.int64))


def count_batches(batches: Iterable[tuple[np.ndarray, Sequence[str]]], themes: np.ndarray, n_themes: int, analyzer: Any) -> TermCounts:
    """The merged :class:`TermCounts` of batches of ``(rows, texts)`` (a document store's
    ``iter_texts``), their documents in theme ``themes[0], themes[1], ...`` in turn."""
    parts, done = [], 0
    for sel, texts in batches:
        parts.append(count_block(texts, themes[done : done + len(sel)], n_themes, analyzer))
        done += len(sel)
    if done != len(themes):
        raise ValueError(f"{done} texts were read for {len(themes)} documents")
    return merge_counts(parts) if parts else count_block([], themes[:0], n_themes, analyzer)


def merge_counts(parts: Sequence[TermCounts]) -> TermCounts:
    """The sum of blocks' counts, over the union of their vocabularies (in first-seen order)."""
    from scipy import sparse

    if len(parts) == 1:
        return parts[0]
    if not parts:
        raise ValueError("merge_counts needs at least one block")
    n_themes = parts[0].docs.shape[0]
    index: dict[str, int] = {}
    columns = [np.fromiter((index.setdefault(t, len(index)) for t in p.vocab), dtype=np.int64, count=len(p.vocab)) for p in parts]
    vocab = np.empty(len(index), dtype=object)
    vocab[:] = list(index)

    def total(which: str) -> Any:
        ms = [getattr(p, which).tocoo() for p in parts]
        rows = np.concatenate([m.row for m in ms])
        cols = np.concatenate([col[m.col] for m, col in zip(ms, columns)])
        return sparse.csr_matrix((np.concatenate([m.data for m in ms]), (rows, cols)), shape=(n_themes, len(vocab)))

    return TermCounts(vocab, total("counts"), total("present"), np.sum([p.docs for p in parts], axis=0))


def prune_terms(tc: TermCounts, min_df: int = 1, max_df: float = 1.0, max_features: int | None = None) -> np.ndarray:
    """The columns of merged counts that scikit-learn's ``CountVectorizer(min_df=, max_df=,
    max_features=)`` keeps, in its order (the terms sorted): terms in at least ``min_df`` and at
    most ``max_df`` documents (a fraction of them as a float, a count as an int), then the
    ``max_features`` most frequent. Terms are pruned before the survivors are sorted: on 100,000
    paragraphs most bigrams occur once, and sorting all of them cost as much as counting
    (bench/README.md). Raises ``ValueError`` as ``CountVectorizer`` does (empty vocabulary, no
    term left, ``max_df`` below ``min_df``)."""
    if len(tc.vocab) == 0:
        raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
    n_docs = int(tc.docs.sum())
    high = max_df if isinstance(max_df, int) else max_df * n_docs
    if high < min_df:
        raise ValueError("max_df corresponds to < documents than min_df")
    dfs = np.asarray(tc.present.sum(axis=0)).ravel()
    words = tc.vocab
    kept = np.asarray(sorted(np.flatnonzero((dfs <= high) & (dfs >= min_df)).tolist(), key=words.__getitem__), dtype=np.int64)
    if max_features is not None and len(kept) > max_features:
        tfs = np.asarray(tc.counts.sum(axis=0)).ravel()[kept]
        top = np.zeros(len(kept), dtype=bool)
        top[(-tfs).argsort()[:max_features]] = True  # CountVectorizer's choice among equal counts
        kept = kept[top]
    if not len(kept):
        raise ValueError("After pruning, no terms remain. Try a lower min_df or a higher max_df.")
    return kept


def ctfidf_keywords(
    texts: Sequence[str],
    themes: np.ndarray,
    n_themes: int,
    top_n: int = 10,
    ngram_max: int = 2,
    max_df_fraction: float = 0.5,
    lift_gate: bool = True,
    groups: Sequence[Sequence[int]] = (),
    stop_words: frozenset[str] | None = None,
) -> ThemeKeywords:
    """Top c-TF-IDF terms per theme of ``texts`` counted as one block (``stop_words``, English by
    default; see :func:`keywords_from_counts` and :class:`Analyzer`)."""
    if stop_words is None:
        stop_words = _language_stop_words("english")
    tc = count_block(texts, themes, n_themes, Analyzer(stop_words, ngram_max))
    return keywords_from_counts(tc, top_n, max_df_fraction, lift_gate, groups)


def keywords_from_counts(
    tc: TermCounts, top_n: int = 10, max_df_fraction: float = 0.5, lift_gate: bool = True, groups: Sequence[Sequence[int]] = ()
) -> ThemeKeywords:
    """Top c-TF-IDF terms per theme from merged counts (terms in more than ``max_df_fraction``
    of the documents removed), each weight gated by the term's lift in the theme (``lift_gate``;
    off: plain c-TF-IDF).

    ``groups`` (each a list of theme ids, e.g. the inner nodes of the theme hierarchy) get keywords
    from their themes' pooled documents in ``.groups``, scored with the themes' idf (a group's
    terms are weighed against the same corpus) and gated by the group's own lift; a group holding
    every document has no lift to gate by and is scored ungated."""
    from scipy import sparse

    n_themes = tc.docs.shape[0]
    n_docs = int(tc.docs.sum())
    min_df = 2 if n_docs >= 1000 else 1
    # a term in most documents ("said" in news) labels nothing; keep it only in tiny corpora
    max_df = float(max_df_fraction) if n_docs >= 50 else 1.0
    try:
        kept = prune_terms(tc, min_df=min_df, max_df=max_df, max_features=200_000)
    except ValueError:  # empty vocabulary (only stop words, or every term pruned by max_df)
        if max_df == 1.0:
            out = _empty(n_themes)
            out.groups = _empty(len(groups)) if groups else None
            return out
        return keywords_from_counts(tc, top_n, 1.0, lift_gate, groups)
    vocab = tc.vocab[kept]
    class_counts = tc.counts[:, kept].astype(np.float64)  # themes x terms
    df_class = tc.present[:, kept].astype(np.float64)
    df = np.asarray(df_class.sum(axis=0)).ravel()
    totals = np.asarray(class_counts.sum(axis=1)).ravel()
    f_t = np.asarray(class_counts.sum(axis=0)).ravel()
    avg_words = float(totals.mean()) if totals.size else 0.0
    idf = np.log(1.0 + avg_words / np.where(f_t > 0, f_t, 1.0))
    one_theme = np.count_nonzero(tc.docs) <= 1  # one theme: every lift is 1
    out = _rank(class_counts, idf, _lift(df_class, df, tc.docs, n_docs), vocab, top_n, lift_gate and not one_theme)
    if groups:
        rows = [t for g in groups for t in g]
        member = sparse.csr_matrix(
            (np.ones(len(rows)), (np.repeat(np.arange(len(groups)), [len(g) for g in groups]), rows)), shape=(len(groups), n_themes)
        )
        group_docs = member @ tc.docs.astype(np.float64)
        lift = _lift((member @ df_class).tocsr(), df, group_docs, n_docs)
        out.groups = _rank((member @ class_counts).tocsr(), idf, lift, vocab, top_n, lift_gate, ungated_rows=group_docs >= n_docs)
    return out


def _rank(
    class_counts: Any, idf: np.ndarray, lift: Any, vocab: np.ndarray, top_n: int, gate: bool, ungated_rows: np.ndarray | None = None
) -> ThemeKeywords:
    """The top terms of each row of ``class_counts`` (classes x terms) by c-TF-IDF, gated by
    ``1 - 1/lift`` when ``gate`` (except the ``ungated_rows``)."""
    from scipy import sparse

    totals = np.asarray(class_counts.sum(axis=1)).ravel()
    tf = sparse.diags(1.0 / np.where(totals > 0, totals, 1.0)) @ class_counts
    tf.data = np.sqrt(tf.data)  # damp terms that are frequent inside a theme but say little (BERTopic's reduce_frequent_words)
    weights = (tf @ sparse.diags(idf)).tocsr()
    if gate:
        g = lift.copy()
        g.data = np.maximum(0.0, 1.0 - 1.0 / g.data)
        if ungated_rows is not None and ungated_rows.any():
            g = g.tolil()
            for r in np.flatnonzero(ungated_rows):
                g[r] = (lift.getrow(r) > 0).astype(np.float64)
            g = g.tocsr()
        weights = weights.multiply(g).tocsr()  # same sparsity: a term is in a class iff it is in a document of it
        weights.eliminate_zeros()
    weights.sort_indices()  # equal weights rank in the vocabulary's (sorted) order
    keywords, scores, lifts = [], [], []
    for t in range(class_counts.shape[0]):
        row = weights.getrow(t)
        lift_row = lift.getrow(t)
        lift_of = dict(zip(lift_row.indices.tolist(), lift_row.data.tolist()))  # sparse: no vocabulary-wide row per theme
        idx, vals = row.indices, row.data
        order = np.argsort(-vals, kind="stable")
        chosen: list[str] = []
        chosen_scores: list[float] = []
        chosen_lifts: list[float] = []
        for o in order:
            term = str(vocab[idx[o]])
            # skip a term wholly contained in (or containing) one already chosen: "new york" vs "york"
            if any(term in c.split() or c in term.split() for c in chosen):
                continue
            chosen.append(term)
            chosen_scores.append(float(vals[o]))
            chosen_lifts.append(float(lift_of[int(idx[o])]))
            if len(chosen) == top_n:
                break
        keywords.append(chosen)
        scores.append(chosen_scores)
        lifts.append(chosen_lifts)
    return ThemeKeywords(keywords, scores, lifts)


def _lift(df_class: Any, df: np.ndarray, class_docs: np.ndarray, n_docs: int) -> Any:
    """classes x terms (sparse): P(class | a document contains the term) / P(class), from the
    documents of each class holding each term (``df_class``), of all (``df``), and each class's
    documents (``class_docs``; the classes may overlap, as the hierarchy's groups do)."""
    from scipy import sparse

    p_class = np.asarray(class_docs, dtype=np.float64) / max(n_docs, 1)
    out = sparse.diags(1.0 / np.where(p_class > 0, p_class, 1.0)) @ df_class @ sparse.diags(1.0 / np.where(df > 0, df, 1.0))
    return out.tocsr()


def label_lift(lifts: list[list[float]]) -> dict[str, Any]:
    """The lift of each theme's first keyword, and their median (what the manifest reports)."""
    first = [float(row[0]) for row in lifts if row]
    return {
        "median": round(float(np.median(first)), 4) if first else None,
        "min": round(float(np.min(first)), 4) if first else None,
        "themes": len(first),
        "definition": "P(theme | a document contains the label's first keyword) / P(theme), over the labelled documents",
    }


def representatives(
    themes: np.ndarray, distances: np.ndarray, eligible: np.ndarray, n_themes: int, top_n: int
) -> list[list[int]]:
    """For each theme, up to ``top_n`` document indices nearest its centroid (eligible ones first)."""
    order = np.lexsort((distances, ~eligible, themes))
    bounds = np.searchsorted(themes[order], np.arange(n_themes + 1))
    return [order[bounds[t] : bounds[t + 1]][:top_n].tolist() for t in range(n_themes)]


def label_from_keywords(keywords: list[str], words: int, theme: int) -> str:
    if not keywords:
        return f"theme {theme}"
    return ", ".join(keywords[:words])


def keyword_sample(themes: np.ndarray, n_themes: int, max_documents: int, seed: int) -> np.ndarray:
    """Sorted positions of the documents whose texts feed the keywords: all of them up to
    ``max_documents``; beyond that a seeded sample in which each theme keeps its share of
    ``max_documents`` but at least ``max_documents // n_themes`` (or all it has), so small themes
    are labelled from as many documents as large ones need."""
    themes = np.asarray(themes)
    if len(themes) <= max_documents:
        return np.arange(len(themes))
    rng = seeds.rng(seed, "label_sample")
    floor = max_documents // max(n_themes, 1)
    picked = []
    for t in range(n_themes):
        members = np.flatnonzero(themes == t)
        want = min(len(members), max(floor, math.ceil(max_documents * len(members) / len(themes))))
        picked.append(rng.choice(members, size=want, replace=False) if want < len(members) else members)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


@dataclass
class KeywordSet:
    """Per theme: its keywords, their gated c-TF-IDF scores and their lifts (parallel lists)."""

    keywords: list[list[str]]
    scores: list[list[float]]
    lifts: list[list[float]]


def assemble_themes(
    corpus: Corpus,
    unique: np.ndarray,
    themes: np.ndarray,
    kept: np.ndarray,
    mapping: np.ndarray,
    kw: KeywordSet,
    reps: list[list[int]],
    label_words: int,
) -> list[dict[str, Any]]:
    """``themes.json``'s records. ``themes`` and ``kept`` are per embedded document (positions in
    ``unique``), ``mapping`` maps each k-means cluster to its theme, ``reps`` holds each theme's
    representative positions. ``size`` counts every input document (an exact duplicate joins the
    theme of the text it repeats); ``unique_size`` the kept embedded ones."""
    n_themes = len(kw.keywords)
    full_theme = np.full(len(corpus.ids), -1, dtype=np.int64)
    full_theme[unique] = themes
    ex = np.flatnonzero(corpus.exact_of >= 0)
    full_theme[ex] = full_theme[corpus.exact_of[ex]]
    sizes = np.bincount(full_theme[full_theme >= 0], minlength=n_themes)
    unique_sizes = np.bincount(themes[kept], minlength=n_themes)
    return [
        {
            "theme": t,
            "label": label_from_keywords(kw.keywords[t], label_words, t),
            "keywords": kw.keywords[t],
            "keyword_scores": [round(s, 6) for s in kw.scores[t]],
            "keyword_lifts": [round(v, 3) for v in kw.lifts[t]],
            "size": int(sizes[t]),
            "unique_size": int(unique_sizes[t]),
            "merged_from": np.flatnonzero(mapping == t).tolist(),
            "representatives": [corpus.ids[unique[i]] for i in reps[t]],
        }
        for t in range(n_themes)
    ]

"""Theme merging, c-TF-IDF keywords and representative documents."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine.labels import (
    ctfidf_keywords,
    keyword_sample,
    label_from_keywords,
    label_lift,
    merge_map,
    merged_centroids,
    representatives,
)


def test_merge_map_merges_near_identical_and_renumbers_by_size():
    C = np.array([[1, 0, 0], [0, 1, 0], [0.999, 0.02, 0], [0, 0, 1]], dtype=np.float32)
    sizes = np.array([10, 50, 30, 5])
    mapping = merge_map(C, sizes, threshold=0.95)
    # {0, 2} merge (size 40); theme 1 (50) is now the largest
    assert mapping.tolist() == [1, 0, 1, 2]
    merged = merged_centroids(C, sizes, mapping)
    assert merged.shape == (3, 3)
    np.testing.assert_allclose(merged[1], (10 * C[0] + 30 * C[2]) / 40, rtol=1e-6)
    np.testing.assert_allclose(merged[0], C[1])


def test_merge_map_no_merge_still_renumbers_by_size_ties_by_old_id():
    C = np.eye(4, dtype=np.float32)
    assert merge_map(C, np.array([10, 50, 30, 5]), threshold=1.0001).tolist() == [2, 0, 1, 3]
    assert merge_map(C, np.array([7, 7, 9, 7]), threshold=0.95).tolist() == [1, 2, 0, 3]


def test_merge_map_is_transitive_and_scale_free():
    # 0~1 and 1~2 at cos 0.97, 0 and 2 at ~0.88: all three merge; scaling a centroid changes nothing
    a = np.deg2rad([0, 14, 28])
    C = np.stack([np.cos(a), np.sin(a), np.zeros(3)], axis=1)
    C = np.concatenate([C, [[0, 0, 1]]]) * np.array([[1], [3], [0.5], [2]])
    mapping = merge_map(C, np.array([1, 1, 1, 5]), threshold=0.95)
    assert mapping.tolist() == [1, 1, 1, 0]  # merged 3 < 5


SPORTS = [
    "the striker scored a late goal and the football match ended in a draw",
    "the goalkeeper saved a penalty in the football match",
    "the team won the league after the striker scored twice",
    "fans cheered as the team scored a goal in extra time",
    "the coach praised the goalkeeper and the team after the match",
]
FINANCE = [
    "the central bank raised interest rates to curb inflation",
    "stock markets fell as investors worried about inflation and interest rates",
    "the bank reported higher profits and its shares rose on the stock market",
    "bond yields climbed after the inflation report",
    "investors sold shares as interest rates rose",
]


@pytest.mark.parametrize("ngram_max", [1, 2])
def test_ctfidf_keywords_separate_two_themes(ngram_max):
    texts = SPORTS + FINANCE
    themes = np.array([0] * len(SPORTS) + [1] * len(FINANCE))
    kw = ctfidf_keywords(texts, themes, 2, top_n=5, ngram_max=ngram_max)
    own = [set(" ".join(SPORTS).split()), set(" ".join(FINANCE).split())]
    assert len(kw.keywords) == 2 and all(len(k) == 5 for k in kw.keywords)
    for t in (0, 1):
        for term in kw.keywords[t]:
            # every keyword comes from its own theme's texts and never from the other theme's
            assert set(term.split()) <= own[t] and not set(term.split()) & own[1 - t], (t, kw.keywords[t])
    # words repeated within a theme rank on top
    assert set(kw.keywords[0][:3]) <= {"striker", "goal", "football", "match", "team", "goalkeeper", "scored", "football match"}
    assert set(kw.keywords[1][:3]) <= {"interest", "rates", "inflation", "bank", "investors", "shares", "stock", "rose", "interest rates"}
    for scores in kw.scores:
        assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert "the" not in kw.keywords[0]  # stop words removed


def test_ctfidf_no_contained_ngram_duplicates():
    kw = ctfidf_keywords(SPORTS + FINANCE, np.array([0] * 5 + [1] * 5), 2, top_n=10, ngram_max=2)
    for words in kw.keywords:
        for a in words:
            for b in words:
                if a != b:
                    assert a not in b.split()


def test_ctfidf_empty_vocabulary_and_empty_theme():
    kw = ctfidf_keywords(["the and of", "it is the"], np.array([0, 1]), 2)
    assert kw.keywords == [[], []]
    kw = ctfidf_keywords(SPORTS, np.zeros(len(SPORTS), dtype=np.int64), 2, top_n=3)
    assert len(kw.keywords[0]) == 3 and kw.keywords[1] == []


def test_representatives_nearest_eligible_first():
    themes = np.array([0, 0, 0, 1, 1, 0])
    dist = np.array([0.3, 0.1, 0.2, 0.5, 0.4, 0.05])
    eligible = np.array([True, False, True, True, True, False])
    reps = representatives(themes, dist, eligible, n_themes=3, top_n=3)
    assert reps == [[2, 0, 5], [4, 3], []]
    assert representatives(themes, dist, eligible, 3, 1) == [[2], [4], []]
    assert representatives(themes, dist, np.ones(6, bool), 2, 10) == [[5, 1, 2, 0], [4, 3]]


def test_label_from_keywords():
    assert label_from_keywords(["goal", "match", "team", "coach"], 3, 0) == "goal, match, team"
    assert label_from_keywords([], 3, 4) == "theme 4"


def test_keyword_sample_caps_documents_and_keeps_every_theme() -> None:
    themes = np.concatenate([np.zeros(9000, int), np.ones(900, int), np.full(100, 2)])
    assert keyword_sample(themes, 3, 20_000, 0).tolist() == list(range(10_000))
    idx = keyword_sample(themes, 3, 3000, 0)
    assert np.all(np.diff(idx) > 0)
    counts = np.bincount(themes[idx], minlength=3)
    # the large theme keeps its share (90% of 3000); small ones are kept whole up to 3000 // 3
    assert counts.tolist() == [2700, 900, 100]
    assert np.array_equal(idx, keyword_sample(themes, 3, 3000, 0))  # seeded


def test_a_word_spread_evenly_over_the_themes_never_leads():
    # "report" is in every document of every theme, and more often than any theme's own words
    rng = np.random.default_rng(0)
    own = [["goal", "striker", "league"], ["shares", "market", "profit"], ["guitar", "album", "concert"]]
    texts, themes = [], []
    for t, words in enumerate(own):
        for _ in range(40):
            body = ["report"] * 12 + list(rng.choice(words, size=3)) + list(rng.choice(["today", "week", "people"], size=2))
            rng.shuffle(body)
            texts.append(" ".join(body))
            themes.append(t)
    themes = np.asarray(themes)
    gated = ctfidf_keywords(texts, themes, 3, top_n=3, ngram_max=1, max_df_fraction=1.0)
    for t, kw in enumerate(gated.keywords):
        assert "report" not in kw and kw[0] in own[t]
        assert gated.lifts[t][0] == pytest.approx(3.0)  # each own word lives in one theme of three equal ones
    # the spread word's gate is 0 (lift 1), so it has no weight in any theme at all
    assert all("report" not in kw for kw in ctfidf_keywords(texts, themes, 3, top_n=20, ngram_max=1, max_df_fraction=1.0).keywords)


def test_lifts_match_their_definition_and_summary():
    texts = ["apple pie", "apple tart", "apple juice", "car engine", "car wheel", "apple car"]
    themes = np.array([0, 0, 0, 1, 1, 1])
    kw = ctfidf_keywords(texts, themes, 2, top_n=5, ngram_max=1, max_df_fraction=1.0)
    for t in range(2):
        for word, lift in zip(kw.keywords[t], kw.lifts[t]):
            has = np.array([word in text.split() for text in texts])
            expected = (has & (themes == t)).sum() / has.sum() / (themes == t).mean()
            assert lift == pytest.approx(expected) and lift > 1.0
    summary = label_lift(kw.lifts)
    first = [kw.lifts[0][0], kw.lifts[1][0]]
    assert summary["median"] == pytest.approx(np.median(first), abs=1e-4) and summary["themes"] == 2
    assert label_lift([[], []])["median"] is None


def test_assemble_themes_counts_exact_copies_in_size_and_kept_ones_in_unique_size() -> None:
    from theme_engine.engine.corpus import build_corpus
    from theme_engine.engine.labels import KeywordSet, assemble_themes

    texts = ["the cat sat on the mat", "The cat sat on the mat!", "stocks fell on monday", "stocks fell on tuesday"]
    records = [{"kind": "doc", "id": f"d{i}", "text": t, "source": f"f:{i}", "error": None} for i, t in enumerate(texts)]
    corpus = build_corpus(records, 1, 1000)
    unique = corpus.unique  # d1 is an exact copy of d0
    assert unique.tolist() == [0, 2, 3]
    themes = np.array([0, 1, 1])
    kept = np.array([True, True, False])  # d3 is a near-duplicate of d2
    kw = KeywordSet([["cat", "mat"], ["stocks", "fell"]], [[0.5, 0.4], [0.6, 0.3]], [[2.0, 1.5], [2.0, 1.8]])
    got = assemble_themes(corpus, unique, themes, kept, np.array([0, 1]), kw, [[0], [1]], label_words=2)
    assert [t["size"] for t in got] == [2, 2] and [t["unique_size"] for t in got] == [1, 1]
    assert got[0]["label"] and got[0]["keywords"] == ["cat", "mat"] and got[1]["representatives"] == ["d2"]
    assert got[1]["merged_from"] == [1]


def test_scripts_without_spaces_become_character_pairs_and_keep_content_words() -> None:
    from theme_engine.engine.labels import Analyzer, stop_words_for

    stop, language = stop_words_for("auto", ["上海证券交易所的股票今天上涨了。我们的人民在这里生活。"])
    assert language == "chinese"
    terms = Analyzer(stop, 2)("上海证券交易所的股票今天上涨了 GPU 计算")
    assert "上海" in terms and "gpu" in terms and "计算" in terms  # 上 is a stop character, 上海 a word
    assert not [t for t in terms if t in stop]
    assert Analyzer(frozenset(), 2)("東") == ["東"]  # a lone character stays a term


def _mixed_texts() -> list[str]:
    """The demo's verses, plus texts with scripts written without spaces and odd tokens."""
    import json
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "demo" / "bible-verses.jsonl"
    texts = [json.loads(line)["text"] for line in demo.read_text(encoding="utf-8").splitlines()]
    return texts + [
        "上海证券交易所的股票今天上涨了 GPU 计算",
        "ภาษาไทย test ภาษาไทย",
        "don't re-use it's 3d x2 _a_ foo_bar naïve café, café!",
        "",
        "the and of",
    ]


@pytest.mark.parametrize(
    "min_df, max_df, max_features",
    [(2, 0.5, 200_000), (2, 0.5, 300), (1, 1.0, None), (3, 10, 77), (1, 1, None)],
)
def test_counts_over_blocks_equal_scikit_learns_count_vectorizer(min_df, max_df, max_features) -> None:
    """Blocks counted apart and merged keep the vocabulary ``CountVectorizer`` keeps, in its order
    (the order of tied terms decides labels), with its counts summed per theme."""
    from sklearn.feature_extraction.text import CountVectorizer

    from theme_engine.engine.labels import Analyzer, count_block, merge_counts, prune_terms, stop_words_for

    texts = _mixed_texts()
    themes = np.arange(len(texts)) % 3
    onehot = np.eye(3, dtype=np.int64)[themes].T
    for ngram_max in (1, 2, 3):
        analyzer = Analyzer(stop_words_for("english", texts)[0], ngram_max)
        vec = CountVectorizer(analyzer=analyzer, min_df=min_df, max_df=max_df, max_features=max_features)
        want = vec.fit_transform(texts)  # sparse: documents x terms (dense, the trigrams take 1.6 GB)
        cuts = [0, 1, len(texts) // 2, len(texts)]
        tc = merge_counts([count_block(texts[a:b], themes[a:b], 3, analyzer) for a, b in zip(cuts, cuts[1:])])
        kept = prune_terms(tc, min_df=min_df, max_df=max_df, max_features=max_features)
        assert list(tc.vocab[kept]) == list(vec.get_feature_names_out())
        np.testing.assert_array_equal(tc.counts[:, kept].toarray(), np.asarray((want.T @ onehot.T).T))
        np.testing.assert_array_equal(tc.present[:, kept].toarray(), np.asarray(((want > 0).astype(np.int64).T @ onehot.T).T))
        np.testing.assert_array_equal(tc.docs, np.bincount(themes, minlength=3))


def test_prune_terms_raises_as_count_vectorizer_does() -> None:
    from theme_engine.engine.labels import Analyzer, count_block, prune_terms

    analyzer = Analyzer(frozenset({"the", "and"}), 2)

    def counts(texts: list[str]):
        return count_block(texts, np.zeros(len(texts), dtype=np.int64), 1, analyzer)

    with pytest.raises(ValueError, match="empty vocabulary"):
        prune_terms(counts(["the and", "and the"]))
    with pytest.raises(ValueError, match="no terms remain"):
        prune_terms(counts(["alpha beta", "gamma delta"]), min_df=2)
    with pytest.raises(ValueError, match="max_df corresponds"):
        prune_terms(counts(["alpha beta", "alpha delta"]), min_df=3, max_df=2)


def test_keywords_from_blocks_equal_keywords_from_the_whole() -> None:
    """The label stage's map-reduce: any split of the documents into blocks, in any order, gives
    the keywords, scores, lifts and group keywords of counting them at once."""
    from theme_engine.engine.labels import Analyzer, count_block, keywords_from_counts, merge_counts

    texts = _mixed_texts() * 3
    rng = np.random.default_rng(0)
    themes = rng.integers(0, 4, len(texts))
    analyzer = Analyzer(frozenset({"the", "a", "of", "and"}), 2)
    groups = [[0, 1], [2, 3], [0, 1, 2, 3]]
    whole = keywords_from_counts(merge_counts([count_block(texts, themes, 4, analyzer)]), 5, 0.5, True, groups)
    for _ in range(3):
        order = rng.permutation(len(texts))
        cuts = np.sort(rng.choice(np.arange(1, len(texts)), 4, replace=False))
        parts = [count_block([texts[i] for i in idx], themes[idx], 4, analyzer) for idx in np.split(order, cuts)]
        got = keywords_from_counts(merge_counts(parts[::-1]), 5, 0.5, True, groups)
        assert got.keywords == whole.keywords and got.groups.keywords == whole.groups.keywords
        np.testing.assert_allclose(sum(got.scores, []), sum(whole.scores, []), rtol=1e-12)
        np.testing.assert_allclose(sum(got.lifts, []), sum(whole.lifts, []), rtol=1e-12)
    assert any(whole.keywords), "the texts give keywords"


def test_analyzer_words_only_path_matches_the_mixed_script_path() -> None:
    """Texts without a script written without spaces take a shortcut (one ``findall``); it gives
    what the general tokenizer gives."""
    from theme_engine.engine import labels

    texts = _mixed_texts()
    for ngram_max in (1, 2, 3):
        analyzer = labels.Analyzer(labels.stop_words_for("english", texts)[0], ngram_max)
        for text in texts:
            if labels._RUN.search(text.lower()) is None:
                general = []
                words = [m.group("word") for m in labels._TOKEN.finditer(text.lower()) if m.group("word") not in analyzer.stop_words]
                general.extend(words)
                for n in range(2, ngram_max + 1):
                    general.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
                assert analyzer(text) == general

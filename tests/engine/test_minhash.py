"""MinHash LSH over whole texts: signatures under two namespaces, the estimate against the exact
Jaccard, and the candidates against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from theme_engine.engine import minhash as mh

WORDS = (
    "river stone light valley harbour engine garden letter window market silver autumn thunder "
    "orchard canvas lantern meadow copper signal ribbon compass marble feather harvest"
).split()


def _text(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, n_words))


def _edit(rng: np.random.Generator, text: str, changes: int) -> str:
    """``changes`` words replaced at random places: the Jaccard falls with each."""
    words = text.split()
    for at in rng.choice(len(words), size=changes, replace=False):
        words[at] = "zz" + rng.choice(WORDS)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """200-word texts and copies of some with 0 to 60 words replaced (Jaccard from 1 down to ~0.1)."""
    rng = np.random.default_rng(7)
    base = [_text(rng, 200) for _ in range(40)]
    copies = [_edit(rng, base[i], changes) for i, changes in enumerate([0, 1, 2, 3, 5, 8, 12, 16, 20, 25, 30, 40, 60] * 2)]
    return base + copies + ["a short one", "tiny", ""]


def test_signatures_same_under_numpy_and_array_api_strict(corpus, strict_device):
    sig_np = mh.signatures(corpus)
    sig_strict = mh.signatures(corpus, xp=strict_device.xp, max_cells=1 << 12)  # small groups: many of them
    assert sig_np.dtype == np.uint32 and sig_np.shape == (len(corpus), 260)
    np.testing.assert_array_equal(sig_np, sig_strict)


def test_signature_entries_are_minima_over_the_shingles(corpus):
    """A direct computation: every entry is the least multiply-add hash over the text's shingles."""
    params = mh.MinHashParams()
    _, a, b, _ = mh._constants(params)
    sig = mh.signatures(corpus[:3])
    for row, shingles in zip(sig, mh.shingle_sets(corpus[:3])):
        with np.errstate(over="ignore"):
            full = (shingles[:, None] * a[None, :] + b[None, :]).min(axis=0) >> np.uint64(32)
        np.testing.assert_array_equal(row, full.astype(np.uint32))


def test_estimate_tracks_the_exact_jaccard(corpus):
    sig = mh.signatures(corpus)
    n = 40
    exact = mh.jaccard(corpus[:26], corpus[n : n + 26])
    est = mh.estimated_jaccard(sig[:26], sig[n : n + 26])
    # the estimate is a mean of 260 Bernoulli(J) draws: within 4.5 standard deviations
    sd = np.sqrt(exact * (1 - exact) / 260) + 1e-3
    assert (np.abs(est - exact) <= 4.5 * sd).all(), list(zip(exact, est))
    assert exact[0] == 1.0 and exact.min() < 0.3  # the corpus spans the range


@pytest.mark.parametrize("params", [mh.MinHashParams(), mh.NEMO_CURATOR], ids=["engine", "nemo"])
def test_candidates_agree_with_brute_force(corpus, params):
    keys = mh.band_keys(mh.signatures(corpus, params), params)
    ci, cj = mh.candidate_pairs(keys)
    found = set(zip(ci.tolist(), cj.tolist()))
    point = params.recall_point(0.99)
    assert 0.6 < point < 0.9
    high = mh.brute_force_jaccard_pairs(corpus, point, params)
    assert len(high) >= 6
    assert set(high) <= found  # every pair above the 99%-recall point is a candidate
    # confirmation: of the candidates, exactly the pairs at or above the threshold are kept
    exact = mh.jaccard([corpus[i] for i in ci], [corpus[j] for j in cj], params)
    kept = {(i, j) for i, j, jac in zip(ci.tolist(), cj.tolist(), exact) if jac >= 0.6}
    assert kept == {p for p in mh.brute_force_jaccard_pairs(corpus, 0.6, params) if p in found}


def test_short_texts_and_folding():
    """A text shorter than a shingle is one shingle; case and punctuation are folded away."""
    j = mh.jaccard(["Hello, World!", "tiny", "abc"], ["hello world", "tinY", "abd"])
    np.testing.assert_array_equal(j, np.array([1.0, 1.0, 0.0], dtype=np.float32))
    sig = mh.signatures(["Hello, World!", "hello world"])
    assert (sig[0] == sig[1]).all()


def test_a_large_bucket_becomes_a_star():
    keys = np.zeros((100, 2), dtype=np.uint64)  # every document in one bucket of each band
    keys[:, 1] = np.arange(100)  # band 2: every document alone
    i, j = mh.candidate_pairs(keys, full_bucket=10)
    assert (i == 0).all() and j.tolist() == list(range(1, 100))
    i, j = mh.candidate_pairs(keys[:5], full_bucket=10)
    assert len(i) == 10  # all pairs of a small bucket


def test_params_are_validated():
    with pytest.raises(ValueError, match="bands"):
        mh.MinHashParams(bands=0)
    p = mh.NEMO_CURATOR
    assert p.num_perm == 260 and abs(p.knee - 0.794) < 0.001
    assert p.probability(p.recall_point(0.99)) == pytest.approx(0.99)
    engine = mh.MinHashParams()
    assert engine.num_perm == 260 and engine.probability(0.6) > 0.98 and engine.probability(0.3) < 0.35

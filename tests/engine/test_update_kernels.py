"""engine/update.py against full recomputation: the pairs that involve new rows, the lexical
candidates' cap, the ranked grouping extended to new documents, new themes for far documents."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from theme_engine.engine.dedup import brute_force_pairs, cap_candidates, group_duplicates, keep_rank
from theme_engine.engine.partition import partition_centroids, route, safe_margin
from theme_engine.engine.vectors import VectorParts, rows_of_parts
from theme_engine.engine.update import (
    NewDocuments,
    NewGroup,
    constrained_kmeans,
    drift_test,
    extend_groups,
    extend_ranked,
    far_cutoffs,
    merge_top,
    rows_by_id,
    nearest,
    new_pairs,
    pair_groups,
    partition_existing,
    propose_themes,
    refit_centroids,
    search_new_groups,
    top_candidates,
    typical_spread,
)


def _clustered(n: int, d: int, centers: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centers, d))
    X = C[rng.integers(centers, size=n)] + noise * rng.standard_normal((n, d))
    # near-copies, so that there are pairs at a high threshold
    X[n // 2 : n // 2 + n // 10] = X[: n // 10] + 0.02 * rng.standard_normal((n // 10, d))
    X = X[rng.permutation(n)]
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _exact_pairs(X: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i < j) at cosine >= t, in order, with its cosine."""
    pairs = sorted(brute_force_pairs(X, t))
    pi = np.array([p[0] for p in pairs])
    pj = np.array([p[1] for p in pairs])
    return pi, pj, np.einsum("ij,ij->i", X[pi], X[pj]).astype(np.float32)


def _spread_in_bundles(vectors_dir: Path, threshold: float, cap: tuple[float, int] | None, seen: list[int]):
    """A ``spread`` as the update's Ray tasks do it: bundles of three groups, each filled, sent
    through pickle (as to a task) and searched with a reader of the stored vector parts."""

    def spread(groups: list[NewGroup], fill) -> list:
        reader = partial(rows_of_parts, [VectorParts.open(vectors_dir)])
        out = []
        for a in range(0, len(groups), 3):
            bundle = pickle.loads(pickle.dumps([fill(g) for g in groups[a : a + 3]]))
            assert all(g.vectors is not None for g in bundle)
            out.append(search_new_groups(bundle, pickle.loads(pickle.dumps(reader)), threshold, batch_rows=128, cap=cap))
        seen.append(len(out))
        return out

    return spread


@pytest.mark.parametrize("threshold", [0.9, 0.75])
@pytest.mark.parametrize("way", ["threads", "loop", "spread"])
def test_new_pairs_equal_the_pairs_of_the_whole(threshold: float, way: str, tmp_path: Path) -> None:
    X = _clustered(1500, 24, 12, 0.35, seed=1)
    n_old = 1300
    old, new = X[:n_old], X[n_old:]
    C = partition_centroids(old[::3], 20, seed=0)
    margin = safe_margin(threshold)
    R_old = route(old, C, None, margin=margin)
    VectorParts.write(tmp_path / "vectors", [old[:700], old[700:]])  # the run's vectors as two stored parts
    bundles: list[int] = []
    spread = _spread_in_bundles(tmp_path / "vectors", threshold, None, bundles) if way == "spread" else None
    (pi, pj, ps), R_new = new_pairs(
        lambda rows: old[rows], R_old, new, n_old, C, threshold, margin, None, batch_rows=128, n_jobs=2 if way == "threads" else 1, spread=spread
    )
    assert way != "spread" or bundles[0] > 1
    want = {(i, j) for i, j in brute_force_pairs(X, threshold) if j >= n_old}
    assert want, "the data must have pairs that involve new rows"
    assert set(zip(pi.tolist(), pj.tolist())) == want
    assert np.all(pi < pj) and np.allclose(ps, np.einsum("ij,ij->i", X[pi], X[pj]), atol=1e-5)
    assert R_new.n_rows == len(new) and R_new.row_ids.min() == n_old


def test_capped_candidates_match_a_cap_over_all_pairs() -> None:
    X = _clustered(700, 16, 6, 0.6, seed=2)
    n_old, t, cand, nb = 600, 0.9, 0.5, 4
    S = X @ X.T
    i, j = np.nonzero(np.triu(S >= cand, k=1))
    s = S[i, j].astype(np.float32)
    full = cap_candidates(i, j, s, t, nb)
    old = j < n_old
    # the run kept its own capped candidates per document; the update sees the new pairs only
    old_keep = cap_candidates(i[old], j[old], s[old], t, nb)
    top = top_candidates(i[old][old_keep], j[old][old_keep], s[old][old_keep], t, n_old, nb)
    got = cap_candidates(i[~old], j[~old], s[~old], t, nb, existing_top=top)
    assert got.any() and not got.all()
    np.testing.assert_array_equal(got, full[~old])
    grown = merge_top(top, len(X), i[~old][got], j[~old][got], s[~old][got], t)
    assert grown.shape == (len(X), nb) and np.all(np.diff(grown, axis=1) <= 0)


def test_extend_ranked_is_the_full_ranked_grouping_with_keep_first() -> None:
    X = _clustered(900, 16, 8, 0.3, seed=3)
    n_old, t = 800, 0.9
    pi, pj, ps = _exact_pairs(X, t)
    full = group_duplicates(len(X), pi, pj, ps, keep_rank("first", len(X)), "ranked")
    old = pj < n_old
    base = group_duplicates(n_old, pi[old], pj[old], ps[old], keep_rank("first", n_old), "ranked")
    dup, sim = extend_ranked(base.duplicate_of, base.similarity, n_old, pi, pj, ps, np.arange(n_old, len(X)))
    assert (dup[n_old:] >= 0).any()
    np.testing.assert_array_equal(dup, full.duplicate_of)
    np.testing.assert_allclose(sim, full.similarity, equal_nan=True)
    group, n_groups = pair_groups(len(X), pi, pj, keep_rank("first", len(X)))
    np.testing.assert_array_equal(group, full.group)
    assert n_groups == full.n_groups


def test_an_existing_kept_document_stays_kept_under_another_policy() -> None:
    # a longer new copy would be kept first by a full run with keep="longest"; an update keeps the existing one
    dup0 = np.array([-1, -1], dtype=np.int64)
    sim0 = np.full(2, np.nan, dtype=np.float32)
    dup, _ = extend_ranked(dup0, sim0, 2, np.array([0, 2]), np.array([2, 3]), np.array([0.95, 0.97], np.float32), np.array([3, 2]))
    assert dup[0] == -1 and dup[1] == -1  # existing kept documents stay kept
    assert dup[3] == -1 and dup[2] == 3  # 3 ranks first among the new: kept; 2 is its copy (0.97 > 0.95)


def test_far_cutoffs_and_drift() -> None:
    rng = np.random.default_rng(0)
    themes = np.repeat(np.arange(3), [100, 100, 5])
    d = np.concatenate([rng.uniform(0, 1, 100), rng.uniform(0, 2, 100), rng.uniform(0, 9, 5)])
    cut = far_cutoffs(d, themes, 4, 0.9)
    assert 0.8 < cut[0] < 1.0 and 1.6 < cut[1] < 2.0
    assert cut[2] == cut[3] == pytest.approx(np.quantile(d, 0.9))  # too few members, none: the overall quantile
    assert not drift_test(6, 100, 0.05, 0.1)["drift"]
    hit = drift_test(30, 100, 0.05, 0.1)
    assert hit["drift"] and hit["p_value"] < 1e-6 and hit["verdict"] == "yes"
    # one far document of one is as likely as 1 in 20 among documents like the run's: no verdict
    one = drift_test(1, 1, 0.05, 0.1)
    assert one["far_share"] == 1.0 and one["verdict"] == "too few to tell" and not one["drift"]
    assert drift_test(2, 2, 0.05, 0.1)["verdict"] == "yes"  # p = 0.0025: two of two is evidence
    assert drift_test(0, 0, 0.05, 0.1)["verdict"] == "no"


def test_constrained_kmeans_keeps_the_fixed_centroids() -> None:
    rng = np.random.default_rng(4)
    fixed = np.eye(4, 8, dtype=np.float32)
    blob = np.eye(8, dtype=np.float32)[6] + 0.05 * rng.standard_normal((60, 8)).astype(np.float32)
    near_fixed = fixed[rng.integers(4, size=40)] + 0.05 * rng.standard_normal((40, 8)).astype(np.float32)
    X = np.concatenate([blob, near_fixed])
    C_new, labels = constrained_kmeans(X, fixed, 1, seed=0)
    assert C_new.shape == (1, 8) and np.argmax(C_new[0]) == 6
    assert np.all(labels[:60] == 4)
    np.testing.assert_array_equal(labels[60:], nearest(near_fixed, fixed)[0])


def test_propose_themes_finds_a_new_dense_region_and_not_noise() -> None:
    rng = np.random.default_rng(5)
    d = 32
    fixed = rng.standard_normal((5, d)).astype(np.float32)
    fixed /= np.linalg.norm(fixed, axis=1, keepdims=True)
    spread = 0.3
    new_topic = rng.standard_normal(d)
    blob = new_topic + 0.12 * rng.standard_normal((80, d))
    blob = (blob / np.linalg.norm(blob, axis=1, keepdims=True)).astype(np.float32)
    found = propose_themes(blob, fixed, spread, min_size=10, max_new=8, seed=0)
    assert len(found.centroids) >= 1 and (found.labels >= 5).mean() > 0.9, found.info
    noise = rng.standard_normal((80, d))
    noise = (noise / np.linalg.norm(noise, axis=1, keepdims=True)).astype(np.float32)
    none = propose_themes(noise, fixed, spread, min_size=10, max_new=8, seed=0)
    assert len(none.centroids) == 0, none.info
    np.testing.assert_array_equal(none.labels, nearest(noise, fixed)[0])


@pytest.mark.parametrize("grouping", ["ranked", "components"])
def test_extend_groups_over_the_whole_is_a_full_runs_grouping_with_keep_first(grouping: str) -> None:
    X = _clustered(900, 16, 8, 0.3, seed=5)
    n_old, t = 800, 0.9
    pi, pj, ps = _exact_pairs(X, t)
    full = group_duplicates(len(X), pi, pj, ps, keep_rank("first", len(X)), grouping)
    old = pj < n_old
    base = group_duplicates(n_old, pi[old], pj[old], ps[old], keep_rank("first", n_old), grouping)
    dup, sim, group, n_groups = extend_groups(
        base.duplicate_of, base.similarity, pi[old], pj[old], pi[~old], pj[~old], ps[~old], keep_rank("first", len(X) - n_old),
        grouping, lambda rows: X[rows], X[n_old:],
    )  # fmt: skip
    assert (dup[n_old:] >= 0).any()
    np.testing.assert_array_equal(dup[:n_old], base.duplicate_of)  # existing decisions stay
    np.testing.assert_array_equal(group, full.group)
    assert n_groups == full.n_groups
    if grouping == "ranked":  # keep first: the new documents' decisions are a full run's
        np.testing.assert_array_equal(dup, full.duplicate_of)
    linked = n_old + np.flatnonzero(dup[n_old:] >= 0)  # the new duplicates' similarity to their kept document
    np.testing.assert_allclose(sim[linked], np.einsum("ij,ij->i", X[linked], X[dup[linked]]), rtol=1e-5)


def test_partition_existing_routes_every_row_to_its_nearest_partition() -> None:
    X = _clustered(3_000, 16, 6, 0.3, seed=7)

    def blocks():
        for a in range(0, len(X), 1_000):
            yield a, X[a : a + 1_000]

    centroids, routes = partition_existing(lambda rows: X[rows], blocks, len(X), 8, None, 0.02, seed=0)
    assert centroids.shape == (8, 16)
    owner = routes.row_ids[routes.is_primary]
    np.testing.assert_array_equal(np.sort(owner), np.arange(len(X)))  # each row owned once
    nearest_part = np.argmin(((X[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)  # Euclidean, as route places rows
    np.testing.assert_array_equal(routes.part_ids[routes.is_primary][np.argsort(owner)], nearest_part)


def test_refit_centroids_from_the_exact_centroids_stays_put_and_counts_every_row() -> None:
    X = _clustered(600, 8, 3, 0.1, seed=2)
    lab, _ = nearest(X, X[:3])
    C = np.stack([X[lab == c].mean(0) for c in range(3)]).astype(np.float32)
    C2, themes, dist, rec = refit_centroids(lambda: iter([(0, X[:400]), (400, X[400:])]), len(X), C, max_iter=20, tol=1e-6)
    assert rec["refit_converged"] and len(themes) == len(X) == len(dist)
    np.testing.assert_array_equal(themes, nearest(X, C2)[0])
    assert typical_spread(dist, themes, 3) > 0 and typical_spread(dist, themes, 3) == typical_spread(dist, themes, 3)


def test_new_documents_are_set_against_the_corpus() -> None:
    from theme_engine.engine.corpus import Strings, dedup_key

    existing = rows_by_id(Strings(["z", "b", "a", "y"]), Strings(["b", "c", "a", "d"]))
    assert existing == {"b": 1, "a": 2}  # the new ids found among the corpus's, with their rows
    existing = {"a": 0, "b": 1}
    m = NewDocuments(existing, {0: "Hello  world", 1: "old text"}, ["f.jsonl:1", "f.jsonl:2"], {dedup_key("seen before"): 1}, offset=2)
    assert not m.match("a", "Hello world", "ok").keep  # same id, same text (whitespace aside): present
    conflict = m.match("b", "another text", "ok")
    assert not conflict.keep and "f.jsonl:2" in conflict.bad and "ids of their own" in conflict.bad
    got = [m.match(i, t, "ok") for i, t in (("c", "seen before"), ("d", "fresh"), ("e", "fresh"), ("f", "fresh too"))]
    assert [(g.keep, g.status, g.exact_of) for g in got] == [(True, "exact_duplicate", 1), (True, "ok", -1), (True, "exact_duplicate", 3), (True, "ok", -1)]
    assert m.counts == {"present": 1, "id_conflicts": 1, "exact_of_existing": 1} and m.kept == 4
    assert m.statuses == {"exact_duplicate": 2, "ok": 2} and sorted(m.new_keys.values()) == [3, 5]

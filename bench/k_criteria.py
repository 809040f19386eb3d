"""Which criterion for the number of themes has an optimum on sentence embeddings? (the survey
behind ``select_k.criterion = "modularity"``)

For each labelled corpus (bench/corpora.py) and each k of a grid, one k-means (scikit-learn,
k-means++, 2 inits) on a seeded sample of at most 4,000 documents, and every criterion computed on
the same fit:

* ``nmi`` / ``ari`` — against the true labels (what a criterion should track; not available to it);
* ``silhouette`` (cosine), ``calinski-harabasz`` and ``davies-bouldin`` (scikit-learn), higher, higher and lower better;
* ``gap`` — Tibshirani's gap, log W_k of a reference (a Gaussian with the sample's covariance,
  normalised) minus log W_k of the data; the rule is its first local maximum;
* ``stability`` — mean ARI between k-means on two 80% draws, on the whole sample;
* ``prediction strength`` (Tibshirani & Walther) — 2-fold; the rule is the largest k with PS >= 0.8;
* ``modularity`` — of the partition on the sample's 15-NN graph (``engine.select_k``), of this
  direct fit (the engine's criterion reaches the same partitions through Ward's merges of one fit).

It prints one table per corpus and, for each criterion, the k it picks and the ARI there.

    .venv/bin/python bench/k_criteria.py                   # all corpora
    .venv/bin/python bench/k_criteria.py --corpora bbc
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

import corpora
from _common import RESULTS, machine_basics, result_header, write_result

from theme_engine.engine.select_k import knn_graph, modularity, reference_sample

log = logging.getLogger("bench.k_criteria")
GRID = [2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 24, 28, 32, 40, 48]


def prediction_strength(X: np.ndarray, k: int, seed: int) -> float:
    from sklearn.cluster import KMeans

    perm = np.random.default_rng(seed).permutation(len(X))
    A, B = X[perm[: len(X) // 2]], X[perm[len(X) // 2 :]]
    on_a = KMeans(k, n_init=1, random_state=seed).fit(A)
    on_b = KMeans(k, n_init=1, random_state=seed + 1).fit(B)
    predicted, own = on_a.predict(B), on_b.labels_
    strength = 1.0
    for c in range(k):
        members = np.flatnonzero(own == c)
        if len(members) < 2:
            continue
        same = predicted[members][:, None] == predicted[members][None, :]
        strength = min(strength, (same.sum() - len(members)) / (len(members) * (len(members) - 1)))
    return float(strength)


def survey(name: str, seed: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import (
        adjusted_rand_score,
        calinski_harabasz_score,
        davies_bouldin_score,
        normalized_mutual_info_score,
        silhouette_score,
    )

    c = corpora.load(name)
    X, y = corpora.embedded(c), c.labels
    if len(X) > 4000:
        idx = np.sort(np.random.default_rng(seed).choice(len(X), 4000, replace=False))
        X, y = X[idx], y[idx]
    G = knn_graph(X, 15)
    R = reference_sample(X, seed)
    rows = []
    for k in GRID:
        fit = KMeans(k, n_init=2, random_state=seed).fit(X)
        lab = fit.labels_
        ref_inertia = KMeans(k, n_init=1, random_state=seed).fit(R).inertia_
        draws = []
        for r in range(2):
            part = np.random.default_rng([seed, r]).choice(len(X), int(0.8 * len(X)), replace=False)
            draws.append(KMeans(k, n_init=1, random_state=r).fit(X[part]).predict(X))
        rows.append(
            {
                "k": k,
                "nmi": normalized_mutual_info_score(y, lab),
                "ari": adjusted_rand_score(y, lab),
                "silhouette": float(silhouette_score(X, lab, metric="cosine")),
                "calinski-harabasz": float(calinski_harabasz_score(X, lab)),
                "davies-bouldin": float(davies_bouldin_score(X, lab)),
                "gap": float(np.log(ref_inertia) - np.log(fit.inertia_)),
                "stability": float(adjusted_rand_score(draws[0], draws[1])),
                "prediction strength": prediction_strength(X, k, seed),
                "modularity": modularity(G, lab),
            }
        )
        log.info("%s k=%d done", name, k)
    return {"corpus": name, "documents": len(X), "true_k": c.n_labels, "rows": rows}


def picks(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The k each criterion's usual rule picks."""
    ks = [r["k"] for r in rows]

    def arg(key: str, sign: float = 1.0) -> int:
        return ks[int(np.argmax([sign * r[key] for r in rows]))]

    gap = [r["gap"] for r in rows]
    first_max = next((ks[i] for i in range(len(ks) - 1) if gap[i] >= gap[i + 1]), ks[-1])
    strong = [r["k"] for r in rows if r["prediction strength"] >= 0.8]
    return {
        "silhouette": arg("silhouette"),
        "calinski-harabasz": arg("calinski-harabasz"),
        "davies-bouldin": arg("davies-bouldin", -1.0),
        "gap": first_max,
        "stability": max((r["k"] for r in rows if r["k"] > 2), key=lambda k: rows[ks.index(k)]["stability"]),
        "prediction strength": max(strong) if strong else ks[0],
        "modularity": arg("modularity"),
        "best ARI (oracle)": arg("ari"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", nargs="+", default=list(corpora.NAMES), choices=corpora.NAMES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "k_criteria.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    machine = machine_basics()
    print(f"machine: {machine['platform']}, {machine['cpu_count']} CPUs")
    results = []
    keys = ["nmi", "ari", "silhouette", "calinski-harabasz", "davies-bouldin", "gap", "stability", "prediction strength", "modularity"]
    for name in args.corpora:
        res = survey(name, args.seed)
        res["picks"] = picks(res["rows"])
        results.append(res)
        print(f"\n{name}: {res['documents']} documents, true k = {res['true_k']}")
        print(f"{'k':>3} " + " ".join(f"{k[:10]:>10}" for k in keys))
        for r in res["rows"]:
            print(f"{r['k']:>3} " + " ".join(f"{r[k]:10.4f}" for k in keys))
        ari = {r["k"]: r["ari"] for r in res["rows"]}
        print("picks: " + ", ".join(f"{crit} k={k} (ARI {ari[k]:.3f})" for crit, k in res["picks"].items()))
    write_result(Path(args.out), {**result_header("k_criteria", vars(args)), "machine": machine, "results": results})


if __name__ == "__main__":
    sys.exit(main())

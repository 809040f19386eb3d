"""k-means|| seeding (k above engine.kmeans.GREEDY_MAX_K) against scikit-learn's k-means++, seed by
seed: one init of either is a draw, so a single seed says little (tests compare medians).

    .venv/bin/python bench/kmeans_seeds.py            # 9,000 x 16 blobs, k = 300, 30 iterations, seeds 0-5
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs

from theme_engine.engine import kmeans as km


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    X, _ = make_blobs(n_samples=9_000, n_features=16, centers=args.k, cluster_std=0.6, random_state=8)
    X = X.astype(np.float32)
    ratios = []
    for s in range(args.seeds):
        ours = km.KMeans(args.k, random_state=s, max_iter=30).fit(X).inertia_
        ref = SkKMeans(args.k, n_init=1, random_state=s, max_iter=30).fit(X).inertia_
        ratios.append(ours / ref)
        print(f"seed {s}: inertia {ours:.1f} vs scikit-learn {ref:.1f}: ratio {ours / ref:.3f}")
    print(f"ratio range {min(ratios):.3f}-{max(ratios):.3f}, median {float(np.median(ratios)):.3f}")


if __name__ == "__main__":
    main()

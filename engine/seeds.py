"""Every random choice of a run, derived one way from its one seed (``--seed``).

Each purpose below gets its own stream: ``numpy.random.SeedSequence(seed, spawn_key=(purpose,
*keys))``, as ``SeedSequence.spawn`` makes children (a child's spawn key is its parent's plus its
index). Streams of different purposes are independent whatever the seed, so no two samplers share
draws by accident (as ``seed + 1`` and ``seed`` would for a run at seed 1 and one at seed 0), and
adding a purpose changes no other. ``keys`` tell apart the draws of one purpose (a draw's number,
a candidate k). Code that takes an integer seed (scikit-learn, t-SNE) gets :func:`derive`'s; code
that takes a generator gets :func:`rng`'s.
"""

from __future__ import annotations

import numpy as np

# purpose -> its index in the spawn key; append new purposes, never renumber (results would move)
PURPOSES: dict[str, int] = {
    "kmeans_init_sample": 1,  # the rows k-means++ / k-means|| seeds from
    "kmeans_init": 2,  # the seeding's own draws
    "kmeans_fit_rows": 3,  # the rows each iteration fits on (kmeans.fit_fraction < 1)
    "select_k_sample": 4,  # the sample the choice of k works on
    "select_k_draw": 5,  # a modularity draw's subsample and fit (keys: draw, k_top)
    "select_k_reference": 6,  # the reference rows the draws are compared on
    "select_k_silhouette": 7,  # the silhouette rule's subsamples and fits (keys: k, repeat)
    "partition_sample": 8,  # the rows the duplicate search's partitions are fitted on
    "partition_fit": 9,  # the partitions' k-means
    "layout_sample": 10,  # the rows the map is fitted on
    "layout_fit": 11,  # PCA, t-SNE and their initial jitter
    "layout_eval": 12,  # the rows the map's neighbour preservation is measured on
    "label_sample": 13,  # the documents keywords are counted over
    "report_points": 14,  # the points the report's map shows
    "update_new_themes": 15,  # an update's new themes' k-means (keys: how many)
}


def sequence(seed: int, purpose: str, *keys: int) -> np.random.SeedSequence:
    """The seed sequence of ``purpose`` (a name in :data:`PURPOSES`) for the run seed ``seed``."""
    return np.random.SeedSequence(int(seed), spawn_key=(PURPOSES[purpose], *(int(k) for k in keys)))


def rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A generator drawing ``purpose``'s stream."""
    return np.random.default_rng(sequence(seed, purpose, *keys))


def derive(seed: int, purpose: str, *keys: int) -> int:
    """An integer seed (below 2**31, as every library takes) for ``purpose``'s stream."""
    return int(sequence(seed, purpose, *keys).generate_state(1)[0] >> 1)

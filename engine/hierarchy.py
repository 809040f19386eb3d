"""The theme hierarchy: themes merged pairwise by centroid similarity, up to one root.

Agglomerative, centroid linkage on the sphere: each group of themes is represented by the
size-weighted mean of its themes' centroids, and at every step the two groups whose means have
the highest cosine merge. Node ids follow SciPy's linkage convention: leaves are the theme ids
``0 .. k-1``, the i-th merge creates node ``k + i``, the last node is the root. Centroid linkage
can merge a pair at a higher similarity than an earlier merge (an inversion); the tree records
each merge's own similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Merge:
    id: int
    children: tuple[int, int]
    similarity: float  # cosine of the two groups' size-weighted mean centroids
    size: int  # documents under the node
    themes: tuple[int, ...]  # leaf theme ids under the node, ascending


def merge_tree(centroids: np.ndarray, sizes: np.ndarray) -> list[Merge]:
    """The ``k - 1`` merges of ``k`` themes (``centroids`` (k, d), ``sizes`` documents per theme),
    in merge order; deterministic (equal similarities: the first pair in slot order). No merges for ``k < 2``."""
    c = np.asarray(centroids, dtype=np.float64)
    k = c.shape[0]
    if k < 2:
        return []
    w = np.maximum(np.asarray(sizes, dtype=np.float64), 1e-12)
    sums = c * w[:, None]  # slot -> size-weighted sum of its group's centroids (its mean's direction)
    node = np.arange(k)  # slot -> node id
    active = np.ones(k, dtype=bool)
    members: dict[int, tuple[int, ...]] = {t: (t,) for t in range(k)}
    count = {t: int(sizes[t]) for t in range(k)}
    sim = _cos(sums, sums)
    np.fill_diagonal(sim, -np.inf)
    merges: list[Merge] = []
    for step in range(k - 1):
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)  # row-major: the first slot pair among equal maxima
        a, b = (int(i), int(j)) if node[i] < node[j] else (int(j), int(i))
        s = float(sim[a, b])
        na, nb = int(node[a]), int(node[b])
        new = k + step
        members[new] = tuple(sorted(members.pop(na) + members.pop(nb)))
        count[new] = count.pop(na) + count.pop(nb)
        merges.append(Merge(new, (na, nb), s, count[new], members[new]))
        # the new group takes slot a; slot b is retired
        sums[a] += sums[b]
        node[a] = new
        active[b] = False
        sim[b, :] = -np.inf
        sim[:, b] = -np.inf
        row = np.where(active, _cos(sums[a : a + 1], sums)[0], -np.inf)
        row[a] = -np.inf
        sim[a, :] = row
        sim[:, a] = row
    return merges


def _cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    nx = np.linalg.norm(x, axis=1, keepdims=True)
    ny = np.linalg.norm(y, axis=1, keepdims=True)
    return (x / np.where(nx > 0, nx, 1.0)) @ (y / np.where(ny > 0, ny, 1.0)).T


def parents(merges: list[Merge], k: int) -> list[int | None]:
    """The parent node of every node ``0 .. k + len(merges) - 1`` (None for the root)."""
    out: list[int | None] = [None] * (k + len(merges))
    for m in merges:
        for child in m.children:
            out[child] = m.id
    return out

"""Search quality and speed of a run's index (``engine/index.py``, Qdrant Edge: with an HNSW graph,
and exact as a run below ``index.hnsw_min_points`` builds it) on labelled corpora
(bench/corpora.py) and optionally a synthetic set at scale, against an exact search over the same
vectors.

For each corpus: every document is indexed as a run indexes it (payload theme and kept flag);
then ``--queries`` seeded documents are searched by their own text's vector for their 11 nearest.
Reported:

* ``self first`` — the share of queries whose own document comes back first (or tied first);
* ``precision@10`` — the share of the other 10 that carry the query's label, for the index and
  for the exact search (the baseline: the same embedding with no approximation), and the chance
  level (the probability that a random document shares the label);
* ``recall@10`` — how many of the exact search's 10 nearest the index returns;
* ``filtered`` — a filter on one label-sized payload group, checked to return only its members;
* seconds to build the index and per query (both measured in this run).

    .venv/bin/python bench/search.py                  # all corpora, both indexes
    .venv/bin/python bench/search.py --corpora bbc --queries 300
    .venv/bin/python bench/search.py --corpora --synthetic-n 100000 --kinds exact
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import corpora
from _common import RESULTS, machine_basics, result_header, write_result

from theme_engine.engine.index import open_index

log = logging.getLogger("bench.search")


def measure(name: str, X: np.ndarray, labels: np.ndarray, kind: str, queries: int, seed: int) -> dict[str, Any]:
    """One index (``kind``: ``hnsw`` — the graph a run builds at or above ``index.hnsw_min_points`` —
    or ``exact``, the run's index below it) over ``X``, its quality and speed."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    n = len(X)
    rows = np.arange(n, dtype=np.int64)
    payloads = [{"row": int(i), "theme": int(codes[i]), "kept": 1, "text": ""} for i in range(n)]
    log.info("%s: indexing %d vectors (%s)", name, n, kind)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = open_index(Path(tmp), dim=X.shape[1], create=True, exact=kind == "exact")
        index.add(rows, X, payloads)
        index.finish()
        build_s = time.perf_counter() - t0
        probe = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
        first, p_index, p_exact, recall, query_s = [], [], [], [], []
        for q in probe:
            t1 = time.perf_counter()
            hits = index.search(X[q], 11)
            query_s.append(time.perf_counter() - t1)
            got = [h.row for h in hits]
            scores = np.array([h.score for h in hits])
            first.append(q in [r for r, s in zip(got, scores) if s >= scores[0] - 1e-4])
            others = [r for r in got if r != q][:10]
            sims = X @ X[q]
            sims[q] = -np.inf
            exact = np.argsort(-sims, kind="stable")[:10]
            p_index.append(float(np.mean(codes[others] == codes[q])))
            p_exact.append(float(np.mean(codes[exact] == codes[q])))
            recall.append(len(set(others) & set(exact.tolist())) / 10)
        group = int(np.bincount(codes).argmax())
        filtered = index.search(X[probe[0]], 50, theme=group)
        index.close()
    chance = float(np.sum((np.bincount(codes) / n) ** 2))
    return {
        "corpus": name,
        "search": kind,
        "documents": n,
        "labels": int(codes.max() + 1),
        "queries": int(len(probe)),
        "self_first": round(float(np.mean(first)), 4),
        "precision_at_10": round(float(np.mean(p_index)), 4),
        "precision_at_10_exact": round(float(np.mean(p_exact)), 4),
        "chance": round(chance, 4),
        "recall_at_10": round(float(np.mean(recall)), 4),
        "filter_only_members": all(h.payload["theme"] == group for h in filtered) and len(filtered) == min(50, int(np.sum(codes == group))),
        "build_s": round(build_s, 3),
        "query_ms_median": round(1000 * float(np.median(query_s)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", nargs="*", default=list(corpora.NAMES))
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", nargs="+", choices=("hnsw", "exact"), default=["hnsw", "exact"], help="indexes to build per data set")
    ap.add_argument(
        "--synthetic-n", type=int, default=0, metavar="N",
        help="also N noisy copies of the corpora's vectors (corpora.synthetic, as bench/layout.py): the query time at scale",
    )
    ap.add_argument("--noise", type=float, default=0.75)
    ap.add_argument("--out", type=Path, default=RESULTS / "search.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sets = []
    for name in args.corpora:
        c = corpora.load(name)
        sets.append((name, corpora.embedded(c), np.asarray(c.labels)))
    if args.synthetic_n > 0:
        sets.append((f"synthetic {args.synthetic_n}", *corpora.synthetic(args.synthetic_n, args.noise, args.seed)))
    rows = [measure(name, X, y, kind, args.queries, args.seed) for name, X, y in sets for kind in args.kinds]
    print(f"\n{'data':<18}{'search':>7}{'docs':>8}{'self 1st':>10}{'P@10':>8}{'P@10 exact':>12}{'chance':>8}{'R@10':>7}{'build s':>9}{'query ms':>10}")
    for r in rows:
        print(
            f"{r['corpus']:<18}{r['search']:>7}{r['documents']:>8}{r['self_first']:>10.3f}{r['precision_at_10']:>8.3f}"
            f"{r['precision_at_10_exact']:>12.3f}{r['chance']:>8.3f}{r['recall_at_10']:>7.3f}{r['build_s']:>9.2f}{r['query_ms_median']:>10.2f}"
        )
    write_result(args.out, {**result_header("search", vars(args)), "machine": machine_basics(), "results": rows})


if __name__ == "__main__":
    main()

"""k-means cost as n grows, and the 1M x 384, k = 1000 comparison with faiss (issue 3).

For each n in ``--sizes`` (default 100k, 300k, 1M) on the same synthetic clustered unit vectors
as ``bench/kmeans.py`` (``--k`` true centers, 384-d), both methods run ``--iters`` Lloyd iterations
on the same threads (``threadpoolctl`` + ``faiss.omp_set_num_threads``):

  * engine: ``engine.kmeans.fit_sharded`` on one in-process shard (``max_iter=iters, tol=0``) —
    seeding on its default sample (32 per centroid, at least 10,000; k-means|| above k = 256), then
    Lloyd on all points; centroids only, as faiss's ``train`` (no final assignment pass);
  * faiss:  ``faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=n)`` — all points, random init.

Printed per n: seconds (init included), engine / faiss, inertia (sum of squared distances to the
nearest returned centroid, float64, same code for both) and its ratio, and microseconds per vector
per iteration. Cost growth = the largest engine per-vector-iteration time over the smallest.

    cd /work/main && /work/venv/bin/python bench/kmeans_scale.py          # ~15 min on 2 cores

Results JSON: ``bench/results/kmeans_scale.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from _common import RESULTS, result_header, write_result
from kmeans import (
    faiss,
    fit_faiss,
    inertia_of,
    machine_info,
    make_sphere_blobs,
    print_machine,
    timed,
)
from threadpoolctl import threadpool_limits

from theme_engine.engine import kmeans as ek


def fit_engine(X, k: int, iters: int, seed: int):
    state = ek.fit_sharded(ek.LocalShards([X]), k, seed=seed, max_iter=iters, tol=0.0)
    return state.centroids, state.iteration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated n")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "kmeans_scale.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("theme_engine.engine.kmeans").setLevel(logging.ERROR)  # tol=0 never "converges": no warning per fit
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with threadpool_limits(limits=args.threads):
        faiss.omp_set_num_threads(args.threads)
        info = machine_info()
        print_machine(info)
        print(f"\nk-means, d={args.d}, k={args.k}, {args.iters} iterations, {args.threads} threads, tol=0\n")
        print(f"{'n':>9} {'engine s':>9} {'faiss s':>8} {'ratio':>6} {'inertia eng/faiss':>18} {'eng us/vec/iter':>16} {'faiss us/vec/iter':>18}")
        for n in sizes:
            X, _ = make_sphere_blobs(n, args.d, args.k, args.noise, args.seed)
            t_e, _, _, C_e, it_e = timed(lambda: fit_engine(X, args.k, args.iters, args.seed), 1)
            t_f, _, _, C_f, it_f = timed(lambda: fit_faiss(X, args.k, args.iters, args.seed, True), 1)
            i_e, i_f = inertia_of(X, C_e), inertia_of(X, C_f)
            row = {
                "n": n,
                "engine_seconds": round(t_e, 3),
                "faiss_seconds": round(t_f, 3),
                "ratio": round(t_e / t_f, 3),
                "engine_inertia": i_e,
                "faiss_inertia": i_f,
                "inertia_ratio": round(i_e / i_f, 5),
                "engine_iterations": it_e,
                "engine_us_per_vector_iteration": round(1e6 * t_e / (n * args.iters), 4),
                "faiss_us_per_vector_iteration": round(1e6 * t_f / (n * args.iters), 4),
            }
            rows.append(row)
            print(
                f"{n:>9} {t_e:>9.2f} {t_f:>8.2f} {row['ratio']:>5.2f}x {row['inertia_ratio']:>18.4f} "
                f"{row['engine_us_per_vector_iteration']:>16.3f} {row['faiss_us_per_vector_iteration']:>18.3f}",
                flush=True,
            )
    per_vec = [r["engine_us_per_vector_iteration"] for r in rows]
    growth = max(per_vec) / min(per_vec)
    print(f"\ncost growth (largest / smallest engine time per vector per iteration): {growth:.2f}x (target <= 1.3x)")
    big = rows[-1]
    print(f"at n={big['n']}: engine / faiss = {big['ratio']:.2f}x (target <= 1.25x), inertia ratio {big['inertia_ratio']:.4f} (within 1%: lower is better)")
    write_result(
        args.out,
        {
            **result_header("kmeans_scale", vars(args)),
            "machine": info,
            "rows": rows,
            "cost_growth": round(growth, 3),
        },
    )


if __name__ == "__main__":
    main()

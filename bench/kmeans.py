"""k-means on synthetic clustered unit vectors: ``engine.kmeans.KMeans`` vs faiss vs scikit-learn.

Data: ``--centers`` (default: ``--k``) random directions on the unit sphere in ``--d`` dimensions;
every point is a uniformly drawn center plus isotropic Gaussian noise of total norm about
``--noise``, then L2-normalised (float32) — like ``make_blobs`` on the sphere, as sentence
embeddings are.

Every method runs on the same array with the same thread count (``threadpoolctl`` limits on every
BLAS/OpenMP library loaded + ``faiss.omp_set_num_threads``) and ``--iters`` Lloyd iterations:

  * ``engine KMeans (init on S)``  ``engine.kmeans.KMeans(k, max_iter=iters, tol=0,
                                    init_sample_size=S)``: k-means++ (greedy, 2 + log k trials) on a
                                    uniform sample of S points, then Lloyd on all points. One row per
                                    S in ``--init-samples`` (default: the engine's own rule, i.e.
                                    ``init_sample_size=None`` = 32 per centroid, at least 10,000;
                                    50,000; all points).
  * ``faiss Kmeans (all points)``   ``faiss.Kmeans(d, k, niter=iters, max_points_per_centroid=n)``:
                                    no subsampling; random init (faiss has no k-means++).
  * ``faiss Kmeans (default sub.)`` faiss defaults: trains on 256 points per centroid (25,600 for
                                    k = 100), then we assign all points — a faster, cruder fit.
  * ``sklearn KMeans lloyd``       ``KMeans(k, init="k-means++", n_init=1, max_iter=iters, tol=0,
                                    algorithm="lloyd")``. With tol=0 it still stops early if the
                                    labels stop changing (the ``iters`` column says).

Seconds are wall time of ``fit`` (init included), best of ``--repeats``. Inertia is computed the same
way for all methods, here: the sum over every point of the squared distance to its nearest returned
centroid (float64). A breakdown of the engine's fit (tolerance moments / k-means++ init on the
smallest S / one Lloyd step and its kernels / the bare GEMM) is printed beneath the table.
``--d``, ``--k`` etc. change the problem; nothing in the environment is changed (OPENBLAS_CORETYPE,
*_NUM_THREADS are reported, not set).

    cd /work/main && /work/venv/bin/python bench/kmeans.py            # 100k x 384, k=100, 20 iters, 2 threads

Results JSON: ``bench/results/kmeans.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import RESULTS, code_revision, cpu_busy_percent, machine_basics, write_result  # noqa: E402

import faiss  # noqa: E402
import sklearn.cluster  # noqa: E402,F401 - loaded before the limits, so threadpoolctl sees (and limits) its OpenMP
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from theme_engine.engine import kmeans as ek  # noqa: E402


# ----------------------------------------------------------------------------- data


def make_sphere_blobs(n: int, d: int, centers: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-normalised float32 points around ``centers`` random unit directions, and their labels."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((centers, d), dtype=np.float32)
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    labels = rng.integers(centers, size=n)
    X = rng.standard_normal((n, d), dtype=np.float32)
    X *= noise / np.sqrt(d)
    X += C[labels]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return np.ascontiguousarray(X, dtype=np.float32), labels


def inertia_of(X: np.ndarray, C: np.ndarray, block: int = 8192) -> float:
    """Sum over all rows of the squared distance to the nearest row of ``C`` (float64, exact)."""
    C64 = np.asarray(C, dtype=np.float64)
    c_sq = np.einsum("ij,ij->i", C64, C64)
    total = 0.0
    for s in range(0, X.shape[0], block):
        xb = X[s : s + block].astype(np.float64)
        d = np.einsum("ij,ij->i", xb, xb)[:, None] - 2.0 * (xb @ C64.T) + c_sq[None, :]
        total += float(np.clip(d.min(axis=1), 0.0, None).sum())
    return total


# ----------------------------------------------------------------------------- methods


def fit_engine(X: np.ndarray, k: int, iters: int, seed: int, init_sample: int) -> tuple[np.ndarray, int]:
    km = ek.KMeans(k, max_iter=iters, tol=0.0, random_state=seed, init_sample_size=init_sample).fit(X)
    return km.cluster_centers_, int(km.n_iter_)


def fit_faiss(X: np.ndarray, k: int, iters: int, seed: int, full: bool) -> tuple[np.ndarray, int]:
    kwargs: dict[str, Any] = {"niter": iters, "seed": seed, "verbose": False}
    if full:
        kwargs["max_points_per_centroid"] = X.shape[0]
    km = faiss.Kmeans(X.shape[1], k, **kwargs)
    km.train(X)
    return np.asarray(km.centroids), iters


def fit_sklearn(X: np.ndarray, k: int, iters: int, seed: int) -> tuple[np.ndarray, int]:
    km = sklearn.cluster.KMeans(k, init="k-means++", n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd", random_state=seed).fit(X)
    return km.cluster_centers_.astype(np.float32), int(km.n_iter_)


def timed(fn: Callable[[], tuple[np.ndarray, int]], repeats: int) -> tuple[float, list[float], list[float], np.ndarray, int]:
    """Best wall seconds, all wall seconds, process CPU seconds per run, and the last fit's output."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert out is not None
    return min(times), times, cpu, out[0], out[1]


def engine_breakdown(X: np.ndarray, k: int, seed: int, init_sample: int, steps: int = 3) -> dict[str, float]:
    """Seconds of the engine's parts on one in-process shard: init, one Lloyd step, its pieces."""
    group = ek.LocalShards([X])
    shard = group.shards[0]
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    ek.tolerance(group, 0.0)
    out["tolerance (moments)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    C = ek.init_centroids(group, k, seed, init_sample)
    out[f"k-means++ init on {min(init_sample, X.shape[0])}"] = time.perf_counter() - t0
    Cd = C.astype(np.float32)
    t_assign, t_sums, t_step = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        x_sq = getattr(shard, "x_sq", None)  # row norms cached by the shard (newer engine)
        labels, _ = ek.assign(shard.X, Cd, np, shard.batch_rows, **({"x_sq": x_sq} if x_sq is not None else {}))
        t_assign.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ek.segment_sums(shard.X, labels, k, np)
        t_sums.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        shard.step(C)
        t_step.append(time.perf_counter() - t0)
    out["Lloyd step (Shard.step)"] = min(t_step)
    out["  of which assign()"] = min(t_assign)
    out["  of which segment_sums()"] = min(t_sums)
    t_gemm = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _ = X @ Cd.T
        t_gemm.append(time.perf_counter() - t0)
    out["GEMM X @ C.T alone (a step's lower bound)"] = min(t_gemm)
    return out


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    blas = [
        {k: v for k, v in lib.items() if k in ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer", "architecture", "filepath")}
        for lib in threadpool_info()
    ]
    for lib in blas:
        lib["filepath"] = os.path.basename(lib.get("filepath", ""))
    try:
        import sklearn

        skv = sklearn.__version__
    except ImportError:  # pragma: no cover
        skv = None
    return {
        **machine_basics(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "sklearn": skv,
        "threadpools": blas,
        "cpu_busy_percent_before_start": cpu_busy_percent(),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: {info['platform']} | {info['processor']} | cpu_count={info['cpu_count']} affinity={info['affinity']}")
    print(f"python {info['python']}, numpy {info['numpy']}, faiss {info['faiss']}, scikit-learn {info['sklearn']}")
    print("threadpools (threadpoolctl, inside the limits):")
    for lib in info["threadpools"]:
        print(
            f"  {lib.get('internal_api')}/{lib.get('prefix')} {lib.get('version')} arch={lib.get('architecture', '-')} "
            f"layer={lib.get('threading_layer', '-')} threads={lib.get('num_threads')} ({lib.get('filepath')})"
        )
    print(f"env: {info['env'] or '(no OPENBLAS_CORETYPE / *_NUM_THREADS set)'}")
    load, busy = info["loadavg_1_5_15"], info["cpu_busy_percent_before_start"]
    print(
        f"CPU busy in the 3 s before start: {busy}% (other processes; above ~10% the timings are inflated); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--centers", type=int, default=None, help="true clusters in the data; default: --k")
    ap.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit center (default 1.0)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--init-samples",
        default="default,50000,all",
        help="engine rows: k-means++ sample sizes, comma separated ('default': the engine's own rule; 'all': n)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed fits per method; the best is reported")
    ap.add_argument("--skip-sklearn", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "kmeans.json")
    args = ap.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    centers = args.centers or args.k

    t0 = time.perf_counter()
    X, _ = make_sphere_blobs(args.n, args.d, centers, args.noise, args.seed)
    gen_s = time.perf_counter() - t0

    logging.getLogger("theme_engine.engine.kmeans").setLevel(logging.ERROR)  # tol=0 never converges: the warning is expected
    rows: list[dict[str, Any]] = []
    with threadpool_limits(limits=args.threads):
        faiss.omp_set_num_threads(args.threads)
        info = machine_info()
        rev = code_revision()
        print(f"command: {command}")
        print(f"code: {rev['revision']}; engine from {rev['engine_imported_from']}")
        print_machine(info)
        print(
            f"data: n={args.n} d={args.d} float32 unit rows, {centers} true centers, noise={args.noise}, seed={args.seed} "
            f"(generated in {gen_s:.1f} s); k={args.k}, iters={args.iters}, threads={args.threads}, best of {args.repeats}"
        )
        print()

        methods: list[tuple[str, Callable[[], tuple[np.ndarray, int]]]] = [
            ("faiss Kmeans (all points)", lambda: fit_faiss(X, args.k, args.iters, args.seed, True)),
            ("faiss Kmeans (default subsampling)", lambda: fit_faiss(X, args.k, args.iters, args.seed, False)),
        ]
        seen: set[int] = set()
        for item in args.init_samples.split(","):
            item = item.strip()
            if item == "default":
                rule = getattr(ek, "default_init_sample", None)
                size, label = (rule(args.n, args.k) if rule else 50_000), "engine default"
            elif item == "all":
                size, label = args.n, "all"
            else:
                size, label = int(item), ""
            size = min(size, args.n)
            if size in seen:
                continue
            seen.add(size)
            name = f"engine KMeans (init on {size}{', ' + label if label else ''})"
            methods.append((name, lambda size=size: fit_engine(X, args.k, args.iters, args.seed, size)))
        init_sample = min(seen) if seen else min(args.n, 50_000)
        if not args.skip_sklearn:
            methods.append(("sklearn KMeans lloyd k-means++", lambda: fit_sklearn(X, args.k, args.iters, args.seed)))

        for name, fn in methods:
            best, times, cpu, C, n_iter = timed(fn, args.repeats)
            inertia = inertia_of(X, C)
            rows.append(
                {"method": name, "seconds": best, "all_seconds": times, "cpu_seconds": cpu, "iterations": n_iter, "inertia": inertia}
            )
            print(
                f"  {name}: {best:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}; process CPU s: "
                f"{', '.join(f'{t:.2f}' for t in cpu)}), inertia {inertia:.1f}",
                flush=True,
            )
        breakdown = engine_breakdown(X, args.k, args.seed, init_sample)

    ref = rows[0]
    for r in rows:
        r["time_ratio_vs_faiss_full"] = r["seconds"] / ref["seconds"]
        r["inertia_ratio_vs_faiss_full"] = r["inertia"] / ref["inertia"]

    print()
    header = f"| {'method':<46} | {'seconds':>8} | {'x faiss (full)':>14} | {'iters':>5} | {'inertia':>12} | {'inertia / faiss':>15} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        print(
            f"| {r['method']:<46} | {r['seconds']:>8.2f} | {r['time_ratio_vs_faiss_full']:>14.2f} | {r['iterations']:>5} "
            f"| {r['inertia']:>12.1f} | {r['inertia_ratio_vs_faiss_full']:>15.4f} |"
        )
    print()
    print(f"engine breakdown (best of 3 for the step parts; load average now {os.getloadavg()[0]:.2f}):")
    for name, s in breakdown.items():
        print(f"  {name:<46} {s:8.3f} s")

    result = {
        "loadavg_at_end": list(os.getloadavg()),
        "benchmark": "kmeans",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": rev,
        "params": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "centers": centers},
        "machine": info,
        "inertia_definition": "sum over all points of squared Euclidean distance to the nearest returned centroid (float64)",
        "rows": rows,
        "engine_breakdown_seconds": breakdown,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

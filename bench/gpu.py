"""GPU paths vs their CPU twins and vs the GPU libraries' own: embedding, k-means, near-duplicates.

For a machine with a CUDA GPU and the ``gpu`` extra installed; where no GPU is usable it says why
and exits with code 2. Every GPU timing synchronises the device before reading the clock.

  * **embedding** — the same ``--embed-docs`` texts from ``demo/bible-verses.jsonl`` embedded by
    ``actors.embed.load_embedder`` on the CPU (onnxruntime CPU provider, all cores) and on the GPU
    (CUDA provider, checked to be the session's): documents/s, and the cosine of each GPU vector
    to its CPU twin (min and mean).
  * **k-means** — ``--n`` x ``--d`` clustered unit vectors, ``k = --k``, ``--iters`` Lloyd
    iterations, on the GPU: ``engine.kmeans.KMeans(device=cuda)`` (k-means++ on the engine's
    default sample, then Lloyd on all points), ``faiss.Kmeans(gpu=True)`` on all points and with its
    default subsampling, and cuML ``KMeans`` when cuML imports. Inertia of every result computed
    the same way (on the GPU, float64 sums).
  * **near-duplicates** — ``--dedup-n`` unit vectors with planted near-duplicates (cosine in
    [threshold, 1)): the engine's partitioned search on the GPU (``partitioned_pairs(device=cuda)``,
    the k-NN -> range emulation inside) and on the CPU, against an exact flat search of every row
    against every row on the GPU (``GpuIndexFlatIP``, same emulation): seconds and whether the pair
    sets agree (away from float rounding at the threshold).

    cd /work/main && python bench/gpu.py                     # all three, default sizes
    cd /work/main && python bench/gpu.py --skip kmeans       # embedding and near-duplicates only

Results JSON: ``bench/results/gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import RESULTS, ROOT, code_revision, cpu_busy_percent, machine_basics, write_result  # noqa: E402

from theme_engine.engine.device import CPU, Device, GpuUnavailable, gpu_status, local_gpu_ids, resolve_device, to_numpy  # noqa: E402

DEMO = ROOT / "demo" / "bible-verses.jsonl"
log = logging.getLogger("bench.gpu")


# ----------------------------------------------------------------------------- timing


def synchronize(device: Device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.kind == "cuda":
        device.xp.cuda.Device(int(device.ordinal or 0)).synchronize()


def timed(device: Device, fn: Callable[[], Any], repeats: int = 1) -> tuple[float, list[float], Any]:
    """Best and all wall seconds of ``fn`` (the device synchronised before each clock read), and its last output."""
    times, out = [], None
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


# ----------------------------------------------------------------------------- embedding


def bench_embedding(cuda: Device, docs: int, batch: int, repeats: int) -> dict[str, Any]:
    from theme_engine.actors.embed import load_embedder, onnx_session
    from theme_engine.engine.embedding import MODELS

    rows = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    texts = (texts * (docs // max(len(texts), 1) + 1))[:docs]
    name = next(iter(MODELS))
    root = tempfile.mkdtemp(prefix="te-bench-gpu-")
    out: dict[str, Any] = {"documents": len(texts), "model": name, "batch_size": batch}
    vectors = {}
    for label, device in (("cpu", CPU), ("gpu", cuda)):
        t0 = time.perf_counter()
        emb = load_embedder(MODELS[name], root, os.cpu_count(), device)
        load_s = time.perf_counter() - t0
        emb.embed(texts[: min(256, len(texts))], batch_size=batch)  # warm-up: provider set-up, kernels
        best, times, vecs = timed(device, lambda emb=emb: emb.embed(texts, batch_size=batch, max_batch_tokens=batch * 128), repeats)
        vectors[label] = vecs
        out[label] = {
            "providers": list(onnx_session(emb).get_providers()),
            "load_seconds": load_s,
            "seconds": best,
            "all_seconds": times,
            "docs_per_second": len(texts) / best,
        }
        print(f"  embedding on {label}: {len(texts) / best:,.0f} docs/s ({best:.2f} s; providers {out[label]['providers']})", flush=True)
    cos = np.einsum("ij,ij->i", vectors["cpu"], vectors["gpu"])
    out["cosine_gpu_vs_cpu"] = {"min": float(cos.min()), "mean": float(cos.mean())}
    out["speedup_gpu_vs_cpu"] = out["gpu"]["docs_per_second"] / out["cpu"]["docs_per_second"]
    return out


# ----------------------------------------------------------------------------- k-means


def sphere_blobs(n: int, d: int, centers: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    C = unit(rng.standard_normal((centers, d), dtype=np.float32))
    X = rng.standard_normal((n, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
    X += C[rng.integers(centers, size=n)]
    return unit(X)


def inertia_on(cuda: Device, Xd: Any, C: np.ndarray) -> float:
    """Sum over all rows of the squared distance to the nearest centroid, on the GPU (float64 sum)."""
    from theme_engine.engine.kmeans import assign

    xp = cuda.xp
    _, d = assign(Xd, xp.asarray(np.asarray(C, dtype=np.float32)), xp, 65_536)
    return float(xp.sum(d.astype(xp.float64)))


def bench_kmeans(cuda: Device, n: int, d: int, k: int, iters: int, seed: int, repeats: int) -> dict[str, Any]:
    from theme_engine.engine.kmeans import KMeans

    X = sphere_blobs(n, d, k, 1.0, seed)
    xp = cuda.xp
    Xd = xp.asarray(X)
    methods: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("engine KMeans (cuda)", lambda: KMeans(k, max_iter=iters, tol=0.0, random_state=seed, batch_rows=65_536, device=cuda).fit(Xd).cluster_centers_),
    ]
    skipped: dict[str, str] = {}
    try:
        import faiss

        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            raise GpuUnavailable("faiss is not a GPU build, or sees no GPU")

        def fit_faiss(full: bool) -> np.ndarray:
            kw: dict[str, Any] = {"niter": iters, "seed": seed, "gpu": True, "verbose": False}
            if full:
                kw["max_points_per_centroid"] = n
            km = faiss.Kmeans(d, k, **kw)
            km.train(X)
            return np.asarray(km.centroids)

        methods.append(("faiss Kmeans gpu=True (all points)", lambda: fit_faiss(True)))
        methods.append(("faiss Kmeans gpu=True (default subsampling)", lambda: fit_faiss(False)))
    except (ImportError, GpuUnavailable) as exc:
        skipped["faiss Kmeans gpu=True"] = str(exc)
    try:
        from cuml.cluster import KMeans as CuKMeans

        methods.append(
            (
                "cuML KMeans (k-means||)",
                lambda: to_numpy(CuKMeans(n_clusters=k, max_iter=iters, tol=0.0, n_init=1, random_state=seed, output_type="cupy").fit(Xd).cluster_centers_),
            )
        )
    except ImportError as exc:
        skipped["cuML KMeans"] = f"cuml is not importable ({exc})"
    logging.getLogger("theme_engine.engine.kmeans").setLevel(logging.ERROR)  # tol=0 never converges: expected
    rows = []
    for name, fn in methods:
        best, times, C = timed(cuda, fn, repeats)
        rows.append({"method": name, "seconds": best, "all_seconds": times, "inertia": inertia_on(cuda, Xd, C)})
        print(f"  {name}: {best:.2f} s, inertia {rows[-1]['inertia']:.1f}", flush=True)
    for name, why in skipped.items():
        print(f"  {name}: skipped ({why})")
    ref = next((r for r in rows if r["method"].startswith("faiss") and "all points" in r["method"]), rows[0])
    for r in rows:
        r["time_ratio"] = r["seconds"] / ref["seconds"]
        r["inertia_ratio"] = r["inertia"] / ref["inertia"]
    return {"n": n, "d": d, "k": k, "iters": iters, "reference": ref["method"], "rows": rows, "skipped": skipped}


# ----------------------------------------------------------------------------- near-duplicates


def planted(n: int, d: int, threshold: float, seed: int) -> np.ndarray:
    """Clustered rows plus 10% planted near-duplicates at cosines uniform in [threshold, 1)."""
    rng = np.random.default_rng(seed)
    base = sphere_blobs(n - n // 10, d, max(10, n // 1000), 1.2, seed)
    src = rng.choice(base.shape[0], size=n // 10, replace=False)
    x = base[src].astype(np.float64)
    u = rng.standard_normal(x.shape)
    u -= np.sum(u * x, axis=1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    cos = rng.uniform(threshold, 1.0, size=(len(src), 1))
    X = np.concatenate([base, unit(cos * x + np.sqrt(1 - cos**2) * u)])
    return np.ascontiguousarray(X[rng.permutation(len(X))])


def bench_dedup(cuda: Device, n: int, d: int, threshold: float, seed: int) -> dict[str, Any]:
    from theme_engine.engine.dedup import range_pairs
    from theme_engine.engine.partition import partitioned_pairs

    X = planted(n, d, threshold, seed)
    rows = []

    def far(p: tuple[np.ndarray, ...]) -> set[tuple[int, int]]:
        keep = np.abs(p[2] - threshold) > 1e-5  # devices round float32 GEMMs differently at the threshold
        return set(zip(p[0][keep].tolist(), p[1][keep].tolist()))

    best, _, exact = timed(cuda, lambda: range_pairs(X, 0, X, 0, threshold, 65_536, device=cuda))
    ref = far(exact)
    rows.append({"method": "exact flat search, all rows (GpuIndexFlatIP, k-NN -> range)", "seconds": best, "pairs": int(len(exact[0]))})
    print(f"  {rows[-1]['method']}: {best:.2f} s, {len(exact[0]):,} pairs", flush=True)
    for label, device in (("partitioned (cuda)", cuda), ("partitioned (cpu)", CPU)):
        best, _, r = timed(device, lambda device=device: partitioned_pairs(X, threshold, spill=None, device=device))
        got = far((r.i, r.j, r.cos))
        rows.append(
            {
                "method": f"engine {label}",
                "seconds": best,
                "pairs": int(len(r.i)),
                "same_pairs_as_exact": got == ref,
                "missing": len(ref - got),
                "extra": len(got - ref),
                "partitions": r.n_partitions,
                "stage_seconds": r.seconds,
            }
        )
        print(f"  engine {label}: {best:.2f} s, {len(r.i):,} pairs, same as exact: {got == ref}", flush=True)
    for r in rows:
        r["time_ratio_vs_exact_gpu"] = r["seconds"] / rows[0]["seconds"]
    return {"n": n, "d": d, "threshold": threshold, "rows": rows}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embed-docs", type=int, default=50_000)
    ap.add_argument("--embed-batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=1_000_000, help="k-means rows")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--dedup-n", type=int, default=200_000)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma separated: embed, kmeans, dedup")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])

    status = gpu_status()
    if not status.available:
        print(f"bench/gpu.py needs a CUDA GPU, and none is usable here: {status.reason}", file=sys.stderr)
        for lib in status.libraries:
            print(f"  {lib.name}: {'usable' if lib.usable else lib.reason}", file=sys.stderr)
        return 2
    try:
        cuda = resolve_device("cuda", local_gpu_ids(status))
    except GpuUnavailable as exc:
        print(f"bench/gpu.py needs a CUDA GPU: {exc}", file=sys.stderr)
        return 2
    props = cuda.xp.cuda.runtime.getDeviceProperties(int(cuda.ordinal or 0))
    gpu_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    machine = {
        **machine_basics(),
        "gpu": gpu_name,
        "gpu_memory_bytes": int(props["totalGlobalMem"]),
        "gpu_status": status.as_dict(),
        "cpu_busy_percent_before_start": cpu_busy_percent(),
    }
    rev = code_revision()
    print(f"command: {command}")
    print(f"code: {rev['revision']}; engine from {rev['engine_imported_from']}")
    print(f"machine: {machine['platform']} | cpu_count={machine['cpu_count']} | GPU {gpu_name} ({machine['gpu_memory_bytes'] / 2**30:.0f} GiB)")
    print(f"CPU busy in the 3 s before start: {machine['cpu_busy_percent_before_start']}%; load average {machine['loadavg_1_5_15']}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code": rev,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine,
    }
    if "embed" not in skip:
        print(f"\nembedding {args.embed_docs:,} verses:")
        result["embedding"] = bench_embedding(cuda, args.embed_docs, args.embed_batch, args.repeats)
        e = result["embedding"]
        print(f"  GPU/CPU: {e['speedup_gpu_vs_cpu']:.1f}x; cosine GPU vs CPU min {e['cosine_gpu_vs_cpu']['min']:.6f}")
    if "kmeans" not in skip:
        print(f"\nk-means {args.n:,} x {args.d}, k={args.k}, {args.iters} iterations:")
        result["kmeans"] = bench_kmeans(cuda, args.n, args.d, args.k, args.iters, args.seed, args.repeats)
        km = result["kmeans"]
        header = f"| {'method':<44} | {'seconds':>8} | {'x ref':>6} | {'inertia / ref':>13} |"
        print("\n" + header)
        print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
        for r in km["rows"]:
            print(f"| {r['method']:<44} | {r['seconds']:>8.2f} | {r['time_ratio']:>6.2f} | {r['inertia_ratio']:>13.4f} |")
    if "dedup" not in skip:
        print(f"\nnear-duplicates {args.dedup_n:,} x {args.d}, threshold {args.threshold}:")
        result["dedup"] = bench_dedup(cuda, args.dedup_n, args.d, args.threshold, args.seed)
        header = f"| {'method':<62} | {'seconds':>8} | {'x exact GPU':>11} | {'pairs':>10} |"
        print("\n" + header)
        print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
        for r in result["dedup"]["rows"]:
            print(f"| {r['method']:<62} | {r['seconds']:>8.2f} | {r['time_ratio_vs_exact_gpu']:>11.2f} | {r['pairs']:>10,} |")
    result["loadavg_at_end"] = list(os.getloadavg())
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

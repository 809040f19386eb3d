"""Near-duplicate pairs at scale: partitioned search (``engine.partition``) vs an exact FAISS flat search.

Data: ``--n`` float32 unit rows in ``--d`` dimensions around ``--centers`` topic directions (the
directions share a common component ``--common``, as sentence embeddings do, so unrelated topics
sit at cosine ~0.2; each topic has its own noise level, within-topic cosines ~0.4-0.75), and
``--pairs`` planted near-duplicate pairs: a row ``x`` and a copy ``cos x + sqrt(1 - cos^2) u`` at an
exact cosine drawn uniformly in [t, 1); ``u`` is a random direction orthogonal to ``x`` for half of
the pairs and the direction of another topic for the other half (copies pushed across topic and
partition boundaries). Copies overwrite rows at random positions, so pairs straddle any sharding.

Methods (same data, ``--threads`` threads: ``threadpool_limits`` + ``faiss.omp_set_num_threads``):

  * **partitioned** — ``engine.partition.partitioned_pairs`` with ``--partitions`` (default
    ``engine.partition.default_n_partitions(n)``: 1,000 at 100k and 1M) centroids from k-means on 32
    rows per partition, then route (numpy BLAS on ``--threads``) / search (``--threads`` partitions
    at a time, one FAISS thread each) / merge; one row
    per configuration in ``--configs``: ``NAME:spill=S,margin=M`` (``spill`` an integer or ``none``,
    ``margin`` a multiple of the safe margin ``sqrt(2-2t)/2``). Defaults:
    ``default`` (spill 8, safe margin), ``exact`` (no cap, safe margin: provably the full set),
    ``half-margin`` (spill 8, margin x 0.5) and ``no-spill`` (spill 0). The centroids are fitted once
    and shared; their time is added to every row.
  * **exact flat** — ``faiss.IndexFlatIP`` over all rows, ``range_search`` at the threshold, queries
    in batches of 4,096: the brute-force baseline. With ``--exact-sample S < n`` only a sample of
    query rows is searched (against *all* rows); its time per query row x n is the **extrapolated**
    time of the full search (cost is linear in the query rows), labelled as such.

Recall and precision. The exact pair set restricted to a query set Q is what the flat search of Q
against all rows returns. Q = one member of every planted pair + ``--exact-sample`` uniformly drawn
rows (with ``--exact-sample >= n``, every row: the whole exact set). Recall = |found ∩ exact| / |exact|
over the pairs with a member in Q (it covers every planted pair and the natural pairs near the
sampled rows); precision = share of *all* found pairs whose cosine, recomputed in float64, is at
least t (and found pairs touching Q that the flat search lacks are counted too). The ``exact``
configuration (no cap, safe margin) is exact by construction; recall of the others is also given
against it, over all pairs.

Peak memory: the largest RSS sampled (every 20 ms) while a method ran, minus the RSS before it
(``+MiB``; for the partitioned rows route + search + merge, the centroid fit is printed apart;
glibc's ``malloc_trim`` runs first, so that heap freed by an earlier method is not reused unseen), and
the process's peak RSS (``ru_maxrss``) at the end. The data itself is not counted in ``+MiB``; the
flat index holds a copy of it.

    cd /work/main && /work/venv/bin/python bench/dedup.py --n 100000 --exact-sample 100000
    cd /work/main && /work/venv/bin/python bench/dedup.py                       # 1M, exact timed on a sample

Results JSON: ``bench/results/dedup.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from _common import RESULTS, machine_basics, write_result  # noqa: E402

import faiss  # noqa: E402
import psutil  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from theme_engine.engine import partition as ep  # noqa: E402

MIB = 1024 * 1024


# ----------------------------------------------------------------------------- data


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(n: int, d: int, centers: int, common: float, pairs: int, t: float, seed: int, block: int = 65_536) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit rows with ``pairs`` planted near-duplicates; returns X, sources, copies."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal(d).astype(np.float32)
    m /= np.linalg.norm(m)
    C = unit_rows(unit_rows(rng.standard_normal((centers, d), dtype=np.float32)) + common * m)
    sizes = rng.lognormal(0.0, 0.5, size=centers)  # mildly unequal topic sizes
    labels = rng.choice(centers, size=n, p=sizes / sizes.sum())
    sigma = rng.uniform(0.6, 1.2, size=centers).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, block):
        lab = labels[s : s + block]
        xb = rng.standard_normal((lab.size, d), dtype=np.float32)
        xb *= (sigma[lab] / np.sqrt(d))[:, None]
        xb += C[lab]
        X[s : s + block] = unit_rows(xb)
    slots = rng.choice(n, size=2 * pairs, replace=False)
    src, dst = slots[:pairs], slots[pairs:]
    cos = rng.uniform(t, 1.0, size=pairs)
    x = X[src].astype(np.float64)
    u = rng.standard_normal(x.shape)
    half = pairs // 2
    u[half:] = C[rng.integers(centers, size=pairs - half)]  # toward another topic
    u -= np.sum(u * x, axis=1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = cos[:, None] * x + np.sqrt(1.0 - cos**2)[:, None] * u
    X[dst] = (y / np.linalg.norm(y, axis=1, keepdims=True)).astype(np.float32)
    return X, src.astype(np.int64), dst.astype(np.int64)


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Largest RSS seen while the block runs (sampled every ``interval`` s), and the RSS before."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.proc = psutil.Process()

    def __enter__(self) -> "PeakRSS":
        _malloc_trim()  # hand freed heap back first, so that the baseline is what is live now
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mib(self) -> float:
        return (self.peak - self.before) / MIB


def _malloc_trim() -> None:
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: baselines may include freed heap
        pass


def ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def flat_range(X: np.ndarray, queries: np.ndarray, t: float, batch: int = 4096, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Exact: every (q, j), q in ``queries``, j != q, x_q . x_j >= t, against all rows. Pairs as (min, max)."""
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    radius = float(np.nextafter(np.float32(t), np.float32(-np.inf))) - 1e-6
    out_i, out_j, out_s = [], [], []
    for s in range(0, queries.size, batch):
        q = queries[s : s + batch]
        lims, sims, ids = index.range_search(np.ascontiguousarray(X[q]), radius)
        rows = np.repeat(q, np.diff(lims.astype(np.int64)))
        cols = ids.astype(np.int64)
        keep = (rows != cols) & (sims >= t)
        out_i.append(np.minimum(rows, cols)[keep])
        out_j.append(np.maximum(rows, cols)[keep])
        out_s.append(sims[keep])
        if progress is not None:
            progress(s + q.size)
    seconds = time.perf_counter() - t0
    del index
    i, j, s = ep.merge_pairs([(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s))])
    return i, j, s, seconds


def keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(i, np.int64) * n + np.asarray(j, np.int64)


def parse_config(text: str, t: float) -> dict[str, Any]:
    name, _, rest = text.partition(":")
    cfg: dict[str, Any] = {"name": name, "spill": 8, "margin_scale": 1.0}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        if k == "spill":
            cfg["spill"] = None if v.lower() == "none" else int(v)
        elif k == "margin":
            cfg["margin_scale"] = float(v)
        else:
            raise SystemExit(f"unknown config key {k!r} in {text!r}")
    cfg["margin"] = ep.safe_margin(t) * cfg["margin_scale"]
    return cfg


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    pools = [
        {k: v for k, v in lib.items() if k in ("user_api", "internal_api", "prefix", "version", "num_threads", "architecture")}
        for lib in threadpool_info()
    ]
    return {
        **machine_basics(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "threadpools": pools,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--centers", type=int, default=1000, help="topic directions (default 1000)")
    ap.add_argument("--common", type=float, default=0.5, help="shared component of the topic directions (anisotropy)")
    ap.add_argument("--pairs", type=int, default=10_000, help="planted near-duplicate pairs")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--partitions", type=int, default=None, help="default: engine.partition.default_n_partitions(n)")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["default:spill=8,margin=1", "exact:spill=none,margin=1", "half-margin:spill=8,margin=0.5", "no-spill:spill=0"],
    )
    ap.add_argument("--exact-sample", type=int, default=5_000, help="uniform query rows for the flat search; >= n: all rows (full exact)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=RESULTS / "dedup.json")
    args = ap.parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    t = args.threshold
    n = args.n
    configs = [parse_config(c, t) for c in args.configs]

    load_start = list(os.getloadavg())
    t0 = time.perf_counter()
    X, src, dst = make_data(n, args.d, args.centers, args.common, args.pairs, t, args.seed)
    gen_s = time.perf_counter() - t0
    P = args.partitions or ep.default_n_partitions(n)
    full_exact = args.exact_sample >= n

    rows: list[dict[str, Any]] = []
    with threadpool_limits(limits=args.threads):
        faiss.omp_set_num_threads(args.threads)
        info = machine_info()
        print(f"command: {command}")
        print(f"machine: {info['platform']} | {info['processor']} | cpu_count={info['cpu_count']} affinity={info['affinity']} | {info['memory_gib']} GiB")
        print(f"python {info['python']}, numpy {info['numpy']}, faiss {info['faiss']}; threads={args.threads}: "
              + ", ".join(f"{p.get('internal_api')}={p.get('num_threads')}" for p in info["threadpools"]))
        print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
              + ("  (machine busy: timings are inflated)" if load_start[0] > 0.5 else ""))
        print(f"data: n={n} d={args.d} float32 unit rows ({X.nbytes / MIB:.0f} MiB), {args.centers} topics (common={args.common}), "
              f"{args.pairs} planted pairs at cos U[{t}, 1), threshold {t}; generated in {gen_s:.1f} s")
        rng = np.random.default_rng(args.seed + 1)
        print(f"partitions: {P}, centroids from k-means (5 Lloyd iterations) on {min(n, 32 * P)} sampled rows; safe margin {ep.safe_margin(t):.4f}")
        print(flush=True)

        # ---- partitioned: centroids once, then each configuration
        with PeakRSS() as mem_c:
            c0 = time.perf_counter()
            sample = np.sort(rng.choice(n, size=min(n, 32 * P), replace=False))
            C = ep.partition_centroids(X[sample], P, seed=args.seed, max_iter=5)
            cent_s = time.perf_counter() - c0
        print(f"centroids: {cent_s:.1f} s (+{mem_c.extra_mib:.0f} MiB)", flush=True)
        found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for cfg in configs:
            with PeakRSS() as mem:
                c0 = time.perf_counter()
                r = ep.partitioned_pairs(
                    X, t, centroids=C, spill=cfg["spill"], margin=cfg["margin"], batch_rows=args.batch_rows, n_jobs=args.threads
                )
                secs = time.perf_counter() - c0 + cent_s
            found[cfg["name"]] = (r.i, r.j, r.cos)
            row = {
                "method": f"partitioned {cfg['name']} (spill={cfg['spill']}, margin={cfg['margin_scale']:g}x safe)",
                "kind": "partitioned",
                "config": cfg,
                "seconds": secs,
                "seconds_breakdown": {**r.seconds, "centroids": cent_s},
                "extrapolated": False,
                "pairs_found": int(r.i.size),
                "n_partitions": r.n_partitions,
                "spilled_per_row": r.n_spilled / n,
                "rows_capped": r.n_capped,
                "largest_partition_owners": r.owners_max,
                "peak_extra_mib": mem.extra_mib,
                "centroids_peak_extra_mib": mem_c.extra_mib,
            }
            rows.append(row)
            print(f"  {row['method']}: {secs:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in row['seconds_breakdown'].items())}), "
                  f"{r.i.size} pairs, {row['spilled_per_row']:.2f} guests/row, {r.n_capped} rows capped, "
                  f"largest partition {r.owners_max} owners, +{row['peak_extra_mib']:.0f} MiB", flush=True)

        # ---- exact flat search (all rows, or a sample of query rows against all rows)
        if full_exact:
            queries = np.arange(n, dtype=np.int64)
        else:
            uniform = np.sort(rng.choice(n, size=args.exact_sample, replace=False))
            queries = np.union1d(src, uniform)
        n_uniform = n if full_exact else args.exact_sample
        last = [time.perf_counter()]

        def progress(done: int) -> None:
            if time.perf_counter() - last[0] > 60:
                last[0] = time.perf_counter()
                print(f"    exact flat: {done}/{queries.size} query rows", flush=True)

        with PeakRSS() as mem:
            ei, ej, es, flat_s = flat_range(X, queries, t, progress=progress)
        per_query = flat_s / queries.size
        exact_time = flat_s if full_exact else per_query * n
        rows.append({
            "method": "exact FAISS flat range search" + ("" if full_exact else f" (EXTRAPOLATED from {queries.size} query rows)"),
            "kind": "exact",
            "seconds": exact_time,
            "extrapolated": not full_exact,
            "measured_seconds": flat_s,
            "query_rows": int(queries.size),
            "seconds_per_query_row": per_query,
            "pairs_found": int(ei.size),
            "peak_extra_mib": mem.extra_mib,
        })
        print(f"  exact flat: {flat_s:.1f} s measured on {queries.size} query rows -> {exact_time:.1f} s for all {n}"
              + ("" if full_exact else " (extrapolated)") + f"; {ei.size} pairs touching the query rows", flush=True)

    # ---- recall / precision
    inQ = np.zeros(n, dtype=bool)
    inQ[queries] = True
    exact_keys = keys(ei, ej, n)
    planted_i, planted_j = np.minimum(src, dst), np.maximum(src, dst)
    planted_keys = keys(planted_i, planted_j, n)
    planted_in_exact = np.isin(planted_keys, exact_keys)
    natural = exact_keys[~np.isin(exact_keys, planted_keys)]
    ref_name = next((c["name"] for c in configs if c["spill"] is None and c["margin_scale"] >= 1.0), None)
    ref_keys = keys(*found[ref_name][:2], n) if ref_name else None
    for row in rows:
        if row["kind"] != "partitioned":
            continue
        i, j, s = found[row["config"]["name"]]
        k = keys(i, j, n)
        touch = inQ[i] | inQ[j]
        kq = k[touch]
        hit = np.isin(exact_keys, kq)
        cos64 = np.einsum("ij,ij->i", X[i].astype(np.float64), X[j].astype(np.float64))
        below = int(np.sum(cos64 < t - 1e-6))
        extra = int(np.sum(~np.isin(kq, exact_keys)))
        row["recall"] = float(hit.mean()) if hit.size else float("nan")
        row["recall_pairs"] = [int(hit.sum()), int(hit.size)]
        row["recall_planted"] = float(np.isin(planted_keys[planted_in_exact], k).mean())
        row["recall_natural"] = float(np.isin(natural, kq).mean()) if natural.size else float("nan")
        row["pairs_below_threshold"] = below
        row["pairs_not_in_exact"] = extra
        row["precision"] = 1.0 - (below + extra) / max(1, i.size)
        if ref_keys is not None:
            row["recall_vs_exact_config_all_pairs"] = float(np.isin(ref_keys, k).mean()) if ref_keys.size else float("nan")
    exact_row = next(r for r in rows if r["kind"] == "exact")
    for row in rows:
        row["speedup_vs_exact"] = exact_row["seconds"] / row["seconds"]

    print()
    print(f"exact pair set: {'all pairs (full flat search)' if full_exact else f'pairs touching {queries.size} query rows = one member of each of the {args.pairs} planted pairs + {n_uniform} uniform rows'}: "
          f"{exact_keys.size} pairs ({int(planted_in_exact.sum())} planted at >= t in float32, {natural.size} natural)")
    hdr = f"| {'method':<62} | {'seconds':>9} | {'speed-up':>8} | {'recall':>8} | {'planted':>7} | {'precision':>9} | {'guests/row':>10} | {'+MiB':>6} |"
    print(hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    for row in rows:
        rec = f"{row['recall']:.5f}" if "recall" in row else "1 (ref)"
        pl = f"{row['recall_planted']:.4f}" if "recall_planted" in row else "-"
        pr = f"{row['precision']:.4f}" if "precision" in row else "1 (ref)"
        gp = f"{row['spilled_per_row']:.2f}" if "spilled_per_row" in row else "-"
        secs = f"{row['seconds']:.1f}" + ("*" if row["extrapolated"] else "")
        print(f"| {row['method']:<62} | {secs:>9} | {row['speedup_vs_exact']:>7.1f}x | {rec:>8} | {pl:>7} | {pr:>9} | {gp:>10} | {row['peak_extra_mib']:>6.0f} |")
    print(f"+MiB: peak RSS above the RSS before the method (data excluded); the centroid fit, shared by the partitioned rows: +{mem_c.extra_mib:.0f} MiB, {cent_s:.1f} s (included in their seconds)")
    if not full_exact:
        print(f"* extrapolated: {exact_row['measured_seconds']:.1f} s measured for {exact_row['query_rows']} query rows x {n} / {exact_row['query_rows']}")
    if ref_name:
        print(f"recall vs the '{ref_name}' configuration (no cap, safe margin: exact by construction) over ALL its {ref_keys.size} pairs: "
              + ", ".join(f"{r['config']['name']} {r['recall_vs_exact_config_all_pairs']:.5f}" for r in rows if r["kind"] == "partitioned"))
    print(f"process peak RSS (ru_maxrss): {ru_maxrss_mib():.0f} MiB; data {X.nbytes / MIB:.0f} MiB; load average at end: {os.getloadavg()[0]:.2f}")

    result = {
        "benchmark": "dedup",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "params": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "partitions": P},
        "machine": info,
        "loadavg_at_start": load_start,
        "loadavg_at_end": list(os.getloadavg()),
        "data_seconds": gen_s,
        "exact_set": {
            "full": full_exact,
            "query_rows": int(queries.size),
            "uniform_query_rows": n_uniform,
            "planted_query_rows": 0 if full_exact else int(src.size),
            "pairs": int(exact_keys.size),
            "planted_pairs_at_threshold": int(planted_in_exact.sum()),
            "natural_pairs": int(natural.size),
        },
        "ru_maxrss_mib": ru_maxrss_mib(),
        "rows": rows,
    }
    write_result(args.out, result, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())

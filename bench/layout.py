"""The 2-D map of the documents (``engine.layout``): how many of each document's 10 nearest
neighbours the map keeps, how well it keeps labelled groups together, and at what cost.

Methods, on the same vectors, in one run (ratios are against the PCA row of the same data set):

The ``sample`` column is the rows fitted (S); the other n - S rows are extended.

* **PCA** — scikit-learn PCA to 2-D, fitted on the same seeded sample as the map, every row
  projected (what ``fit_layout`` reports as ``pca_knn10_preserved``);
* **openTSNE engine (fit_layout)** — ``engine.layout.fit_layout``: openTSNE on a seeded sample of S rows
  (exact cosine neighbours, perplexity 30, PCA init, 125 + 250 iterations), every other row at the
  similarity-weighted mean of the map positions of its 10 nearest sample rows;
* **UMAP + same extension** — umap-learn (``n_neighbors=15, metric="cosine", random_state=seed``: seeded,
  so single-threaded; its own defaults otherwise) on the same sample, every other row placed by the
  same extension (``engine.layout.extend``); only when umap-learn is installed. Its numba JIT is
  compiled by a warm-up fit on 500 rows first, timed separately (a fresh process pays it once);
* **openTSNE defaults, all rows** — ``openTSNE.TSNE`` with its defaults (Annoy neighbours, 250 + 500
  iterations), cosine, on every row: the upper reference, corpora of at most ``--full-max`` rows.

Data: the labelled corpora (``corpora.py``; each fitted on ``--corpus-sample`` rows so that the
extension places most of them, and on all its rows, which is what ``fit_layout``'s default does
below 30,000 rows), and a synthetic set of ``--synthetic-n`` rows (default 100,000 x 384):
a random row of the four corpora plus Gaussian noise of norm ``--noise`` (cosine to its source ~0.8),
renormalised; its label is the source row's corpus and label. ``--run OUT`` adds the vectors of finished
runs (no labels: knn10 only), at the ``--synthetic-samples`` sizes.

Scores: **knn10** — ``engine.layout.knn_preservation`` (exact, over all rows, on 2,000 seeded rows);
**label agr.** — the fraction of a row's 10 nearest map neighbours (over all rows) that share its label,
on the same rows; **seconds** — wall time of the fit plus the extension (the quality evaluation of
``fit_layout`` not included; it is shown beneath).

    .venv/bin/python bench/layout.py                           # corpora + synthetic 100k
    .venv/bin/python bench/layout.py --corpora bbc --synthetic-n 0
    .venv/bin/python bench/layout.py --corpora --no-umap --run OUT --schedules 125,250,3 125,250,2
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import corpora
from _common import RESULTS, cpu_busy_percent, machine_basics, result_header, write_result

from theme_engine.engine import layout
from theme_engine.engine.layout import fit_layout, knn_preservation

log = logging.getLogger("bench.layout")
N_EVAL = 2000


def label_agreement(coords: np.ndarray, labels: np.ndarray, rows: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the ``k`` nearest map neighbours (over all rows, self excluded) of ``rows``
    that share the row's label."""
    from scipy.spatial import cKDTree

    _, idx = cKDTree(np.asarray(coords, dtype=np.float64)).query(np.asarray(coords[rows], dtype=np.float64), k=k + 1)
    keep = layout._keep(idx, rows)
    nbr = idx[keep].reshape(len(rows), k)
    return float((labels[nbr] == labels[rows][:, None]).mean())


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def pca_map(X: np.ndarray, rows: np.ndarray, seed: int) -> np.ndarray:
    pca = layout._pca(np.ascontiguousarray(X[rows]), seed)
    return np.concatenate([layout._project(pca, X[a : a + layout.BLOCK_ROWS]) for a in range(0, len(X), layout.BLOCK_ROWS)])


def umap_map(X: np.ndarray, rows: np.ndarray, seed: int, threads: int) -> np.ndarray:
    import warnings

    import umap

    emb = umap.UMAP(n_components=2, n_neighbors=15, metric="cosine", random_state=seed, n_jobs=threads)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value")  # seeded: single-threaded, as documented
        sample_coords = emb.fit_transform(np.ascontiguousarray(X[rows]))
    return layout.extend(X, rows, sample_coords)


def tsne_full(X: np.ndarray, seed: int, threads: int) -> np.ndarray:
    from openTSNE import TSNE

    return np.asarray(TSNE(metric="cosine", n_jobs=threads, random_state=seed, verbose=False).fit(X), dtype=np.float32)


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate(
    name: str, X: np.ndarray, y: np.ndarray | None, samples: list[int], args: argparse.Namespace, umap_ok: bool
) -> dict[str, Any]:
    n = len(X)
    eval_rows = layout._eval_rows(n, N_EVAL, args.seed)
    rows_out: list[dict[str, Any]] = []

    def record(method: str, S: int, coords: np.ndarray, seconds: float, extra: dict[str, Any] | None = None) -> None:
        r = {
            "method": method,
            "sample": S,
            "knn10": knn_preservation(X, coords, k=10, n_eval=N_EVAL, seed=args.seed),
            "label_agreement": label_agreement(coords, y, eval_rows) if y is not None else None,
            "seconds": seconds,
            **(extra or {}),
        }
        rows_out.append(r)
        agree = "-" if r["label_agreement"] is None else f"{r['label_agreement']:.4f}"
        log.info("%s %s S=%d: knn10 %.4f, label %s, %.1f s", name, method, S, r["knn10"], agree, seconds)

    for S in samples:
        S = min(S, n)
        rows = layout.layout_sample(n, S, args.seed)
        coords, sec = timed(lambda: pca_map(X, rows, args.seed))
        record("PCA", S, coords, sec)
        for ex, it, points in args.schedules:
            lay, sec = timed(
                lambda: fit_layout(
                    X, sample_size=S, seed=args.seed, threads=args.threads, exaggeration_iter=ex, n_iter=it, interpolation_points=points
                )
            )
            info = lay.info
            default = (ex, it, points) == (layout.EXAGGERATION_ITER, layout.N_ITER, layout.FFT_INTERPOLATION_POINTS)
            fft = f", {points} pts" if info.get("fft_interpolation_points") else ""
            record(
                f"openTSNE engine {ex}+{it}{fft}" + (" (default)" if default else ""),
                S,
                lay.coords,
                info["fit_seconds"] + info["extend_seconds"],
                {"fit_seconds": info["fit_seconds"], "extend_seconds": info["extend_seconds"],
                 "quality_seconds": info["quality_seconds"], "wall_seconds": sec, "info": info},
            )  # fmt: skip
        if umap_ok:
            coords, sec = timed(lambda: umap_map(X, rows, args.seed, args.threads))
            record("UMAP + same extension", S, coords, sec)
    if n <= args.full_max:
        coords, sec = timed(lambda: tsne_full(X, args.seed, args.threads))
        record("openTSNE defaults, all rows", n, coords, sec)
    pca = {r["sample"]: r["knn10"] for r in rows_out if r["method"] == "PCA"}
    for r in rows_out:
        base = pca.get(r["sample"], pca[max(pca)])
        r["knn10_vs_pca"] = r["knn10"] / base if base > 0 else None
    labels = int(len(np.unique(y))) if y is not None else None
    return {"data": name, "rows": n, "dims": int(X.shape[1]), "labels": labels, "results": rows_out}


def print_table(res: dict[str, Any]) -> None:
    labels = f"{res['labels']} labels" if res["labels"] is not None else "no labels"
    print(f"\n{res['data']}: {res['rows']} rows x {res['dims']}, {labels}")
    print(f"| {'method':<42} | {'sample':>7} | {'knn10':>6} | {'x PCA':>6} | {'label agr.':>10} | {'seconds':>7} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 8}|{'-' * 8}|{'-' * 12}|{'-' * 9}|")
    for r in res["results"]:
        ratio = f"{r['knn10_vs_pca']:6.2f}" if r["knn10_vs_pca"] is not None else "     -"
        agree = f"{r['label_agreement']:10.4f}" if r["label_agreement"] is not None else f"{'-':>10}"
        print(f"| {r['method']:<42} | {r['sample']:>7} | {r['knn10']:6.4f} | {ratio} | {agree} | {r['seconds']:7.1f} |")
    for r in res["results"]:
        if "fit_seconds" in r:
            print(
                f"  openTSNE S={r['sample']}: fit {r['fit_seconds']:.1f} s + extend {r['extend_seconds']:.1f} s"
                f" (+ quality evaluation {r['quality_seconds']:.1f} s)"
            )


def _schedule(text: str) -> tuple[int, int, int]:
    """``EX,IT[,P]`` -> (early-exaggeration iterations, plain iterations, FFT interpolation points)."""
    parts = [int(v) for v in text.split(",")]
    if len(parts) not in (2, 3):
        raise SystemExit(f"--schedules takes EX,IT or EX,IT,P, got {text!r}")
    return (parts[0], parts[1], parts[2] if len(parts) == 3 else layout.FFT_INTERPOLATION_POINTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", nargs="*", default=list(corpora.NAMES), choices=corpora.NAMES)
    ap.add_argument("--corpus-sample", type=int, default=1000, help="rows fitted on a corpus; the rest are extended")
    ap.add_argument("--full-max", type=int, default=5000, help="openTSNE on all rows up to this many rows")
    ap.add_argument("--synthetic-n", type=int, default=100_000, help="0 skips the synthetic set")
    ap.add_argument("--synthetic-samples", type=int, nargs="+", default=[10_000, 30_000])
    ap.add_argument("--noise", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-umap", action="store_true")
    ap.add_argument(
        "--schedules", nargs="+", default=[f"{layout.EXAGGERATION_ITER},{layout.N_ITER}"], metavar="EX,IT[,P]",
        help="openTSNE schedules to compare: early-exaggeration,plain iterations[,FFT interpolation points per box] "
        "(default: the engine's)",
    )
    ap.add_argument(
        "--run", type=Path, nargs="*", default=[], metavar="OUT",
        help="also the vectors of finished runs (OUT/.theme-engine/embed/vectors.npy; no labels: knn10 only), "
        "with the --synthetic-samples sample sizes",
    )
    ap.add_argument("--out", default=str(RESULTS / "layout.json"))
    args = ap.parse_args()
    args.schedules = [_schedule(s) for s in args.schedules]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("openTSNE", "numba", "pynndescent", "umap", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from threadpoolctl import threadpool_limits

    machine = machine_basics() | {"cpu_busy_percent_before_start": cpu_busy_percent()}
    print(
        f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, load {machine['loadavg_1_5_15']}, "
        f"CPU busy before start {machine['cpu_busy_percent_before_start']}%"
    )
    umap_ok = umap_available() and not args.no_umap
    versions = {"openTSNE": layout._version("openTSNE"), "umap-learn": layout._version("umap-learn") if umap_ok else None,
                "scikit-learn": layout._version("scikit-learn"), "faiss-cpu": layout._version("faiss-cpu")}  # fmt: skip
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    results: list[dict[str, Any]] = []
    with threadpool_limits(limits=args.threads):
        warmup = None
        if umap_ok:
            rng = np.random.default_rng(0)
            W = rng.normal(size=(500, 32)).astype(np.float32)
            _, warmup = timed(lambda: umap_map(W / np.linalg.norm(W, axis=1, keepdims=True), np.arange(250), 0, args.threads))
            print(f"UMAP numba JIT warm-up (500 rows, first call in this process): {warmup:.1f} s")
        for name in args.corpora:
            c = corpora.load(name)
            X = corpora.embedded(c).astype(np.float32)
            res = evaluate(name, X, c.labels, [args.corpus_sample, len(X)], args, umap_ok)
            results.append(res)
            print_table(res)
        for out in args.run:
            path = out / ".theme-engine" / "embed" / "vectors.npy"
            if not path.is_file():
                raise SystemExit(f"{path} not found: --run takes the output folder of a finished theme-engine run")
            X = np.load(path, mmap_mode="r")
            res = evaluate(f"run {out} ({len(X)} rows)", X, None, args.synthetic_samples, args, umap_ok)
            results.append(res)
            print_table(res)
        if args.synthetic_n > 0:
            X, y = corpora.synthetic(args.synthetic_n, args.noise, args.seed)
            res = evaluate(f"synthetic {args.synthetic_n}", X, y, args.synthetic_samples, args, umap_ok)
            results.append(res)
            print_table(res)
    write_result(
        Path(args.out),
        {**result_header("layout", vars(args)), "machine": machine, "versions": versions,
         "umap_jit_warmup_seconds": warmup, "results": results},
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

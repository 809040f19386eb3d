"""Theme quality on labelled corpora: the choice of k, the clustering it gives, and the labels.

For each corpus (bench/corpora.py: BBC news by topic, Bible verses by book, Debian package
descriptions and synopses by section), on the engine's own embeddings:

* **auto k (modularity)** — the engine's criterion (``engine.select_k.choose_by_modularity``, the
  code the select_k stage runs, its draws fitted in process) on the stage's sample, once per seed;
  then the engine's k-means at that k on every document: NMI and ARI against the true labels;
* **true k** — the engine's k-means at the number of labels (the reference for the targets);
* **auto k (silhouette)** — the earlier rule (highest mean silhouette over 4 draws), seed 0 only;
* **label lift** — for the auto-k themes, the median over themes of the first keyword's lift,
  ``P(theme | doc has the keyword) / P(theme)``, with the lift gate (shipped) and without it
  (plain c-TF-IDF, as before);
* **cost** — select_k seconds (the draws one after another in this process; the stage runs them
  in parallel) against the corpus's embedding seconds (measured on a probe of documents here and
  scaled to the corpus).

Targets (issue 9): auto-k NMI >= 90% and ARI >= 80% of the true-k values, chosen k never on the edge of
the final range, median label lift >= 3, chosen k within one grid step across 5 seeds.

    .venv/bin/python bench/quality.py                     # all corpora, 5 seeds
    .venv/bin/python bench/quality.py --corpora bbc --seeds 2 --no-silhouette
"""

from __future__ import annotations

import argparse
from pathlib import Path
import logging
import sys
import time
from typing import Any

import numpy as np

import corpora
from _common import RESULTS, machine_basics, result_header, write_result

from theme_engine.engine.config import SelectKConfig
from theme_engine.engine.seeds import derive
from theme_engine.engine.kmeans import KMeans, sample_rows
from theme_engine.engine.labels import ctfidf_keywords, label_lift
from theme_engine.engine.select_k import (
    candidate_ks,
    choose_by_modularity,
    choose_k,
    draws_in_process,
    modularity_sample_size,
    score_candidate,
)

log = logging.getLogger("bench.quality")


def scores(y: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return float(normalized_mutual_info_score(y, labels)), float(adjusted_rand_score(y, labels))


def embed_seconds(c: corpora.LabelledCorpus, probe: int) -> float:
    """Seconds to embed the whole corpus here, from a seeded probe of its documents."""
    from theme_engine.engine.embedding import Embedder, get_model

    emb = Embedder(get_model("all-MiniLM-L6-v2-int8"), corpora.RESULTS / "embeddings" / "model")
    idx = np.random.default_rng(0).choice(len(c.texts), min(probe, len(c.texts)), replace=False)
    texts = [c.texts[i] for i in idx]
    emb.embed(texts[:8])  # warm
    t = time.perf_counter()
    emb.embed(texts, batch_size=32, max_batch_tokens=4096)
    return (time.perf_counter() - t) * len(c.texts) / len(texts)


def median_lift(texts: list[str], labels: np.ndarray, k: int, gate: bool) -> float | None:
    return label_lift(ctfidf_keywords(texts, labels, k, top_n=10, ngram_max=2, lift_gate=gate).lifts)["median"]


def small_k_labels(texts: list[str], X: np.ndarray, k: int) -> dict[str, Any]:
    """Labels at a small k, with and without the lift gate: where a word frequent in every theme
    can lead plain c-TF-IDF."""
    labels = KMeans(k, random_state=0).fit(X).labels_
    out: dict[str, Any] = {"k": k}
    for key, gate in (("gated", True), ("plain", False)):
        kw = ctfidf_keywords(texts, labels, k, top_n=10, ngram_max=2, lift_gate=gate)
        out[key] = {"labels": [", ".join(w[:3]) for w in kw.keywords], "median_lift": label_lift(kw.lifts)["median"]}
    return out


def run_corpus(name: str, seeds: int, silhouette: bool, probe: int) -> dict[str, Any]:
    c = corpora.load(name)
    X = corpora.embedded(c)
    n = len(X)
    sk = SelectKConfig()
    ks = candidate_ks(n, sk.k_min, sk.k_max, sk.candidates)
    size = modularity_sample_size(n, sk.sample_size, ks)
    out: dict[str, Any] = {"corpus": name, "documents": n, "true_k": c.n_labels, "grid": ks, "runs": []}

    true_labels = KMeans(c.n_labels, random_state=0).fit(X).labels_
    out["true_k_nmi"], out["true_k_ari"] = scores(c.labels, true_labels)

    for seed in range(seeds):
        sample = X[sample_rows(n, size, derive(seed, "select_k_sample"))]  # the rows the select_k stage draws
        t = time.perf_counter()
        choice, record = choose_by_modularity(
            sample, ks, repeats=sk.repeats, neighbors=sk.neighbors, min_gain=sk.min_gain, seed=seed, run_draws=draws_in_process(seed)
        )
        secs = time.perf_counter() - t
        labels = KMeans(choice.k, random_state=seed).fit(X).labels_
        nmi, ari = scores(c.labels, labels)
        run = {"seed": seed, "k": choice.k, "nmi": nmi, "ari": ari, "seconds": secs, "edge": record["edge"], "range": record["range"],
               "widened": record["widened"], "gain": record["gain"], "structure": record["structure"]}  # fmt: skip
        if seed == 0:
            run["lift_gated"] = median_lift(c.texts, labels, choice.k, True)
            run["lift_plain"] = median_lift(c.texts, labels, choice.k, False)
            run["candidates"] = record["candidates"]
        out["runs"].append(run)
        log.info("%s seed %d: k=%d NMI %.3f ARI %.3f (%.1f s)", name, seed, choice.k, nmi, ari, secs)

    if silhouette:
        sample = X[sample_rows(n, min(n, sk.sample_size), derive(0, "select_k_sample"))]
        t = time.perf_counter()
        sil_scores = [score_candidate(sample, k, 4, 0) for k in ks]
        k_sil = choose_k(sil_scores)
        labels = KMeans(k_sil, random_state=0).fit(X).labels_
        nmi, ari = scores(c.labels, labels)
        out["silhouette"] = {"k": k_sil, "nmi": nmi, "ari": ari, "seconds": time.perf_counter() - t, "edge": k_sil in (ks[0], ks[-1])}
    out["small_k"] = small_k_labels(c.texts, X, 3)
    out["embed_seconds"] = embed_seconds(c, probe) if probe else None
    return out


def grid_steps(ks_chosen: list[int], grid: list[int]) -> int:
    """How many steps of the candidate grid separate the smallest and largest chosen k."""
    pos = [int(np.argmin([abs(np.log(k) - np.log(g)) for g in grid])) for k in ks_chosen]
    return max(pos) - min(pos)


def report(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'corpus':<13} {'n':>5} {'true k':>6} | {'auto k (5 seeds)':<18} {'steps':>5} {'NMI':>6} {'ARI':>6} {'%NMI':>5} {'%ARI':>5} {'edge':>4}"
        f" | {'true NMI':>8} {'true ARI':>8} | {'sil k':>5} {'NMI':>6} {'ARI':>6} | {'lift':>5} {'plain':>5} | {'sel s':>5} {'emb s':>6} {'ratio':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        runs = r["runs"]
        kk = [u["k"] for u in runs]
        nmi = float(np.mean([u["nmi"] for u in runs]))
        ari = float(np.mean([u["ari"] for u in runs]))
        sil = r.get("silhouette") or {}
        sel = float(np.mean([u["seconds"] for u in runs]))
        emb = r["embed_seconds"]
        r["summary"] = {
            "auto_k": kk,
            "grid_steps": grid_steps(kk, r["grid"]),
            "nmi_mean": nmi,
            "ari_mean": ari,
            "nmi_ratio": nmi / r["true_k_nmi"],
            "ari_ratio": ari / r["true_k_ari"],
            "any_edge": any(u["edge"] for u in runs),
            "select_k_seconds_mean": sel,
            "select_over_embed": sel / emb if emb else None,
        }
        s = r["summary"]
        print(
            f"{r['corpus']:<13} {r['documents']:>5} {r['true_k']:>6} | {','.join(map(str, kk)):<18} {s['grid_steps']:>5} {nmi:6.3f} {ari:6.3f}"
            f" {100 * s['nmi_ratio']:4.0f}% {100 * s['ari_ratio']:4.0f}% {('yes' if s['any_edge'] else 'no'):>4}"
            f" | {r['true_k_nmi']:8.3f} {r['true_k_ari']:8.3f}"
            f" | {sil.get('k', '-'):>5} {sil.get('nmi', float('nan')):6.3f} {sil.get('ari', float('nan')):6.3f}"
            f" | {runs[0]['lift_gated'] or float('nan'):5.2f} {runs[0]['lift_plain'] or float('nan'):5.2f}"
            f" | {sel:5.1f} {emb or float('nan'):6.1f} {s['select_over_embed'] or float('nan'):5.2f}"
        )
    print("\nlabels at k = 3, plain c-TF-IDF -> with the lift gate (median first-keyword lift):")
    for r in results:
        sk = r["small_k"]
        print(f"  {r['corpus']:<13} plain {sk['plain']['median_lift']:.2f}: " + " | ".join(sk["plain"]["labels"]))
        print(f"  {'':<13} gated {sk['gated']['median_lift']:.2f}: " + " | ".join(sk["gated"]["labels"]))
    print(
        "\nauto k: the engine's modularity criterion, one run per seed (sample draw, fits); NMI/ARI: mean over seeds of "
        "the engine's k-means at that k on all documents; %: of the true-k values (targets 90% / 80%); steps: grid steps "
        "between the smallest and largest chosen k (target <= 1); sil: the earlier silhouette rule, seed 0; lift: median "
        "first-keyword lift of the seed-0 auto-k themes with the lift gate, plain: without it (target >= 3); sel s: "
        "select_k seconds with the draws in series in one process; emb s: embedding the corpus here (from a probe)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", nargs="+", default=list(corpora.NAMES), choices=corpora.NAMES)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-silhouette", action="store_true", help="skip the earlier silhouette rule (slow)")
    ap.add_argument("--embed-probe", type=int, default=300, help="documents embedded to time the embedding (0: skip)")
    ap.add_argument("--out", default=str(RESULTS / "quality.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    machine = machine_basics()
    print(f"machine: {machine['platform']}, {machine['cpu_count']} CPUs, load {machine['loadavg_1_5_15']}")
    results = [run_corpus(name, args.seeds, not args.no_silhouette, args.embed_probe) for name in args.corpora]
    print()
    report(results)
    write_result(Path(args.out), {**result_header("quality", vars(args)), "machine": machine, "results": results})


if __name__ == "__main__":
    sys.exit(main())

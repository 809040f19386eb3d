"""The hyperscale tier's driver funnel (issue 31): what the driver holds, puts and writes as n grows.

Input, as a data team would bring it: Parquet files of 100,000 rows each with an ``id``, a short
``text`` (8-16 words from its cluster's vocabulary and a shared one) and a precomputed 384-d
``vector`` (a seeded mixture of ``--clusters`` Gaussian clusters on the unit sphere, 1% of rows
exact copies of another row's text and vector). The job is ``theme-engine run --k K`` on it, in-process
as the CLI runs it (``engine.config.load_config`` + ``cluster.runtime.driver.run``), in a fresh
child process per size (so its peak RSS is that size's alone), connected to a
``ray.cluster_utils.Cluster`` on 127.0.0.1:

  * ``--nodes 3``: a head with no CPUs (the driver's node) and two worker nodes sharing the CPUs;
  * ``--nodes 1``: one node with every CPU (the small tier's baseline).

Per size it prints the driver's peak RSS (``driver_peak_rss_bytes`` of the manifest), the bytes
the driver itself puts into the object store (objects created by the driver's own ``ray.put``,
whose object id carries the driver's task id: the peak held at once, sampled every 0.5 s from the
raylets' per-worker reference tables, and the total of every distinct one seen), the bytes under the
output folder (the result) and under its state folder (``.theme-engine``: read by nothing but
the head), seconds per stage, and end-to-end seconds per document. The last line gives the ratios
from the smallest to the largest size (targets: peak RSS and driver object bytes within 1.2x,
seconds per document within 1.3x).

    .venv/bin/python bench/scale.py --sizes 50000 100000 200000            # 3 nodes
    .venv/bin/python bench/scale.py --sizes 50000 --nodes 1                # the small tier
    .venv/bin/python bench/scale.py --sizes 60000 200000 600000 --no-index  # 10x, without the search index
    .venv/bin/python bench/scale.py --sizes 60000 200000 600000 --no-index --texts  # texts: read and embedded on the workers
    .venv/bin/python bench/scale.py --sizes 5000 --no-index --texts --model --embed-workers-from 100000  # the driver's stream
    .venv/bin/python bench/scale.py --sizes 60000 200000 --no-index --texts --edits 0.05  # typo copies: texts compared

With ``--texts`` the inputs are JSONL files of the same ids and texts, without vectors: the read
runs in pieces of 1 MiB (``read.chunk_mb``) by tasks that store their parts, and the embedding by
actors that read the stored texts, ask the cache (a folder, through its owner actor) and save
their vectors (``embed.workers_from`` 0), at every size. The cache already holds each text's
vector (the generated one, under the bundled model's key), so what is measured is the data's path,
not the model (``--model`` embeds every text: ~45 texts/s on this 2-CPU VM, where ``bench/embed.py``
measures the model itself).

Results JSON: ``bench/results/scale-<nodes>node[-texts].json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # several nodes on 127.0.0.1

import numpy as np  # noqa: E402
from _common import RESULTS, cpu_busy_percent, machine_basics, result_header, write_result  # noqa: E402

from theme_engine.actors.memory import DriverPuts  # noqa: E402

log = logging.getLogger("bench.scale")

DIM = 384
FILE_ROWS = 100_000
STORE = 2 * 2**30  # each node's object store


def make_inputs(
    folder: Path, n: int, clusters: int, seed: int, texts_only: bool = False, cache: Path | None = None, edits: float = 0.0
) -> dict[str, Any]:
    """Parquet files of ``FILE_ROWS`` rows (id, text, vector) under ``folder``, or with
    ``texts_only`` JSONL files of the same ids and texts, and with ``cache`` each text's vector in
    the embedding cache folder ``cache`` under the bundled model's key (as an earlier run would
    leave it); returns what was made. ``edits``: the share of rows that are a typo copy of an
    earlier row of 12 words or more (one word's first letter doubled), their vector the earlier
    row's moved to a cosine of ~0.85: pairs below ``dedup.threshold`` whose texts the lexical
    rule compares."""
    store = None
    if cache is not None:
        from theme_engine.engine.cache import EdgeCache, text_key
        from theme_engine.engine.config import EmbedConfig
        from theme_engine.engine.embedding import configured_model
        from theme_engine.engine.windows import TextWindows

        ec = EmbedConfig()
        spec = configured_model(ec, cache)
        windows = TextWindows.for_model(spec, ec.window_overlap, ec.max_windows)
        store = EdgeCache(cache / f"embeddings-{DIM}d", DIM)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    shared = [f"common{j}" for j in range(200)]
    folder.mkdir(parents=True, exist_ok=True)
    for f, a in enumerate(range(0, n, FILE_ROWS)):
        m = min(FILE_ROWS, n - a)
        label = rng.integers(0, clusters, m)
        vec = centers[label] + 0.045 * rng.standard_normal((m, DIM)).astype(np.float32)
        words = rng.integers(0, 40, (m, 16))
        length = rng.integers(8, 17, m)
        mix = rng.random((m, 16)) < 0.3
        texts = [
            " ".join(shared[w * 5 % 200] if mx else f"t{c}w{w}" for w, mx in zip(words[i, : length[i]], mix[i, : length[i]]))
            for i, c in enumerate(label.tolist())
        ]
        copies = rng.random(m) < 0.01  # exact copies of an earlier row of the file
        src = rng.integers(0, m, m)
        for i in np.flatnonzero(copies & (src < np.arange(m))).tolist():
            texts[i], vec[i] = texts[src[i]], vec[src[i]]
        typo = ~copies & (rng.random(m) < edits) & (src < np.arange(m)) if edits else np.zeros(m, dtype=bool)
        for i in np.flatnonzero(typo).tolist():
            w = texts[src[i]].split()
            if len(w) < 12:
                continue
            at = int(rng.integers(0, len(w)))
            w[at] = w[at][0] + w[at]  # a letter typed twice (a changed number would be another document)
            texts[i] = " ".join(w)
            vec[i] = vec[src[i]] + 0.04 * rng.standard_normal(DIM).astype(np.float32)
        if store is not None:
            unit = vec / np.linalg.norm(vec, axis=1, keepdims=True)
            store.put([text_key(spec.model_id, t, windows) for t in texts], unit)
        if texts_only:
            with open(folder / f"part-{f:05d}.jsonl", "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"id": f"d{a + i}", "text": t}) + "\n" for i, t in enumerate(texts))
            continue
        flat = pa.array(vec.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "id": [f"d{a + i}" for i in range(m)],
                "text": texts,
                "vector": pa.FixedSizeListArray.from_arrays(flat, DIM),
            }
        )
        pq.write_table(table, folder / f"part-{f:05d}.parquet", row_group_size=25_000)
    if store is not None:
        store.close()
    return {"documents": n, "files": -(-n // FILE_ROWS), "clusters": clusters}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Sampler(DriverPuts):
    """The driver's own object-store bytes (``actors.memory.DriverPuts``), and its resident
    memory per stage (the stage from the job's progress events), read every 0.05 s by a thread of
    its own (a burst shorter than the puts' sampling shows too)."""

    def __init__(self, every: float = 0.5) -> None:
        import threading

        super().__init__(every)
        self.stage = "start"
        self.rss_by_stage: dict[str, int] = {}  # the driver's resident bytes, the most seen while each stage ran
        self._rss_stop = threading.Event()
        self._rss_thread = threading.Thread(target=self._rss_loop, name="driver-rss", daemon=True)

    def sink(self, stage: str, done: int, total: int) -> None:
        self.stage = stage

    def _rss_loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._rss_stop.wait(0.05):
            rss = me.memory_info().rss
            self.rss_by_stage[self.stage] = max(self.rss_by_stage.get(self.stage, 0), rss)

    def __enter__(self) -> Sampler:
        self._rss_thread.start()
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._rss_stop.set()
        self._rss_thread.join(timeout=5)


def child(args: argparse.Namespace) -> None:
    """One size, in this process: the cluster, the job, the measurements (JSON on the last line)."""
    import ray
    from ray.cluster_utils import Cluster

    from theme_engine.cluster.runtime.driver import run
    from theme_engine.engine.config import load_config

    work = Path(args.work)
    cpus = os.cpu_count() or 2
    head = {"num_cpus": 0 if args.nodes > 1 else cpus, "object_store_memory": STORE, "temp_dir": tempfile.mkdtemp(prefix="te-sc-"), "include_dashboard": False}
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=max(1, cpus // (args.nodes - 1)), object_store_memory=STORE)
    cluster.wait_for_nodes()
    out = work / "out"
    inputs = sorted(str(f) for f in (work / "in").glob("*.jsonl" if args.texts else "*.parquet"))
    settings: dict[str, Any] = {"inputs": inputs, "out": str(out), "read": {"id_field": "id"}, "kmeans": {"k": args.k}, "cache": {"enabled": False}}
    if args.texts:  # the text path at every size: read in pieces by tasks, embedded by actors that read the texts, a cache folder
        settings.update(read={"id_field": "id", "chunk_mb": 1}, embed={"workers_from": args.embed_workers_from}, cache={"dir": str(work / "cache")})
    if args.no_index:
        settings["index"] = {"enabled": False}
    cfg = load_config(settings)
    try:
        t0 = time.perf_counter()
        with Sampler() as sampler:
            result = run(cfg, sink=sampler.sink)
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    m = result.manifest
    state = out / ".theme-engine"
    row = {
        "documents": args.size,
        "nodes": args.nodes,
        "wall_s": round(wall, 2),
        "s_per_doc_us": round(1e6 * wall / args.size, 2),
        "driver_peak_rss_bytes": m["driver_peak_rss_bytes"],
        "driver_put_peak_bytes": sampler.peak,
        "driver_put_total_bytes": sampler.total,
        "put_samples": sampler.samples,
        "state_bytes": folder_bytes(state),
        "output_bytes": folder_bytes(out) - folder_bytes(state),
        "stages_s": {name: round(rec.get("seconds", 0.0), 2) for name, rec in m["stages"].items()},
        "driver_rss_by_stage_mib": {name: round(v / 2**20) for name, v in sampler.rss_by_stage.items()},
        "k": m.get("k"),
        "cache": m.get("cache"),
        "read": {k: m["stages"]["read"].get(k) for k in ("pieces", "written_by")},
        "embed": {k: m["stages"]["embed"].get(k) for k in ("parts", "written_by", "embedded")},
        "dedup": {k: m["stages"]["dedup"].get(k) for k in ("lexical_compared", "lexical_tasks", "texts_read", "near_duplicates")},
    }
    print("RESULT " + json.dumps(row))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000, 100_000, 200_000])
    p.add_argument("--nodes", type=int, choices=(1, 3), default=3)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-index", action="store_true", help="no search index (index.enabled = false): its HNSW build on a 1-CPU worker passes 20 min at 600,000")
    p.add_argument(
        "--texts",
        action="store_true",
        help="JSONL texts without vectors: the read in pieces of 1 MiB by tasks, the embedding by actors that read the texts (embed.workers_from 0)",
    )
    p.add_argument(
        "--model",
        action="store_true",
        help="with --texts: embed every text with the model (about 45 texts/s on this 2-CPU VM); by default the cache "
        "already holds each text's vector, so the embedding stage reads texts, asks the cache and saves parts",
    )
    p.add_argument(
        "--edits", type=float, default=0.0, help="share of rows that are a typo copy of an earlier row (cosine ~0.85): pairs the lexical rule compares as text"
    )
    p.add_argument("--embed-workers-from", type=int, default=0, help="with --texts: embed.workers_from (0: the actors read the texts at every size)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        child(args)
        return 0
    busy = cpu_busy_percent()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="te-scale-") as work:
            t = time.perf_counter()
            cache = Path(work) / "cache" if args.texts and not args.model else None
            made = make_inputs(Path(work) / "in", n, args.clusters, args.seed, args.texts, cache, args.edits)
            log.info("%d documents in %d files made in %.1f s; running the job on %d node(s)", n, made["files"], time.perf_counter() - t, args.nodes)
            cmd = [sys.executable, __file__, "--child", "--size", str(n), "--work", work, "--nodes", str(args.nodes), "--k", str(args.k)]
            cmd += ["--no-index"] if args.no_index else []
            cmd += ["--texts", "--embed-workers-from", str(args.embed_workers_from)] if args.texts else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stderr[-5000:])
                log.error("the job at %d documents failed (rc %d)", n, proc.returncode)
                return 1
            row = json.loads(line[len("RESULT ") :])
            rows.append(row)
            log.info("%d documents: %s", n, json.dumps(row))
    kind = "Parquet with vectors" if not args.texts else f"JSONL texts, embed.workers_from {args.embed_workers_from}, " + ("the model" if args.model else "every vector cached")
    print(f"\nbench/scale.py, {args.nodes} node(s), k = {args.k}, {kind}, {os.cpu_count()} CPUs (busy before start: {busy}%)")
    print("| documents | wall s | us/doc | driver peak RSS MiB | driver put peak MiB | driver put total MiB | state MiB | output MiB | stages s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        stages = ", ".join(f"{k} {v:g}" for k, v in r["stages_s"].items())
        print(
            f"| {r['documents']:,} | {r['wall_s']:.1f} | {r['s_per_doc_us']:.1f} | {r['driver_peak_rss_bytes'] / 2**20:,.0f} "
            f"| {r['driver_put_peak_bytes'] / 2**20:,.1f} | {r['driver_put_total_bytes'] / 2**20:,.1f} | {r['state_bytes'] / 2**20:,.0f} "
            f"| {r['output_bytes'] / 2**20:,.0f} | {stages} |"
        )
    print("\ndedup: pairs whose texts were compared, the tasks that read them where they ran, the texts the driver read:")
    for r in rows:
        dd = r.get("dedup", {})
        print(f"  {r['documents']:,}: {dd.get('lexical_compared')} pairs compared, {dd.get('lexical_tasks')} tasks, {dd.get('texts_read')} texts read by the driver")
    print("\nthe driver's resident MiB, the most sampled while each stage ran:")
    for r in rows:
        print(f"  {r['documents']:,}: " + ", ".join(f"{k} {v:,}" for k, v in r["driver_rss_by_stage_mib"].items()))
    if len(rows) > 1:
        a, b = rows[0], rows[-1]

        def ratio(key: str) -> str:
            return f"{b[key] / a[key]:.2f}x" if a[key] else "n/a"

        print(
            f"\n{b['documents'] / a['documents']:.0f}x the documents: driver peak RSS {ratio('driver_peak_rss_bytes')} (target <= 1.2x), "
            f"driver put peak {ratio('driver_put_peak_bytes')} (target <= 1.2x), seconds per document {ratio('s_per_doc_us')} (target <= 1.3x)"
        )
    write_result(
        RESULTS / f"scale-{args.nodes}node{'-texts' if args.texts else ''}{'-model' if args.model else ''}.json",
        {**result_header("scale", vars(args)), "machine": machine_basics(), "cpu_busy_before_start_percent": busy, "rows": rows},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

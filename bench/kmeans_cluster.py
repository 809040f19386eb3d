"""The same sharded k-means on one Ray node and on a 3-node Ray cluster on this machine, with the
same total CPUs (issue 3): the overhead of spreading shards over nodes, and peak memory.

Setups (``ray.cluster_utils.Cluster`` on 127.0.0.1; object stores of 1.5 GiB each):
  * 1 node:  one node with ``--cpus`` CPUs;
  * 3 nodes: a head with no CPUs (the driver's node) and two worker nodes sharing ``--cpus``.

Both run the engine's distributed path unchanged — ``actors.shard.ActorShards`` (``--shards``
shard actors, ``cpus // shards`` BLAS threads each, placed with SPREAD) driven by
``engine.kmeans.fit_sharded`` (k-means++ on a sample, then ``--iters`` Lloyd iterations moving only
centroids, partial sums and counts) and ``assign_sharded`` — on the same synthetic clustered unit
vectors (``bench/kmeans.py``'s generator). Times: loading the shards (each shard actor reading its rows
from the vectors' file), the fit, the assignment. Peak resident memory of the driver and of every
shard actor (``ru_maxrss``) is printed, with each actor's node.

    cd /work/main && /work/venv/bin/python bench/kmeans_cluster.py            # 300k x 384, k=1000

Results JSON: ``bench/results/kmeans_cluster.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # several nodes on 127.0.0.1

import numpy as np  # noqa: E402
import ray  # noqa: E402
from _common import (  # noqa: E402
    RESULTS,
    cpu_busy_percent,
    machine_basics,
    result_header,
    write_result,
)
from kmeans import inertia_of, make_sphere_blobs  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from theme_engine.actors.memory import peak_rss_bytes  # noqa: E402
from theme_engine.actors.shard import ActorShards  # noqa: E402
from theme_engine.engine.kmeans import assign_sharded, fit_sharded  # noqa: E402
from theme_engine.engine.vectors import VectorParts  # noqa: E402

STORE = 1536 * 2**20


def run_setup(name: str, worker_cpus: list[int], head_cpus: int, X: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={
            "num_cpus": head_cpus,
            "object_store_memory": STORE,
            "temp_dir": tempfile.mkdtemp(prefix="te-b-"),
            "include_dashboard": False,
        },
    )
    try:
        for c in worker_cpus:
            cluster.add_node(num_cpus=c, object_store_memory=STORE)
        cluster.wait_for_nodes()
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        t0 = time.perf_counter()
        parts = VectorParts.write(Path(tempfile.mkdtemp(prefix="te-b-vectors-")), [X])  # what a run's read or embed stage leaves
        group = ActorShards(parts, args.shards, device="cpu", threads=max(1, args.cpus // args.shards))
        group.info()  # every actor constructed: blocks are on the actors
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        state = fit_sharded(group, args.k, seed=args.seed, max_iter=args.iters, tol=0.0)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        labels, _, _ = assign_sharded(group, state.centroids)
        t_assign = time.perf_counter() - t0
        info = group.info()
        group.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {
        "setup": name,
        "nodes": nodes,
        "load_seconds": round(t_load, 3),
        "fit_seconds": round(t_fit, 3),
        "assign_seconds": round(t_assign, 3),
        "iterations": state.iteration,
        "inertia": inertia_of(X, state.centroids),
        "labels": labels,
        "shards": [
            {"node": (i["node"] or "")[:8], "rows": i["n"], "peak_rss_mib": round(i["peak_rss_bytes"] / 2**20, 1)} for i in info
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--cpus", type=int, default=2, help="total CPUs in either setup")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "kmeans_cluster.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("theme_engine.engine.kmeans").setLevel(logging.ERROR)  # tol=0: no convergence warning
    busy = cpu_busy_percent()
    X, _ = make_sphere_blobs(args.n, args.d, args.k, 1.0, args.seed)
    half = args.cpus // 2
    one = run_setup("1 node", [], args.cpus, X, args)
    three = run_setup("3 nodes", [args.cpus - half, half], 0, X, args)
    from sklearn.metrics import adjusted_rand_score

    ari = adjusted_rand_score(one.pop("labels"), three.pop("labels"))
    print(f"k-means {args.n} x {args.d}, k={args.k}, {args.iters} iterations, {args.shards} shard actors, {args.cpus} CPUs in all")
    print(f"CPU busy before start: {busy}% (other processes inflate both setups)\n")
    print(f"{'setup':<8} {'nodes':>5} {'load s':>7} {'fit s':>7} {'assign s':>8} {'total s':>8}  shard actors (node, rows, peak RSS)")
    for r in (one, three):
        total = r["load_seconds"] + r["fit_seconds"] + r["assign_seconds"]
        r["total_seconds"] = round(total, 3)
        shards = "; ".join(f"{s['node']} {s['rows']} rows {s['peak_rss_mib']} MiB" for s in r["shards"])
        print(f"{r['setup']:<8} {r['nodes']:>5} {r['load_seconds']:>7.2f} {r['fit_seconds']:>7.2f} {r['assign_seconds']:>8.2f} {total:>8.2f}  {shards}")
    overhead = three["total_seconds"] / one["total_seconds"]
    print(f"\n3 nodes / 1 node: {overhead:.2f}x (target <= 1.5x); fit alone {three['fit_seconds'] / one['fit_seconds']:.2f}x")
    print(f"same result: ARI(1 node, 3 nodes) = {ari:.4f}; inertia ratio {three['inertia'] / one['inertia']:.6f}")
    driver = peak_rss_bytes()
    print(f"driver peak RSS: {driver / 2**20:.0f} MiB (it holds the generated data: {X.nbytes / 2**20:.0f} MiB)")
    write_result(
        args.out,
        {
            **result_header("kmeans_cluster", vars(args)),
            "machine": {**machine_basics(), "cpu_busy_percent_before_start": busy},
            "setups": [one, three],
            "overhead": round(overhead, 3),
            "ari": ari,
            "driver_peak_rss_bytes": driver,
        },
    )


if __name__ == "__main__":
    main()

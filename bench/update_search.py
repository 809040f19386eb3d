"""Where an update's duplicate search reads the existing vectors (issue 31).

An update routes its new rows into the partitions of the run's duplicate search and, in each
partition a new row reaches, compares it with the existing rows routed there. Before, the driver
did this with threads, reading the existing rows of every partition it touched from the stored
vectors; from ``dedup.tasks_from`` documents it is now done by Ray tasks, each reading the
existing rows of its own partitions (``cluster.runtime.stages.dedup.search_by_tasks``).

Per size, ``n`` existing rows (unit vectors, 384-d, 100 loose clusters with near-copies) are
stored as vector parts of 100,000 rows, partitioned (the run's default count) and routed; ``--new`` new rows (a tenth of them near-copies of existing rows) are searched both ways
in one process on a local Ray of ``--cpus`` CPUs:

- ``driver``: ``engine.update.new_pairs`` with threads, the existing rows read in this process;
- ``tasks``: the same call with ``spread=search_by_tasks(...)``.

It prints the seconds and the bytes of existing vectors this (the driver's) process read (counted
by the reader ``new_pairs`` is given, which only the driver's own search calls; the tasks read
theirs with readers of their own), and checks that both ways find the same pairs.

    .venv/bin/python bench/update_search.py --sizes 200000 1000000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from _common import RESULTS, machine_basics, result_header, write_result  # noqa: E402

log = logging.getLogger("bench.update_search")
PART_ROWS = 100_000
DIM = 384


def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def make(folder: Path, n: int, new: int, seed: int) -> np.ndarray:
    """The existing rows as parts under ``folder`` (written a part at a time); returns the new rows."""
    from theme_engine.engine.vectors import PART_NAME

    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((100, DIM)).astype(np.float32)
    folder.mkdir(parents=True)
    for p, a in enumerate(range(0, n, PART_ROWS)):
        rows = min(PART_ROWS, n - a)
        X = unit(centers[rng.integers(100, size=rows)] + 1.5 * rng.standard_normal((rows, DIM)).astype(np.float32))
        np.save(folder / PART_NAME.format(p), X)
        if p == 0:
            first = X[: new // 10].copy()
    fresh = unit(centers[rng.integers(100, size=new - len(first))] + 1.5 * rng.standard_normal((new - len(first), DIM)).astype(np.float32))
    copies = unit(first + 0.01 * rng.standard_normal(first.shape).astype(np.float32))  # cos ~0.98 to their originals
    return np.concatenate([copies, fresh])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "update_search.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import ray

    from theme_engine.cluster.runtime.gather import gather
    from theme_engine.cluster.runtime.stages.dedup import search_by_tasks
    from theme_engine.engine.events import NULL_CONTROL
    from theme_engine.engine.partition import safe_margin
    from theme_engine.engine.update import new_pairs, partition_existing
    from theme_engine.engine.vectors import VectorParts, rows_of_parts

    rows = []
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    try:
        for n in args.sizes:
            with tempfile.TemporaryDirectory(prefix="bench-update-search-") as tmp:
                t0 = time.perf_counter()
                X_new = make(Path(tmp) / "vectors", n, args.new, args.seed)
                blocks = [VectorParts.open(Path(tmp) / "vectors")]
                margin = safe_margin(args.threshold)

                def every_block():
                    return ((a, np.asarray(blocks[0][a : a + 65_536])) for a in range(0, n, 65_536))

                # the run's default partitions, as an update of a run without them makes them
                C, routes = partition_existing(partial(rows_of_parts, blocks), every_block, n, None, None, margin, args.seed)
                log.info("%d existing rows stored, %d partitions routed in %.1f s", n, len(C), time.perf_counter() - t0)
                found = {}
                for way in ("driver", "tasks"):
                    tasks = [0]
                    spread = None
                    if way == "tasks":
                        spread = search_by_tasks(blocks, args.threshold, None, 4096, lambda s: gather(s, NULL_CONTROL, window=2 * args.cpus), args.cpus, tasks)
                    read = [0]

                    def in_driver(r: np.ndarray) -> np.ndarray:  # what the driver reads of the existing vectors
                        got = rows_of_parts(blocks, r)
                        read[0] += got.nbytes
                        return got

                    t0 = time.perf_counter()
                    (pi, pj, ps), _ = new_pairs(in_driver, routes, X_new, n, C, args.threshold, margin, None, n_jobs=args.cpus, spread=spread)
                    seconds = time.perf_counter() - t0
                    found[way] = set(zip(pi.tolist(), pj.tolist()))
                    row = {"existing": n, "new": args.new, "partitions": len(C), "way": way, "seconds": round(seconds, 2),
                           "driver_read_mb": round(read[0] / 2**20, 1), "tasks": tasks[0], "pairs": len(pi)}  # fmt: skip
                    log.info("%s", row)
                    rows.append(row)
                if found["driver"] != found["tasks"]:
                    raise SystemExit(f"n={n}: the two ways found different pairs ({len(found['driver'])} vs {len(found['tasks'])})")
    finally:
        ray.shutdown()
    print(f"\n{'existing':>9} {'way':>7} {'seconds':>8} {'driver read MB':>15} {'tasks':>6} {'pairs':>7}")
    for r in rows:
        print(f"{r['existing']:>9} {r['way']:>7} {r['seconds']:>8.2f} {r['driver_read_mb']:>15.1f} {r['tasks']:>6} {r['pairs']:>7}")
    write_result(args.out, {**result_header("update_search", vars(args)), "machine": machine_basics(), "rows": rows})


if __name__ == "__main__":
    main()

"""What an update's read holds to set its new documents against the corpus (issue 31).

The update finds, for each new document, whether its id is already in the corpus and whether its
text's exact-duplicate key is. Before, the driver built two tables of the whole corpus for that: a
dictionary of every existing id (``{id: row}``) and one of every stored key (``existing_keys``).
Now it looks the new ids up in the corpus's id column (``engine.update.rows_by_id``: only the new
ids are hashed) and reads of the stored keys only those of the new documents
(``grown.load_keys(only=...)``).

Per corpus size, each way runs in a fresh child process on the same synthetic corpus: ``n``
existing ids (``doc-<i>``, held as the driver holds them, one Arrow array) and their keys stored
as parts of 100,000 (``keys/part-N.npz``, as the read writes them), against ``--new`` new
documents (1% of them an existing id, 1% an existing text's key). It prints the child's peak RSS
above what it held after loading the ids (``ru_maxrss``, and the current RSS before), the
seconds, and checks that both ways find the same rows.

    .venv/bin/python bench/update_match.py --sizes 200000 1000000 2000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, machine_basics, result_header, write_result  # noqa: E402

log = logging.getLogger("bench.update_match")
PART_ROWS = 100_000


def _key(i: int) -> bytes:
    return hashlib.blake2b(f"text {i}".encode(), digest_size=16).hexdigest().encode()


def make(folder: Path, n: int, new: int, seed: int) -> None:
    """The existing keys' parts under ``folder/keys`` and the new documents' ids and keys."""
    keys = folder / "keys"
    keys.mkdir(parents=True)
    for p, a in enumerate(range(0, n, PART_ROWS)):
        rows = np.arange(a, min(a + PART_ROWS, n), dtype=np.int64)
        np.savez(keys / f"part-{p:05d}.npz", key=np.asarray([_key(int(r)) for r in rows], dtype="S32"), row=rows)
    rng = np.random.default_rng(seed)
    old_ids = rng.choice(n, new // 100, replace=False)
    old_keys = rng.choice(n, new // 100, replace=False)
    ids = [f"doc-{i}" for i in old_ids.tolist()] + [f"new-{i}" for i in range(new - old_ids.size)]
    texts = [_key(int(i)).decode() for i in old_keys.tolist()] + [_key(n + i).decode() for i in range(new - old_keys.size)]
    (folder / "new.json").write_text(json.dumps({"ids": ids, "keys": texts}))


def rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(folder: Path, n: int, way: str) -> dict:
    from theme_engine.cluster.runtime.stages.grown import load_keys
    from theme_engine.engine.corpus import Strings
    from theme_engine.engine.update import rows_by_id

    import pyarrow as pa
    import pyarrow.compute as pc

    # the corpus's ids, as the driver holds them (one Arrow array, made without a Python string each)
    ids = Strings(pc.binary_join_element_wise(pa.scalar("doc-"), pa.array(np.arange(n)).cast(pa.string()), ""))
    new = json.loads((folder / "new.json").read_text())
    new_ids, new_keys = Strings(new["ids"]), set(new["keys"])
    before = rss_now()
    t0 = time.perf_counter()
    if way == "before":  # tables of the whole corpus
        where = {doc_id: i for i, doc_id in enumerate(ids)}
        found_ids = {d: where[d] for d in new_ids if d in where}
        keys = load_keys(folder / "keys")
        found_keys = {k: keys[k] for k in new_keys if k in keys}
    else:
        found_ids = rows_by_id(ids, new_ids)
        found_keys = load_keys(folder / "keys", new_keys)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.sha256(json.dumps([sorted(found_ids.items()), sorted(found_keys.items())]).encode()).hexdigest()[:16]
    return {"way": way, "n": n, "seconds": round(seconds, 3), "rss_before": before, "peak_above": max(0, peak - before), "found": digest,
            "ids_found": len(found_ids), "keys_found": len(found_keys)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000, 2_000_000])
    p.add_argument("--new", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        print("RESULT " + json.dumps(child(Path(args.child[0]), int(args.child[1]), args.child[2])))
        return 0
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="te-um-") as work:
            t = time.perf_counter()
            make(Path(work), n, args.new, args.seed)
            log.info("%d existing documents' keys made in %.1f s", n, time.perf_counter() - t)
            got = {}
            for way in ("before", "now"):
                proc = subprocess.run([sys.executable, __file__, "--child", work, str(n), way], capture_output=True, text=True)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(proc.stderr[-3000:])
                    return 1
                got[way] = json.loads(line[len("RESULT ") :])
                log.info("%d, %s: %s", n, way, got[way])
            if got["before"]["found"] != got["now"]["found"]:
                log.error("the two ways disagree at %d documents", n)
                return 1
            rows.append(got)
    print(f"\nbench/update_match.py: {args.new:,} new documents against n existing ({os.cpu_count()} CPUs)")
    print("| existing documents | before: peak MiB above the ids | before s | now: peak MiB above the ids | now s | ids found | keys found |")
    print("|---|---|---|---|---|---|---|")
    for g in rows:
        b, w = g["before"], g["now"]
        print(f"| {b['n']:,} | {b['peak_above'] / 2**20:,.0f} | {b['seconds']:.2f} | {w['peak_above'] / 2**20:,.0f} | {w['seconds']:.2f} | {w['ids_found']} | {w['keys_found']} |")
    write_result(RESULTS / "update_match.json", {**result_header("update_match", vars(args)), "machine": machine_basics(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the driver sends when a result is published to an object store (issue 31).

``--out s3://…`` publishes the finished result from its local copy. Before, the driver uploaded
every file itself; now the parts of ``documents.parquet`` and ``duplicates.parquet`` are uploaded
by Ray tasks (``cluster.runtime.publish.parts_by_tasks``) and the driver sends the small files and
the manifest.

Per size, a result folder is made with the datasets' parts totalling that many MB (parts of
``--part-mb``, random bytes: the upload does not parse them) and the small files, and published
to a private S3-compatible server on 127.0.0.1 (moto's, as the tests use) both ways:

- ``driver``: ``engine.sources.upload_result`` in this process, as before;
- ``tasks``: the same call with ``copy_parts=parts_by_tasks(...)`` on a local Ray.

It prints the seconds and the bytes the driver process read (``rchar`` of ``/proc/self/io``, every
``read`` of the process's threads: a file the driver uploads, it reads first; the bytes it sends are
not counted by this VM's ``wchar``, which stays 0 over a 50 MB upload), and checks that the store
holds every byte uploaded afterwards.

    .venv/bin/python bench/publish.py --sizes 64 640
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, ROOT, machine_basics, result_header, write_result  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "cluster"))
from s3local import S3Server  # noqa: E402

log = logging.getLogger("bench.publish")
NAMES = ("manifest.json", "themes.json", "documents.parquet", "duplicates.parquet", "model.npz")


def rchar() -> int:
    with open("/proc/self/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def make(folder: Path, total_mb: int, part_mb: int) -> int:
    """The result folder: the datasets' parts (documents 4/5 of ``total_mb``, duplicates 1/5) and
    the small files. Returns the parts' bytes."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"bench": "publish", "total_mb": total_mb}))
    (folder / "themes.json").write_text(json.dumps([{"theme": i, "label": f"t{i}"} for i in range(100)]))
    (folder / "model.npz").write_bytes(os.urandom(150 * 1024))
    written = 0
    for name, share in (("documents.parquet", 0.8), ("duplicates.parquet", 0.2)):
        (folder / name).mkdir()
        left = int(total_mb * share * 2**20)
        i = 0
        while left > 0:
            size = min(left, part_mb * 2**20)
            (folder / name / f"part-{i:05d}.parquet").write_bytes(os.urandom(size))
            left -= size
            written += size
            i += 1
    return written


def published(url: str) -> int:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(url)
    return sum(f.size for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.type == pafs.FileType.File)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 640], help="MB of dataset parts per result")
    ap.add_argument("--part-mb", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (upload tasks at once)")
    ap.add_argument("--out", type=Path, default=RESULTS / "publish.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import ray

    from theme_engine.cluster.runtime.gather import gather
    from theme_engine.cluster.runtime.publish import parts_by_tasks
    from theme_engine.engine.events import NULL_CONTROL
    from theme_engine.engine.sources import upload_result

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp, S3Server() as server:
        os.environ.update(server.env())  # before Ray starts: its workers get the credentials
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", configure_logging=False)
        try:
            for mb in args.sizes:
                folder = Path(tmp) / f"r{mb}"
                parts = make(folder, mb, args.part_mb)
                for way in ("driver", "tasks"):
                    server.bucket(f"b{mb}{way}")
                    url = f"s3://b{mb}{way}/run"
                    sizes: list[int] = []
                    copy = None
                    if way == "tasks":
                        copy = parts_by_tasks(folder, url, sizes, lambda submits: gather(submits, NULL_CONTROL, window=2 * args.cpus))
                    r0, t0 = rchar(), time.perf_counter()
                    total = upload_result(folder, url, NAMES, "manifest.json", copy_parts=copy)
                    seconds, read = time.perf_counter() - t0, rchar() - r0
                    there = published(url)
                    if there != total:
                        raise SystemExit(f"{url}: the store holds {there} bytes, {total} were uploaded")
                    row = {
                        "parts_mb": round(parts / 2**20, 1), "way": way, "seconds": round(seconds, 2),
                        "driver_read_mb": round(read / 2**20, 2), "tasks": len(sizes), "by_tasks_mb": round(sum(sizes) / 2**20, 1),
                        "mb_per_s": round(total / 2**20 / seconds, 1),
                    }  # fmt: skip
                    log.info("%s", row)
                    rows.append(row)
        finally:
            ray.shutdown()
    print(f"\n{'parts MB':>9} {'way':>7} {'seconds':>8} {'MB/s':>6} {'driver read MB':>15} {'tasks':>6}")
    for r in rows:
        print(f"{r['parts_mb']:>9.1f} {r['way']:>7} {r['seconds']:>8.2f} {r['mb_per_s']:>6.1f} {r['driver_read_mb']:>15.2f} {r['tasks']:>6}")
    write_result(args.out, {**result_header("publish", vars(args)), "machine": machine_basics(), "rows": rows})


if __name__ == "__main__":
    main()

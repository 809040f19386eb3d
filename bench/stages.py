"""Time some stages of a finished run again, on its own inputs, vectors and settings.

For a change to a stage's code: keep a run's output (e.g. ``e2e.py --large 100000 --keep``), then
run this from an export of each commit (``git archive``, with ``PYTHONPATH`` at the export, so Ray
workers import the same code) and compare. Each repeat deletes the named stages' ``done.json``
under ``OUT/.theme-engine/`` and runs the job into ``OUT`` with the configuration its manifest
recorded: the named stages run again, every other stage is reused (nothing is embedded). It
**rewrites those stages' outputs in OUT**; their ``result.npz`` arrays are compared with the ones
before the first repeat (NaN equals NaN), so the table also says whether the output changed.

    .venv/bin/python bench/stages.py OUT --stages label dedup --repeat 2

Prints the code revision, the machine, and per repeat each stage's seconds and the time splits
its record holds (``phase_seconds``, ``search_seconds``, ``fit_seconds``, ``extend_seconds``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _common import code_revision, cpu_busy_percent, machine_basics, write_result  # noqa: E402

SPLITS = ("phase_seconds", "search_seconds", "fit_seconds", "extend_seconds", "quality_seconds")


def _arrays(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _same(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> str:
    if a is None or b is None:
        return "no result.npz"
    if a.keys() != b.keys():
        return "different arrays"
    equal = all(x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc") for x, y in ((a[k], b[k]) for k in a))
    return "same" if equal else "DIFFERENT"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a finished run's output directory (it has manifest.json)")
    ap.add_argument("--stages", nargs="+", required=True, help="stages to run again (e.g. label dedup layout)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from theme_engine.cluster.runtime.driver import STAGES, run
    from theme_engine.engine.config import load_config

    manifest = args.out / "manifest.json"
    if not manifest.exists():
        raise SystemExit(f"{manifest} not found: give the output directory of a finished run")
    known = list(STAGES)
    unknown = [s for s in args.stages if s not in known]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; the stages are {known}")
    config = json.loads(manifest.read_text())["config"]
    config["out"] = str(args.out)
    cfg = load_config(config)
    state = args.out / ".theme-engine"
    before = {s: _arrays(state / s / "result.npz") for s in args.stages}
    busy = cpu_busy_percent()
    rows: list[dict[str, Any]] = []
    for r in range(args.repeat):
        for s in args.stages:
            (state / s / "done.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        result = run(cfg)
        wall = time.perf_counter() - t0
        for s in args.stages:
            rec = result.manifest["stages"][s]
            rows.append(
                {
                    "repeat": r + 1,
                    "stage": s,
                    "seconds": rec.get("seconds"),
                    **{k: rec[k] for k in SPLITS if k in rec},
                    "output": _same(before[s], _arrays(state / s / "result.npz")),
                    "run_wall_seconds": round(wall, 2),
                }
            )

    rev = code_revision()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"code: {rev['revision']}; engine from {rev['engine_imported_from']}")
    basics = machine_basics()
    print(f"machine: {basics['platform']} | cpu_count={basics['cpu_count']} | CPU busy in the 3 s before start: {busy}%")
    print(f"run: {args.out} ({result.manifest['documents']['input']} documents)")
    for row in rows:
        splits = "; ".join(f"{k} {row[k]}" for k in SPLITS if k in row)
        print(f"repeat {row['repeat']}  {row['stage']:9s} {row['seconds']:8.2f} s  output {row['output']}" + (f"  ({splits})" if splits else ""))
    if args.json:
        write_result(args.json, {"command": sys.argv, "code": rev, "machine": basics, "cpu_busy_percent_before_start": busy, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

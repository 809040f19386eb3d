"""What every benchmark reports about where and on what code it ran, and how it writes results."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"


def cpu_busy_percent(seconds: float = 3.0) -> float | None:
    """How busy all CPUs were (from /proc/stat) over ``seconds`` before the benchmark starts: other
    processes sharing the machine inflate every timing. ``None`` where /proc/stat is absent."""

    def snap() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as fh:
                vals = [int(v) for v in fh.readline().split()[1:9]]
        except OSError:
            return None
        return sum(vals), vals[3] + vals[4]

    a = snap()
    time.sleep(seconds)
    b = snap()
    if a is None or b is None or b[0] == a[0]:
        return None
    return round(100.0 * (1.0 - (b[1] - a[1]) / (b[0] - a[0])), 1)


def code_revision() -> dict[str, Any]:
    """Which code was measured: the git commit (+ whether engine/actors/cluster differ from it), or
    the ``REVISION`` file of an exported snapshot (``git archive``), and where ``engine`` came from."""
    from theme_engine import engine

    info: dict[str, Any] = {"engine_imported_from": str(Path(engine.__file__).resolve().parent)}
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "engine", "actors", "cluster"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["revision"] = rev + (" (engine/actors/cluster modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        marker = ROOT / "REVISION"
        info["revision"] = marker.read_text().strip() if marker.exists() else "unknown"
    return info


def machine_basics() -> dict[str, Any]:
    """Platform, Python, CPUs and load: the part of the machine description every benchmark shares."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg_1_5_15": list(os.getloadavg()),
    }


def write_result(path: Path, result: dict[str, Any], default: Callable[[Any], Any] = str) -> None:
    """The result JSON, and a line saying where it went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=default) + "\n")
    print(f"\nwrote {path}")


def result_header(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """What every result JSON starts with: the benchmark, when, the exact command, the code, the parameters."""
    import shlex
    from datetime import datetime, timezone

    return {
        "benchmark": name,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python bench/{name}.py " + shlex.join(sys.argv[1:]),
        **code_revision(),
        "params": {k: v for k, v in params.items() if k != "out"},
    }

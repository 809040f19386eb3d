"""Peak memory of the current process (reported by actors and the driver)."""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """The largest resident set this process has had, in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)

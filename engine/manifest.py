"""``manifest.json``: what a run did, from its stages' records (Ray-free, so any driver builds the
same one)."""

from __future__ import annotations

from typing import Any

from .device import count_fallbacks

STAGE_KEYS = ("seconds", "device", "reused")  # per-stage bookkeeping, left out of the summaries


def build_manifest(
    config: dict[str, Any],
    versions: dict[str, str],
    stages: dict[str, dict[str, Any]],
    k: int,
    n_themes: int,
    counts: dict[str, int],
    bad: list[dict[str, Any]],
    max_bad_examples: int,
    outputs: list[str],
) -> dict[str, Any]:
    """The manifest from the run's public ``config``, package ``versions``, the ``stages``' records
    (in stage order), the chosen ``k``, the number of themes, the document ``counts`` and the bad
    records."""
    embed = stages.get("embed", {})
    cache = embed.get("cache", {"hits": 0, "misses": 0})
    if embed.get("reused"):
        cache = {"hits": 0, "misses": 0, "note": "embed stage reused from this output directory"}
    km = stages["kmeans"]
    return {
        "config": config,
        "versions": versions,
        "stages": stages,
        "cache": cache,
        "k": k,
        "themes": n_themes,
        "select_k": {key: v for key, v in stages["select_k"].items() if key not in STAGE_KEYS},
        "kmeans": {"iterations": km["iterations"], "inertia": km["inertia"], "converged": km["converged"]},
        "dedup": {key: v for key, v in stages["dedup"].items() if key not in STAGE_KEYS},
        "label_lift": stages["label"].get("label_lift"),
        "documents": counts,
        "gpu_fallbacks": count_fallbacks(f for rec in stages.values() for f in rec.get("fallbacks", [])),
        "bad_records": {"count": len(bad), "examples": bad[:max_bad_examples]},
        "outputs": outputs,
    }

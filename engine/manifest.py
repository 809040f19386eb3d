"""``manifest.json``: what a run did, from its stages' records (Ray-free, so any driver builds the
same one)."""

from __future__ import annotations

from typing import Any

from .device import count_fallbacks

STAGE_KEYS = ("seconds", "device", "reused")  # per-stage bookkeeping, left out of the summaries


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """A stage's record without its bookkeeping: what the manifest repeats at its top level."""
    return {key: v for key, v in record.items() if key not in STAGE_KEYS}


def build_manifest(
    config: dict[str, Any],
    versions: dict[str, str],
    stages: dict[str, dict[str, Any]],
    parts: dict[str, Any],
    k: int,
    n_themes: int,
    counts: dict[str, int],
    bad: list[dict[str, Any]],
    max_bad_examples: int,
    outputs: list[str],
) -> dict[str, Any]:
    """The manifest from the run's public ``config``, package ``versions``, the ``stages``' records
    (in stage order), what the stages put at its top level (``parts``: each stage's
    ``manifest_part``, such as ``kmeans`` or ``dedup``), the chosen ``k``, the number of themes,
    the document ``counts`` and the bad records."""
    return {
        "config": config,
        "versions": versions,
        "stages": stages,
        "k": k,
        "themes": n_themes,
        **parts,
        "documents": counts,
        "gpu_fallbacks": count_fallbacks(f for rec in stages.values() for f in rec.get("fallbacks", [])),
        "bad_records": {"count": len(bad), "examples": bad[:max_bad_examples]},
        "outputs": outputs,
    }

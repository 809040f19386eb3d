"""kmeans: Lloyd iterations over the shard actors at the chosen k, checkpointed every
``kmeans.checkpoint_every`` iterations (a stopped run resumes there), then every row assigned."""

from __future__ import annotations

from dataclasses import dataclass

import logging
import warnings
import zipfile
from typing import Any

import numpy as np

from theme_engine.engine.device import count_fallbacks
from theme_engine.engine.events import Interrupted
from theme_engine.engine.kmeans import ConvergenceWarning, KMeansState, assign_sharded, fit_sharded

from .. import ray_session
from ..state import StageStore, fingerprint
from .base import RunContext, Section, Stage

log = logging.getLogger(__name__)


@dataclass
class Clusters:
    """The k-means stage's product: the ``centroids`` (k, d), and per embedded document its
    cluster (``labels``) and its distance to that cluster's centroid."""

    centroids: np.ndarray
    labels: np.ndarray
    distances: np.ndarray


class KMeans(Stage):
    name = "kmeans"
    settings = {"kmeans": Section("kmeans", exclude=frozenset({"checkpoint_every", "batch_rows"}))}
    uses_gpu = True

    def manifest_part(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"kmeans": {key: record[key] for key in ("iterations", "inertia", "converged")}}

    def fingerprint(self, ctx: RunContext) -> str:
        self.k = ctx.product("select_k")
        return fingerprint("kmeans", ctx.fp("select_k"), self.k, self.settings_part(ctx.cfg))

    def load(self, ctx: RunContext) -> Clusters:
        a = ctx.store.load_arrays("kmeans", "result")
        return Clusters(a["centroids"], a["labels"], a["distances"])

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, store, k = ctx.cfg, ctx.store, self.k
        fp = ctx.fp("kmeans")
        control = ctx.control("kmeans")
        kc = cfg.kmeans
        state = _resume(store, fp)

        def checkpoint(s: KMeansState) -> None:
            store.save_arrays(
                "kmeans",
                "checkpoint",
                centroids=s.centroids,
                iteration=np.int64(s.iteration),
                inertia=np.float64(s.inertia),
                converged=np.bool_(s.converged),
                history=np.asarray(s.history, dtype=np.float64),
                fingerprint=np.str_(fp),
            )

        last: list[KMeansState] = []

        def on_iteration(s: KMeansState) -> None:
            last[:] = [s]
            if s.iteration % kc.checkpoint_every == 0:
                checkpoint(s)

        shards = ctx.shards
        try:
            with warnings.catch_warnings(record=True) as caught:  # logged once below, not shown with a code line
                warnings.simplefilter("always", ConvergenceWarning)
                state = fit_sharded(
                    shards,
                    k,
                    seed=cfg.seed,
                    max_iter=kc.max_iter,
                    tol=kc.tol,
                    init_sample_size=kc.init_sample_size,
                    fit_fraction=kc.fit_fraction,
                    state=state,
                    control=control,
                    on_iteration=on_iteration,
                )
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    log.warning("kmeans: %s", w.message)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Interrupted:
            if last:
                checkpoint(last[0])
                log.warning("kmeans: stopped at iteration %d; a re-run resumes there", last[0].iteration)
            raise
        checkpoint(state)
        labels, distances, inertia = assign_sharded(shards, state.centroids)
        store.save_arrays("kmeans", "result", centroids=state.centroids, labels=labels, distances=distances)
        info = shards.info()
        fallbacks = count_fallbacks(f for i in info for f in i.get("fallbacks", []) if f["stage"] == "kmeans")
        return {
            "device": ",".join(sorted({i["device"] for i in info})),
            **({"fallbacks": fallbacks} if fallbacks else {}),
            "shard_peak_rss_bytes": [i["peak_rss_bytes"] for i in info],
            "shard_nodes": len({i["node"] for i in info}),
            "k": k,
            "iterations": state.iteration,
            "inertia": inertia,
            "converged": state.converged,
            "shards": len(shards.sizes),
            "shard_memory_bytes": int(ray_session.shard_memory(max(shards.sizes), state.centroids.shape[1])),
        }


def _resume(store: StageStore, fp: str) -> KMeansState | None:
    """The checkpointed state of an earlier attempt at this very fit (same fingerprint), if any;
    an unreadable checkpoint is ignored with a warning."""
    if not store.has("kmeans", "checkpoint"):
        return None
    try:
        ck = store.load_arrays("kmeans", "checkpoint")
        str(ck["fingerprint"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a damaged file: start afresh
        log.warning("kmeans: ignoring the unreadable checkpoint %s (%s)", store.dir("kmeans") / "checkpoint.npz", exc)
        return None
    if str(ck["fingerprint"]) != fp or not np.isfinite(ck["centroids"]).all():
        return None
    state = KMeansState(
        centroids=ck["centroids"],
        iteration=int(ck["iteration"]),
        inertia=float(ck["inertia"]),
        converged=bool(ck["converged"]),
        history=ck["history"].tolist(),
    )
    log.info("kmeans: resuming at iteration %d", state.iteration)
    return state

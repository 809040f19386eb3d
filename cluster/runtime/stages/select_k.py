"""select_k: the number of themes — given (``--k``), or chosen on a sample drawn from the shards
by graph modularity (k-means draws as Ray tasks) or by the older silhouette rule."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import numpy as np
import ray

from theme_engine.actors.tasks import fit_draw_task, score_k_task
from theme_engine.engine import seeds
from theme_engine.engine.manifest import summary_of
from theme_engine.engine.device import count_fallbacks
from theme_engine.engine.events import StageControl
from theme_engine.engine.kmeans import sample_shards
from theme_engine.engine.select_k import (
    CRITERIA,
    candidate_ks,
    choose_by_modularity,
    choose_k,
    k_ceiling,
    modularity_sample_size,
    widen_grid,
    widened_range,
)

from ..state import fingerprint
from .base import RunContext, RunError, Section, Stage

log = logging.getLogger(__name__)


class SelectK(Stage):
    name = "select_k"
    settings = {"select_k": Section("select_k"), "k": Section("kmeans.k")}
    uses_gpu = True

    def manifest_part(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"select_k": summary_of(record)}

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("select_k", ctx.fp("embed"), self.settings_part(ctx.cfg))

    def load(self, ctx: RunContext) -> int:
        return int(ctx.records["select_k"]["k"])

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg = ctx.cfg
        n = int(ctx.product("embed").shape[0])
        if cfg.kmeans.k is not None:
            if cfg.kmeans.k > n:
                raise RunError(f"--k {cfg.kmeans.k} is larger than the number of distinct documents ({n})")
            return {"device": "none", "k": cfg.kmeans.k, "criterion": "given (--k)"}
        sk = cfg.select_k
        if n < 3:
            raise RunError(f"only {n} distinct documents: too few to choose k; pass --k")
        ks = candidate_ks(n, sk.k_min, sk.k_max, sk.candidates)
        control = ctx.control("select_k")
        if sk.criterion == "silhouette":
            return _silhouette(ctx, n, ks, control)
        sample = sample_shards(ctx.shards, modularity_sample_size(n, sk.sample_size, ks), seeds.derive(cfg.seed, "select_k_sample"))
        gpus = ctx.plan.task_resources.gpus if ctx.plan.use_gpu else 0
        task = fit_draw_task.options(num_gpus=gpus) if gpus else fit_draw_task

        def run_draws(jobs: list[tuple[np.ndarray, int, int, float]]) -> list[Any]:
            refs: dict[int, Any] = {}
            for rows, *_ in jobs:
                refs.setdefault(id(rows), ray.put(rows))
            submits = {
                i: partial(task.remote, refs[id(rows)], k_top, draw, cfg.seed, fraction, cfg.device)
                for i, (rows, k_top, draw, fraction) in enumerate(jobs)
            }
            results = ctx.gather(submits, control)
            return [results[i] for i in range(len(jobs))]

        choice, record = choose_by_modularity(
            sample, ks, repeats=sk.repeats, neighbors=sk.neighbors, min_gain=sk.min_gain, seed=cfg.seed, run_draws=run_draws
        )
        fallbacks = count_fallbacks(record.pop("_fallbacks"))
        if record["widened"]:
            log.info("select_k: k=%s was on the edge of %s, widened the range to %s", *[record["widened"][key] for key in ("because", "from", "to")])
        log.info("select_k: chose k=%d (%s)", choice.k, choice.reason)
        return {**record, **({"fallbacks": fallbacks} if fallbacks else {})}


def _silhouette(ctx: RunContext, n: int, ks: list[int], control: StageControl) -> dict[str, Any]:
    """The earlier criterion (highest mean silhouette), one Ray task per candidate."""
    cfg = ctx.cfg
    sk = cfg.select_k
    sample = sample_shards(ctx.shards, min(n, sk.sample_size), seeds.derive(cfg.seed, "select_k_sample"))
    ref = ray.put(sample)
    task = score_k_task.options(num_gpus=ctx.plan.task_resources.gpus) if ctx.plan.use_gpu else score_k_task

    def score(candidates: list[int]) -> list[Any]:
        submits = {k: partial(task.remote, ref, k, sk.repeats, cfg.seed, cfg.device) for k in candidates}
        return list(ctx.gather(submits, control).values())

    scores = sorted(score(ks), key=lambda s: s.k)
    widened = None
    span = widened_range(choose_k(scores), ks, 2, k_ceiling(len(sample), ks))
    if span is not None:
        wider = widen_grid(ks, *span)
        widened = {"from": [min(ks), max(ks)], "to": list(span), "because": f"k={choose_k(scores)} was on the edge"}
        scores = sorted(scores + score([k for k in wider if k not in ks]), key=lambda s: s.k)
        ks = wider
    fallbacks = count_fallbacks({"stage": "select_k", "reason": s.fallback} for s in scores if s.fallback)
    k = choose_k(scores)
    log.info("select_k: chose k=%d from %s (silhouette)", k, ks)
    return {
        "device": ",".join(sorted({s.device for s in scores})),
        **({"fallbacks": fallbacks} if fallbacks else {}),
        "k": k,
        "criterion": CRITERIA["silhouette"],
        "reason": f"highest mean silhouette at k={k}",
        "range": [min(ks), max(ks)],
        "widened": widened,
        "edge": k in (min(ks), max(ks)),
        "sample_size": int(len(sample)),
        "repeats": sk.repeats,
        "not_converged": sum(s.not_converged for s in scores),
        "candidates": [s.as_dict() for s in scores],
    }

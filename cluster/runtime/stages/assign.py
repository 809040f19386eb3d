"""assign (an update's stage, no run form): each new document's nearest theme; those far from
every theme, the drift test over them and (``--refit auto``) new themes found among them; with
``--refit always``, the centroids refitted over the whole corpus from the existing ones
(``engine/update.py``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from theme_engine.engine.update import drift_test, far_cutoffs, nearest, propose_themes, refit_centroids, typical_spread

from ..state import fingerprint
from .base import RunContext, Stage

log = logging.getLogger(__name__)


@dataclass
class Assignment:
    """The assign stage's product, over the grown corpus (the run's documents, the updates', the
    new ones): the themes' ``centroids`` (the existing ones, then any new), each document's theme
    and distance to its centroid, the new documents' ``far`` flags (beyond their nearest theme's
    ``cutoffs``), and ``far_from_theme``: documents put in an existing theme they are far from."""

    centroids: np.ndarray
    themes: np.ndarray
    distances: np.ndarray
    far: np.ndarray
    cutoffs: np.ndarray
    far_from_theme: np.ndarray


class Assign(Stage):
    """Each new document's nearest theme; the far ones, the drift test and (``--refit``) new
    themes; with ``always`` the centroids refitted over the whole corpus from the existing ones."""

    name = "assign"

    def fingerprint(self, ctx: RunContext) -> str:
        return fingerprint("assign", ctx.fp("embed"), ctx.cfg.update.model_dump(mode="json"), ctx.cfg.seed, ctx.grown.token)

    def load(self, ctx: RunContext) -> Assignment:
        a = ctx.store.load_arrays("assign", "result")
        return Assignment(a["centroids"], a["themes"], a["distances"], a["far"], a["cutoffs"], a["far_from_theme"])

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg, uc = ctx.cfg, ctx.cfg.update
        grown = ctx.grown
        control = ctx.control("assign")
        X = np.asarray(ctx.product("embed"), dtype=np.float32)
        C = grown.arrays["centroids"].astype(np.float32)
        old_themes, old_dist = grown.arrays["themes"], grown.arrays["distances"]
        k = len(C)
        control.report(0, 3)
        theme, dist = nearest(X, C) if len(X) else (np.zeros(0, np.int64), np.zeros(0, np.float32))
        cut = far_cutoffs(old_dist, old_themes, k, uc.far_quantile)
        far = dist > cut[theme] if len(X) else np.zeros(0, dtype=bool)
        drift = drift_test(int(far.sum()), len(X), 1.0 - uc.far_quantile, uc.drift_share)
        control.report(1, 3)
        proposal: dict[str, Any] = {"decision": "new documents join their nearest theme"}
        C_new = np.zeros((0, C.shape[1]), np.float32)
        if uc.refit != "never" and far.sum() >= uc.min_theme_size:
            spread = typical_spread(old_dist, old_themes, k)
            found = propose_themes(X[far], C, spread, min_size=uc.min_theme_size, max_new=uc.max_new_themes, seed=cfg.seed, neighbors=15)
            C_new, proposal = found.centroids, found.info
        elif uc.refit != "never":
            proposal = {"decision": f"{int(far.sum())} far documents: fewer than update.min_theme_size ({uc.min_theme_size}) for a new theme"}
        C_all = np.concatenate([C, C_new]) if len(C_new) else C
        control.report(2, 3)
        themes = np.concatenate([old_themes, np.zeros(len(X), np.int64)])
        distances = np.concatenate([old_dist, np.zeros(len(X), np.float32)])
        refit: dict[str, Any] = {}
        if uc.refit == "always":

            def blocks() -> Iterator[tuple[int, np.ndarray]]:
                yield from grown.iter_vectors()
                if len(X):
                    yield grown.n_vectors, X

            n = grown.n_vectors + len(X)
            C_all, themes, distances, refit = refit_centroids(blocks, n, C_all, cfg.kmeans.max_iter, cfg.kmeans.tol, control.check)
        elif len(X):
            themes[len(old_themes) :], distances[len(old_themes) :] = nearest(X, C_all)
        # new documents beyond the cut-off of the existing theme they were put in (no new theme took
        # them): flagged, and kept out of that theme's labels, which they would otherwise rename
        t_new, d_new = themes[len(old_themes) :], distances[len(old_themes) :]
        forced = (t_new < k) & (d_new > cut[np.minimum(t_new, k - 1)]) if len(X) else np.zeros(0, dtype=bool)
        before = grown.arrays.get("far_from_theme")
        far_from_theme = np.concatenate([before if before is not None else np.zeros(len(old_themes), dtype=bool), forced])
        ctx.store.save_arrays(
            "assign", "result", centroids=C_all.astype(np.float32), themes=themes, distances=distances, far=far, cutoffs=cut, far_from_theme=far_from_theme
        )
        control.report(3, 3)
        if drift["drift"] and not len(C_new):
            log.warning(
                "update: %.0f%% of the new documents are far from every theme (more than update.drift_share = %.0f%%) but form no "
                "theme as tight as the existing ones (%s); theme-engine run over the whole corpus would refit",
                100 * drift["far_share"], 100 * uc.drift_share, proposal.get("decision"),
            )  # fmt: skip
        moved = int((themes[: len(old_themes)] != old_themes).sum())
        return {
            "device": "cpu",
            "refit": uc.refit,
            "far_quantile": uc.far_quantile,
            "drift": drift,
            "proposal": proposal,
            "themes_before": int(k),
            "new_themes": int(len(C_all) - k),
            "existing_moved": moved,
            "far_in_existing_themes": int(forced.sum()),
            **refit,
        }

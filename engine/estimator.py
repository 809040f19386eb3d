"""The scikit-learn estimator over the k-means kernels of :mod:`theme_engine.engine.kmeans` (kept
apart so that the kernels, which every Ray worker imports, do not import scikit-learn)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .device import Device, resolve_device
from .kmeans import Shard, fit_local


class KMeans(ClusterMixin, BaseEstimator):
    """k-means with k-means++ init and Lloyd iterations: a scikit-learn estimator (``get_params``,
    ``clone``, pipelines, ``sklearn.utils.estimator_checks``).

    ``device`` is ``"cpu"``, ``"cuda"``, ``"auto"`` or a :class:`Device` (an array namespace the
    kernels run on, e.g. CuPy or ``array-api-strict``). On the CPU with numpy, ``X`` is validated
    as scikit-learn does (finite, 2-D, at least one sample; float32 or float64, computed in
    float32); on another namespace it stays where it is and only its shape is checked.

    Fitted attributes: ``cluster_centers_``, ``labels_``, ``inertia_``, ``n_iter_``, ``converged_``,
    ``n_features_in_``.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        max_iter: int = 100,
        tol: float = 1e-4,
        random_state: Any = 0,
        init_sample_size: int | None = None,
        batch_rows: int = 16_384,
        device: Device | str = "cpu",
    ) -> None:
        self.n_clusters = n_clusters
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.init_sample_size = init_sample_size
        self.batch_rows = batch_rows
        self.device = device

    def _device(self) -> Device:
        return resolve_device(self.device) if isinstance(self.device, str) else self.device

    def _seed(self) -> int:
        """An integer seed from ``random_state`` (an int, None or a RandomState, as scikit-learn takes)."""
        if isinstance(self.random_state, numbers.Integral) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(2**31 - 1))

    def _check_params(self, n_samples: int) -> None:
        if not isinstance(self.n_clusters, numbers.Integral) or isinstance(self.n_clusters, bool) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {self.n_clusters!r}")
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.tol < 0:
            raise ValueError(f"tol must be >= 0, got {self.tol}")

    def _input(self, X: Any, device: Device, reset: bool) -> Any:
        if device.xp is np:
            X = validate_data(self, X, reset=reset, dtype=[np.float32, np.float64])
            return np.ascontiguousarray(X, dtype=np.float32)
        if len(X.shape) != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {tuple(X.shape)}")
        if reset:
            self.n_features_in_ = int(X.shape[1])
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but KMeans is expecting {self.n_features_in_} features as input")
        return X

    def fit(self, X: Any, y: Any = None) -> "KMeans":
        """Fit on ``X`` (n_samples, n_features); ``y`` is ignored (scikit-learn's signature)."""
        device = self._device()
        X = self._input(X, device, reset=True)
        self._check_params(X.shape[0])
        fit = fit_local(
            X,
            self.n_clusters,
            seed=self._seed(),
            max_iter=self.max_iter,
            tol=self.tol,
            init_sample_size=self.init_sample_size,
            batch_rows=self.batch_rows,
            device=device,
        )
        self.cluster_centers_ = fit.centroids
        self.labels_ = fit.labels
        self.inertia_ = fit.inertia
        self.n_iter_ = fit.n_iter
        self.converged_ = fit.converged
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The index of the nearest centre for each row of ``X``."""
        check_is_fitted(self, "cluster_centers_")
        device = self._device()
        X = self._input(X, device, reset=False)
        return Shard(X, 0, device, self.batch_rows).assign(self.cluster_centers_)[0]

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X).labels_

"""``SmoothNMF.partial_fit``: settings it takes, its start, and the attributes it sets.

The updates themselves are in :mod:`espm_lite.solvers.online_kl`.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from .._input import validate_input
from ..solvers.online_kl import BatchModels

#: Settings partial_fit cannot honour, with the reason given to the caller.
_REFUSED = (
    ("hspy_comp", lambda e: not e.hspy_comp, "batches are pixels (rows, hspy_comp=True)"),
    ("G", lambda e: e.G is not None, "only G=None is fitted batch by batch"),
    ("lambda_L", lambda e: e.lambda_L > 0, "the Laplacian couples pixels of different batches"),
    ("mu", lambda e: np.any(np.asarray(e.mu) > 0), "the sparsity of the maps is not streamed"),
    ("simplex_H", lambda e: bool(e.simplex_H), "maps on the simplex are not fitted batch by batch"),
    ("l2", lambda e: bool(e.l2), "the batch models are those of the KL loss"),
    ("fixed_W", lambda e: e.fixed_W is not None, "fixed entries are not kept batch by batch"),
    ("fixed_H", lambda e: e.fixed_H is not None, "the maps of a stream are not kept"),
)


def _check_settings(estimator) -> None:
    for name, refused, why in _REFUSED:
        if refused(estimator):
            raise ValueError(
                f"{type(estimator).__name__}.partial_fit does not support "
                f"{name}={getattr(estimator, name)!r}: {why}. Use fit (a dask array larger than "
                "memory is fitted exactly, pass by pass) for this setting."
            )


def _start(estimator, X) -> BatchModels:
    """The fitted spectra if ``fit`` ran last, else a batch fit of this first batch."""
    fitted = getattr(estimator, "W_", None)
    if fitted is None or getattr(estimator, "_online_W_", None) is not fitted:
        if fitted is None:
            first = clone(estimator).set_params(partial_fit_rounds=None, verbose=0)
            fitted = first.fit(X).W_
        return BatchModels(np.array(fitted, dtype=np.float64), float(estimator.log_shift))
    return estimator._online_models


def partial_fit(estimator, X):
    """Update ``estimator`` with one batch of pixels (see ``SmoothNMF.partial_fit``)."""
    estimator._validate_params()
    _check_settings(estimator)
    first = not hasattr(estimator, "W_")
    X = validate_input(estimator, X, reset=first, where="partial_fit (input X)")
    models = _start(estimator, X)
    models.update(X, int(estimator.partial_fit_rounds))
    W = models.W
    if estimator._effective_simplex_W():
        W = W / W.sum(axis=0, keepdims=True)
    W = W.astype(X.dtype)
    for stale in ("H_", "losses_", "reconstruction_err_", "n_iter_", "_history"):  # of a fit
        estimator.__dict__.pop(stale, None)
    estimator.W_ = estimator._online_W_ = W
    estimator._online_models = models
    estimator.components_ = np.ascontiguousarray(W.T)
    estimator.n_components_ = estimator._n_features_out = W.shape[1]
    estimator.n_steps_ = 1 if first else getattr(estimator, "n_steps_", 0) + 1
    estimator.G_, estimator._G_simplex_rows = None, None
    estimator._scale, estimator._intensity, estimator._penalty_units = 1.0, "H", (1.0, 1.0)
    return estimator

"""Shared base of the Frobenius-loss estimators (semi-NMF and convex NMF).

Ding, Li & Jordan (2008) fit ``X ~ A D^T`` in the least-squares sense with
multiplicative square-root updates of the non-negative factor.  This module
holds what both estimators share: the state of a fit, the objective computed
from the products the updates need anyway, the k-means start, the exact final
solve of the sample-side factor, and :meth:`transform` (a least-squares solve
of each row, non-negative where the model says so).
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval, StrOptions

from .. import _least_squares as lsq
from .. import kernels
from .._initialization import kmeans_factors
from .base import FitState, NMFEstimator

#: Multiplicative map updates per iteration: they reuse ``X D`` and ``D^T D``, so a
#: sweep costs ``O(p k^2)`` against ``O(n p k)`` for a pass over the data.
MAP_SWEEPS = 10

#: Start of the Frobenius estimators: k-means (Ding et al.) or random.
FROBENIUS_INITS = ("kmeans", "random")


def sqrt_update(current: np.ndarray, numerator: np.ndarray, denominator: np.ndarray, floor: float):
    """Ding-Li-Jordan update ``current * sqrt(numerator / denominator)``, floored."""
    tiny = np.finfo(current.dtype).tiny
    ratio = numerator / np.maximum(denominator, tiny)
    return np.maximum(current * np.sqrt(np.maximum(ratio, 0.0)), floor)


def split(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts ``(M^+, M^-)`` with ``M = M^+ - M^-``, both ``>= 0``."""
    return np.maximum(matrix, 0), np.maximum(-matrix, 0)


class FrobeniusNMF(NMFEstimator):
    """Common machinery of :class:`SNMF` and :class:`ConvexNMF` (not public).

    The objective is ``1/2 ||X - A D^T||_F^2`` plus an L1 term on the maps
    ``A`` (``p x k``).  Parameters of :class:`NMFEstimator` that belong to the
    Poisson model (``l2``, ``simplex_H``, ``simplex_W``, ``fixed_W``,
    ``fixed_H``, ``sparse``) are not parameters here; they are fixed as class
    attributes so that the shared code reads them.
    """

    _parameter_constraints: dict = {
        **{
            key: value
            for key, value in NMFEstimator._parameter_constraints.items()
            if key not in ("init", "l2", "simplex_H", "simplex_W", "fixed_W", "fixed_H", "sparse")
        },
        "init": [StrOptions(set(FROBENIUS_INITS)), None],
    }

    l2 = True
    simplex_H = False
    simplex_W = False
    fixed_W = None
    fixed_H = None
    sparse = "auto"

    #: Objective terms besides the data term, in the history.
    _penalty_names = ("l1_reg_loss",)

    # ----------------------------------------------------------- to override
    def _map_l1(self, state: FitState) -> np.ndarray | float:
        """L1 weight of each map (per component), at the current state."""
        return 0.0

    def _polish(self, state: FitState) -> None:
        """Final exact solve of the sample-side factor (objective can only decrease)."""
        if self.hspy_comp:
            D = state.D
            state.A[...] = np.maximum(
                lsq.coefficients(state.X, D, non_negative=True, l1=self._map_l1(state)),
                state.floor,
            )

    # -------------------------------------------------------------- shared
    def _make_state(self, Xi, G) -> FitState:
        self.data_path_ = "sparse" if sp.issparse(Xi) else "dense"
        return FitState(
            X=Xi,
            W=None,
            A=None,
            G=G,
            floor=float(self.log_shift),
            x_constants=kernels.data_constants(Xi, "l2"),
        )

    def _data_scale(self, Xi) -> float:
        """``normalize`` divisor: mean absolute counts per pixel (1 when zero)."""
        values = Xi.data if sp.issparse(Xi) else Xi
        total = float(np.abs(values).sum(dtype=np.float64))
        return total / Xi.shape[0] if total > 0 else 1.0

    def _start(self, Xi, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Start ``(A (p, k) >= 0, D (n, k))``: k-means indicators + 0.2 and centroids."""
        rng = self._rng()
        if self.init == "random":
            p, n = Xi.shape
            norm2 = kernels.data_constants(Xi, "l2")[0]
            scale = np.sqrt(max(norm2 / (p * n), 1e-12) / k)
            return (
                scale * np.abs(rng.standard_normal((p, k))),
                scale * np.abs(rng.standard_normal((n, k))),
            )
        indicators, centroids = kmeans_factors(Xi, k, rng)
        return indicators, centroids.T

    def _objective_terms(self, state: FitState) -> dict[str, float]:
        D = state.D
        XD = np.asarray(state.X @ D)
        return self._terms(state, XD, D.T @ D)

    def _terms(self, state: FitState, XD: np.ndarray, gram_D: np.ndarray) -> dict[str, float]:
        data = lsq.frobenius_from_products(state.x_constants[0], XD, state.A, gram_D)
        l1 = np.broadcast_to(self._map_l1(state), (state.A.shape[1],))
        return {"data": data, "l1_reg_loss": float(state.A.sum(axis=0) @ l1)}

    def _run(self, state: FitState, n_entries: int) -> None:
        super()._run(state, n_entries)
        self._polish(state)
        state.extras["final_terms"] = self._objective_terms(state)

    def transform(self, X):
        """Solve for the sample-side factor of new data, the fitted factor fixed.

        ``hspy_comp=True``: the maps of the new pixels, each pixel an exact
        (non-negative, L1-penalised as in the fit) least-squares problem solved
        on its own, so any subset of pixels gives the same rows.
        ``hspy_comp=False``: the values of the fitted spectra at new channels
        (see the estimator's docstring).

        Parameters
        ----------
        X : array-like or sparse matrix (n_samples, n_features_in_)

        Returns
        -------
        ndarray (n_samples, n_components_)
        """
        X = self._transform_input(X)
        scale = self._scale
        X = X * (1.0 / scale) if scale != 1.0 else X
        basis = self.components_.T.astype(np.float64)
        basis_factor = "H" if self.hspy_comp else "W"
        if scale != 1.0 and self._scaled_factor != basis_factor:
            basis = basis / scale
        out = self._solve_rows(X, basis)
        if scale != 1.0 and self._scaled_factor == basis_factor:
            out = out * scale
        return out.astype(X.dtype, copy=False)

    def _solve_rows(self, X, basis: np.ndarray) -> np.ndarray:
        """Coefficients of the rows of (rescaled) ``X`` on ``basis`` ``(n_features, k)``."""
        if self.hspy_comp:
            l1 = self._fitted_l1 if hasattr(self, "_fitted_l1") else 0.0
            return lsq.coefficients(X, basis, non_negative=True, l1=l1)
        return lsq.coefficients(X, basis, non_negative=False)

    def _set_fitted(self, state: FitState, scale: float):
        self._fitted_l1 = self._map_l1(state)
        return super()._set_fitted(state, scale)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = self._non_negative_input
        return tags


SPARSITY_CONSTRAINT = [Interval(numbers.Real, 0, None, closed="left")]

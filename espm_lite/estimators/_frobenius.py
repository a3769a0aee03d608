"""What the least-squares estimators (SNMF, ConvexNMF) share as scikit-learn classes.

The maths is in :mod:`espm_lite.solvers.frobenius`; this class fixes the
Poisson-model parameters of :class:`NMFEstimator` that do not apply, and
provides :meth:`transform` (an exact least-squares solve of each row,
non-negative where the model says so).
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval, StrOptions

from ..kernels import least_squares as lsq
from .base import NMFEstimator

#: Start of the Frobenius estimators: k-means (Ding et al.) or random.
FROBENIUS_INITS = ("kmeans", "random")

SPARSITY_CONSTRAINT = [Interval(numbers.Real, 0, None, closed="left")]


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
    _uses_data_pass = False

    def _choose_data_path(self, Xi) -> str:
        return "sparse" if sp.issparse(Xi) else "dense"

    def _solver_options(self) -> dict:
        """Keyword arguments every Frobenius solver takes."""
        return {"init": self.init, "rng": self._rng, "polish_maps": bool(self.hspy_comp)}

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
        basis_divisor, out_multiplier = self._transform_scales("H" if self.hspy_comp else "W")
        X = X * (1.0 / self._scale) if self._scale != 1.0 else X
        basis = self.components_.T.astype(np.float64)
        if basis_divisor != 1.0:
            basis = basis / basis_divisor
        out = self._solve_rows(X, basis)
        if out_multiplier != 1.0:
            out = out * out_multiplier
        return out.astype(X.dtype, copy=False)

    def _solve_rows(self, X, basis: np.ndarray) -> np.ndarray:
        """Coefficients of the rows of (rescaled) ``X`` on ``basis`` ``(n_features, k)``."""
        if self.hspy_comp:
            return lsq.coefficients(X, basis, non_negative=True, l1=self._fitted_l1)
        return lsq.coefficients(X, basis, non_negative=False)

"""ConvexNMF: spectra that are non-negative (convex) combinations of data pixels."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from .. import _least_squares as lsq
from .. import kernels
from ._frobenius import MAP_SWEEPS, SPARSITY_CONSTRAINT, FrobeniusNMF, sqrt_update
from .base import FitState

SOLVERS = ("mu", "pgd")


def _spectra_of(state: FitState) -> np.ndarray:
    """``D = X^T B`` (n, k): the dictionary applied to the pixels."""
    return np.asarray(state.X.T @ state.W)


class ConvexNMF(FrobeniusNMF):
    r"""Convex NMF (Ding, Li & Jordan 2008): each spectrum is a combination of pixels.

    Minimises, over ``B >= 0`` (``p x k``) and ``A >= 0`` (``p x k``, the maps
    ``H^T``),

    .. math::

        F(B, A) = \tfrac12 \|X - A (X^T B)^T\|_F^2 + \ell_1 \sum_{jr} A_{jr},

    with ``X`` the ``p x n`` pixels-by-channels data: the spectra
    ``D = X^T B`` (``n x k``) are non-negative combinations of the measured
    pixel spectra, so they stay physically plausible even with few counts.
    With ``strict_convex=True`` (default) every column of ``B`` (a row of
    ``convex_weights_``) sums to one: each spectrum is a convex combination of
    pixels. The model is invariant to ``(b_r c, a_r / c)``, so this costs
    nothing: the maps carry the intensity.

    The data must be non-negative (counts). Then the kernel ``K = X X^T``
    is non-negative and its negative part vanishes, so the updates need
    only products with ``X``: ``K B = X (X^T B) = X D``, never the ``p x p``
    kernel.

    Solvers, with ``M = D^T D``:

    * ``"mu"`` (Ding-Li-Jordan multiplicative rules, monotone):
      ``A <- A sqrt(X D / (A M + l1))`` (10 sweeps per iteration, which
      reuse ``X D`` and ``M``: no pass over the data) and
      ``B <- B sqrt(K A / (K B A^T A))`` with ``K A = X (X^T A)`` and
      ``K B A^T A = (X D)(A^T A)``;
    * ``"pgd"`` (alternating projected gradient): steps ``1 / L`` with the
      exact Lipschitz constants of each block, ``L_A = lambda_max(M)`` and
      ``L_B = sigma_max(X)^2 lambda_max(A^T A)`` (each step a descent step),
      projected on ``A >= log_shift`` and on ``B >= log_shift`` (on the
      simplex with ``strict_convex``).

    After the last iteration, with ``hspy_comp=True``, the maps are solved
    exactly by non-negative least squares against the dictionary, as
    :meth:`transform` does for new pixels.

    Parameters
    ----------
    n_components : int, default=2
    solver : {"mu", "pgd"}, default="mu"
    l1_penalty : float, default=0
        ``l1`` above, on the maps.
    strict_convex : bool, default=True
        Columns of ``B`` on the simplex (with ``"mu"``: renormalised after
        every iteration, the objective unchanged).
    init : {"kmeans", "random"} or None, default=None
        ``None`` / ``"kmeans"``: the semi-NMF start of Ding et al.: k-means
        of the pixels, ``A`` the cluster indicators plus 0.2 and ``B`` the
        same normalised per cluster (the spectra start near the centroids).
    tol, max_iter, random_state, verbose, debug, eval_print, true_D, true_H, \
hspy_comp, no_stop_criterion, dtype
        See :class:`NMFEstimator`.
    shape_2d : (int, int) or None
        Accepted (HyperSpy fills it in) and checked, not used.
    normalize : bool, default=False
        Fit ``X / s`` (``s`` the mean counts per pixel, so ``l1_penalty``
        means the same at any count level); the spectra are reported as
        combinations of the original pixels.
    log_shift : float, default=1e-14
        Floor of ``A`` and ``B``.

    ``G`` is not a parameter: the spectra are combinations of measured
    pixels, not of the columns of a known matrix. The Poisson-model
    parameters of :class:`NMFEstimator` are not parameters either (see
    :class:`SNMF`).

    Attributes
    ----------
    W_ : ndarray (n, k)
        The spectra ``D`` (``G`` is the identity).
    convex_weights_ : ndarray (k, p)
        ``B^T``: spectrum ``r`` is ``sum_j convex_weights_[r, j] x_j`` over
        the training pixels ``x_j``; rows sum to one with ``strict_convex``.
    H_, components_, n_components_, n_iter_, losses_, reconstruction_err_, \
n_features_in_, data_path_
        As in :class:`NMFEstimator`.

    Notes
    -----
    With ``hspy_comp=False`` the samples are channels: :meth:`transform`
    returns the values of the fitted spectra at new channels, ``X_new B``
    (the same combination of pixels), and ``fit_transform(X)`` equals
    ``fit(X).transform(X)``.
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in FrobeniusNMF._parameter_constraints.items() if k != "G"},
        "solver": [StrOptions(set(SOLVERS))],
        "l1_penalty": SPARSITY_CONSTRAINT,
        "strict_convex": ["boolean"],
        "log_shift": [Interval(numbers.Real, 0, None, closed="neither")],
    }

    G = None

    def __init__(
        self,
        n_components=2,
        *,
        solver="mu",
        l1_penalty=0.0,
        strict_convex=True,
        init=None,
        tol=1e-4,
        max_iter=200,
        random_state=None,
        verbose=1,
        debug=False,
        shape_2d=None,
        normalize=False,
        log_shift=1e-14,
        eval_print=10,
        true_D=None,
        true_H=None,
        hspy_comp=False,
        no_stop_criterion=False,
        dtype=None,
    ):
        self.n_components = n_components
        self.solver = solver
        self.l1_penalty = l1_penalty
        self.strict_convex = strict_convex
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.debug = debug
        self.shape_2d = shape_2d
        self.normalize = normalize
        self.log_shift = log_shift
        self.eval_print = eval_print
        self.true_D = true_D
        self.true_H = true_H
        self.hspy_comp = hspy_comp
        self.no_stop_criterion = no_stop_criterion
        self.dtype = dtype

    # ----------------------------------------------------------------- setup
    def _make_state(self, Xi, G) -> FitState:
        state = super()._make_state(Xi, G)
        state.spectra = _spectra_of
        return state

    def _initialise(self, state: FitState, W0, H0, m, p, k, dtype, scale) -> None:
        if W0 is not None:
            raise ValueError(
                "ConvexNMF does not take an initial W: its spectra are combinations of the "
                "data pixels. Pass H (the initial maps) only, or neither."
            )
        A, _ = self._start(state.X, k)
        # k-means: indicators + 0.2, normalised per cluster below
        B = self._rng().random((p, k)) + 0.1 if self.init == "random" else A.copy()
        if H0 is not None:
            H0 = np.asarray(H0, dtype=np.float64)
            if H0.shape != (k, p) or not np.all(np.isfinite(H0)) or np.any(H0 < 0):
                raise ValueError(f"H must be finite, non-negative, of shape {(k, p)}.")
            A = H0.T / scale
        B = B / B.sum(axis=0, keepdims=True)
        if H0 is None:
            # Maps at the scale of the start spectra (least squares in a common factor).
            D = np.asarray(state.X.T @ B)
            XD = np.asarray(state.X @ D)
            A = A * max(float(np.vdot(A, XD)) / float(np.vdot(A.T @ A, D.T @ D)), 1e-12)
        state.W = np.ascontiguousarray(np.maximum(B, state.floor), dtype=dtype)
        state.A = np.ascontiguousarray(np.maximum(A, state.floor), dtype=dtype)
        if self.solver == "pgd":
            state.extras["sigma2"] = lsq.spectral_norm2(state.X)

    def _map_l1(self, state: FitState) -> float:
        return float(self.l1_penalty)

    # ------------------------------------------------------------- iteration
    def _iterate(self, state: FitState) -> dict[str, float]:
        X, A, B, floor = state.X, state.A, state.W, state.floor
        D = _spectra_of(state)
        KB = np.asarray(X @ D)  # K B = X X^T B
        gram = D.T @ D
        terms = self._terms(state, KB, gram)  # objective of the iterate before the update
        l1 = float(self.l1_penalty)
        if self.solver == "mu":
            for _ in range(MAP_SWEEPS):  # no pass over the data: O(p k^2) each
                A[...] = sqrt_update(A, KB, A @ gram + l1, floor)
            KA = np.asarray(X @ np.asarray(X.T @ A))
            B[...] = sqrt_update(B, KA, KB @ (A.T @ A), floor)
            if self.strict_convex:
                sums = B.sum(axis=0)
                B /= sums
                A *= sums
        else:
            lipschitz_A = max(float(np.linalg.eigvalsh(gram)[-1]), np.finfo(A.dtype).tiny)
            A[...] = np.maximum(A - (A @ gram - KB + l1) / lipschitz_A, floor)
            gram_A = A.T @ A
            KA = np.asarray(X @ np.asarray(X.T @ A))
            lipschitz_B = state.extras["sigma2"] * float(np.linalg.eigvalsh(gram_A)[-1])
            step = 1.0 / max(lipschitz_B, np.finfo(A.dtype).tiny)
            grad_B = KB @ gram_A - KA
            B[...] = kernels.projected_step(
                B.T, grad_B.T, step, floor=floor, simplex=bool(self.strict_convex)
            ).T
        return terms

    # --------------------------------------------------------------- outputs
    def _set_fitted(self, state: FitState, scale: float):
        self.convex_weights_ = np.ascontiguousarray(state.W.T)
        # The spectra are combinations of the original pixels: they carry the scale.
        self._scaled_factor = "W"
        state.W, state.spectra = _spectra_of(state), None  # the fit is over: W_ holds D
        return super()._set_fitted(state, scale)

    def _solve_rows(self, X, basis: np.ndarray) -> np.ndarray:
        if self.hspy_comp:
            return super()._solve_rows(X, basis)
        # New channels: the fitted combination of pixels, X_new B.
        return np.asarray(X @ self.convex_weights_.T)

"""ConvexNMF: spectra that are non-negative (convex) combinations of data pixels."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from .._problem import Problem
from ..solvers.frobenius import ConvexSolver
from ._frobenius import SPARSITY_CONSTRAINT, FrobeniusNMF

SOLVERS = ("mu", "pgd")


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
hspy_comp, no_stop_criterion, accelerate, max_memory, dtype
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
        tol=3e-7,
        max_iter=10000,
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
        accelerate=True,
        max_memory=None,
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
        self.accelerate = accelerate
        self.max_memory = max_memory
        self.dtype = dtype

    def _intensity_factor(self) -> str:
        # The spectra are combinations of the (scaled) pixels: they carry the scale.
        return "W"

    def _solver(self, problem: Problem) -> ConvexSolver:
        return ConvexSolver(
            problem,
            solver=self.solver,
            l1_penalty=self.l1_penalty,
            strict_convex=self.strict_convex,
            **self._solver_options(),
        )

    def _solve_rows(self, X, basis: np.ndarray) -> np.ndarray:
        if self.hspy_comp:
            return super()._solve_rows(X, basis)
        # New channels: the fitted combination of pixels, X_new B.
        return np.asarray(X @ self.convex_weights_.T)

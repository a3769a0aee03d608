"""SmoothNMF: KL-NMF with Laplacian-smoothed, log-sparse, simplex-constrained maps."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if

from .._problem import Problem
from .._validation import per_component
from ..solvers.smooth_kl import ALGORITHMS, SmoothKL
from . import _online
from .base import NMFEstimator


class SmoothNMF(NMFEstimator):
    r"""NMF with smooth, sparse, simplex-constrained abundance maps.

    Minimises, over ``W >= 0`` and ``H >= 0``,

    .. math::

        F(W, H) = D_{KL}(X \| G W H)
                  + \frac{\lambda_L}{2} \operatorname{tr}(H \Delta H^T)
                  + \sum_{r} \mu_r \sum_j \log(H_{rj} + \epsilon_{reg})

    with ``Delta`` the graph Laplacian of the 4-neighbour pixel grid of
    ``shape_2d``, optionally subject to ``sum_r H_rj = 1`` (``simplex_H``) or
    ``sum_i W_ir = 1`` (``simplex_W``), and every entry ``>= log_shift``.

    Each iteration updates ``H`` then ``W`` by majorisation-minimisation
    (see ``docs/maths.md`` and :mod:`espm_lite.solvers.smooth_kl`); with
    ``R = X / (G W H)`` and ``D = G W``:

    * ``"log_surrogate"``: ``H <- H (D^T R + c) / (D^T 1 + c + lambda_L H Delta
      + mu / (H + epsilon_reg) + nu)`` with ``c = lambda_L sigma_L max_j H_rj``,
      ``sigma_L = 8``;
    * ``"l2_surrogate"``: the positive root of ``a h^2 + b h - H (D^T R) = 0``,
      ``a = lambda_L sigma_L``, ``b = D^T 1 + lambda_L (H Delta) - lambda_L
      sigma_L H + mu / (H + epsilon_reg) + nu`` (a true majoriser: the
      objective never increases);
    * ``"projected_gradient"``: a gradient step on ``F`` in ``H`` with step
      ``gamma`` (default: per pixel, the inverse of ``L_j = lambda_max(D^T
      diag(X_j / Y_j^2) D) + 8 lambda_L``, the curvature at the current
      iterate, refreshed every iteration, halved whenever the objective
      increases), projected on ``H >= log_shift`` (and the simplex);

    and ``W <- W (G^T R H^T) / (G^T 1 1^T H^T + nu)`` for all algorithms.
    ``nu`` is the simplex multiplier, found by bisection to ``dicotomy_tol``.

    Parameters
    ----------
    n_components, init, tol, max_iter, random_state, verbose, debug, l2, G, \
shape_2d, normalize, log_shift, eval_print, true_D, true_H, fixed_H, fixed_W, \
hspy_comp, no_stop_criterion, accelerate, simplex_H, simplex_W, sparse, max_memory, dtype
        See :class:`NMFEstimator`.
    lambda_L : float, default=0.0
        Strength of the Laplacian smoothing of the maps on the grid ``shape_2d``
        (without ``shape_2d``, a line scan ``(1, p)``, with a warning).
    linesearch : bool, default=False
        ``projected_gradient`` only: adapt the step without bound, growing it
        by 10 % after each iteration and, when the objective increases,
        reverting the iterate and halving it. Without it, the default step
        backtracks the same way but never grows beyond the curvature step.
    mu : float or array-like of shape (n_components,), default=0
        Strength of the log sparsity of the maps, per phase if an array.
    epsilon_reg : float, default=1
        Offset of the log in the sparsity term.
    algo : {"log_surrogate", "l2_surrogate", "projected_gradient"}
    force_simplex : bool or None, default=None
        espm's name for ``simplex_W``. ``None`` follows ``simplex_W``; a
        boolean replaces it, and ``force_simplex=True`` with
        ``simplex_W=False`` is a contradiction (``ValueError``).
    dicotomy_tol : float, default=1e-5
        Tolerance of the simplex sums (bisection).
    gamma : float or None, default=None
        Fixed step of ``projected_gradient``.
    partial_fit_rounds : int or None, default=None
        ``None``: no :meth:`partial_fit` (HyperSpy's lazy decomposition then
        collects the data and fits them exactly). An integer offers
        :meth:`partial_fit`, which updates the spectra this many times on
        each batch.

    Examples
    --------
    >>> from espm_lite import SmoothNMF
    >>> from espm_lite.datasets import make_spectrum_image
    >>> data = make_spectrum_image(shape_2d=(20, 20), n_channels=200, seed=0)
    >>> est = SmoothNMF(n_components=3, shape_2d=(20, 20), lambda_L=1.0, verbose=0)
    >>> spectra = est.fit_transform(data.X)
    >>> spectra.shape, est.H_.shape
    ((200, 3), (3, 400))
    """

    _supports_mask = True
    #: A dask array larger than ``max_memory`` is read at every pass (kernels.chunked).
    _fits_chunks = True

    _parameter_constraints: dict = {
        **NMFEstimator._parameter_constraints,
        "lambda_L": [Interval(numbers.Real, 0, None, closed="left")],
        "linesearch": ["boolean"],
        "mu": [Interval(numbers.Real, 0, None, closed="left"), "array-like"],
        "epsilon_reg": [Interval(numbers.Real, 0, None, closed="neither")],
        "algo": [StrOptions(set(ALGORITHMS))],
        "force_simplex": ["boolean", None],
        "dicotomy_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "gamma": [Interval(numbers.Real, 0, None, closed="neither"), None],
        "partial_fit_rounds": [Interval(numbers.Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_components=2,
        *,
        init=None,
        tol=3e-7,
        max_iter=10000,
        random_state=None,
        verbose=1,
        debug=False,
        l2=False,
        G=None,
        shape_2d=None,
        normalize=False,
        log_shift=1e-14,
        eval_print=10,
        true_D=None,
        true_H=None,
        fixed_H=None,
        fixed_W=None,
        hspy_comp=False,
        no_stop_criterion=False,
        accelerate=True,
        simplex_H=False,
        simplex_W=True,
        lambda_L=0.0,
        linesearch=False,
        mu=0,
        epsilon_reg=1,
        algo="log_surrogate",
        force_simplex=None,
        dicotomy_tol=1e-5,
        gamma=None,
        partial_fit_rounds=None,
        sparse="auto",
        max_memory=None,
        dtype=None,
    ):
        super().__init__(
            n_components=n_components,
            init=init,
            tol=tol,
            max_iter=max_iter,
            random_state=random_state,
            verbose=verbose,
            debug=debug,
            l2=l2,
            G=G,
            shape_2d=shape_2d,
            normalize=normalize,
            log_shift=log_shift,
            eval_print=eval_print,
            true_D=true_D,
            true_H=true_H,
            fixed_H=fixed_H,
            fixed_W=fixed_W,
            hspy_comp=hspy_comp,
            no_stop_criterion=no_stop_criterion,
            accelerate=accelerate,
            simplex_H=simplex_H,
            simplex_W=simplex_W,
            sparse=sparse,
            max_memory=max_memory,
            dtype=dtype,
        )
        self.lambda_L = lambda_L
        self.linesearch = linesearch
        self.mu = mu
        self.epsilon_reg = epsilon_reg
        self.algo = algo
        self.force_simplex = force_simplex
        self.dicotomy_tol = dicotomy_tol
        self.gamma = gamma
        self.partial_fit_rounds = partial_fit_rounds

    # ------------------------------------------------------------ streaming
    def _offers_partial_fit(self) -> bool:
        return self.partial_fit_rounds is not None

    @available_if(_offers_partial_fit)
    def partial_fit(self, X, y=None):
        r"""Update the spectra with one batch of pixels (an approximation of :meth:`fit`).

        For data that arrive in batches and are not kept: each call solves
        the batch's maps exactly with the spectra fixed, replaces the batch's
        quadratic model of the KL data term in the spectra (the same values
        passed again replace their model; new values add one), and moves the
        spectra to the minimum of the sum of the models, ``partial_fit_rounds``
        times (:mod:`espm_lite.solvers.online_kl`). The first call starts from
        the spectra of :meth:`fit` if it ran, else from a fit of the first
        batch. Afterwards :meth:`transform` gives the maps of any pixels.

        The models of earlier batches were made at older spectra, so one pass
        over the data is a rough answer (10-40 degrees from the batch fit on a
        40x40x300 phantom at 50 counts/pixel in 16 batches); about a dozen
        passes come within 2 degrees from most starts (the limit can depend on
        the start: 2.2 degrees away from one of five). On a real 6 counts/pixel
        map it settled 36-64 degrees away, at a worse objective. A data set
        that can be read again is fitted exactly by :meth:`fit` on a dask
        array, pass by pass, within the memory bound ``max_memory``.

        Supports the unregularised KL problem with pixels as rows:
        ``hspy_comp=True``, ``G=None``, ``lambda_L=0``, ``mu=0``,
        ``simplex_H=False``, ``l2=False``, no fixed factors (others raise
        ``ValueError``).

        Parameters
        ----------
        X : array-like or sparse matrix (n_pixels, n_features_in_)
            Non-negative counts of a batch of pixels; never modified.
        y : ignored

        Returns
        -------
        self
            With ``W_`` and ``components_`` (the spectra; columns summing to
            one when ``simplex_W``) and ``n_steps_`` (batches seen).
        """
        return _online.partial_fit(self, X)

    # ------------------------------------------------------------ settings
    def _effective_simplex_W(self) -> bool:
        if self.force_simplex is None:
            return bool(self.simplex_W)
        return bool(self.force_simplex)

    def _mu_vector(self, dtype=np.float64) -> np.ndarray:
        return per_component(self.mu, "mu", self.n_components, sign="non-negative").astype(dtype)

    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        self._mu_vector()
        if self.lambda_L > 0 and self.shape_2d is None:
            warnings.warn(
                f"lambda_L={self.lambda_L} > 0 without shape_2d: the pixels are smoothed as a "
                f"line scan of shape (1, {n_pixels}) in their order. Pass shape_2d=(ny, nx), "
                "the scan shape of the maps, to smooth a 2-D map.",
                UserWarning,
                stacklevel=5,
            )
        if self.force_simplex is not None and bool(self.force_simplex) and not self.simplex_W:
            raise ValueError(
                "force_simplex=True contradicts simplex_W=False (force_simplex is espm's name "
                "for simplex_W); pass only simplex_W."
            )
        if self.simplex_H and self._effective_simplex_W():
            raise ValueError(
                "simplex_H=True and simplex_W=True together fix the scale of both factors and "
                "cannot fit the data intensity; set simplex_W=False (and force_simplex=None "
                "or False) to use simplex_H."
            )
        if self.l2 and self.algo == "l2_surrogate":
            raise ValueError(
                "algo='l2_surrogate' is derived for the KL loss; with l2=True use "
                "algo='log_surrogate' or 'projected_gradient'."
            )
        if self.linesearch and self.algo != "projected_gradient":
            warnings.warn(
                f"linesearch=True only applies to algo='projected_gradient' (algo={self.algo!r}).",
                UserWarning,
                stacklevel=5,
            )

    def _simplex_tol(self) -> float:
        return float(self.dicotomy_tol)

    def _solver(self, problem: Problem) -> SmoothKL:
        return SmoothKL(
            problem,
            lambda_L=self.lambda_L,
            mu=self._mu_vector(),
            epsilon_reg=self.epsilon_reg,
            algo=self.algo,
            gamma=self.gamma,
            linesearch=self.linesearch,
            simplex_tol=self._simplex_tol(),
            init=self.init,
            rng=self._rng,
            row_solve=self._row_solve(),
        )

    def _sparsity(self, dtype) -> tuple[np.ndarray, float] | None:
        s, h = self._penalty_units  # to the scaled problem transform solves (see fit)
        mu = self._mu_vector(dtype) / dtype.type(s)
        return (mu, float(self.epsilon_reg) / h) if np.any(mu > 0) else None

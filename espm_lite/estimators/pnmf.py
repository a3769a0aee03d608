r"""PNMF: Poisson factorisation with log-normal abundances, fitted by variational inference.

Model (internal layout of :mod:`espm_lite.kernels`: ``X`` is ``(p, n)``, pixels x channels)

.. math::

    X_{ij} \sim \mathrm{Poisson}(\lambda_{ij}), \qquad
    \lambda_{ij} = \sum_l D_{jl}\, e^{F_{il}}, \qquad
    F_{il} \sim \mathcal N(m_l, s_l^2), \qquad D = G W \ge 0,

with a mean-field Gaussian posterior ``q(F_il) = N(mu_il, sigma_il^2)``. The
estimator maximises the evidence lower bound (ELBO) by monotone coordinate
ascent (minorise-maximise); every step is a closed form or a 1-D concave
maximisation.  See :class:`PNMF` for the maths.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .._problem import Problem
from .._validation import per_component
from ..solvers.pnmf import (
    VariationalPoisson,
    posterior_moments,
    posterior_of_pixels,
    spectra_of_channels,
)
from .base import NMFEstimator

#: Parameters of :class:`NMFEstimator` that have no meaning for PNMF, with their default.
_UNSUPPORTED = {
    "simplex_H": (False, "the abundances are log-normal, not constrained to the simplex"),
    "l2": (False, "the data term is the Poisson likelihood"),
    "fixed_H": (None, "the maps are random (posterior) quantities"),
}


class PNMF(NMFEstimator):
    r"""Poisson NMF with log-normal abundances, fitted by variational inference.

    Generative model (``X`` in the pixels x channels layout, ``p x n``):

    .. math::

        X_{ij} \sim \mathrm{Poisson}(\lambda_{ij}), \quad
        \lambda_{ij} = \sum_l D_{jl} e^{F_{il}}, \quad
        F_{il} \sim \mathcal N(m_l, s_l^2), \quad D = G W \ge 0,

    so the maps ``H_{li} = e^{F_{il}}`` are log-normal and the spectra ``D``
    point estimates (columns of ``W`` sum to one with ``simplex_W``: the
    intensity is carried by the maps). With the mean-field posterior
    ``q(F_{il}) = N(mu_{il}, sigma_{il}^2)`` the estimator maximises

    .. math::

        \mathrm{ELBO} = \sum_{ij}\big[X_{ij}\,\mathbb E_q \log\lambda_{ij}
        - \mathbb E_q\lambda_{ij} - \log X_{ij}!\big]
        - \sum_{il} \mathrm{KL}\big(q(F_{il}) \,\|\, \mathcal N(m_l, s_l^2)\big),

    .. math::

        \mathbb E_q \lambda_{ij} = \sum_l D_{jl} B_{il}, \quad
        B_{il} = e^{\mu_{il} + \sigma_{il}^2/2}, \quad
        \mathrm{KL} = \tfrac12\Big[\log\frac{s_l^2}{\sigma_{il}^2}
        + \frac{\sigma_{il}^2 + (\mu_{il}-m_l)^2}{s_l^2} - 1\Big],

    a lower bound on ``log p(X)`` (the ``log X!`` term is kept). The
    expected log-rate is bounded below by

    * ``bound="jensen"`` (default, deterministic):
      ``E_q log sum_l D_jl e^{F_il} >= log sum_l D_jl e^{mu_il}``;
    * ``bound="mc"``: the average over ``n_mc`` fixed draws
      ``F^s = mu + sigma eps^s`` (``eps^s`` seeded by ``random_state``, the
      same at every iteration), an unbiased estimate of ``E_q log lambda``:
      the ELBO is then a (tighter on average, stochastic) estimate, and the
      fit maximises that sample-average objective monotonically (so
      ``elbo_`` is optimistic for small ``n_mc``: the draws are fitted
      too); an iteration costs ``2 n_mc`` passes over the data instead of
      one.

    **Updates** (each one increases the objective; with ``A = e^{mu}``, or
    ``A^s = e^{F^s}`` per draw, and ``R = X / (A D^T)``, computed only where
    ``X > 0`` on sparse data by :func:`espm_lite.kernels.data_pass`):

    1. minorise the log-sum by Jensen with weights
       ``phi_ijl ∝ D_jl A_il``, tangent at the current point; the terms in
       ``mu`` and ``sigma`` become ``S_il mu_il + T_il sigma_il`` with
       ``S = A ⊙ (R D)`` and (``mc`` only) ``T = eps ⊙ A ⊙ (R D)``, averaged
       over draws;
    2. ``mu`` update, exact: ``mu = m + s^2 S - omega(log(s^2 c_l e^{sigma^2/2})
       + m + s^2 S)`` with ``omega`` the Wright omega function and
       ``c_l = sum_j D_jl``;
    3. ``sigma`` update: maximise ``T sigma - c_l e^{mu + sigma^2/2} -
       sigma^2/(2 s^2) + log sigma`` (concave) by safeguarded Newton steps,
       ``sigma <= sqrt(50)``;
    4. spectra, with the weights at the new posterior: ``W <- W ⊙ G^T(R^T A)
       / (G^T 1 · colsum(B) + nu)``, ``nu`` the ``simplex_W`` multiplier;
    5. prior, unless fixed: ``m_l = mean_i mu_il``,
       ``s_l^2 = mean_i[(mu_il - m_l)^2 + sigma_il^2]`` (empirical Bayes).

    Initialisation: ``mu = log A0`` with ``A0`` the base initialisation of the
    maps (NNDSVDa), floored at ``1e-3`` of each column's mean; prior from
    ``mu``; ``sigma^2`` from step 3.  The loop stops on the relative change of
    the factors (see ``tol``; ``losses_`` holds ``-ELBO`` per data entry).

    Parameters
    ----------
    n_components : int, default=2
    bound : {"jensen", "mc"}, default="jensen"
        Bound on ``E_q log lambda`` (see above).
    n_mc : int, default=32
        Number of draws of ``bound="mc"``.
    prior_mean : float, array-like of shape (n_components,) or None, default=None
        Fixed prior mean ``m`` of the log-abundances, in units of log counts
        (``e^m`` times a spectrum of unit sum is the expected counts of a
        pixel); ``None``: empirical Bayes.
    prior_var : float, array-like of shape (n_components,) or None, default=None
        Fixed prior variance ``s^2`` (> 0); ``None``: empirical Bayes.
    tol : float, default=3e-7
        Stop when the relative change of the spectra and posterior mean maps
        stays below ``tol`` for 50 consecutive iterations (the rule of every
        estimator, see :class:`NMFEstimator`); ``losses_`` holds ``-ELBO``.
    max_iter : int, default=10000
    init, random_state, verbose, debug, G, log_shift, \
eval_print, true_D, true_H, fixed_W, hspy_comp, no_stop_criterion, accelerate, simplex_W, \
sparse, max_memory, dtype
        See :class:`NMFEstimator`. ``random_state`` also seeds the draws of
        ``bound="mc"``; ``log_shift`` floors the spectra; the posterior
        parameters are float64 internally whatever ``dtype``.
    normalize : bool, default=False
        Compute on ``X / s`` (``s`` the mean counts per pixel) with the
        likelihood weighted by ``s``: an exact reparametrisation
        (``mu -> mu - log s``), so the posterior, ``elbo_`` and ``losses_``
        are those of the counts and the result equals that of
        ``normalize=False`` up to rounding.  (Dividing the counts without the
        weight would temper the Poisson likelihood by ``1/s`` and widen the
        posterior by about ``sqrt(s)``.)
    shape_2d : (int, int) or None
        Accepted (HyperSpy fills it in) and checked against the number of
        pixels, not used: PNMF has no spatial smoothing of the maps.
    simplex_H, l2, fixed_H
        Not supported (log-normal maps, Poisson data term, the maps are
        random): any value other than the default raises ``ValueError`` at
        ``fit``.

    Attributes
    ----------
    W_ : ndarray (m, k)
    G_ : ndarray (n, m) or None
    H_ : ndarray (k, p)
        Posterior mean maps ``E_q[e^F]^T = e^{mu + sigma^2/2}``.
    H_std_ : ndarray (k, p)
        Posterior standard deviation of the maps,
        ``e^{mu + sigma^2/2} sqrt(e^{sigma^2} - 1)``.
    F_mean_, F_var_ : ndarray (k, p)
        ``mu^T`` and ``sigma^{2T}``, the posterior of the log-abundances.
    prior_mean_, prior_var_ : ndarray (k,)
        The prior (fitted or fixed).
    elbo_ : float
        Final ELBO (natural log, counts, with ``-log X!``): a lower bound on
        ``log p(X)`` with ``bound="jensen"``.
    losses_ : ndarray
        ``-ELBO / (n p)`` after each iteration (``get_losses()`` also has
        ``expected_nll_loss``, the data part, and ``KL_prior_loss``).
    components_ : ndarray
        ``H_`` (``hspy_comp=False``) or ``(G W)^T`` (``hspy_comp=True``).
    reconstruction_err_ : float
        Generalised KL divergence of ``X`` from the posterior-mean model
        ``E_q lambda``.
    n_components_, n_iter_, n_features_in_, data_path_
        As in :class:`NMFEstimator`.

    Notes
    -----
    :meth:`transform` with ``hspy_comp=True`` returns the posterior mean maps
    of new pixels (spectra and prior fixed; pixels independent) and
    :meth:`transform_std` their posterior standard deviation. With
    ``hspy_comp=False`` it returns the ELBO-optimal spectra of new channels
    given the fitted posterior of the maps (no ``simplex_W``). Both solve with
    the Jensen bound, also when the fit used ``bound="mc"``.

    Examples
    --------
    >>> from espm_lite.estimators.pnmf import PNMF
    >>> from espm_lite.datasets import make_spectrum_image
    >>> data = make_spectrum_image(shape_2d=(20, 20), n_channels=200, seed=0)
    >>> est = PNMF(n_components=3, verbose=0, random_state=0)
    >>> spectra = est.fit_transform(data.X)
    >>> spectra.shape, est.H_.shape, est.H_std_.shape
    ((200, 3), (3, 400), (3, 400))
    """

    _parameter_constraints: dict = {
        **NMFEstimator._parameter_constraints,
        "bound": [StrOptions({"jensen", "mc"})],
        "n_mc": [Interval(numbers.Integral, 1, None, closed="left")],
        "prior_mean": [numbers.Real, "array-like", None],
        "prior_var": [Interval(numbers.Real, 0, None, closed="neither"), "array-like", None],
    }

    def __init__(
        self,
        n_components=2,
        *,
        bound="jensen",
        n_mc=32,
        prior_mean=None,
        prior_var=None,
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
        self.bound = bound
        self.n_mc = n_mc
        self.prior_mean = prior_mean
        self.prior_var = prior_var

    # ------------------------------------------------------------ settings
    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        for name, (default, why) in _UNSUPPORTED.items():
            value = getattr(self, name)
            if (value is not None) if default is None else bool(value):
                raise ValueError(
                    f"{name}={value!r} is not supported by PNMF ({why}); leave it at its "
                    f"default {default!r}."
                )
        self._prior_vector("prior_mean", self.prior_mean)
        self._prior_vector("prior_var", self.prior_var, positive=True)

    def _prior_vector(self, name: str, value, positive: bool = False) -> np.ndarray | None:
        if value is None:
            return None
        return per_component(value, name, self.n_components, sign="positive" if positive else "any")

    def _intensity_factor(self) -> str:
        return "H"

    def _solver(self, problem: Problem) -> VariationalPoisson:
        return VariationalPoisson(
            problem,
            bound=self.bound,
            n_mc=self.n_mc,
            prior_mean=self._prior_vector("prior_mean", self.prior_mean),
            prior_var=self._prior_vector("prior_var", self.prior_var, positive=True),
            init=self.init,
            rng=self._rng,
            random_state=self.random_state,
            row_solve=self._row_solve(),
        )

    # ----------------------------------------------------------- transform
    def transform(self, X):
        """Posterior mean maps of new pixels (``hspy_comp=True``) or spectra of new channels.

        ``hspy_comp=True``: ``X`` ``(p', n)``; the spectra and the prior are
        fixed at the fitted ones and each pixel's posterior ``q(F_i)`` is
        solved on its own by the ``mu`` / ``sigma`` steps (Jensen bound) from
        a least-squares start, until ``|Δmu|`` and ``|Δsigma^2|`` fall below
        1e-8 (at most 1000 steps, :mod:`espm_lite.kernels.rows`): any subset of
        pixels gives the same rows. Returns ``E_q[e^F]`` ``(p', k)``.

        ``hspy_comp=False``: ``X`` ``(n', p)`` holds new channels of the
        training pixels; returns the spectra ``(n', k)`` that maximise the
        ELBO with the fitted posterior of the maps fixed (no simplex), each
        channel solved on its own, exactly (projected Newton).

        Parameters
        ----------
        X : array-like or sparse matrix (n_samples, n_features_in_)

        Returns
        -------
        ndarray (n_samples, n_components_)
        """
        return self._solve(X)[0]

    def transform_std(self, X):
        """Posterior standard deviation of the maps of new pixels (``hspy_comp=True``).

        The same solve as :meth:`transform`; returns
        ``e^{mu + sigma^2/2} sqrt(e^{sigma^2} - 1)`` ``(p', k)``.

        Raises
        ------
        ValueError
            With ``hspy_comp=False``: the spectra are point estimates (the
            posterior std of the training maps is ``H_std_``).
        """
        check_is_fitted(self)
        if not self.hspy_comp:
            raise ValueError(
                "transform_std needs hspy_comp=True (rows of X are pixels): with "
                "hspy_comp=False transform solves spectra, which are point estimates; the "
                "posterior std of the fitted maps is H_std_."
            )
        return self._solve(X)[1]

    def _solve(self, X):
        X = self._transform_input(X)
        dtype = X.dtype
        solve = self._row_solve()
        options = dict(
            sparse=solve.sparse, max_passes=solve.max_passes, change_tol=solve.change_tol
        )
        if self.hspy_comp:
            D = np.maximum(self.components_.T.astype(dtype), dtype.type(self.log_shift))
            mu, var = posterior_of_pixels(X, D, self.prior_mean_, self.prior_var_, **options)
            return posterior_moments(mu, var, dtype)
        maps = np.maximum(np.exp(self.F_mean_.T).astype(dtype), dtype.type(self.log_shift))
        spectra = spectra_of_channels(X, maps, self.H_.T, floor=float(self.log_shift))
        return spectra, None

    def loss(self, W, H, average=True, X=None) -> float:
        """Not available: the objective (ELBO) depends on the posterior, not on ``(W, H)``.

        Raises
        ------
        NotImplementedError
            Always; see ``elbo_``, ``losses_`` and :meth:`get_losses`.
        """
        raise NotImplementedError(
            "PNMF maximises the ELBO of a variational posterior, which is not a function of "
            "(W, H) alone; see elbo_, losses_ and get_losses()."
        )

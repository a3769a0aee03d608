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

import logging
import numbers
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln, wrightomega
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import kernels
from ..measures import matched_angles, matched_map_errors
from .base import FitState, NMFEstimator

logger = logging.getLogger(__name__)

#: Largest posterior standard deviation of a latent log-abundance (keeps ``exp(F)`` finite).
SIGMA_MAX = float(np.sqrt(50.0))

#: Smallest prior variance of the empirical-Bayes update (avoids a degenerate prior).
PRIOR_VAR_MIN = 1e-10

#: Parameters of :class:`NMFEstimator` that have no meaning for PNMF, with their default.
_UNSUPPORTED = {
    "simplex_H": (False, "the abundances are log-normal, not constrained to the simplex"),
    "l2": (False, "the data term is the Poisson likelihood"),
    "fixed_H": (None, "the maps are random (posterior) quantities"),
}


@dataclass
class _Posterior:
    """Copies of the variational parameters, held by a snapshot."""

    A: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    prior_mean: np.ndarray
    prior_var: np.ndarray


@dataclass
class PNMFState(FitState):
    """A :class:`FitState` holding the variational parameters too.

    ``A = exp(mu)`` (in the data dtype) is what the passes over the data use;
    ``mu``, ``var`` (p, k) and the prior ``(prior_mean, prior_var)`` (k,) are
    float64.  Snapshots hold ``(W, _Posterior)`` so that the base loop can
    revert an iteration.
    """

    mu: np.ndarray | None = None
    var: np.ndarray | None = None
    prior_mean: np.ndarray | None = None
    prior_var: np.ndarray | None = None

    def snapshot(self):
        post = _Posterior(
            self.A.copy(),
            self.mu.copy(),
            self.var.copy(),
            self.prior_mean.copy(),
            self.prior_var.copy(),
        )
        return self.W.copy(), post

    def restore(self, snap) -> None:
        W, post = snap
        self.W[...] = W
        self.A[...] = post.A
        self.mu[...] = post.mu
        self.var[...] = post.var
        self.prior_mean[...] = post.prior_mean
        self.prior_var[...] = post.prior_var


# ----------------------------------------------------------------------- 1-D solvers
def _kl_normal(mu, var, prior_mean, prior_var) -> float:
    r"""``sum_il KL(N(mu_il, var_il) || N(m_l, s_l^2))``."""
    return 0.5 * float(
        np.sum(np.log(prior_var / var) + (var + (mu - prior_mean) ** 2) / prior_var - 1.0)
    )


def _update_mean(S, b, mu, prior_mean, prior_var):
    r"""Maximiser of ``S mu - b e^mu - (mu - m)^2 / (2 s^2)`` entry by entry.

    Setting the derivative to zero, ``u = m + s^2 S - mu`` solves
    ``u + log u = log(s^2 b) + m + s^2 S``: ``u`` is the Wright omega function
    of the right-hand side (exact, no overflow).  ``b > 0``; entries where the
    new value does not increase the objective (rounding) keep ``mu``.
    """
    aS = prior_var * S
    z = np.log(prior_var * b) + prior_mean + aS
    new = prior_mean + aS - wrightomega(z).real
    with np.errstate(over="ignore"):
        gain = S * (new - mu) - b * (np.exp(new) - np.exp(mu))
    gain -= ((new - prior_mean) ** 2 - (mu - prior_mean) ** 2) / (2 * prior_var)
    return np.where(np.isfinite(new) & (gain >= 0), new, mu)


def _update_std(T, b, sigma, prior_var, max_iter: int = 60):
    r"""Maximiser over ``sigma > 0`` of ``T sigma - b e^{sigma^2/2} - sigma^2/(2 s^2) + log sigma``.

    The function is concave; its derivative
    ``k(sigma) = 1/sigma + T - sigma (b e^{sigma^2/2} + 1/s^2)`` decreases from
    ``+inf`` to ``-inf``.  Newton steps safeguarded by the bracket
    ``[lo, hi]`` (``hi`` ignores ``b``, ``lo`` bounds ``b e^{sigma^2/2}`` at
    ``hi``), capped at :data:`SIGMA_MAX`, warm-started at ``sigma``.  ``T = 0``
    for the Jensen bound (then this is the ``sigma^2`` update).
    """
    hi = 0.5 * (T * prior_var + np.sqrt((T * prior_var) ** 2 + 4 * prior_var))
    hi = np.minimum(hi, SIGMA_MAX)
    M = b * np.exp(0.5 * hi * hi) + 1.0 / prior_var
    lo = (T + np.sqrt(T * T + 4 * M)) / (2 * M)
    lo = np.minimum(lo, hi)
    x = np.clip(sigma, lo, hi)
    for _ in range(max_iter):
        e = b * np.exp(0.5 * x * x)
        k = 1.0 / x + T - x * (e + 1.0 / prior_var)
        lo = np.where(k > 0, x, lo)
        hi = np.where(k < 0, x, hi)
        dk = -1.0 / (x * x) - e * (1.0 + x * x) - 1.0 / prior_var
        new = x - k / dk
        # Bisect where the Newton step leaves the bracket (or is not finite).
        outside = ~((new >= lo) & (new <= hi))
        new = np.where(outside, 0.5 * (lo + hi), new)
        done = np.max(np.abs(new - x) / x) <= 1e-10
        x = new
        if done:
            break

    def objective(s):
        return T * s - b * np.exp(0.5 * s * s) - s * s / (2 * prior_var) + np.log(s)

    return np.where(objective(x) >= objective(sigma), x, sigma)


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
    ``mu``; ``sigma^2`` from step 3.  The loop stops when the relative change
    of ``-ELBO`` falls below ``tol`` (``losses_`` holds ``-ELBO`` per data
    entry).

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
    tol : float, default=1e-6
        Stop when the relative change of ``-ELBO`` is below ``tol``. Smaller
        than the base default: ``-ELBO`` holds ``sum log X!`` and the
        Poisson entropy, so its relative changes are smaller than those of a
        KL divergence, and the minorise-maximise steps converge slowly along
        the directions that NMF leaves nearly free (expect a few hundred
        iterations).
    max_iter : int, default=1000
    init, random_state, verbose, debug, G, log_shift, \
eval_print, true_D, true_H, fixed_W, hspy_comp, no_stop_criterion, simplex_W, \
sparse, dtype
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

    _penalty_names = ("KL_prior_loss",)
    _state_type = PNMFState

    def __init__(
        self,
        n_components=2,
        *,
        bound="jensen",
        n_mc=32,
        prior_mean=None,
        prior_var=None,
        init=None,
        tol=1e-6,
        max_iter=1000,
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
        simplex_H=False,
        simplex_W=True,
        sparse="auto",
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
            simplex_H=simplex_H,
            simplex_W=simplex_W,
            sparse=sparse,
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
        k = self.n_components
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            arr = np.full(k, float(arr))
        if arr.shape != (k,):
            raise ValueError(
                f"{name} must be a scalar or an array of shape (n_components,) = ({k},), "
                f"got shape {arr.shape}."
            )
        if not np.all(np.isfinite(arr)) or (positive and np.any(arr <= 0)):
            kind = "finite and positive" if positive else "finite"
            raise ValueError(f"{name} must be {kind}, got {value!r}.")
        return arr

    # ---------------------------------------------------------------- fit
    def fit_transform(self, X, y=None, W=None, H=None):
        """Fit the model and return the sample-side factor.

        Parameters
        ----------
        X : array-like or sparse matrix
            Counts, ``(n, p)`` when ``hspy_comp=False``, ``(p, n)`` when
            ``True``. Non-negative and finite; never modified.
        y : ignored
        W : array-like (m, k), optional
            Initial ``W``.
        H : array-like (k, p), optional
            Initial maps (``mu = log H^T``).

        Returns
        -------
        ndarray
            ``G W`` ``(n, k)`` when ``hspy_comp=False``; the posterior mean maps
            ``H_.T`` ``(p, k)`` when ``True``.
        """
        self._validate_params()
        X = self._validate_input(X, reset=True, where="input X")
        Xi = self._internal_data(X)
        p, n = Xi.shape
        k = self.n_components
        self._check_settings(n, p)
        self._check_shape_2d(p)
        dtype = Xi.dtype
        G = self._resolve_G(X, n, dtype)
        m = n if G is None else G.shape[1]

        counts_sum = kernels.data_sum(Xi)
        values = Xi.data if sp.issparse(Xi) else Xi
        log_factorials = float(gammaln(values.astype(np.float64) + 1.0).sum())
        scale = self._data_scale(Xi) if self.normalize else 1.0
        counts = Xi
        if scale != 1.0:
            Xi = Xi * (1.0 / scale) if sp.issparse(Xi) else Xi / dtype.type(scale)
        self._scale = scale
        self._scaled_factor = "H"

        state = self._make_state(Xi, G)
        state.free_W_rows = self._simplex_rows(m)
        self._setup_fixed(state, m, p, k, dtype, scale)
        # Initialise on the counts (NNDSVDa is not scale-equivariant: it fills zeros
        # with the data mean), then rescale the maps: normalize stays exact.
        state.X = counts
        self._initialise(state, W, H, m, p, k, dtype, 1.0)
        state.X = state.data.csr if isinstance(state.data, kernels.SparseData) else Xi
        if scale != 1.0:
            state.A = np.ascontiguousarray(state.A / dtype.type(scale))
        state.extras["weight"] = scale
        # -ELBO = weight * (-sum X' log Y' + sum E lambda') + const (see _terms).
        state.extras["const"] = log_factorials - np.log(scale) * counts_sum
        if self.bound == "mc":
            seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            state.extras["mc_seed"] = int(seed)
        self._start_posterior(state, scale)
        self._true = self._truth_for_history(n, p)
        self._run(state, n * p)
        return self._set_fitted(state, scale)

    def _start_posterior(self, state: PNMFState, scale: float) -> None:
        """``mu`` from the initial maps, the prior, then ``sigma^2`` (exact step 3)."""
        A0 = state.A.astype(np.float64)
        col_mean = np.maximum(A0.mean(axis=0), np.finfo(np.float64).tiny)
        mu = np.log(np.maximum(A0, 1e-3 * col_mean))
        state.mu = mu
        state.var = np.full_like(mu, 0.1)
        fixed_mean = self._prior_vector("prior_mean", self.prior_mean)
        fixed_var = self._prior_vector("prior_var", self.prior_var, positive=True)
        state.extras["fixed_mean"] = None if fixed_mean is None else fixed_mean - np.log(scale)
        state.extras["fixed_var"] = fixed_var
        state.prior_mean = np.zeros(mu.shape[1])
        state.prior_var = np.ones(mu.shape[1])
        self._update_prior(state)
        c = self._weighted_colsum(state)
        sigma = _update_std(0.0, c * np.exp(mu), np.sqrt(state.var), state.prior_var, max_iter=100)
        state.var = sigma * sigma
        self._update_prior(state)
        state.A = np.ascontiguousarray(np.exp(mu).astype(state.W.dtype))

    def _weighted_colsum(self, state: PNMFState) -> np.ndarray:
        """``weight * c_l``, ``c_l = sum_j D_jl``, in float64."""
        return state.extras["weight"] * state.D.sum(axis=0, dtype=np.float64)

    def _update_prior(self, state: PNMFState) -> None:
        fixed_mean, fixed_var = state.extras["fixed_mean"], state.extras["fixed_var"]
        mean = state.mu.mean(axis=0) if fixed_mean is None else fixed_mean
        if fixed_var is None:
            var = ((state.mu - mean) ** 2 + state.var).mean(axis=0)
            var = np.maximum(var, PRIOR_VAR_MIN)
        else:
            var = fixed_var
        state.prior_mean[...] = mean
        state.prior_var[...] = var

    # ----------------------------------------------------------- objective
    def _draws(self, state: PNMFState):
        """The fixed draws ``eps^s`` (p, k) of ``bound="mc"``, one at a time."""
        seed = state.extras["mc_seed"]
        shape = state.mu.shape
        for s in range(self.n_mc):
            yield np.random.default_rng([seed, s]).standard_normal(shape)

    def _terms(self, state: PNMFState, data_loss: float) -> dict[str, float]:
        """Objective terms from the pass term ``-sum X' log Y'`` (averaged over draws)."""
        weight = state.extras["weight"]
        c = state.D.sum(axis=0, dtype=np.float64)
        mean_maps = np.exp(state.mu + 0.5 * state.var).sum(axis=0)
        data = weight * (data_loss + float(c @ mean_maps)) + state.extras["const"]
        kl = _kl_normal(state.mu, state.var, state.prior_mean, state.prior_var)
        return {"data": data, "KL_prior_loss": kl}

    def _log_rate_term(self, state: PNMFState) -> float:
        """``-sum X' E log Y'`` under the bound (a pass per draw for ``"mc"``)."""
        D = state.D
        col_d = D.sum(axis=0)
        total = 0.0
        draws = self._draws(state) if self.bound == "mc" else [None]
        for eps in draws:
            A = state.A if eps is None else self._draw_maps(state, eps)
            result = kernels.data_pass(state.data, A, D, need_w_terms=False)
            total += result.data_loss - float(np.vdot(col_d, A.sum(axis=0)))
        return total / self.n_mc if self.bound == "mc" else total

    def _draw_maps(self, state: PNMFState, eps: np.ndarray) -> np.ndarray:
        F = state.mu + np.sqrt(state.var) * eps
        return np.ascontiguousarray(np.exp(F).astype(state.W.dtype))

    def _objective_terms(self, state: PNMFState) -> dict[str, float]:
        return self._terms(state, self._log_rate_term(state))

    # -------------------------------------------------------------- update
    def _iterate(self, state: PNMFState) -> dict[str, float]:
        D = state.D
        col_d = D.sum(axis=0)
        weight = state.extras["weight"]
        c = D.sum(axis=0, dtype=np.float64)
        c_weighted = weight * c
        mu, var = state.mu, state.var
        prior_mean, prior_var = state.prior_mean, state.prior_var
        dtype = state.W.dtype
        kl_old = _kl_normal(mu, var, prior_mean, prior_var)
        mean_maps_old = np.exp(mu + 0.5 * var).sum(axis=0)

        if self.bound == "jensen":

            def rule(rows, negative, positive, curvature):
                S = weight * state.A[rows].astype(np.float64) * negative
                new_mu = _update_mean(
                    S, c_weighted * np.exp(0.5 * var[rows]), mu[rows], prior_mean, prior_var
                )
                sigma = _update_std(0.0, c_weighted * np.exp(new_mu), np.sqrt(var[rows]), prior_var)
                mu[rows] = new_mu
                var[rows] = sigma * sigma
                return np.exp(new_mu).astype(dtype)

            old_term = float(np.vdot(col_d, state.A.sum(axis=0)))
            result = kernels.data_pass(state.data, state.A, D, map_rule=rule)
            log_rate = result.data_loss - old_term
            w_negative = result.w_negative
        else:
            S = np.zeros_like(mu)
            T = np.zeros_like(mu)
            log_rate = 0.0
            for eps in self._draws(state):
                A_s = self._draw_maps(state, eps)

                def capture(rows, negative, positive, curvature, A_s=A_s, eps=eps):
                    part = A_s[rows].astype(np.float64) * negative
                    S[rows] += part
                    T[rows] += eps[rows] * part
                    return A_s[rows]

                old_term = float(np.vdot(col_d, A_s.sum(axis=0)))
                result = kernels.data_pass(state.data, A_s, D, map_rule=capture, need_w_terms=False)
                log_rate += result.data_loss - old_term
            log_rate /= self.n_mc
            S *= weight / self.n_mc
            T *= weight / self.n_mc
            sigma = np.sqrt(var)
            mu[...] = _update_mean(S, c_weighted * np.exp(0.5 * var), mu, prior_mean, prior_var)
            sigma = _update_std(T, c_weighted * np.exp(mu), sigma, prior_var)
            var[...] = sigma * sigma
            state.A[...] = np.exp(mu).astype(dtype)
            w_negative = None
            for eps in self._draws(state):
                A_s = self._draw_maps(state, eps)
                part = kernels.data_pass(state.data, A_s, D, need_loss=False).w_negative
                w_negative = part if w_negative is None else w_negative + part
            w_negative /= dtype.type(self.n_mc)

        terms = {
            "data": weight * (log_rate + float(c @ mean_maps_old)) + state.extras["const"],
            "KL_prior_loss": kl_old,
        }
        self._update_W(state, w_negative, np.exp(mu + 0.5 * var).sum(axis=0))
        self._update_prior(state)
        return terms

    def _truth_measures(self, state: PNMFState) -> dict[str, float]:
        true_D, true_H = self._true
        out: dict[str, float] = {}
        if true_D is None and true_H is None:
            return out
        D = state.D.astype(np.float64)
        if true_D is not None:
            for i, angle in enumerate(matched_angles(true_D, D)):
                out[f"ang_p{i}"] = float(angle)
        if true_H is not None:
            maps = state.extras["weight"] * np.exp(state.mu + 0.5 * state.var)
            errors = matched_map_errors(true_H, maps.T, true_D, D if true_D is not None else None)
            for i, err in enumerate(errors):
                out[f"mse_p{i}"] = float(err)
        return out

    def _history_array(self, history):
        out = super()._history_array(history)
        names = list(out.dtype.names)
        if "KL_div_loss" in names:
            names[names.index("KL_div_loss")] = "expected_nll_loss"
            out.dtype.names = tuple(names)
        return out

    def _set_fitted(self, state: PNMFState, scale: float):
        dtype = state.W.dtype
        mu = state.mu + np.log(scale)
        var = state.var
        mean_maps = np.exp(mu + 0.5 * var)
        std_maps = mean_maps * np.sqrt(np.expm1(var))
        self.W_ = state.W
        self.G_ = state.G
        D = state.W if state.G is None else state.G @ state.W
        self.H_ = np.ascontiguousarray(mean_maps.T.astype(dtype))
        self.H_std_ = np.ascontiguousarray(std_maps.T.astype(dtype))
        self.F_mean_ = np.ascontiguousarray(mu.T)
        self.F_var_ = np.ascontiguousarray(var.T)
        self.prior_mean_ = state.prior_mean + np.log(scale)
        self.prior_var_ = state.prior_var.copy()
        self.n_components_ = mu.shape[1]
        self._n_features_out = self.n_components_
        self.components_ = np.ascontiguousarray(D.T) if self.hspy_comp else self.H_
        self.elbo_ = -float(sum(state.extras["final_terms"].values()))
        B_scaled = np.ascontiguousarray(np.exp(state.mu + 0.5 * var).astype(dtype))
        result = kernels.data_pass(
            state.data, B_scaled, state.D, need_w_terms=False, x_constants=state.x_constants
        )
        self.reconstruction_err_ = float(result.data_loss * scale)
        return np.ascontiguousarray(mean_maps.astype(dtype)) if self.hspy_comp else D

    # ----------------------------------------------------------- transform
    def transform(self, X):
        """Posterior mean maps of new pixels (``hspy_comp=True``) or spectra of new channels.

        ``hspy_comp=True``: ``X`` ``(p', n)``; the spectra and the prior are
        fixed at the fitted ones and each pixel's posterior ``q(F_i)`` is
        solved on its own by the ``mu`` / ``sigma`` steps (Jensen bound) from
        a least-squares start, until ``|Δmu|`` and ``|Δsigma^2|`` fall below
        ``tol / 100`` (at most ``max(max_iter, 1000)`` steps): any subset of
        pixels gives the same rows. Returns ``E_q[e^F]`` ``(p', k)``.

        ``hspy_comp=False``: ``X`` ``(n', p)`` holds new channels of the
        training pixels; returns the spectra ``(n', k)`` that maximise the
        ELBO with the fitted posterior of the maps fixed (no simplex), each
        channel solved on its own by the multiplicative step 4.

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
        data = kernels.prepare_data(X, kernels.choose_path(X, self.sparse))
        if self.hspy_comp:
            return self._solve_maps(X, data, dtype)
        return self._solve_spectra(X, data, dtype), None

    @staticmethod
    def _least_squares_start(X, basis: np.ndarray) -> np.ndarray:
        """``C >= 0`` with ``X ~ C basis^T`` by least squares, lifted off zero (rows > 0)."""
        gram = basis.T @ basis
        rhs = np.asarray(X @ basis, dtype=np.float64)
        start = np.linalg.lstsq(gram, rhs.T, rcond=None)[0].T
        row_scale = np.asarray(X.sum(axis=1), dtype=np.float64).ravel() / basis.sum()
        return np.maximum(start, 0.1 * row_scale[:, None] + 1e-12)

    def _solve_maps(self, X, data, dtype):
        D = np.maximum(self.components_.T.astype(dtype), dtype.type(self.log_shift))
        c = D.sum(axis=0, dtype=np.float64)
        prior_mean, prior_var = self.prior_mean_, self.prior_var_
        p = X.shape[0]
        mu = np.log(self._least_squares_start(X, D.astype(np.float64)))
        sigma = _update_std(0.0, c * np.exp(mu), np.full_like(mu, 0.3), prior_var, max_iter=100)
        var = sigma * sigma
        A = np.ascontiguousarray(np.exp(mu).astype(dtype))
        active = np.ones(p, dtype=bool)
        change_tol = 1e-2 * self.tol

        def rule(rows, negative, positive, curvature):
            was_active = active[rows]
            S = A[rows].astype(np.float64) * negative
            new_mu = _update_mean(S, c * np.exp(0.5 * var[rows]), mu[rows], prior_mean, prior_var)
            new_sigma = _update_std(0.0, c * np.exp(new_mu), np.sqrt(var[rows]), prior_var)
            new_var = new_sigma * new_sigma
            change = np.maximum(np.abs(new_mu - mu[rows]), np.abs(new_var - var[rows]))
            active[rows] = was_active & (change.max(axis=1) >= change_tol)
            keep = ~was_active[:, None]
            mu[rows] = np.where(keep, mu[rows], new_mu)
            var[rows] = np.where(keep, var[rows], new_var)
            return np.exp(mu[rows]).astype(dtype)

        for _ in range(max(self.max_iter, 1000)):
            kernels.data_pass(data, A, D, map_rule=rule, need_w_terms=False, need_loss=False)
            if not active.any():
                break
        mean_maps = np.exp(mu + 0.5 * var)
        std_maps = mean_maps * np.sqrt(np.expm1(var))
        return mean_maps.astype(dtype), std_maps.astype(dtype)

    def _solve_spectra(self, X, data, dtype):
        # Rows of X are channels: "maps" = spectra rows (n', k), "spectra" = A (p, k).
        A = np.maximum(np.exp(self.F_mean_.T).astype(dtype), dtype.type(self.log_shift))
        mean_maps_colsum = self.H_.sum(axis=1, dtype=np.float64).astype(dtype)
        floor = float(self.log_shift)
        C = self._least_squares_start(X, self.H_.T.astype(np.float64))
        C = np.ascontiguousarray(C.astype(dtype))
        active = np.ones(C.shape[0], dtype=bool)
        change_tol = 1e-2 * self.tol
        tiny = np.finfo(dtype).tiny

        def rule(rows, negative, positive, curvature):
            was_active = active[rows]
            Cb = C[rows]
            new = np.maximum(Cb * negative / mean_maps_colsum, floor)
            change = np.abs(new - Cb).max(axis=1) / np.maximum(new.max(axis=1), tiny)
            active[rows] = was_active & (change >= change_tol)
            return np.where(was_active[:, None], new, Cb).astype(dtype, copy=False)

        for _ in range(max(self.max_iter, 1000)):
            kernels.data_pass(data, C, A, map_rule=rule, need_w_terms=False, need_loss=False)
            if not active.any():
                break
        return C

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

r"""The PNMF solver: Poisson NMF with log-normal maps by variational inference.

Model (internal layout: ``X`` is ``(p, n)``): ``X_ij ~ Poisson(sum_l D_jl
e^{F_il})``, ``F_il ~ N(m_l, s_l^2)``, ``D = G W``, with the mean-field
posterior ``q(F_il) = N(mu_il, sigma_il^2)``. Each iteration is a monotone
coordinate ascent on the ELBO (see :class:`espm_lite.PNMF` for the maths):
the Jensen minorisation of the log-rate at the current point, the exact
``mu`` step (:func:`~espm_lite.solvers._lognormal.update_mean`), the
``sigma`` step (:func:`~espm_lite.solvers._lognormal.update_std`), the
multiplicative ``W`` step with the posterior mean maps, and the empirical
Bayes prior. The loop minimises ``-ELBO``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln
from sklearn.utils import check_random_state

from .. import kernels
from .._problem import Problem
from ..kernels import column_means, column_sums
from ..kernels.rows import coefficient_rows, least_squares_start, solve_rows
from ._base import (
    FitState,
    Result,
    RngFactory,
    Solver,
    channels_as_rows,
    keep_if_better,
    nonnegative_start,
    project_W,
    unit_columns,
    update_W,
)
from ._lognormal import kl_normal, update_mean, update_std

#: Smallest prior variance of the empirical-Bayes update (avoids a degenerate prior).
PRIOR_VAR_MIN = 1e-10


@dataclass
class PNMFState(FitState):
    """:class:`FitState` with the variational parameters.

    ``A = exp(mu)`` (data dtype) is what the passes over the data use; ``mu``,
    ``var`` ``(p, k)`` and the prior ``(prior_mean, prior_var)`` ``(k,)`` are
    float64; ``mc_seed`` seeds the draws of ``bound="mc"``.
    """

    mu: np.ndarray | None = None
    var: np.ndarray | None = None
    prior_mean: np.ndarray | None = None
    prior_var: np.ndarray | None = None
    mc_seed: int = 0


class VariationalPoisson(Solver):
    """Solver of :class:`espm_lite.PNMF`.

    Parameters
    ----------
    problem : Problem
    bound : {"jensen", "mc"}
    n_mc : int
    prior_mean, prior_var : ndarray (k,) or None
        Fixed prior (in log counts), or None for empirical Bayes.
    init, rng, random_state
        Start of the maps; ``random_state`` seeds the draws.
    row_solve : RowSolve or None
        The solve of ``transform``, run on the maps at the end (see :meth:`polish`).
    """

    names = ("expected_nll_loss", "KL_prior_loss")
    simplex_tol = 1e-5

    def __init__(
        self,
        problem: Problem,
        *,
        bound: str,
        n_mc: int,
        prior_mean,
        prior_var,
        init,
        rng: RngFactory,
        random_state,
        row_solve=None,
    ):
        counts = problem.counts
        values = counts.data if sp.issparse(counts) else counts
        log_factorials = float(gammaln(values.astype(np.float64) + 1.0).sum())
        self.weight = problem.scale
        # -ELBO = weight * (-sum X' log Y' + sum E lambda') + const (see objective).
        self.const = log_factorials - np.log(problem.scale) * kernels.data_sum(counts)
        self.bound, self.n_mc = bound, n_mc
        self.fixed_mean = None if prior_mean is None else prior_mean - np.log(problem.scale)
        self.fixed_var = prior_var
        self.init, self.rng, self.random_state = init, rng, random_state
        self.row_solve = row_solve

    # ---------------------------------------------------------------- start
    def start(self, problem: Problem) -> PNMFState:
        """The base start of the scaled data (equivariant), then the posterior."""
        W, A = nonnegative_start(problem, self.init, self.rng(), X=problem.X, scale=problem.scale)
        state = PNMFState(W, A)
        if self.bound == "mc":
            state.mc_seed = int(
                check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            )
        A0 = state.A.astype(np.float64)
        col_mean = np.maximum(A0.mean(axis=0), np.finfo(np.float64).tiny)
        state.mu = np.log(np.maximum(A0, 1e-3 * col_mean))
        state.var = np.full_like(state.mu, 0.1)
        state.prior_mean = np.zeros(state.mu.shape[1])
        state.prior_var = np.ones(state.mu.shape[1])
        self._update_prior(state)
        c = self._weighted_colsum(problem, state)
        sigma = update_std(
            0.0, c * np.exp(state.mu), np.sqrt(state.var), state.prior_var, max_iter=100
        )
        state.var = sigma * sigma
        self._update_prior(state)
        state.A = np.ascontiguousarray(np.exp(state.mu).astype(state.W.dtype))
        return state

    def _weighted_colsum(self, problem: Problem, state: PNMFState) -> np.ndarray:
        """``weight * c_l``, ``c_l = sum_j D_jl``, in float64."""
        return self.weight * column_sums(self.spectra(problem, state), np.float64)

    def _update_prior(self, state: PNMFState) -> None:
        mean = column_means(state.mu) if self.fixed_mean is None else self.fixed_mean
        if self.fixed_var is None:
            var = np.maximum(column_means((state.mu - mean) ** 2 + state.var), PRIOR_VAR_MIN)
        else:
            var = self.fixed_var
        state.prior_mean[...] = mean
        state.prior_var[...] = var

    # ------------------------------------------------------------ objective
    def _draws(self, state: PNMFState):
        """The fixed draws ``eps^s`` (p, k) of ``bound="mc"``, one at a time."""
        for s in range(self.n_mc):
            yield np.random.default_rng([state.mc_seed, s]).standard_normal(state.mu.shape)

    @staticmethod
    def _draw_maps(state: PNMFState, eps: np.ndarray) -> np.ndarray:
        F = state.mu + np.sqrt(state.var) * eps
        return np.ascontiguousarray(np.exp(F).astype(state.W.dtype))

    def _terms(self, problem, state: PNMFState, log_rate: float, mean_maps, kl) -> dict:
        c = column_sums(self.spectra(problem, state), np.float64)
        data = self.weight * (log_rate + float(c @ mean_maps)) + self.const
        return {"data": data, "KL_prior_loss": kl}

    def objective(self, problem: Problem, state: PNMFState) -> dict[str, float]:
        """``-ELBO`` terms: ``-sum X' E log Y'`` under the bound (a pass per draw for mc)."""
        D = self.spectra(problem, state)
        col_d = column_sums(D)
        total = 0.0
        for eps in self._draws(state) if self.bound == "mc" else [None]:
            A = state.A if eps is None else self._draw_maps(state, eps)
            result = kernels.data_pass(problem.data, A, D, need_w_terms=False)
            total += result.data_loss - float(np.vdot(col_d, column_sums(A)))
        log_rate = total / self.n_mc if self.bound == "mc" else total
        mean_maps = column_sums(np.exp(state.mu + 0.5 * state.var))
        kl = kl_normal(state.mu, state.var, state.prior_mean, state.prior_var)
        return self._terms(problem, state, log_rate, mean_maps, kl)

    # --------------------------------------------------------- extrapolation
    def extrapolated(self, problem: Problem) -> dict[str, str]:
        return {"W": "ratio", "mu": "difference", "var": "ratio"}

    def project(self, problem: Problem, state: PNMFState) -> None:
        """Floors on ``W``, the simplex of its columns, ``A = exp(mu)`` and the prior."""
        project_W(problem, state.W)
        state.A[...] = np.exp(state.mu).astype(state.A.dtype)
        self._update_prior(state)

    # --------------------------------------------------------------- update
    def step(self, problem: Problem, state: PNMFState) -> dict[str, float]:
        D = self.spectra(problem, state)
        mu, var = state.mu, state.var
        kl_old = kl_normal(mu, var, state.prior_mean, state.prior_var)
        mean_maps_old = column_sums(np.exp(mu + 0.5 * var))
        if self.bound == "jensen":
            log_rate, w_negative = self._jensen_step(problem, state, D)
        else:
            log_rate, w_negative = self._mc_step(problem, state, D)
        terms = self._terms(problem, state, log_rate, mean_maps_old, kl_old)
        update_W(
            problem,
            state,
            w_negative,
            simplex_tol=self.simplex_tol,
            map_colsum=column_sums(np.exp(mu + 0.5 * var)),
        )
        self._update_prior(state)
        return terms

    def _jensen_step(self, problem: Problem, state: PNMFState, D: np.ndarray):
        """The posterior step in the same pass as the spectra terms."""
        mu, var, dtype = state.mu, state.var, state.W.dtype
        prior_mean, prior_var = state.prior_mean, state.prior_var
        c_weighted = self.weight * column_sums(D, np.float64)

        def rule(rows, negative, positive, curvature):
            S = self.weight * state.A[rows].astype(np.float64) * negative
            new_mu = update_mean(
                S, c_weighted * np.exp(0.5 * var[rows]), mu[rows], prior_mean, prior_var
            )
            sigma = update_std(0.0, c_weighted * np.exp(new_mu), np.sqrt(var[rows]), prior_var)
            mu[rows] = new_mu
            var[rows] = sigma * sigma
            return np.exp(new_mu).astype(dtype)

        old_term = float(np.vdot(column_sums(D), column_sums(state.A)))
        result = kernels.data_pass(problem.data, state.A, D, map_rule=rule)
        return result.data_loss - old_term, result.w_negative

    def _mc_step(self, problem: Problem, state: PNMFState, D: np.ndarray):
        """The posterior step from ``n_mc`` fixed draws (two passes per draw)."""
        mu, var, dtype = state.mu, state.var, state.W.dtype
        col_d = column_sums(D)
        S, T = np.zeros_like(mu), np.zeros_like(mu)
        log_rate = 0.0
        for eps in self._draws(state):
            A_s = self._draw_maps(state, eps)

            def capture(rows, negative, positive, curvature, A_s=A_s, eps=eps):
                part = A_s[rows].astype(np.float64) * negative
                S[rows] += part
                T[rows] += eps[rows] * part
                return A_s[rows]

            old_term = float(np.vdot(col_d, column_sums(A_s)))
            result = kernels.data_pass(problem.data, A_s, D, map_rule=capture, need_w_terms=False)
            log_rate += result.data_loss - old_term
        log_rate /= self.n_mc
        S *= self.weight / self.n_mc
        T *= self.weight / self.n_mc
        c_weighted = self.weight * column_sums(D, np.float64)
        sigma = np.sqrt(var)
        mu[...] = update_mean(
            S, c_weighted * np.exp(0.5 * var), mu, state.prior_mean, state.prior_var
        )
        sigma = update_std(T, c_weighted * np.exp(mu), sigma, state.prior_var)
        var[...] = sigma * sigma
        state.A[...] = np.exp(mu).astype(dtype)
        w_negative = None
        for eps in self._draws(state):
            A_s = self._draw_maps(state, eps)
            part = kernels.data_pass(problem.data, A_s, D, need_loss=False).w_negative
            w_negative = part if w_negative is None else w_negative + part
        return log_rate, w_negative / dtype.type(self.n_mc)

    def polish(self, problem: Problem, state: PNMFState) -> dict[str, float] | None:
        """The sample-side factor re-solved as ``transform`` does; kept if ``-ELBO`` does not grow.

        ``hspy_comp=True``: the posterior of every pixel, spectra and prior
        fixed (on the counts with the prior in count units: the same problem,
        ``normalize`` being an exact reparametrisation). ``False``: the spectra
        channel by channel without the simplex, whose column sums then move
        into the maps (``mu + log c``, the prior mean with it).
        """
        solve = self.row_solve
        if solve is None or (solve.side == "W" and problem.G is not None):
            return None  # spectra through G are not solved channel by channel
        if solve.side == "W" and problem.fixed.W_mask is not None:
            return None
        before = self.objective(problem, state)
        options = dict(
            sparse=solve.sparse, max_passes=solve.max_passes, change_tol=solve.change_tol
        )
        if solve.side == "H":
            log_scale = np.log(problem.scale)
            mu, var = posterior_of_pixels(
                problem.counts,
                self.spectra(problem, state),
                state.prior_mean + log_scale,
                state.prior_var,
                start=(state.mu + log_scale, state.var),
                **options,
            )
            updates = {"mu": mu - log_scale, "var": var}
        else:
            maps = np.maximum(state.A, problem.dtype.type(problem.floor))
            mean_maps = np.exp(state.mu + 0.5 * state.var)
            W = spectra_of_channels(channels_as_rows(problem), maps, mean_maps, floor=problem.floor)
            W, c = unit_columns(W, problem.floor) if problem.simplex_W else (W, np.ones(W.shape[1]))
            updates = {"W": W, "mu": state.mu + np.log(c)}
            if self.fixed_mean is None:
                updates["prior_mean"] = state.prior_mean + np.log(c)
        updates["A"] = np.exp(updates["mu"]).astype(state.A.dtype)
        return keep_if_better(self, problem, state, before, updates)

    # -------------------------------------------------------------- outputs
    def monitored(self, problem: Problem, state: PNMFState):
        return self.spectra(problem, state), self.weight * np.exp(state.mu + 0.5 * state.var)

    def result(self, problem: Problem, state: PNMFState, final_terms: dict) -> Result:
        """Posterior mean maps as ``A``; std maps, posterior and prior as fitted attributes."""
        dtype, scale = state.W.dtype, problem.scale
        mu, var = state.mu + np.log(scale), state.var
        mean_maps = np.exp(mu + 0.5 * var)
        B_scaled = np.ascontiguousarray(np.exp(state.mu + 0.5 * var).astype(dtype))
        fit = kernels.data_pass(
            problem.data,
            B_scaled,
            self.spectra(problem, state),
            need_w_terms=False,
            x_constants=problem.x_constants,
        )
        fitted = {
            "H_std_": np.ascontiguousarray((mean_maps * np.sqrt(np.expm1(var))).T.astype(dtype)),
            "F_mean_": np.ascontiguousarray(mu.T),
            "F_var_": np.ascontiguousarray(var.T),
            "prior_mean_": state.prior_mean + np.log(scale),
            "prior_var_": state.prior_var.copy(),
            "elbo_": -float(sum(final_terms.values())),
            "reconstruction_err_": float(fit.data_loss * scale),
        }
        return Result(state.W, np.exp(state.mu + 0.5 * var), fitted)


def posterior_of_pixels(
    X,
    D: np.ndarray,
    prior_mean,
    prior_var,
    *,
    sparse,
    max_passes: int,
    change_tol: float,
    start: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Posterior ``(mu, var)`` ``(p', k)`` of new pixels, spectra and prior fixed.

    Each pixel's ``q(F_i)`` is solved on its own by the Jensen ``mu`` /
    ``sigma`` steps from ``start`` (default: a least-squares start), until ``|Δmu|`` and
    ``|Δsigma^2|`` fall below ``change_tol`` (:func:`posterior_moments` turns
    them into the mean and std maps).
    """
    dtype = D.dtype
    data = kernels.prepare_data(X, kernels.choose_path(X, sparse))
    c = column_sums(D, np.float64)
    if start is None:
        mu = np.log(least_squares_start(X, D.astype(np.float64), 1e-12))
        sigma = update_std(0.0, c * np.exp(mu), np.full_like(mu, 0.3), prior_var, max_iter=100)
        var = sigma * sigma
    else:
        mu, var = (np.array(value, dtype=np.float64) for value in start)
    A = np.ascontiguousarray(np.exp(mu).astype(dtype))

    def update(rows, negative, positive, active):
        S = A[rows].astype(np.float64) * negative
        new_mu = update_mean(S, c * np.exp(0.5 * var[rows]), mu[rows], prior_mean, prior_var)
        new_var = update_std(0.0, c * np.exp(new_mu), np.sqrt(var[rows]), prior_var) ** 2
        change = np.maximum(np.abs(new_mu - mu[rows]), np.abs(new_var - var[rows])).max(axis=1)
        keep = ~active[:, None]
        mu[rows] = np.where(keep, mu[rows], new_mu)
        var[rows] = np.where(keep, var[rows], new_var)
        return np.exp(mu[rows]).astype(dtype), change

    solve_rows(data, A, D, update, max_passes=max_passes, change_tol=change_tol)
    return mu, var


def posterior_moments(mu: np.ndarray, var: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``e^F``, ``F ~ N(mu, var)``: ``e^{mu + var/2}``, ``mean sqrt(e^var - 1)``."""
    mean_maps = np.exp(mu + 0.5 * var)
    return mean_maps.astype(dtype), (mean_maps * np.sqrt(np.expm1(var))).astype(dtype)


def spectra_of_channels(
    X, maps: np.ndarray, mean_maps, *, floor, start: np.ndarray | None = None
) -> np.ndarray:
    """ELBO-optimal spectra ``(n', k)`` of new channels, the posterior of the maps fixed.

    Rows of ``X`` are channels; ``maps`` ``(p, k)`` is ``e^{mu}`` of the fit and
    ``mean_maps`` ``(p, k)`` the posterior mean maps. Each channel solves the
    convex problem ``min_c s^T c - sum_i x_i log (maps c)_i`` with ``s`` the
    column sums of ``mean_maps`` exactly (projected Newton; no simplex).
    """
    dtype = maps.dtype
    if start is None:
        start = least_squares_start(X, mean_maps.astype(np.float64), 1e-12)
    linear = column_sums(mean_maps, np.float64)
    C = coefficient_rows(X, maps, floor=floor, linear=linear, start=start)
    return np.ascontiguousarray(C.astype(dtype, copy=False))

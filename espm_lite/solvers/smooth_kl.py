r"""The SmoothNMF solver: KL (or Frobenius) NMF with regularised maps.

Objective, over ``W >= 0`` and the maps ``A = H^T >= 0``:

.. math::

    F = D(X \| A D^T) + \frac{\lambda_L}{2} \operatorname{tr}(A^T \Delta A)
        + \sum_r \mu_r \sum_j \log(A_{jr} + \epsilon_{reg}),
    \qquad D = G W,

with ``Delta`` the graph Laplacian of the pixel grid. One iteration is one
pass over the data (:func:`espm_lite.kernels.data_pass`) that updates the
maps block by block with one of three rules, then the multiplicative ``W``
update (:func:`espm_lite.solvers._base.update_W`); with ``R = X / (A D^T)``:

* ``"log_surrogate"``: ``A <- A (R D + c) / (1^T D + c + lambda_L Delta A
  + mu / (A + epsilon_reg) + nu)``, ``c = lambda_L sigma_L max_j A_jr``;
* ``"l2_surrogate"``: the positive root of ``a x^2 + b x - A (R D) = 0`` with
  ``a = lambda_L sigma_L``, ``b = 1^T D + lambda_L Delta A - a A
  + mu / (A + epsilon_reg) + nu``;
* ``"projected_gradient"``: ``A - step * gradient`` projected on
  ``A >= floor`` (and the simplex), the step per pixel the inverse of the
  curvature ``lambda_max(D^T diag(X_j / Y_j^2) D) + 8 lambda_L`` unless
  ``gamma`` is given, halved on an increase of the objective.

``sigma_L = 8`` bounds the largest eigenvalue of ``Delta``; ``nu`` is the
``simplex_H`` multiplier (bisection to ``dicotomy_tol``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import kernels
from .._problem import Problem
from ..kernels.chunked import ChunkedData
from ..kernels.rows import coefficient_rows
from ._base import (
    FitState,
    RngFactory,
    RowSolve,
    Solver,
    channels_as_rows,
    data_term,
    keep_if_better,
    nonnegative_start,
    project_W,
    unit_columns,
    update_W,
)

#: Strength of the proximal term of the Laplacian surrogates (>= the norm bound 8).
SIGMA_L = kernels.LAPLACIAN_NORM_BOUND

ALGORITHMS = ("log_surrogate", "l2_surrogate", "projected_gradient")


@dataclass
class SmoothState(FitState):
    """:class:`FitState` with the step scale of ``projected_gradient`` (1 = curvature step)."""

    step_scale: float = 1.0


class SmoothKL(Solver):
    """Solver of :class:`espm_lite.SmoothNMF` (see the module docstring).

    Parameters
    ----------
    problem : Problem
    lambda_L : float
    mu : ndarray (k,)
        Validated per-phase sparsity strengths.
    epsilon_reg : float
    algo : {"log_surrogate", "l2_surrogate", "projected_gradient"}
    gamma : float or None
    linesearch : bool
    simplex_tol : float
    init : str or None
    rng : callable
        Returns the seeded Generator of the start.
    row_solve : RowSolve or None
        The solve of ``transform``: the fit ends with it on the sample-side
        factor where the conditional problem is the one ``transform`` solves
        (maps without Laplacian or fixed entries; spectra without ``G`` or fixed
        entries, the column sums moved into the maps under ``simplex_W``), kept
        if the objective does not increase.
    """

    names = ("KL_div_loss", "Lapl_reg_loss", "log_reg_loss")

    def __init__(
        self,
        problem: Problem,
        *,
        lambda_L: float,
        mu: np.ndarray,
        epsilon_reg: float,
        algo: str,
        gamma: float | None,
        linesearch: bool,
        simplex_tol: float,
        init,
        rng: RngFactory,
        row_solve: RowSolve | None = None,
    ):
        dtype = problem.dtype
        if problem.loss == "l2":
            self.names = ("l2_loss", *self.names[1:])
        # Strengths in the units of the scaled problem (exact: F = s F' + const).
        s, h = problem.penalty_units()
        self.lambda_L = lambda_L * h * h / s
        self.mu64 = np.asarray(mu, dtype=np.float64) / s
        self.mu = self.mu64.astype(dtype)
        self.epsilon_reg = epsilon_reg / h
        self._log_constant = float(np.sum(mu)) * problem.n_pixels * np.log(h)
        self.algo = algo
        self.gamma = gamma
        self.linesearch = linesearch
        self.simplex_tol = simplex_tol
        self.init = init
        self.rng = rng
        self.row_solve = row_solve
        grid = problem.shape_2d or (1, problem.n_pixels)  # no shape: a line scan
        self.laplacian = kernels.GridLaplacian(grid, dtype) if lambda_L > 0 else None

    # ------------------------------------------------------------ objective
    def start(self, problem: Problem) -> SmoothState:
        W, A = nonnegative_start(problem, self.init, self.rng(), X=problem.X, scale=problem.scale)
        return SmoothState(W, A)

    def penalties(self, A: np.ndarray, lap_A=None) -> dict[str, float]:
        """The regularisation terms at maps ``A`` (``lap_A = Delta A`` if known)."""
        terms = {"Lapl_reg_loss": 0.0, "log_reg_loss": 0.0}
        if self.lambda_L > 0:
            if lap_A is None:
                lap_A = self.laplacian @ A
            terms["Lapl_reg_loss"] = 0.5 * self.lambda_L * float(np.vdot(A, lap_A))
        if np.any(self.mu > 0):
            log_sums = np.log(A + A.dtype.type(self.epsilon_reg)).sum(axis=0, dtype=np.float64)
            terms["log_reg_loss"] = float(self.mu.astype(np.float64) @ log_sums)
        return terms

    def report(self, problem: Problem, terms: dict, n_entries: int = 1) -> dict[str, float]:
        s = problem.penalty_units()[0]
        if s == 1.0:
            return terms
        out = {name: s * value for name, value in terms.items()}
        out["log_reg_loss"] = out.get("log_reg_loss", 0.0) + self._log_constant / n_entries
        return out

    def objective(self, problem: Problem, state: FitState) -> dict[str, float]:
        data = data_term(problem, state.A, self.spectra(problem, state))
        return {"data": data, **self.penalties(state.A)}

    def polish(self, problem: Problem, state: SmoothState) -> dict[str, float] | None:
        """The solve of ``transform`` on the sample-side factor; kept if the objective drops.

        Maps (``hspy_comp=True``): the KL problem of each pixel, unless the
        Laplacian couples them, entries are fixed or the maps are on the
        simplex (then no exact row solve). Spectra: each channel without the
        simplex, whose column sums then move into the maps.
        """
        solve = self.row_solve
        if solve is None or problem.loss != "kl" or problem.missing is not None:
            return None
        if solve.side == "H":
            if self.lambda_L > 0 or problem.fixed.A_mask is not None or problem.simplex_H:
                return None
            mu = self.mu64.astype(problem.dtype)
            sparsity = (mu, float(self.epsilon_reg)) if np.any(mu > 0) else None
            A = coefficient_rows(
                problem.X, self.spectra(problem, state), floor=problem.floor, sparsity=sparsity
            )
            updates = {"A": A}
        else:
            if problem.G is not None or problem.fixed.W_mask is not None:
                return None  # spectra through G are not solved channel by channel
            if isinstance(problem.X, ChunkedData):
                return None  # channels as rows would need every pixel of a channel at once
            maps = np.maximum(state.A, problem.floor)
            W = coefficient_rows(channels_as_rows(problem), maps, floor=problem.floor)
            updates = {"W": W}
            if problem.simplex_W:  # the scale of the spectra moves into the maps
                updates["W"], c = unit_columns(W, problem.floor)
                updates["A"] = state.A * c
        return keep_if_better(self, problem, state, self.objective(problem, state), updates)

    # --------------------------------------------------------- extrapolation
    def extrapolated(self, problem: Problem) -> dict[str, str]:
        arrays = {"W": "ratio", "A": "ratio"}
        if problem.simplex_H and problem.fixed.A_mask is not None:
            del arrays["A"]  # a row sum shared with fixed entries: left to the updates
        return arrays

    def project(self, problem: Problem, state: SmoothState) -> None:
        project_W(problem, state.W)
        np.maximum(state.A, problem.floor, out=state.A)
        problem.fixed.apply_A(state.A)
        if problem.simplex_H:
            state.A /= state.A.sum(axis=1, keepdims=True)

    # --------------------------------------------------------------- update
    def step(self, problem: Problem, state: SmoothState) -> dict[str, float]:
        A = state.A
        lam = A.dtype.type(self.lambda_L)
        lap_A = self.laplacian @ A if lam > 0 else None
        penalties = self.penalties(A, lap_A)
        rule = _MapRule(self, problem, state, lap_A)
        result = kernels.data_pass(
            problem.data,
            A,
            self.spectra(problem, state),
            loss=problem.loss,
            map_rule=rule,
            need_curvature=(self.algo == "projected_gradient" and self.gamma is None),
            x_constants=problem.x_constants,
            missing=problem.missing,
        )
        update_W(
            problem,
            state,
            result.w_negative,
            simplex_tol=self.simplex_tol,
            w_removed=result.w_removed,
        )
        if self.algo == "projected_gradient" and (self.linesearch or self.gamma is None):
            # Regrow the step after backtracking: up to the curvature step by default,
            # without bound with linesearch=True.
            grown = state.step_scale * 1.1
            state.step_scale = grown if self.linesearch else min(grown, 1.0)
        return {"data": result.data_loss, **penalties}

    def on_increase(self, state: SmoothState) -> bool:
        # The default step (curvature bound at the current iterate) backtracks too.
        if self.algo == "projected_gradient" and (self.linesearch or self.gamma is None):
            state.step_scale *= 0.5
            return state.step_scale > 1e-12
        return False


class _MapRule:
    """The map update of one block of pixels, called by the pass over the data."""

    def __init__(self, solver: SmoothKL, problem: Problem, state: SmoothState, lap_A):
        A = state.A
        dtype = A.dtype
        self.solver, self.problem, self.A, self.lap_A = solver, problem, A, lap_A
        self.lam = dtype.type(solver.lambda_L)
        self.prox = self.lam * dtype.type(SIGMA_L)
        self.prox_max = self.prox * kernels.column_max(A) if self.lam > 0 else None
        self.eps_reg = dtype.type(solver.epsilon_reg)
        self.use_mu = bool(np.any(solver.mu > 0))
        self.free = None if problem.fixed.A_mask is None else ~problem.fixed.A_mask
        self.step_scale = state.step_scale

    @cached_property
    def compiled_form(self) -> kernels.MultiplicativeMapRule | None:
        """The rule for the compiled pass (log-surrogate without simplex or fixed maps)."""
        solver, problem = self.solver, self.problem
        if solver.algo != "log_surrogate" or problem.simplex_H or self.free is not None:
            return None
        dtype = self.A.dtype
        return kernels.MultiplicativeMapRule(
            smoothing=self.lam * self.lap_A if self.lam > 0 else None,
            proximal=self.prox_max,
            mu=solver.mu if self.use_mu else None,
            epsilon=self.eps_reg,
            floor=dtype.type(problem.floor),
        )

    def __call__(self, rows, negative, positive, curvature):
        solver, problem = self.solver, self.problem
        Ab = self.A[rows]
        extra = np.zeros_like(Ab)
        if self.lam > 0:
            extra += self.lam * self.lap_A[rows]
        if self.use_mu:
            extra += solver.mu / (Ab + self.eps_reg)
        common = dict(
            floor=problem.floor,
            simplex=problem.simplex_H,
            free=None if self.free is None else self.free[rows],
            tol=solver.simplex_tol,
        )
        if solver.algo == "log_surrogate":
            num, den = negative, positive + extra
            if self.lam > 0:
                num = negative + self.prox_max
                den = den + self.prox_max
            new = kernels.mu_update(Ab, num, den, **common)
        elif solver.algo == "l2_surrogate":
            b = positive + extra - self.prox * Ab if self.lam > 0 else positive + extra
            new = kernels.quadratic_root_update(Ab, float(self.prox), b, Ab * negative, **common)
        else:
            new = kernels.projected_step(
                Ab, positive - negative + extra, self._step(curvature, Ab.dtype), **common
            )
        fixed = problem.fixed
        if fixed.A_mask is not None:
            new = np.where(fixed.A_mask[rows], fixed.A_values[rows], new)
        return new

    def _step(self, curvature, dtype):
        if self.solver.gamma is not None:
            return dtype.type(self.solver.gamma * self.step_scale)
        bound = curvature + self.lam * dtype.type(kernels.LAPLACIAN_NORM_BOUND)
        step = (self.step_scale / np.maximum(bound, np.finfo(dtype).tiny))[:, None]
        return step.astype(dtype, copy=False)

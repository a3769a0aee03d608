r"""Solvers of the least-squares family: semi-NMF and convex NMF.

Ding, Li & Jordan (2008) fit ``X ~ A D^T`` (``A`` the maps ``(p, k)``, ``D``
the spectra ``(n, k)``) in the least-squares sense,

.. math:: F = \tfrac12 \|X - A D^T\|_F^2 + \sum_r \ell_r \sum_j A_{jr},

with multiplicative square-root updates of the non-negative factors. Both
share the objective (computed from the products the updates need anyway), the
k-means start and the final exact solve of the maps
(:func:`espm_lite.kernels.least_squares.coefficients`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import kernels
from .._initialization import kmeans_factors
from .._problem import Problem
from ..kernels import column_sums
from ..kernels import least_squares as lsq
from ._base import ArrayState, FitState, Result, RngFactory, Solver

#: Multiplicative map updates per iteration: they reuse ``X D`` and ``D^T D``, so a
#: sweep costs ``O(p k^2)`` against ``O(n p k)`` for a pass over the data.
MAP_SWEEPS = 10

#: Proximal-gradient steps of the SNMF spectra update when ``sparsity > 0``.
PROX_STEPS = 5


def sqrt_update(current: np.ndarray, numerator: np.ndarray, denominator: np.ndarray, floor: float):
    """Ding-Li-Jordan update ``current * sqrt(numerator / denominator)``, floored."""
    tiny = np.finfo(current.dtype).tiny
    ratio = numerator / np.maximum(denominator, tiny)
    return np.maximum(current * np.sqrt(np.maximum(ratio, 0.0)), floor)


def split(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative parts ``(M^+, M^-)`` with ``M = M^+ - M^-``, both ``>= 0``."""
    return np.maximum(matrix, 0), np.maximum(-matrix, 0)


class Frobenius(Solver):
    """What :class:`SemiNMF` and :class:`ConvexSolver` share."""

    names = ("l2_loss", "l1_reg_loss")

    def __init__(self, problem: Problem, *, init, rng: RngFactory, polish_maps: bool):
        self.init, self.rng, self.polish_maps = init, rng, polish_maps
        s, h = problem.penalty_units()
        #: Converts an L1 weight on the maps to the scaled problem (F = s^2 F').
        self.l1_units = h / (s * s)

    def report(self, problem: Problem, terms: dict, n_entries: int = 1) -> dict[str, float]:
        s = problem.penalty_units()[0]
        return terms if s == 1.0 else {name: s * s * value for name, value in terms.items()}

    def map_l1(self, problem: Problem, state) -> np.ndarray | float:
        """L1 weight of each map (per component), at the current state."""
        return 0.0

    def kmeans_or_random(self, problem: Problem) -> tuple[np.ndarray, np.ndarray]:
        """Start ``(A (p, k) >= 0, D (n, k))``: k-means indicators + 0.2 and centroids."""
        X, k = problem.X, problem.n_components
        rng = self.rng()
        if self.init == "random":
            p, n = X.shape
            scale = np.sqrt(max(problem.x_constants[0] / (p * n), 1e-12) / k)
            return (
                scale * np.abs(rng.standard_normal((p, k))),
                scale * np.abs(rng.standard_normal((n, k))),
            )
        indicators, centroids = kmeans_factors(X, k, rng)
        return indicators, centroids.T

    def terms(self, problem: Problem, state, XD: np.ndarray, gram_D: np.ndarray) -> dict:
        data = lsq.frobenius_from_products(problem.x_constants[0], XD, state.A, gram_D)
        l1 = np.broadcast_to(self.map_l1(problem, state), (state.A.shape[1],))
        return {"data": data, "l1_reg_loss": float(column_sums(state.A) @ l1)}

    def objective(self, problem: Problem, state) -> dict[str, float]:
        D = self.spectra(problem, state)
        return self.terms(problem, state, np.asarray(problem.X @ D), D.T @ D)

    def polish(self, problem: Problem, state) -> dict[str, float]:
        """Exact non-negative least-squares maps (``hspy_comp=True``); the objective."""
        if self.polish_maps:
            D = self.spectra(problem, state)
            l1 = self.map_l1(problem, state)
            state.A[...] = np.maximum(
                lsq.coefficients(problem.X, D, non_negative=True, l1=l1), problem.floor
            )
        return self.objective(problem, state)

    def fitted_l1(self, problem: Problem, state) -> dict:
        return {"_fitted_l1": self.map_l1(problem, state)}


class SemiNMF(Frobenius):
    """Solver of :class:`espm_lite.SNMF`: signed spectra, non-negative maps."""

    signed = True

    def __init__(self, problem: Problem, *, sparsity: float, **kwargs):
        super().__init__(problem, **kwargs)
        self.sparsity = sparsity * self.l1_units

    def start(self, problem: Problem) -> FitState:
        A, D = self.kmeans_or_random(problem)
        if problem.A0 is not None:
            A = problem.A0 / problem.scale_of("H")
        if problem.W0 is not None:
            W = problem.W0
        elif problem.G is None:
            W = D
        else:
            G = problem.G.astype(np.float64)
            W = lsq.solve_gram(G.T @ G, G.T @ D)
        dtype = problem.dtype
        state = FitState(
            np.ascontiguousarray(W, dtype=dtype),
            np.ascontiguousarray(np.maximum(A, problem.floor), dtype=dtype),
        )
        self._normalise_spectra(problem, state)
        return state

    def map_l1(self, problem: Problem, state) -> np.ndarray | float:
        if self.sparsity == 0:
            return 0.0
        return self.sparsity * np.linalg.norm(self.spectra(problem, state), axis=0)

    def _normalise_spectra(self, problem: Problem, state: FitState) -> None:
        """Unit-norm spectra, the maps rescaled: ``G W H`` and the objective unchanged."""
        norms = np.linalg.norm(self.spectra(problem, state), axis=0)
        norms[norms == 0] = 1
        state.W /= norms
        state.A *= norms

    def step(self, problem: Problem, state: FitState) -> dict[str, float]:
        X, A, floor = problem.X, state.A, problem.floor
        D = self.spectra(problem, state)
        XD = np.asarray(X @ D)
        gram = D.T @ D
        terms = self.terms(problem, state, XD, gram)  # the iterate before the update
        XD_pos, XD_neg = split(XD)
        gram_pos, gram_neg = split(gram)
        l1 = self.map_l1(problem, state)
        for _ in range(MAP_SWEEPS):  # no pass over the data: O(p k^2) each
            A[...] = sqrt_update(A, XD_pos + A @ gram_neg, XD_neg + A @ gram_pos + l1, floor)
        XtA = np.asarray(X.T @ A)  # (n, k)
        gram_A = A.T @ A
        if self.sparsity == 0:
            spectra = lsq.solve_gram(gram_A, XtA.T).T  # X^T A (A^T A)^{-1}
            if problem.G is not None:
                spectra = lsq.solve_gram(problem.GtG, problem.G.T @ spectra)
            state.W[...] = spectra
        else:
            self._prox_spectra(state, XtA, gram_A)
        self._normalise_spectra(problem, state)
        return terms

    def extrapolated(self, problem: Problem) -> dict[str, str]:
        return {"W": "difference", "A": "ratio"}

    def project(self, problem: Problem, state: FitState) -> None:
        np.maximum(state.A, problem.floor, out=state.A)
        self._normalise_spectra(problem, state)

    def _prox_spectra(self, state: FitState, XtA: np.ndarray, gram_A: np.ndarray) -> None:
        """Proximal-gradient steps on ``D``: ``1/2||X - A D^T||^2 + lambda sum_r a_r ||d_r||``."""
        D = state.W  # G is None here
        lipschitz = float(np.linalg.eigvalsh(gram_A)[-1])
        weights = self.sparsity * column_sums(state.A) / lipschitz
        for _ in range(PROX_STEPS):
            Z = D - (D @ gram_A - XtA) / lipschitz
            norms = np.linalg.norm(Z, axis=0)
            shrink = np.maximum(1 - weights / np.maximum(norms, np.finfo(Z.dtype).tiny), 0)
            if np.any(shrink == 0):
                break  # a spectrum would vanish: keep the previous (descent) iterate
            D[...] = Z * shrink

    def result(self, problem: Problem, state: FitState, final_terms: dict) -> Result:
        return Result(state.W, state.A, self.fitted_l1(problem, state))


@dataclass
class ConvexState(ArrayState):
    """Convex NMF: pixel weights ``B`` ``(p, k)`` (spectra ``X^T B``) and maps ``A`` ``(p, k)``."""

    B: np.ndarray
    A: np.ndarray


class ConvexSolver(Frobenius):
    """Solver of :class:`espm_lite.ConvexNMF`: spectra ``D = X^T B``, ``B >= 0``."""

    def __init__(
        self, problem: Problem, *, solver: str, l1_penalty: float, strict_convex: bool, **kwargs
    ):
        super().__init__(problem, **kwargs)
        self.solver, self.strict_convex = solver, strict_convex
        self.l1_penalty = l1_penalty * self.l1_units
        self.sigma2 = lsq.spectral_norm2(problem.X) if solver == "pgd" else None

    def raw_spectra(self, problem: Problem, state: ConvexState) -> np.ndarray:
        """``D = X^T B`` (n, k): the dictionary applied to the pixels."""
        return np.asarray(problem.X.T @ state.B)

    def spectra(self, problem: Problem, state: ConvexState) -> np.ndarray:
        return np.maximum(self.raw_spectra(problem, state), problem.floor)

    def map_l1(self, problem: Problem, state) -> float:
        return float(self.l1_penalty)

    def start(self, problem: Problem) -> ConvexState:
        if problem.W0 is not None:
            raise ValueError(
                "ConvexNMF does not take an initial W: its spectra are combinations of the "
                "data pixels. Pass H (the initial maps) only, or neither."
            )
        X, (p, k) = problem.X, (problem.n_pixels, problem.n_components)
        A, _ = self.kmeans_or_random(problem)
        # k-means: indicators + 0.2, normalised per cluster below
        B = self.rng().random((p, k)) + 0.1 if self.init == "random" else A.copy()
        if problem.A0 is not None:
            A = problem.A0 / problem.scale_of("H")
        B = B / column_sums(B)
        if problem.A0 is None:
            # Maps at the scale of the start spectra (least squares in a common factor).
            D = np.asarray(X.T @ B)
            XD = np.asarray(X @ D)
            A = A * max(float(np.vdot(A, XD)) / float(np.vdot(A.T @ A, D.T @ D)), 1e-12)
        dtype, floor = problem.dtype, problem.floor
        return ConvexState(
            np.ascontiguousarray(np.maximum(B, floor), dtype=dtype),
            np.ascontiguousarray(np.maximum(A, floor), dtype=dtype),
        )

    def step(self, problem: Problem, state: ConvexState) -> dict[str, float]:
        X, A, B, floor = problem.X, state.A, state.B, problem.floor
        D = self.raw_spectra(problem, state)
        KB = np.asarray(X @ D)  # K B = X X^T B
        gram = D.T @ D
        terms = self.terms(problem, state, KB, gram)  # the iterate before the update
        l1 = float(self.l1_penalty)
        if self.solver == "mu":
            for _ in range(MAP_SWEEPS):  # no pass over the data: O(p k^2) each
                A[...] = sqrt_update(A, KB, A @ gram + l1, floor)
            KA = np.asarray(X @ np.asarray(X.T @ A))
            B[...] = sqrt_update(B, KA, KB @ (A.T @ A), floor)
            if self.strict_convex:
                sums = column_sums(B)
                B /= sums
                A *= sums
        else:
            lipschitz_A = max(float(np.linalg.eigvalsh(gram)[-1]), np.finfo(A.dtype).tiny)
            A[...] = np.maximum(A - (A @ gram - KB + l1) / lipschitz_A, floor)
            gram_A = A.T @ A
            KA = np.asarray(X @ np.asarray(X.T @ A))
            lipschitz_B = self.sigma2 * float(np.linalg.eigvalsh(gram_A)[-1])
            step = 1.0 / max(lipschitz_B, np.finfo(A.dtype).tiny)
            grad_B = KB @ gram_A - KA
            B[...] = kernels.projected_step(
                B.T, grad_B.T, step, floor=floor, simplex=bool(self.strict_convex)
            ).T
        return terms

    def extrapolated(self, problem: Problem) -> dict[str, str]:
        return {"B": "ratio", "A": "ratio"}

    def project(self, problem: Problem, state: ConvexState) -> None:
        np.maximum(state.A, problem.floor, out=state.A)
        np.maximum(state.B, problem.floor, out=state.B)
        if self.strict_convex:
            state.B /= column_sums(state.B)

    def loss_terms(self, problem: Problem, state: FitState) -> dict[str, float]:
        """Objective of given spectra ``W`` (n, k) and maps ``A``."""
        D = Solver.spectra(self, problem, state)
        return self.terms(problem, state, np.asarray(problem.X @ D), D.T @ D)

    def monitored(self, problem: Problem, state: ConvexState):
        return self.spectra(problem, state), state.A

    def result(self, problem: Problem, state: ConvexState, final_terms: dict) -> Result:
        """The spectra ``X^T B`` as ``W`` (they carry the data scale); the weights ``B^T``."""
        fitted = {"convex_weights_": np.ascontiguousarray(state.B.T)}
        fitted.update(self.fitted_l1(problem, state))
        return Result(self.raw_spectra(problem, state), state.A, fitted)

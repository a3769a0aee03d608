"""What every solver shares: the working state, the solver interface, and the
multiplicative pieces of the ``G W H`` models (start, ``W`` update, spectra).

Internal layout (see :mod:`espm_lite.kernels`): the data are ``(p, n)``
(pixels x channels), the maps ``A = H^T`` ``(p, k)``, the spectra
``D = G W`` ``(n, k)``, so that the model is ``Y = A D^T``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import kernels
from .._initialization import initial_factors, project_on_G
from .._problem import Problem
from ..kernels import missing as missing_kernels


class ArrayState:
    """A dataclass of working arrays that the loop can snapshot, restore and check.

    Every field holding an ndarray is part of a snapshot; scalars are not.
    """

    def _arrays(self) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), np.ndarray)
        ]

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of the arrays of the state (what :meth:`restore` puts back)."""
        return {name: getattr(self, name).copy() for name in self._arrays()}

    def restore(self, snapshot: dict[str, np.ndarray]) -> None:
        for name, value in snapshot.items():
            getattr(self, name)[...] = value

    def finite(self) -> bool:
        """Whether every array of the state is finite."""
        return all(bool(np.all(np.isfinite(getattr(self, name)))) for name in self._arrays())


@dataclass
class FitState(ArrayState):
    """Working factors of one fit: ``W`` ``(m, k)`` and the maps ``A = H^T`` ``(p, k)``."""

    W: np.ndarray
    A: np.ndarray


@dataclass(frozen=True)
class RowSolve:
    """How ``transform`` solves rows; the fit ends with the same solve where it applies.

    Attributes
    ----------
    side : {"H", "W"}
        The sample-side factor: the maps (``hspy_comp=True``, rows of X are
        pixels) or the spectra (rows are channels).
    max_passes : int
    change_tol : float
        A row stops when its relative change is below this.
    sparse
        The estimator's ``sparse`` parameter (path of the passes).
    """

    side: str
    max_passes: int
    change_tol: float
    sparse: object = "auto"


def keep_if_better(solver, problem: Problem, state, before: dict, updates: dict) -> dict:
    """Write ``updates`` (``{field: new array}``) into ``state``; undo if the objective grew.

    Returns the objective terms of the state kept.
    """
    old = state.snapshot()
    for name, value in updates.items():
        getattr(state, name)[...] = value
    after = solver.objective(problem, state)
    f_before, f_after = sum(before.values()), sum(after.values())
    if f_after > f_before + 1e-12 * abs(f_before):
        state.restore(old)
        return before
    return after


def channels_as_rows(problem: Problem):
    """The data with channels as rows ``(n, p)`` (CSR or C-contiguous), for spectra solves."""
    X = problem.X.T
    return X.tocsr() if hasattr(X, "tocsr") else np.ascontiguousarray(X)


def unit_columns(W: np.ndarray, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(W / c, c)`` with ``c`` the column sums.

    ``c`` is 1 for a column whose entries are all at most ``floor`` (a dead
    phase: its spectrum solved to the floor is left there rather than made
    uniform, so that solving it again gives it back) or whose sum is not positive.
    """
    c = kernels.column_sums(W)
    c = np.where((c > 0) & (kernels.column_max(W) > floor), c, 1)
    return W / c, c


@dataclass(frozen=True)
class Result:
    """Final factors in the scale of the fitted problem, and extra fitted attributes.

    ``W`` ``(m, k)`` and ``A`` ``(p, k)`` are rescaled to the data units by the
    estimator (:meth:`Problem.scale_of`); ``fitted`` maps attribute names to
    values set as they are (e.g. ``H_std_``; a ``reconstruction_err_`` there
    replaces the default one).
    """

    W: np.ndarray
    A: np.ndarray
    fitted: dict = dataclasses.field(default_factory=dict)


class Solver:
    """Interface of a solver: the maths of one model, no scikit-learn plumbing.

    A solver is built by its estimator from the parameters and the
    :class:`Problem` (``estimator._solver(problem)``) and does not change
    afterwards; everything that changes lives in the state.
    """

    #: History field of the data term, then the penalty names.
    names: tuple[str, ...] = ("KL_div_loss",)
    #: Spectra may be negative (semi-NMF): they are not floored.
    signed: bool = False

    def start(self, problem: Problem) -> FitState:
        raise NotImplementedError

    def step(self, problem: Problem, state: FitState) -> dict[str, float]:
        """One iteration in place; returns the objective terms of the iterate before it."""
        raise NotImplementedError

    def objective(self, problem: Problem, state: FitState) -> dict[str, float]:
        """Objective terms (``"data"`` and the penalties) at the state."""
        raise NotImplementedError

    def on_increase(self, state: FitState) -> bool:
        """Called after an increase was reverted; True to go on iterating."""
        return False

    def polish(self, problem: Problem, state: FitState) -> dict[str, float] | None:
        """Final step after the loop; returns the new objective terms (None: unchanged)."""
        return None

    def extrapolated(self, problem: Problem) -> dict[str, str]:
        """Arrays of the state the loop extrapolates: ``{name: "ratio" | "difference"}``.

        See :mod:`espm_lite._extrapolation`; empty (the default): no extrapolation.
        """
        return {}

    def project(self, problem: Problem, state: FitState) -> None:
        """Put an extrapolated state back on the constraints of the model (in place)."""

    def spectra(self, problem: Problem, state: FitState) -> np.ndarray:
        """``D = G W`` (n, k), floored at ``problem.floor`` unless signed."""
        D = problem.spectra(state.W)
        return D if self.signed else np.maximum(D, problem.floor)

    def monitored(self, problem: Problem, state: FitState) -> tuple[np.ndarray, np.ndarray]:
        """``(spectra (n, k), maps (p, k))`` for the truth monitor."""
        return self.spectra(problem, state), state.A

    def result(self, problem: Problem, state: FitState, final_terms: dict) -> Result:
        """Final factors (and extra fitted attributes) from the final state."""
        return Result(state.W, state.A)

    def report(self, problem: Problem, terms: dict, n_entries: int = 1) -> dict[str, float]:
        """Objective terms in the units of the raw data (see :meth:`Problem.penalty_units`).

        ``terms`` are totals of the scaled problem divided by ``n_entries``.
        """
        return terms

    def loss_terms(self, problem: Problem, state: FitState) -> dict[str, float]:
        """Objective terms of given factors ``W`` (spectra side) and ``A`` (maps)."""
        return self.objective(problem, state)


def nonnegative_start(
    problem: Problem, init, rng: np.random.Generator, *, X, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Feasible non-negative start ``(W, A)`` of the KL models.

    The caller's ``W0`` / ``A0`` (divided by ``scale`` for the factor carrying
    the intensity) take precedence over the initialisation ``init`` of ``X``
    (:func:`espm_lite._initialization.initial_factors`); a start spectrum is
    projected on ``G`` by NNLS. Entries are floored, the fixed entries set,
    and the simplex constraints hold from the first iterate (``W`` columns
    rescaled with the maps compensating, ``A`` rows renormalised).
    """
    dtype = problem.dtype
    W0, A0 = problem.W0, problem.A0
    A = D = None
    if W0 is None or A0 is None:
        A, Dt = initial_factors(X, problem.n_components, init, rng)
        # A canonical split of the scale between the factors (spectra of unit sum), so
        # that the start, and so the fit, is equivariant to rescaling or repeating
        # channels: fitting [X; X] / f gives the spectra of X / 2f and the same maps.
        sums = Dt.sum(axis=1)
        sums[sums <= 0] = 1
        D = (Dt / sums[:, None]).T
        A = A * sums
    if A0 is not None:
        A = np.array(A0) / (dtype.type(scale) if problem.intensity == "H" else 1)
    if W0 is not None:
        W = np.array(W0) / (dtype.type(scale) if problem.intensity == "W" else 1)
    elif problem.G is None:
        W = np.ascontiguousarray(D)
    else:
        W = project_on_G(problem.G, D)
    floor = problem.floor
    W = np.maximum(W, floor).astype(dtype, copy=False)
    A = np.ascontiguousarray(np.maximum(A, floor).astype(dtype, copy=False))
    problem.fixed.apply_W(W)
    problem.fixed.apply_A(A)
    if problem.simplex_W:
        free = problem.simplex_free_W()
        free = np.ones_like(W, dtype=bool) if free is None else free
        sums = (W * free).sum(axis=0)
        sums[sums <= 0] = 1
        W = np.where(free, W / sums, W)
        if problem.intensity == "H" and problem.fixed.A_mask is None:
            A = A * sums  # keep the product G W H unchanged
    if problem.simplex_H:
        free = (
            np.ones_like(A, dtype=bool) if problem.fixed.A_mask is None else ~problem.fixed.A_mask
        )
        sums = (A * free).sum(axis=1, keepdims=True)
        sums[sums <= 0] = 1
        A = np.where(free, A / sums, A)
    W = np.ascontiguousarray(np.maximum(W, floor).astype(dtype, copy=False))
    A = np.ascontiguousarray(np.maximum(A, floor).astype(dtype, copy=False))
    return W, A


def update_W(
    problem: Problem,
    state: FitState,
    w_negative: np.ndarray,
    *,
    simplex_tol: float,
    map_colsum: np.ndarray | None = None,
    w_removed: np.ndarray | None = None,
) -> None:
    """Multiplicative update of ``W`` in place (every model with a ``G W H`` part).

    KL: ``W <- W (G^T R H^T) / (G^T 1 1^T H^T + nu)``; Frobenius:
    ``W <- W (G^T X H^T) / (G^T G W H H^T + nu)``, with ``w_negative`` the
    ``R^T A`` (``X^T A``) of the pass over the data; ``nu`` makes the free
    entries of each column sum to one when ``simplex_W``. ``map_colsum``
    replaces ``H 1`` in the KL denominator (PNMF: the posterior mean maps).
    With missing entries (``problem.missing``) the positive part is that of
    the observed entries, ``w_removed`` being the pass's
    :attr:`~espm_lite.kernels.PassResult.w_removed`
    (:func:`espm_lite.kernels.missing.spectra_terms`).
    """
    G, W, A = problem.G, state.W, state.A
    if problem.missing is not None:
        negative, positive = _masked_spectra_terms(problem, state, w_negative, w_removed)
    else:
        negative = w_negative if G is None else G.T @ w_negative
        if problem.loss == "l2":
            GtG_W = W if G is None else problem.GtG @ W
            positive = GtG_W @ (A.T @ A)
        else:
            g_sum = 1.0 if G is None else problem.G_colsum
            colsum = kernels.column_sums(A) if map_colsum is None else map_colsum.astype(W.dtype)
            positive = np.broadcast_to(g_sum, (W.shape[0],))[:, None] * colsum[None, :]
    free = problem.simplex_free_W() if problem.simplex_W else None
    # One row per phase, C-ordered: the simplex sums then run along contiguous rows.
    contiguous = np.ascontiguousarray
    new = kernels.mu_update(
        contiguous(W.T),
        contiguous(negative.T),
        contiguous(positive.T),
        floor=problem.floor,
        simplex=problem.simplex_W,
        free=None if free is None else contiguous(free.T),
        tol=simplex_tol,
    ).T
    if problem.fixed.W_mask is not None:
        new = np.where(problem.fixed.W_mask, problem.fixed.W_values, new)
    W[...] = new


def project_W(problem: Problem, W: np.ndarray) -> None:
    """``W`` back on its constraints in place: floor, fixed entries, free column sums of one."""
    np.maximum(W, problem.floor, out=W)
    problem.fixed.apply_W(W)
    if problem.simplex_W:
        free = problem.simplex_free_W()
        if free is None:
            W /= kernels.column_sums(W)
        else:
            W[...] = np.where(free, W / np.where(free, W, 0).sum(axis=0), W)


def _masked_spectra_terms(problem: Problem, state: FitState, w_negative, w_removed):
    """``(G^T negative, G^T positive)`` of the ``W`` update over the observed entries."""
    G, W, A = problem.G, state.W, state.A
    D = problem.spectra(W)
    if problem.loss == "l2":
        positive = D @ (A.T @ A)
    else:
        positive = np.broadcast_to(kernels.column_sums(A), D.shape)
    negative, positive = missing_kernels.spectra_terms(
        problem.missing, w_negative, positive, w_removed, A, D, problem.loss
    )
    if G is None:
        return negative, positive
    return G.T @ negative, G.T @ positive


def data_term(problem: Problem, A: np.ndarray, D: np.ndarray) -> float:
    """The data term (KL or Frobenius) of the model ``A D^T``, one pass over the data."""
    result = kernels.data_pass(
        problem.data,
        A,
        D,
        loss=problem.loss,
        need_w_terms=False,
        x_constants=problem.x_constants,
        missing=problem.missing,
    )
    return result.data_loss


RngFactory = Callable[[], np.random.Generator]

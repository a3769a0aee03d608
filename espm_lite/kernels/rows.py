"""Row-by-row solves with the other factor fixed: what every ``transform`` uses.

A row (a pixel with ``hspy_comp=True``, a channel otherwise) is solved on its
own, so any subset of rows gives the same results. :func:`coefficient_rows`
solves the KL problems exactly (projected Newton) and the others by
multiplicative updates; :func:`solve_rows` runs passes over the data with a
per-row update and stops each row when its own change falls below a
tolerance; :func:`least_squares_start` is the default start.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .chunked import ChunkedData
from .data_pass import data_pass
from .newton_rows import newton_rows
from .simplex import mu_update
from .sparse_data import choose_path, prepare_data

#: A row of an iterative (multiplicative) solve stops below this relative change...
ROW_CHANGE_TOL = 1e-8
#: ...or after this many passes over the data.
ROW_MAX_PASSES = 1000

#: ``update(rows, negative, positive, active) -> (new rows, change per row)``.
RowUpdate = Callable[[slice, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def least_squares_start(X, basis: np.ndarray, floor: float) -> np.ndarray:
    """``C >= 0`` with ``X ~ C basis^T`` by (ridged) least squares, lifted off zero.

    Each row is at least ``0.1 * sum(x) / sum(basis) + floor``, so that
    multiplicative updates can move every entry. Returned in the dtype of
    ``basis``.
    """
    gram = basis.T @ basis
    rhs = np.asarray(X @ basis)
    try:
        ridge = 1e-10 * np.trace(gram) * np.eye(gram.shape[0])
        C = np.linalg.solve(gram + ridge, rhs.T).T
    except np.linalg.LinAlgError:
        C = np.linalg.lstsq(gram, rhs.T, rcond=None)[0].T
    row_scale = np.asarray(X.sum(axis=1)).ravel() / max(float(basis.sum()), floor)
    C = np.maximum(C, 0.1 * row_scale[:, None] + floor).astype(basis.dtype)
    return np.ascontiguousarray(C)


def relative_change(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """``max |new - old| / max new`` per row (the stopping measure of a row)."""
    tiny = np.finfo(new.dtype).tiny
    return np.abs(new - old).max(axis=1) / np.maximum(new.max(axis=1), tiny)


def solve_rows(
    data,
    C: np.ndarray,
    basis: np.ndarray,
    update: RowUpdate,
    *,
    loss: str = "kl",
    max_passes: int,
    change_tol: float,
) -> np.ndarray:
    """Iterate ``update`` on the rows of ``C`` (in place) until each row has converged.

    Parameters
    ----------
    data : ndarray, SparseData or DensifiedRows (r, n)
        The rows to solve, in the form :func:`espm_lite.kernels.data_pass` takes.
    C : ndarray (r, k)
        Start, updated in place.
    basis : ndarray (n, k)
        The fixed factor (``> 0``).
    update : callable
        ``update(rows, negative, positive, active)`` gets the gradient parts of
        the data term for the block ``rows`` (see ``data_pass``) and the rows
        still active; returns the new rows and their change.
    loss : {"kl", "l2"}
    max_passes : int
    change_tol : float
        A row stops (keeps its value) once its change is below this.

    Returns
    -------
    ndarray (r, k)
        ``C``.
    """
    active = np.ones(C.shape[0], dtype=bool)

    def rule(rows, negative, positive, curvature):
        was_active = active[rows]
        new, change = update(rows, negative, positive, was_active)
        active[rows] = was_active & (change >= change_tol)
        return np.where(was_active[:, None], new, C[rows])

    for _ in range(max_passes):
        data_pass(data, C, basis, loss=loss, map_rule=rule, need_w_terms=False, need_loss=False)
        if not active.any():
            break
    return C


def coefficient_rows(
    X,
    basis: np.ndarray,
    *,
    floor: float,
    loss: str = "kl",
    simplex: bool = False,
    sparsity: tuple[np.ndarray, float] | None = None,
    linear: np.ndarray | None = None,
    start: np.ndarray | None = None,
    sparse="auto",
    max_passes: int = 500,
    change_tol: float = 1e-6,
    simplex_tol: float = 1e-5,
) -> np.ndarray:
    """Non-negative ``C`` with ``X ~ C basis^T``, ``basis`` fixed, each row on its own.

    The KL problems without a simplex are solved exactly by projected Newton
    steps (:func:`espm_lite.kernels.newton_rows.newton_rows`): the result does
    not depend on the start. The others (Frobenius loss, rows on the simplex)
    take multiplicative updates (:func:`espm_lite.kernels.mu_update`) through
    :func:`solve_rows` until each row changes by less than ``change_tol``.

    Parameters
    ----------
    X : ndarray or sparse matrix (r, n)
    basis : ndarray (n, k), positive
    floor : float
        Lower bound of the coefficients.
    loss : {"kl", "l2"}
    simplex : bool
        Each row of ``C`` sums to one.
    sparsity : (ndarray (k,), float), optional
        ``(mu, epsilon)`` of the log sparsity term ``mu log(C + epsilon)``.
    linear : ndarray (k,), optional
        Linear coefficients of the KL objective (default ``1^T basis``).
    start : ndarray (r, k), optional
        Default :func:`least_squares_start`.
    sparse, max_passes, change_tol, simplex_tol
        Path of the passes and stopping of the multiplicative updates.

    Returns
    -------
    ndarray (r, k) in the dtype of ``basis``
    """
    if isinstance(X, ChunkedData):  # data on disk: each band's rows in turn
        options = dict(floor=floor, loss=loss, simplex=simplex, sparsity=sparsity, linear=linear)
        options.update(sparse=sparse, max_passes=max_passes, change_tol=change_tol)
        return _by_bands(X, basis, start, dict(options, simplex_tol=simplex_tol))
    if start is None:
        start = least_squares_start(X, basis, floor)
        if simplex:
            start = start / start.sum(axis=1, keepdims=True)
    if loss == "kl" and not simplex:
        C = newton_rows(X, basis, start, linear=linear, sparsity=sparsity, floor=floor)
        return np.ascontiguousarray(C.astype(basis.dtype, copy=False))
    if linear is not None:
        raise ValueError(
            "linear coefficients are only supported by the KL problems without simplex."
        )
    C = np.array(np.maximum(start, floor), dtype=basis.dtype, order="C")
    mu, eps = sparsity if sparsity is not None else (None, 0.0)
    use_mu = mu is not None and np.any(mu > 0)

    def update(rows, negative, positive, active):
        Cb = C[rows]
        den = positive + (mu.astype(Cb.dtype) / (Cb + Cb.dtype.type(eps)) if use_mu else 0.0)
        new = mu_update(Cb, negative, den, floor=floor, simplex=simplex, tol=simplex_tol)
        return new, relative_change(new, Cb)

    data = prepare_data(X, choose_path(X, sparse))
    return solve_rows(
        data, C, basis, update, loss=loss, max_passes=max_passes, change_tol=change_tol
    )


def _by_bands(X: ChunkedData, basis: np.ndarray, start, options: dict) -> np.ndarray:
    """:func:`coefficient_rows` of data left on disk, band by band (rows are independent)."""
    parts = [
        coefficient_rows(values, basis, start=None if start is None else start[rows], **options)
        for rows, values in X.iter_bands(X.form)
    ]
    return np.concatenate(parts, axis=0)

"""Shared numerical kernels of the espm_lite estimators.

Every update term of DESIGN.md is written once here and used by all estimators:

* the data terms (generalised Kullback-Leibler and Frobenius) evaluated in one
  cache-friendly pass over the data, pixel block by pixel block
  (:func:`data_pass`),
* the graph Laplacian of a pixel grid (:func:`grid_laplacian`),
* the exact simplex projection by bisection on a Lagrange multiplier
  (:func:`bisect_multiplier`),
* the multiplicative / quadratic-root / projected-gradient updates of a
  non-negative factor (:func:`mu_update`, :func:`quadratic_root_update`).

Internal layout
---------------
All kernels work in the *pixels x channels* layout: the data ``X`` is
``(p, n)`` (C-contiguous, or CSR when sparse), the maps are ``A = H^T``
``(p, k)`` and the channel-space spectra ``D = G W`` ``(n, k)``, so that the
model is ``Y = A D^T``.  A block of pixels is then a contiguous block of rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

#: Size in bytes of one block of data rows processed at once by :func:`data_pass`.
BLOCK_BYTES = 1 << 20


def row_blocks(n_rows: int, n_cols: int, itemsize: int) -> list[slice]:
    """Split ``range(n_rows)`` into contiguous blocks of about ``BLOCK_BYTES``."""
    size = max(1, BLOCK_BYTES // max(1, n_cols * itemsize))
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def dense_block(X, rows: slice) -> np.ndarray:
    """Rows ``rows`` of ``X`` as a dense array (a view for dense ``X``)."""
    block = X[rows]
    if sp.issparse(block):
        return block.toarray()
    return block


def xlogx_sum(X) -> float:
    """``sum X log X`` with ``0 log 0 = 0`` (dense or sparse ``X``)."""
    values = X.data if sp.issparse(X) else X
    positive = values[values > 0]
    return float(np.dot(positive.astype(np.float64), np.log(positive.astype(np.float64))))


def data_sum(X) -> float:
    """``sum X`` in float64."""
    return float(X.sum(dtype=np.float64))


def data_constants(X, loss: str) -> tuple[float, float]:
    """The constants of the data term that depend on ``X`` only (see :func:`data_pass`).

    KL: ``(sum X log X, sum X)``; Frobenius: ``(||X||^2, 0)``.
    """
    if loss == "l2":
        values = X.data if sp.issparse(X) else X
        return float(np.vdot(values, values)), 0.0
    return xlogx_sum(X), data_sum(X)


@dataclass
class PassResult:
    """What one pass over the data returns.

    Attributes
    ----------
    data_loss : float or None
        Data term at the iterate *before* the maps were updated (None if not asked).
    w_negative : ndarray (n, k) or None
        Negative part of the gradient in ``D`` at the updated maps:
        ``R^T A`` (KL) or ``X^T A`` (Frobenius), before multiplication by ``G^T``.
    """

    data_loss: float | None
    w_negative: np.ndarray | None


MapRule = Callable[[slice, np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


def data_pass(
    X,
    A: np.ndarray,
    D: np.ndarray,
    *,
    loss: str = "kl",
    map_rule: MapRule | None = None,
    need_curvature: bool = False,
    need_w_terms: bool = True,
    need_loss: bool = True,
    x_constants: tuple[float, float] = (0.0, 0.0),
) -> PassResult:
    """One pass over the data: data term, map update and spectra-gradient terms.

    For each block ``b`` of pixels it computes, with ``Y_b = A_b D^T``:

    * the data term at the current iterate (KL: ``sum X log X - X log Y - X + Y``;
      Frobenius: ``1/2 ||X - Y||^2``),
    * the negative/positive parts of the gradient of the data term in ``A_b``
      (KL: ``R_b D`` and ``1^T D`` with ``R = X / Y``; Frobenius: ``X_b D`` and
      ``A_b D^T D``), handed to ``map_rule`` which returns the new ``A_b``
      (written into ``A`` in place),
    * with the new ``A_b``, the negative part of the gradient in ``D``
      (KL: ``R'_b^T A_b``, Frobenius: ``X_b^T A_b``), summed over blocks.

    The two half-steps share one read of each data block while it is in
    cache, no ``(n, p)`` temporary is formed, and the blocks are spread over
    :func:`num_threads` threads (NumPy releases the GIL in its kernels).

    Parameters
    ----------
    X : ndarray or sparse matrix of shape (p, n)
        Data, never written to.
    A : ndarray of shape (p, k)
        Maps, updated in place when ``map_rule`` is given.
    D : ndarray of shape (n, k)
        Spectra in channel space, all entries > 0.
    loss : {"kl", "l2"}
    map_rule : callable, optional
        ``map_rule(rows, negative, positive, curvature) -> new A[rows]``; it
        must only read ``A[rows]`` (other blocks may already be updated).
    need_curvature : bool
        Also hand ``map_rule`` the per-pixel curvature of the data term at the
        current iterate: the largest eigenvalue of its Hessian in the maps
        (KL: ``sum_i X_ij / Y_ij^2 D_i D_i^T``; Frobenius: ``D^T D``).
    need_w_terms, need_loss : bool
        Whether to accumulate the spectra terms / the data term.
    x_constants : (float, float)
        ``(sum X log X, sum X)`` for the KL loss; ``(||X||^2, 0)`` for Frobenius.

    Returns
    -------
    PassResult
    """
    p, n = X.shape
    k = A.shape[1]
    dtype = A.dtype
    col_d = D.sum(axis=0)
    gram_d = D.T @ D if loss == "l2" else None
    # Rows D_i (x) D_i: the KL Hessian of pixel j in its maps is
    # sum_i X_ij / Y_ij^2 D_i D_i^T, i.e. (X/Y^2)_j @ outer_rows reshaped (k, k).
    outer_rows = (
        (D[:, :, None] * D[:, None, :]).reshape(n, k * k)
        if need_curvature and loss == "kl"
        else None
    )
    Dt = np.ascontiguousarray(D.T)
    total = 0.0
    if need_loss and loss == "kl":
        total = x_constants[0] - x_constants[1] + float(col_d @ A.sum(axis=0, dtype=np.float64))
    if need_loss and loss == "l2":
        total = 0.5 * x_constants[0] + 0.5 * float(np.sum((A.T @ A) * gram_d))
    blocks = row_blocks(p, n, np.dtype(dtype).itemsize)

    def run(my_blocks: list[slice]) -> tuple[float, np.ndarray | None]:
        rows_max = max((b.stop - b.start for b in my_blocks), default=0)
        buf_y = np.empty((rows_max, n), dtype=dtype)
        buf_r = np.empty((rows_max, n), dtype=dtype)
        w_neg = np.zeros((n, k), dtype=dtype) if need_w_terms else None
        part = 0.0
        for rows in my_blocks:
            nb = rows.stop - rows.start
            Xb = dense_block(X, rows)
            Ab = A[rows]
            R = None
            if loss == "kl":
                Y = np.matmul(Ab, Dt, out=buf_y[:nb])
                R = buf_r[:nb]
                if need_loss:
                    np.log(Y, out=R)
                    part -= float(np.vdot(Xb, R))
                np.divide(Xb, Y, out=R)
                negative = R @ D
                positive = np.broadcast_to(col_d, negative.shape)
                curvature = None
                if outer_rows is not None:
                    np.divide(R, Y, out=Y)
                    hessians = (Y @ outer_rows).reshape(nb, k, k)
                    curvature = np.linalg.eigvalsh(hessians)[:, -1]
            else:
                negative = Xb @ D
                positive = Ab @ gram_d
                if need_loss:
                    part -= float(np.vdot(Ab, negative))
                curvature = (
                    np.full(nb, np.linalg.eigvalsh(gram_d)[-1], dtype=dtype)
                    if need_curvature
                    else None
                )
            if map_rule is not None:
                A[rows] = map_rule(rows, negative, positive, curvature)
                Ab = A[rows]
                if loss == "kl" and need_w_terms:
                    Y = np.matmul(Ab, Dt, out=buf_y[:nb])
                    R = np.divide(Xb, Y, out=buf_r[:nb])
            if need_w_terms:
                w_neg += (R.T @ Ab) if loss == "kl" else (Xb.T @ Ab)
        return part, w_neg

    threads = min(num_threads(), len(blocks))
    if threads <= 1:
        results = [run(blocks)]
    else:
        with threadpool_limits(1, user_api="blas"):
            results = list(_executor().map(run, [blocks[i::threads] for i in range(threads)]))
    total += sum(part for part, _ in results)
    w_neg = None
    if need_w_terms:
        w_neg = results[0][1]
        for _, other in results[1:]:
            w_neg += other
    return PassResult(data_loss=total if need_loss else None, w_negative=w_neg)


_EXECUTOR: ThreadPoolExecutor | None = None


def num_threads() -> int:
    """Threads used by :func:`data_pass`: ``ESPM_LITE_NUM_THREADS`` or the CPU count."""
    value = os.environ.get("ESPM_LITE_NUM_THREADS")
    if value:
        return max(1, int(value))
    return max(1, min(os.cpu_count() or 1, 16))


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None or _EXECUTOR._max_workers < num_threads():
        _EXECUTOR = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="espm_lite")
    return _EXECUTOR


def grid_laplacian(shape_2d: tuple[int, int], dtype=np.float64) -> sp.csr_matrix:
    """Graph Laplacian of the 4-neighbour grid of ``shape_2d`` (row-major pixels).

    ``L = Deg - Adj``: the number of neighbours on the diagonal (2, 3 or 4) and
    ``-1`` for each neighbour.  Its largest eigenvalue is below 8.

    Parameters
    ----------
    shape_2d : (int, int)
        ``(ny, nx)``.
    dtype : numpy dtype

    Returns
    -------
    scipy.sparse.csr_matrix of shape (ny*nx, ny*nx)
    """
    ny, nx = shape_2d
    index = np.arange(ny * nx).reshape(ny, nx)
    pairs = [
        (index[:, :-1].ravel(), index[:, 1:].ravel()),
        (index[:-1, :].ravel(), index[1:, :].ravel()),
    ]
    rows = np.concatenate([a for a, b in pairs] + [b for a, b in pairs])
    cols = np.concatenate([b for a, b in pairs] + [a for a, b in pairs])
    adjacency = sp.csr_matrix(
        (np.ones(rows.size, dtype=dtype), (rows, cols)), shape=(ny * nx, ny * nx)
    )
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    return (sp.diags(degree.astype(dtype)) - adjacency).tocsr()


#: Bound on the largest eigenvalue of :func:`grid_laplacian` (twice the largest degree).
LAPLACIAN_NORM_BOUND = 8.0


def bisect_multiplier(
    values_at: Callable[[np.ndarray], np.ndarray],
    lower: np.ndarray,
    upper: np.ndarray,
    free: np.ndarray | None,
    tol: float,
    max_iter: int = 200,
) -> np.ndarray:
    """Find, row by row, the multiplier ``nu`` such that ``sum(values_at(nu)) = 1``.

    ``values_at(nu)`` returns an array ``(r, c)`` whose row sums (over the free
    entries) decrease with ``nu`` (one multiplier per row).  The bracket
    ``[lower, upper]`` must satisfy ``sum >= 1`` at ``lower`` and ``sum <= 1``
    at ``upper``; rows where this fails are reported with ``nan``.

    Returns
    -------
    nu : ndarray (r,)
        Multiplier per row, such that ``|sum - 1| <= tol`` (or the bracket has
        collapsed to machine precision).
    """
    lo = lower.astype(np.float64, copy=True)
    hi = upper.astype(np.float64, copy=True)
    mask = 1.0 if free is None else free

    def row_sums(nu):
        return (values_at(nu) * mask).sum(axis=1)

    bad = (row_sums(lo) < 1.0 - tol) | (row_sums(hi) > 1.0 + tol)
    nu = 0.5 * (lo + hi)
    for _ in range(max_iter):
        nu = 0.5 * (lo + hi)
        sums = row_sums(nu)
        err = sums - 1.0
        if np.all((np.abs(err) <= tol) | bad):
            break
        above = err > 0
        lo = np.where(above, nu, lo)
        hi = np.where(above, hi, nu)
    nu = np.where(bad, np.nan, nu)
    return nu


def mu_update(
    current: np.ndarray,
    negative: np.ndarray,
    positive: np.ndarray,
    *,
    floor: float,
    simplex: bool = False,
    free: np.ndarray | None = None,
    tol: float = 1e-5,
) -> np.ndarray:
    """Multiplicative update ``x <- x * negative / (positive + nu)``, floored.

    With ``simplex=True`` one multiplier ``nu`` per row makes every row (its
    ``free`` entries) sum to one: the exact minimiser of the separable
    majoriser on the simplex.  Rows where no multiplier exists (all-zero
    numerator) keep their current values.

    Parameters
    ----------
    current, negative, positive : ndarray (r, c)
        Current value, numerator and denominator terms (``positive > 0``).
    floor : float
        Lower bound of every entry.
    simplex : bool
    free : ndarray of bool (r, c), optional
        Entries that count in the simplex sums (default all).
    tol : float
        Tolerance of the row sums.
    """
    numerator = current * negative
    if not simplex:
        return np.maximum(numerator / positive, floor)

    def values_at(nu):
        return np.maximum(numerator / (positive + _shift(nu, free)), floor)

    pos_free = np.where(free, positive, np.inf) if free is not None else positive
    lower = -pos_free.min(axis=1) * (1 - 1e-12)
    num_free = numerator if free is None else numerator * free
    upper = np.maximum(num_free.sum(axis=1), 0.0) + np.abs(lower) + 1.0
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def quadratic_root_update(
    current: np.ndarray,
    a: float,
    b: np.ndarray,
    c: np.ndarray,
    *,
    floor: float,
    simplex: bool = False,
    free: np.ndarray | None = None,
    tol: float = 1e-5,
) -> np.ndarray:
    """Positive root of ``a x^2 + (b + nu) x - c = 0`` entry by entry, floored.

    ``a >= 0`` and ``c >= 0``.  With ``a = 0`` this is ``c / (b + nu)``.  The
    root is computed in the cancellation-free form ``2c / (b + sqrt(b^2+4ac))``
    when ``b >= 0``.  ``simplex`` and ``free`` as in :func:`mu_update`.
    """

    def values_at(nu):
        bb = b if nu is None else b + _shift(nu, free)
        disc = np.sqrt(bb * bb + 4.0 * a * c)
        with np.errstate(divide="ignore", invalid="ignore"):
            if a > 0:
                root = np.where(bb >= 0, 2.0 * c / (bb + disc), (disc - bb) / (2.0 * a))
            else:
                root = c / bb
        root = np.where(np.isfinite(root), root, floor)
        return np.maximum(root, floor)

    if not simplex:
        return values_at(None)
    b_free = np.where(free, b, np.inf) if free is not None else b
    if a > 0:
        # The root grows without bound as nu -> -inf: expand a bracket.
        lower = -np.abs(b_free).max(axis=1) - 1.0
        for _ in range(200):
            sums = (values_at(lower) * (1.0 if free is None else free)).sum(axis=1)
            if np.all(sums >= 1.0):
                break
            lower = np.where(sums < 1.0, 2.0 * lower - 1.0, lower)
    else:
        lower = -b_free.min(axis=1) * (1 - 1e-12)
    c_free = c if free is None else c * free
    # With b + nu >= sum(c) every root is <= c / sum(c): the sum is <= 1.
    upper = np.abs(b).max(axis=1) + c_free.sum(axis=1) + 1.0
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def projected_step(
    current: np.ndarray,
    gradient: np.ndarray,
    step: np.ndarray,
    *,
    floor: float,
    simplex: bool = False,
    free: np.ndarray | None = None,
    tol: float = 1e-5,
) -> np.ndarray:
    """Gradient step ``x - step * gradient`` projected on ``{x >= floor}``.

    With ``simplex=True`` the projection is the Euclidean projection on
    ``{x >= floor, sum of the free entries of each row = 1}``, found by
    bisection on the shift ``nu`` of ``max(z - nu, floor)``.
    """
    z = current - step * gradient
    if not simplex:
        return np.maximum(z, floor)

    def values_at(nu):
        return np.maximum(z - _shift(nu, free), floor)

    z_free_max = (np.where(free, z, -np.inf) if free is not None else z).max(axis=1)
    z_free_min = (np.where(free, z, np.inf) if free is not None else z).min(axis=1)
    # At nu = min(z) - 1 every free entry is >= 1; at nu = max(z) all are at the floor.
    lower = z_free_min - 1.0
    upper = z_free_max
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def _shift(nu: np.ndarray, free: np.ndarray | None) -> np.ndarray:
    """The multiplier of each row, on its free entries only."""
    return nu[:, None] if free is None else nu[:, None] * free


def _apply_multiplier(values_at, nu: np.ndarray, current: np.ndarray, free=None) -> np.ndarray:
    """Values at the multipliers found, renormalised so the free sums are exactly one.

    The bisection stops within ``tol`` of the constraint; dividing by the sum
    then makes the iterate feasible while changing the majoriser only to
    second order (its gradient at the constrained minimum is normal to the
    simplex), which keeps the objective non-increasing.  Rows without a
    multiplier keep ``current``.
    """
    ok = np.isfinite(nu)
    out = values_at(np.where(ok, nu, 0.0))
    sums = (out if free is None else out * free).sum(axis=1, keepdims=True)
    scale = np.where(sums > 0, 1.0 / np.where(sums > 0, sums, 1.0), 1.0)
    out = out * scale if free is None else np.where(free, out * scale, out)
    out[~ok] = current[~ok]
    return out.astype(current.dtype, copy=False)

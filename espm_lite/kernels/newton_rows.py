r"""Exact row solves of the KL problems by projected Newton steps.

Each row ``x`` (length ``n``) of ``X`` gets the non-negative coefficients
``c`` (length ``k``) that minimise

.. math:: f(c) = s^T c - \sum_j x_j \log (A c)_j
          + \sum_l \mu_l \log(c_l + \epsilon), \qquad c \ge \text{floor},

with ``A`` ``(n, k)`` the fixed basis of the model and ``s`` the linear
coefficients (``s = 1^T A`` for the generalised KL divergence, up to a constant
in ``c``; PNMF uses the column sums of its posterior mean maps). Without the
(concave) sparsity term the problem is convex; its gradient and Hessian are

.. math:: g = s - A^T (x / y) + \mu / (c + \epsilon), \qquad
          H = A^T \operatorname{diag}(x / y^2) A, \qquad y = A c.

Each step solves ``(H_FF + damping diag H_FF) d_F = -g_F`` on the free
coefficients (those not near the floor with a positive gradient; the concave
term's curvature is left out, so the system is positive definite and ``d``
a descent direction), takes ``d_i = -g_i / H_ii`` on the others (Bertsekas'
projected Newton), projects ``c + t d`` on ``c >= floor`` and halves ``t``
until ``f`` decreases. Newton's quadratic convergence makes the result independent
of the start to rounding in a few tens of passes, where multiplicative
updates need hundreds and stop at a start-dependent point. Rows are solved
in blocks, each row on its own; ``k`` is small, so the ``k x k`` systems are
solved in a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import compiled
from ._array_ops import column_sums
from .threads import num_threads, run_parts

#: Rows solved together (bounds the ``rows x n`` temporaries of dense data).
BLOCK_ROWS = 256


@dataclass(frozen=True)
class _Rows:
    """The data of a block of rows: dense ``(b, n)`` or its stored entries."""

    dense: np.ndarray | None
    csr: sp.csr_matrix | None
    local_rows: np.ndarray | None  # row of each stored entry (CSR)
    which: np.ndarray | None = None  # compiled kernels: these rows of ``csr``


def _csr_rows(csr: sp.csr_matrix) -> _Rows:
    """Rows held as their stored entries, with the (block) row of each entry."""
    return _Rows(None, csr, np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr)))


def _block(X, rows: slice, compiled: bool = False) -> _Rows:
    if sp.issparse(X) and compiled:  # the kernels read the rows in place
        block = X[rows]
        return _Rows(None, block, None, np.arange(block.shape[0]))
    if sp.issparse(X):
        return _csr_rows(X[rows])
    return _Rows(np.asarray(X[rows], dtype=np.float64), None, None)


def outer_rows(A: np.ndarray) -> np.ndarray:
    """Rows ``A_j (x) A_j`` ``(n, k*k)``: ``(x / y^2) @ outer_rows(A)`` is the Hessian."""
    return (A[:, :, None] * A[:, None, :]).reshape(A.shape[0], -1)


def _terms(block: _Rows, C, A, s, sparsity, hessian: bool):
    """Objective per row, and (optionally) gradient and Hessian of the block."""
    mu, eps = sparsity
    if block.which is not None:
        f, g, H = compiled.kl_row_terms(block.csr, block.which, C, A, s, hessian)
        if mu is not None:
            f = f + np.log(C + eps) @ mu
            if hessian:
                g = g + mu / (C + eps)
        return f, g, H
    f = C @ s
    if mu is not None:
        f = f + np.log(C + eps) @ mu
    if block.dense is not None:
        Y = C @ A.T
        X = block.dense
        with np.errstate(divide="ignore", invalid="ignore"):
            f = f - np.where(X > 0, X * np.log(Y), 0.0).sum(axis=1)
        if not hessian:
            return f, None, None
        R = np.divide(X, Y, out=np.zeros_like(X), where=X > 0)
        g = s - R @ A
        W = np.divide(R, Y, out=np.zeros_like(R), where=X > 0)
        H = (W @ outer_rows(A)).reshape(-1, A.shape[1], A.shape[1])
    else:
        csr = block.csr
        y = np.einsum("ek,ek->e", C[block.local_rows], A[csr.indices])
        x = csr.data
        f = f - np.bincount(block.local_rows, x * np.log(y), minlength=C.shape[0])
        if not hessian:
            return f, None, None
        ratio = sp.csr_matrix((x / y, csr.indices, csr.indptr), shape=csr.shape)
        g = s - np.asarray(ratio @ A)
        curv = sp.csr_matrix((x / (y * y), csr.indices, csr.indptr), shape=csr.shape)
        H = np.asarray(curv @ outer_rows(A)).reshape(-1, A.shape[1], A.shape[1])
    if mu is not None:
        g = g + mu / (C + eps)
    return f, g, H


def _direction(g, H, free, damping):
    """Bertsekas' projected Newton direction of each row.

    Free coefficients: the damped Newton step ``-(H_FF + damping diag H_FF)^{-1} g_F``.
    Held ones (near the floor, gradient pointing out): the diagonally scaled
    gradient step ``-g_i / H_ii``, which the projection stops at the floor, so
    a coefficient just above the floor still moves down to it.
    """
    k = g.shape[1]
    eye = np.eye(k)
    diag_full = np.diagonal(H, axis1=1, axis2=2)
    scale = np.abs(diag_full).max(axis=1)
    scale = np.where(scale > 0, scale, 1.0)[:, None]  # a row without counts: a linear problem
    mask = free[:, :, None] & free[:, None, :]
    Hf = np.where(mask, H, 0.0)
    shift = damping[:, None] * diag_full + 1e-12 * scale
    Hf = Hf + eye * np.where(free, shift, 1.0)[:, None, :]
    rhs = np.where(free, -g, 0.0)
    try:
        d = np.linalg.solve(Hf, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        d = rhs / np.diagonal(Hf, axis1=1, axis2=2)
    d = np.where(np.isfinite(d), d, rhs)
    held = -g / np.maximum(diag_full, 1e-12 * scale)
    return np.where(free, d, held)


def _line_search(sub, Cb, d, f, A, s, sparsity, floor):
    """Projected steps ``max(c + t d, floor)`` per row: ``t`` halved until ``f`` decreases,
    or doubled while it keeps decreasing when the full step is accepted (the log
    term makes Newton steps from near the floor far too short). Each trial
    evaluates only the rows still searching.
    """

    def value(step, idx):
        part = sub if idx.size == Cb.shape[0] else _subset(sub, idx)
        trial = np.maximum(Cb[idx] + step[idx, None] * d[idx], floor)
        return trial, _terms(part, trial, A, s, sparsity, hessian=False)[0]

    step = np.ones(Cb.shape[0])
    ok = np.zeros(Cb.shape[0], dtype=bool)
    new, best = Cb.copy(), f.copy()
    for _ in range(20):
        idx = np.flatnonzero(~ok)
        trial, f_new = value(step, idx)
        better = f_new <= f[idx] + 1e-12 * np.abs(f[idx])
        chosen = idx[better]
        new[chosen], best[chosen], ok[chosen] = trial[better], f_new[better], True
        if ok.all():
            break
        step[idx[~better]] *= 0.5
    grow = ok & (step == 1.0)
    for _ in range(6):
        idx = np.flatnonzero(grow)
        if idx.size == 0:
            break
        step[idx] *= 2
        trial, f_new = value(step, idx)
        # A longer step must gain more than rounding: near the optimum the
        # doubled Newton step lands on the mirror point, whose value differs
        # from the current one by rounding only, and taking it would oscillate.
        better = f_new < best[idx] - 1e-12 * np.abs(best[idx])
        chosen = idx[better]
        new[chosen], best[chosen] = trial[better], f_new[better]
        grow[idx[~better]] = False
    return new, ok


def _solve_block(block: _Rows, C, A, s, sparsity, floor, max_iter, tol):
    """Projected, damped Newton on the rows of one block (``C`` updated in place).

    The free set leaves out the coefficients within ``eps`` of the floor whose
    gradient is positive, ``eps`` shrinking with the projected gradient
    (Bertsekas' projected Newton). The damping of a row (Levenberg-Marquardt)
    falls tenfold after a successful step and grows tenfold after a failed
    line search, which keeps nearly singular problems moving; a row stops
    when its relative change falls below ``tol`` or no damping helps.
    """
    active = np.ones(C.shape[0], dtype=bool)
    damping = np.full(C.shape[0], 1e-3)
    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        sub = _subset(block, rows)
        Cb = C[rows]
        f, g, H = _terms(sub, Cb, A, s, sparsity, hessian=True)
        projected = np.abs(Cb - np.maximum(Cb - g, floor)).max(axis=1)
        eps = np.minimum(1e-3 * Cb.max(axis=1), projected)
        free = ~((Cb <= floor + eps[:, None]) & (g > 0))
        d = _direction(g, H, free, damping[rows])
        new, ok = _line_search(sub, Cb, d, f, A, s, sparsity, floor)
        damping[rows] = np.where(ok, np.maximum(damping[rows] / 10, 1e-12), damping[rows] * 10)
        change = np.abs(new - Cb).max(axis=1) / np.maximum(new.max(axis=1), 1e-300)
        C[rows] = new
        active[rows] = np.where(ok, change > tol, damping[rows] < 1e12)
    return C


def _subset(block: _Rows, rows: np.ndarray) -> _Rows:
    if block.which is not None:
        return _Rows(None, block.csr, None, block.which[rows])
    if block.dense is not None:
        return _Rows(block.dense[rows], None, None)
    return _csr_rows(block.csr[rows])


def newton_rows(
    X,
    basis: np.ndarray,
    start: np.ndarray,
    *,
    linear: np.ndarray | None = None,
    sparsity: tuple[np.ndarray, float] | None = None,
    floor: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-12,
) -> np.ndarray:
    """Minimise the KL row problems of the module docstring, each row on its own.

    Parameters
    ----------
    X : ndarray or sparse matrix (r, n)
        Non-negative rows.
    basis : ndarray (n, k)
        ``A``, positive.
    start : ndarray (r, k)
        Start (floored); the result does not depend on it beyond rounding.
    linear : ndarray (k,), optional
        ``s``; default the column sums of ``basis``.
    sparsity : (ndarray (k,), float), optional
        ``(mu, epsilon)`` of the log sparsity term.
    floor : float
        Lower bound of the coefficients.
    max_iter : int
        Newton steps per row at most.
    tol : float
        A row stops when its relative change falls below this.

    Returns
    -------
    ndarray (r, k), float64
    """
    A = np.asarray(basis, dtype=np.float64)
    s = column_sums(A) if linear is None else np.asarray(linear, dtype=np.float64)
    mu, eps = (None, 0.0) if sparsity is None else sparsity
    if mu is not None and not np.any(mu > 0):
        mu = None
    terms = (None if mu is None else np.asarray(mu, dtype=np.float64), float(eps))
    # Stored entries only: the log term needs the model where x > 0 (dense data
    # are converted once; faster than full rows even at 50 % density).
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        X.sum_duplicates()
    else:  # compiled, without SciPy's index temporaries
        X = compiled.dense_to_csr(X, np.float64)
    C = np.array(np.maximum(start, floor), dtype=np.float64)
    with_kernels = compiled.use_compiled()
    A = np.ascontiguousarray(A)
    n_rows = C.shape[0]
    blocks = [slice(lo, min(lo + BLOCK_ROWS, n_rows)) for lo in range(0, n_rows, BLOCK_ROWS)]

    def solve(my_blocks: list[slice]) -> None:
        for rows in my_blocks:
            block = _block(X, rows, with_kernels)
            C[rows] = _solve_block(block, C[rows], A, s, terms, floor, max_iter, tol)

    # Rows are independent: the blocks run on the data-pass threads, and the
    # result does not depend on how many there are.
    run_parts(solve, blocks, max(1, min(num_threads(), len(blocks))))
    return C

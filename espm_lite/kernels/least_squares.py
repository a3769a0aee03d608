"""Least-squares solves shared by the Frobenius-loss estimators (SNMF, ConvexNMF).

Every solve goes through the ``k x k`` Gram matrix of the basis with a
Cholesky factorisation (no explicit inverse); rows are solved independently,
so the result for a row never depends on the other rows passed with it.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.optimize import nnls

#: Relative ridge added to a Gram matrix that is numerically singular.
RIDGE = 1e-10


def _cholesky(gram: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor ``R`` of ``gram`` (``gram = R^T R``), ridged if needed."""
    gram = np.asarray(gram, dtype=np.float64)
    scale = max(float(np.trace(gram)) / gram.shape[0], np.finfo(np.float64).tiny)
    ridge = 0.0
    for _ in range(8):
        try:
            return sla.cholesky(gram + ridge * np.eye(gram.shape[0]), lower=False)
        except np.linalg.LinAlgError:
            ridge = RIDGE * scale if ridge == 0 else ridge * 100
    raise np.linalg.LinAlgError("Gram matrix is not positive definite even after a ridge.")


def solve_gram(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``gram^{-1} rhs`` for a symmetric positive (semi-)definite ``gram`` (Cholesky)."""
    R = _cholesky(gram)
    return sla.cho_solve((R, False), np.asarray(rhs, dtype=np.float64))


def coefficients(X, basis: np.ndarray, *, non_negative: bool, l1: float = 0.0) -> np.ndarray:
    r"""Row coefficients ``C`` ``(r, k)`` of ``X ~ C basis^T``, each row on its own.

    Solves, for every row ``x`` of ``X``,

    .. math:: \min_c \tfrac12 \|x - B c\|^2 + \ell_1 \mathbf 1^T c
              \quad (\text{with } c \ge 0 \text{ when ``non_negative``}),

    exactly: through the Cholesky factor ``R`` of ``B^T B`` the problem is the
    ``k``-variable least-squares problem ``||R c - R^{-T}(B^T x - l1)||``;
    rows whose unconstrained solution is already non-negative are done, the
    others go to an active-set NNLS (Lawson-Hanson, :func:`scipy.optimize.nnls`).

    Parameters
    ----------
    X : ndarray or sparse matrix (r, n)
    basis : ndarray (n, k)
    non_negative : bool
    l1 : float, default=0
        L1 weight (only with ``non_negative``; it is then linear).
    """
    basis = np.asarray(basis, dtype=np.float64)
    rhs = np.asarray(X @ basis, dtype=np.float64) - l1  # (r, k): B^T x - l1, per row
    R = _cholesky(basis.T @ basis)
    reduced = sla.solve_triangular(R, rhs.T, trans="T", lower=False)  # R^{-T} rhs^T, (k, r)
    C = sla.solve_triangular(R, reduced, lower=False).T  # unconstrained solution
    if non_negative:
        for i in np.flatnonzero((C < 0).any(axis=1)):
            C[i] = nnls(R, reduced[:, i])[0]
    return C


def frobenius_from_products(
    x_norm2: float, XD: np.ndarray, A: np.ndarray, gram_D: np.ndarray
) -> float:
    r"""``½ ||X - A D^T||^2`` from products the updates already have.

    ``½||X||^2 - <A, X D> + ½ <A^T A, D^T D>``, with ``XD = X D`` ``(p, k)``.
    Clipped at zero (the expansion can round below it at an exact fit).
    """
    value = 0.5 * x_norm2 - float(np.vdot(A, XD)) + 0.5 * float(np.vdot(A.T @ A, gram_D))
    return max(value, 0.0)


def spectral_norm2(X, *, rtol: float = 1e-6, max_iter: int = 500) -> float:
    """``sigma_max(X)^2`` (dense or sparse) by power iteration from a fixed start.

    Deterministic (same value on every call), returned with a 1 % margin so
    that it bounds the true value as a Lipschitz constant must.
    """
    v = np.ones(X.shape[1], dtype=np.float64) / np.sqrt(X.shape[1])
    value = 0.0
    for _ in range(max_iter):
        w = np.asarray(X.T @ np.asarray(X @ v)).ravel()
        new = float(np.linalg.norm(w))
        if new == 0:
            return 0.0
        v = w / new
        if abs(new - value) <= rtol * new:
            break
        value = new
    return 1.01 * new

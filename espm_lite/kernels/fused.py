r"""The sparse KL pass with the map update inside one compiled loop.

:func:`~espm_lite.kernels.data_pass` on CSR data with the compiled engine
runs, per block of rows, :func:`~espm_lite.kernels.compiled.kl_map_terms`
(the model at the stored entries and ``R_b D``), the map rule in NumPy, then
:func:`~espm_lite.kernels.compiled.kl_spectra_terms` (``R'^T_b A'_b`` with the
new maps). When the rule is the multiplicative update of
:class:`MultiplicativeMapRule` (SmoothNMF's default ``"log_surrogate"``,
without simplex or fixed maps), :func:`kl_fused_map_update` does all three row
by row in one loop: the row of data is read twice while it is in cache and no
Python runs between the halves. A SmoothNMF iteration on a 100x400x3746 map at
15 counts/pixel (``k = 2``) went from 10.3 to 8.1 ms, on 256x256x2048 at 50
counts/pixel (``k = 4``) from 40.6 to 28.8 ms (2 cores,
``benchmarks/bench_sparse.py --only speed``).

The arithmetic is that of the separate kernels and of the NumPy rule, in the
same order (no fused multiply-add), so the iterates are the same to rounding.
The data term ``\sum_e x_e \log y_e`` is taken in the same loop, with one
logarithm per run of equal data values (:data:`LOG_GROUP`): at low counts
most stored entries are ones, and a logarithm costs as much as the rest of
the pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .compiled import UNROLLED_MAX_K, _numba

#: Consecutive stored entries with the same value ``x`` share one logarithm,
#: ``sum_e x log y_e = x log prod_e y_e``, over runs of at most this many entries.
#: Each product stays in ``PRODUCT_RANGE`` (factors in ``FACTOR_RANGE``; others get
#: their own logarithm), so it cannot overflow or underflow; its relative rounding,
#: at most ``LOG_GROUP`` ulps, is an absolute error of the same size in the logarithm.
LOG_GROUP = 64
FACTOR_RANGE = (2.0**-400, 2.0**400)
PRODUCT_RANGE = (2.0**-500, 2.0**500)


@dataclass(frozen=True)
class MultiplicativeMapRule:
    r"""A multiplicative map update that :func:`kl_fused_map_update` runs inside the pass.

    With ``n_r = (R_b D)_r`` the negative part of the gradient of the data
    term in row ``r`` of the maps, the row becomes

    .. math:: A_r \leftarrow \max\Big(\frac{A_r (n_r + p)}{1^T D + s_r
              + \mu / (A_r + \epsilon) + p}, \text{floor}\Big),

    each term present only when its attribute is not None (the log-surrogate
    rule of :class:`espm_lite.solvers.smooth_kl.SmoothKL` without simplex or
    fixed maps). Arrays and scalars are of the fit's float type.

    Attributes
    ----------
    smoothing : ndarray (p, k) or None
        ``s = lambda_L Delta A`` at the maps before the pass, every row.
    proximal : ndarray (k,) or None
        ``p``, the proximal term of the Laplacian surrogate.
    mu : ndarray (k,) or None
        Sparsity strengths.
    epsilon, floor : scalars
    """

    smoothing: np.ndarray | None
    proximal: np.ndarray | None
    mu: np.ndarray | None
    epsilon: np.floating
    floor: np.floating

    def arguments(self, rows: slice) -> tuple:
        """The kernel's arguments of the rule for the block of rows ``rows``."""
        smoothing = None if self.smoothing is None else self.smoothing[rows]
        return (smoothing, self.proximal, self.mu, self.epsilon, self.floor)


def _add_log(log_sum, product, factors, x_group, x, y):
    """``x log y`` added to the running ``(log_sum, product, factors, x_group)``."""
    if x != x_group or factors == LOG_GROUP:
        if factors:
            log_sum += x_group * np.log(product)
        product, factors, x_group = 1.0, 0, x
    if FACTOR_RANGE[0] < y < FACTOR_RANGE[1]:
        product *= y
        factors += 1
        if not PRODUCT_RANGE[0] < product < PRODUCT_RANGE[1]:
            log_sum += x_group * np.log(product)
            product, factors = 1.0, 0
    else:
        log_sum += x * np.log(y)
    return log_sum, product, factors, x_group


def _fused_kernel(k: int | None, add_log):
    """The kernel for ``k`` phases (None: any number), as in :mod:`.compiled`."""

    def fused_map_update(
        indptr, cols, values, A, D, col_d, smoothing, proximal, mu, epsilon, floor, w_negative, loss
    ):
        nb = A.shape[0]
        n_phases = A.shape[1] if k is None else k
        negative = np.zeros(n_phases, dtype=A.dtype)
        new = np.zeros(n_phases, dtype=A.dtype)
        logs = (0.0, 1.0, 0, 0.0)  # sum x log y so far, the open run's product, size, x
        for r in range(nb):
            negative[:] = 0
            for e in range(indptr[r], indptr[r + 1]):  # the model and R_b D, as map_terms
                c = cols[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                if loss:
                    logs = add_log(*logs, np.float64(values[e]), np.float64(s))
                t = values[e] / s
                for j in range(n_phases):
                    negative[j] += t * D[c, j]
            for j in range(n_phases):  # the rule, in the order of the NumPy path
                numerator, denominator = negative[j], col_d[j]
                if smoothing is not None:
                    extra = smoothing[r, j]
                    if mu is not None:
                        extra += mu[j] / (A[r, j] + epsilon)
                    denominator += extra
                elif mu is not None:
                    denominator += mu[j] / (A[r, j] + epsilon)
                if proximal is not None:
                    numerator += proximal[j]
                    denominator += proximal[j]
                value = (A[r, j] * numerator) / denominator
                new[j] = value if (value >= floor or value != value) else floor  # NaN kept
            A[r, :] = new
            for e in range(indptr[r], indptr[r + 1]):  # R'_b^T A'_b, as spectra_terms
                c = cols[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                t = values[e] / s
                for j in range(n_phases):
                    w_negative[c, j] += t * A[r, j]
        log_sum, product, factors, x_group = logs
        return log_sum + x_group * np.log(product) if factors else log_sum

    return fused_map_update


@cache
def _compiled(k: int | None):
    numba = _numba()
    add_log = numba.njit(nogil=True, cache=True)(_add_log)
    return numba.njit(nogil=True, cache=True)(_fused_kernel(k, add_log))


def kl_fused_map_update(
    block, A_b, D, col_d, rule: MultiplicativeMapRule, w_negative, need_loss: bool
) -> float:
    r"""One block of the pass with the map update inside; returns ``\sum_e x_e \log y_e``.

    Row by row: the model and ``(R_b D)_r`` as
    :func:`~espm_lite.kernels.compiled.kl_map_terms`, the new row by ``rule``
    (written into ``A_b``), then ``R'^T A'`` of the new row added to
    ``w_negative`` as :func:`~espm_lite.kernels.compiled.kl_spectra_terms`.
    The logarithms (only with ``need_loss``; otherwise 0 is returned) are
    taken in float64, one per run of equal data values.

    Parameters
    ----------
    block : SparseRowBlock
    A_b : ndarray (nb, k), C-ordered
        Maps of the block's rows, updated in place.
    D : ndarray (n, k), C-ordered
        Spectra in channel space, all entries > 0.
    col_d : ndarray (k,)
        Column sums of ``D``.
    rule : MultiplicativeMapRule
    w_negative : ndarray (n, k)
        ``R'^T A'`` is added to it.
    need_loss : bool
    """
    m = block.matrix
    k = A_b.shape[1]
    kernel = _compiled(k if k <= UNROLLED_MAX_K else None)
    arguments = rule.arguments(block.rows)
    return kernel(m.indptr, m.indices, m.data, A_b, D, col_d, *arguments, w_negative, need_loss)

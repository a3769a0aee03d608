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
15 counts/pixel (``k = 2``) went from 9.3 to 7.5 ms, 10.3 to 7.8 ms with
``lambda_L=1`` (medians of three interleaved runs, 2 cores; see the README's
performance section). At 50 counts/pixel and ``k = 4`` the change is within the noise.

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
#: A run starts at any entry and grows only by factors in ``FACTOR_RANGE`` while its
#: product is in ``PRODUCT_RANGE`` (otherwise a new run starts), so the product cannot
#: overflow or underflow; its relative rounding, at most ``LOG_GROUP`` ulps, is an
#: absolute error of the same size in the logarithm.
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


def _fused_kernel(k: int | None):
    """The kernel for ``k`` phases (None: any number), as in :mod:`.compiled`."""

    def fused_map_update(
        indptr, cols, values, A, D, col_d, smoothing, proximal, mu, epsilon, floor, w_negative, loss
    ):
        nb = A.shape[0]
        n_phases = A.shape[1] if k is None else k
        negative = np.zeros(n_phases, dtype=A.dtype)
        new = np.zeros(n_phases, dtype=A.dtype)
        log_sum, product, run, x_run = 0.0, 1.0, 0, 0.0  # the open run: x_run log(product)
        for r in range(nb):
            negative[:] = 0
            for e in range(indptr[r], indptr[r + 1]):  # the model and R_b D, as map_terms
                c = cols[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                if loss:  # extend the run, or close it and start one at this entry
                    x, y = np.float64(values[e]), np.float64(s)
                    if (
                        x == x_run
                        and run < LOG_GROUP
                        and FACTOR_RANGE[0] < y < FACTOR_RANGE[1]
                        and PRODUCT_RANGE[0] < product < PRODUCT_RANGE[1]
                    ):
                        product, run = product * y, run + 1
                    else:
                        log_sum += x_run * np.log(product)
                        product, run, x_run = y, 1, x
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
        return log_sum + x_run * np.log(product)

    return fused_map_update


@cache
def _compiled(k: int | None):
    return _numba().njit(nogil=True, cache=True)(_fused_kernel(k))


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

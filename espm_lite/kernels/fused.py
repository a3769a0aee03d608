r"""The KL pass with the map update inside one compiled loop (CSR and dense rows).

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

:func:`kl_fused_dense_update` runs the same loop on dense float64 rows, over
their non-zero entries only, where the NumPy dense path takes a logarithm and
a division at every entry, zeros included. On an 80x80x1980 map forced onto
the dense path an iteration went from 108-113 ms to 22, 39 and 63 ms at 500,
1500 and 5000 counts/pixel (one run; the sparse path's time at each density;
see the README). Dense float32 data stay with NumPy,
whose float32 logarithm is vectorised. Masked fits run the same kernels with
the positive part of the gradient over the observed entries
(:func:`run_block`).

The arithmetic is that of the separate kernels and of the NumPy rule, in the
same order (no fused multiply-add), so the iterates are the same to rounding
(the dense NumPy path sums ``R D`` by BLAS, in its own order). The data term
``\sum_e x_e \log y_e`` is taken in the same loop with few logarithms
(:data:`LOG_GROUP`, :data:`LOG_BUCKETS`): at low counts most entries are
ones, and a logarithm costs as much as the rest of the pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from .compiled import UNROLLED_MAX_K, jit
from .missing import MissingEntries, map_terms
from .sparse_data import SparseRowBlock

#: The data term ``sum_e x_e log y_e`` takes few logarithms: a run of consecutive
#: entries with the same value ``x`` multiplies its model values, ``x log prod_e y_e``
#: (at most ``LOG_GROUP`` factors, each in ``FACTOR_RANGE``, while the product is in
#: ``PRODUCT_RANGE``); a closed run whose ``x`` is a small whole number (``0 < x <
#: LOG_BUCKETS``: the counts of count data) joins the open product of all runs of that
#: ``x`` (at most ``LOG_GROUP`` runs), otherwise it takes its logarithm. Products are
#: checked before they grow, so they cannot overflow or underflow; their relative
#: rounding, at most ``LOG_GROUP * (LOG_GROUP + 1)`` ulps, is an absolute error of the
#: same size (below 1e-12) in the logarithm.
LOG_BUCKETS = 64
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


def _fused_kernel(k: int | None, dense: bool):
    """The kernel for ``k`` phases (None: any number), as in :mod:`.compiled`.

    ``values`` are CSR (``indptr``, ``cols``) or, ``dense``, flattened C-ordered rows
    (a constant of the compiled code), whose non-zero columns are listed first."""

    def fused_map_update(
        indptr, cols, values, A, D, positive, smoothing, proximal, mu, epsilon, floor,
        w_negative, loss,
    ):  # fmt: skip
        nb, n_cols = A.shape[0], D.shape[0]
        n_phases = A.shape[1] if k is None else k
        negative = np.zeros(n_phases, dtype=A.dtype)
        new = np.zeros(n_phases, dtype=A.dtype)
        listed = np.empty(n_cols if dense else 0, dtype=np.int64)  # non-zero columns
        products = np.ones(LOG_BUCKETS, dtype=np.float64)  # open, per small whole count
        sizes = np.zeros(LOG_BUCKETS, dtype=np.int64)
        log_sum, product, run, x_run = 0.0, 1.0, 0, 0.0  # the open run: x_run log(product)
        for r in range(nb):
            negative[:] = 0
            start, stop = (0, 0) if dense else (indptr[r], indptr[r + 1])
            for c in range(n_cols if dense else 0):
                listed[stop] = c
                stop += values[r * n_cols + c] != 0
            for e in range(start, stop):  # the model and R_b D, as map_terms
                c = listed[e] if dense else cols[e]
                x = values[r * n_cols + c] if dense else values[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                if loss:  # extend the run, or close it and start one at this entry
                    xf, y = np.float64(x), np.float64(s)
                    open_ok = PRODUCT_RANGE[0] < product < PRODUCT_RANGE[1]
                    grows = run < LOG_GROUP and open_ok and FACTOR_RANGE[0] < y < FACTOR_RANGE[1]
                    if xf == x_run and grows:
                        product, run = product * y, run + 1
                    else:  # the run joins the product of bucket x_run, or takes its log
                        b = int(x_run) if 0.0 < x_run < LOG_BUCKETS else 0
                        if b > 0 and b == x_run and open_ok:
                            held, size = products[b], sizes[b]
                            if size == LOG_GROUP or not PRODUCT_RANGE[0] < held < PRODUCT_RANGE[1]:
                                log_sum, held, size = log_sum + x_run * np.log(held), 1.0, 0
                            products[b], sizes[b] = held * product, size + 1
                        else:
                            log_sum += x_run * np.log(product)
                        product, run, x_run = y, 1, xf
                t = x / s
                for j in range(n_phases):
                    negative[j] += t * D[c, j]
            for j in range(n_phases):  # the rule, in the order of the NumPy path
                numerator, denominator = negative[j], positive[r, j]
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
            for e in range(start, stop):  # R'_b^T A'_b, as spectra_terms
                c = listed[e] if dense else cols[e]
                x = values[r * n_cols + c] if dense else values[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                t = x / s
                for j in range(n_phases):
                    w_negative[c, j] += t * A[r, j]
        log_sum += x_run * np.log(product)
        for b in range(1, LOG_BUCKETS):
            log_sum += b * np.log(products[b]) if sizes[b] > 0 else 0.0
        return log_sum

    return fused_map_update


@cache
def _compiled(k: int | None, dense: bool):
    return jit(_fused_kernel(k, dense))


def kl_fused_map_update(
    block, A_b, D, positive, rule: MultiplicativeMapRule, w_negative, need_loss: bool
) -> float:
    r"""One block of the pass with the map update inside; returns ``\sum_e x_e \log y_e``.

    Row by row: the model and ``(R_b D)_r`` as
    :func:`~espm_lite.kernels.compiled.kl_map_terms`, the new row by ``rule``
    (written into ``A_b``), then ``R'^T A'`` of the new row added to
    ``w_negative`` as :func:`~espm_lite.kernels.compiled.kl_spectra_terms`.
    The logarithms (only with ``need_loss``; otherwise 0 is returned) are
    taken in float64, few of them (:data:`LOG_GROUP`).

    Parameters
    ----------
    block : SparseRowBlock
    A_b : ndarray (nb, k), C-ordered
        Maps of the block's rows, updated in place.
    D : ndarray (n, k), C-ordered
        Spectra in channel space, all entries > 0.
    positive : ndarray (k,) or (nb, k)
        The positive part of the gradient of the data term in the maps: the
        column sums of ``D``, or per row (masked fits,
        :func:`espm_lite.kernels.missing.map_terms`).
    rule : MultiplicativeMapRule
    w_negative : ndarray (n, k)
        ``R'^T A'`` is added to it.
    need_loss : bool
    """
    m = block.matrix
    return _run(
        block.rows, A_b, D, positive, rule, w_negative, need_loss, m.indptr, m.indices, m.data
    )


def kl_fused_dense_update(
    X_b, rows: slice, A_b, D, positive, rule: MultiplicativeMapRule, w_negative, need_loss: bool
) -> float:
    r""":func:`kl_fused_map_update` for the dense block ``X_b`` of rows ``rows``.

    The loop is the same, over the non-zero entries of each row, listed
    first: the data are read once per pass, and the zeros, which add nothing
    to ``R D``, ``R^T A`` or ``\sum x \log y``, cost no division or logarithm.

    Parameters
    ----------
    X_b : ndarray (nb, n)
        Dense rows of data (any layout; C-ordered rows are read fastest).
    rows : slice
        The rows of ``X_b`` in the whole data (for ``rule``'s smoothing term).
    A_b, D, positive, rule, w_negative, need_loss
        As in :func:`kl_fused_map_update`.
    """
    values = np.ascontiguousarray(X_b).reshape(-1)
    return _run(rows, A_b, D, positive, rule, w_negative, need_loss, None, None, values)


def _run(rows, A_b, D, positive, rule, w_negative, need_loss, indptr, cols, values) -> float:
    """The kernel on CSR rows (``indptr``, ``cols``, ``values``) or dense ones (``cols`` None)."""
    k = A_b.shape[1]
    dense = cols is None
    kernel = _compiled(k if k <= UNROLLED_MAX_K else None, dense)
    if dense:
        indptr = cols = np.empty(0, dtype=np.int64)
    positive = np.broadcast_to(positive, A_b.shape)
    arguments = (A_b, D, positive, *rule.arguments(rows), w_negative, need_loss)
    return kernel(indptr, cols, values, *arguments)


def run_block(
    block,
    rows: slice,
    A,
    D,
    col_d,
    rule: MultiplicativeMapRule,
    w_negative,
    need_loss: bool,
    missing: MissingEntries | None = None,
    missing_sums: np.ndarray | None = None,
) -> float:
    r"""One block of rows by the fused kernel; returns its part of the data term.

    ``block`` is a :class:`~espm_lite.kernels.SparseRowBlock` or the dense rows
    ``rows`` of the data; the maps ``A[rows]`` are updated in place and the
    block's ``R'^T A'`` is added to ``w_negative``. The data-term part is
    ``-\sum_e x_e \log y_e`` (0 without ``need_loss``). With ``missing``
    (no row entirely missing), the positive part of the map gradient and the
    data term are those of the observed entries
    (:func:`espm_lite.kernels.missing.map_terms`); what the missing entries
    remove from the spectra's gradient is left to the caller, at the updated maps.
    ``missing_sums``: :func:`espm_lite.kernels.missing.pattern_sums` of ``D``, if any.
    """
    A_b = np.ascontiguousarray(A[rows])
    positive, part = col_d, 0.0
    if missing is not None:
        unmasked = np.broadcast_to(col_d, A_b.shape)
        _, positive, part = map_terms(missing, rows, A_b, D, "kl", unmasked, unmasked, missing_sums)
    if isinstance(block, SparseRowBlock):
        log_sum = kl_fused_map_update(block, A_b, D, positive, rule, w_negative, need_loss)
    else:
        log_sum = kl_fused_dense_update(block, rows, A_b, D, positive, rule, w_negative, need_loss)
    if not np.shares_memory(A_b, A):
        A[rows] = A_b
    return part - log_sum

r"""Missing entries of the data: the one correction that masked fits apply.

A fit with a mask minimises the data term over the *observed* entries only.
With ``M`` the indicator of the observed entries (1 observed, 0 missing) and
the data set to zero at the missing entries (:func:`zero_missing`), the
generalised Kullback-Leibler term is

.. math::

    D_M(X \| Y) = \sum_{ij} M_{ij}\Big(X_{ij}\log\frac{X_{ij}}{Y_{ij}} - X_{ij} + Y_{ij}\Big)
    = \underbrace{\sum_{ij} \Big(X_{ij}\log\frac{X_{ij}}{Y_{ij}} - X_{ij}
      + Y_{ij}\Big)}_{\text{unmasked pass}} - \sum_{(i,j)\ \text{missing}} Y_{ij},

because the terms in ``X`` vanish where ``X`` is zero. The same holds for the
gradients: in the maps (pixels ``i`` as rows, ``Y = A D^T``) the negative part
``R D`` (``R = X / Y``) is unchanged and the positive part becomes

.. math:: (M D)_{i l} = \sum_j D_{jl} - \sum_{j\ \text{missing in row}\ i} D_{jl},

and in the spectra ``M^T A = \mathbf 1 (\mathbf 1^T A) - \bar M^T A`` with
``\bar M = 1 - M`` the missing entries. The Frobenius term
``1/2 \sum M (X - Y)^2`` loses ``1/2 \sum_{missing} Y^2`` and its positive
parts ``A D^T D`` and ``D A^T A`` lose ``(\bar M \odot Y) D`` and
``(\bar M \odot Y)^T A``. Each correction is a product of the sparse pattern of
the missing entries with a factor: ``O(missing \cdot k)`` per pass, so the
sparse path stays sparse and the unmasked pass is not changed.

Rows or columns with no observed entry (a dead pixel, a dead channel) have no
data term at all; there the correction is replaced by *imputation with the
current model* (their negative part set equal to their positive part), which
keeps their values unless a regulariser moves them and is still a descent
step (the added term ``KL(Y_{current} \| Y)`` is minimal at the current
iterate). Rows or columns that are mostly missing are summed over their
observed entries directly, instead of as a difference of two near-equal sums.

Everything mask-specific lives in this module: the pass over the data
(:mod:`espm_lite.kernels.data_pass`) calls :func:`map_terms` (for its compiled
blocks through :func:`espm_lite.kernels.fused.run_block`) and
:func:`spectra_removed` once per block, and the ``W`` update calls
:func:`spectra_terms`. NumPy only. The KL corrections are products of the
indicator with a factor (``\bar M_b D``, ``\bar M_b^T A_b``): when the rows fall into
few patterns of missing columns they are made once per pattern
(:attr:`MissingEntries.patterns`), otherwise entry by entry, in compiled loops with the
compiled engine (:func:`espm_lite.kernels.compiled.indicator_times`). A 10 % speckle of
held-out entries on an 80x80x1980 map at 100 counts/pixel has 2.4 times as many
missing entries as stored counts: entry by entry, the corrections cost as much as the
rest of the pass.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import compiled as _compiled


class MissingEntries:
    """The missing entries of a ``(p, n)`` data matrix (internal layout).

    Parameters
    ----------
    indicator : sparse matrix (p, n)
        Stored entries are the missing ones (their values are ignored).
    dtype : float dtype of the fit

    Attributes
    ----------
    csr : csr_matrix (p, n)
        Ones at the missing entries.
    n_missing : int
    empty_rows, empty_cols : ndarray of bool (p,), (n,)
        Rows / columns with no observed entry.
    heavy_rows, heavy_cols : ndarray of bool (p,), (n,)
        Rows / columns with more missing than observed entries (summed over
        their observed entries directly).
    row_pattern : ndarray of int (p,) or None
        When rows repeat their missing columns (a dead channel, the held-out
        folds of :mod:`espm_lite.model_selection`) in few patterns (at most
        ``p / SHARED_ROWS``): the pattern of each row, ``patterns`` holding one
        row per pattern (CSR ``(u, n)``). The KL corrections are then made per
        pattern, in ``O(u m k + p k)`` per pass (``m`` missing columns per
        pattern) instead of ``O(missing k)``. None otherwise.
    patterns : csr_matrix (u, n) or None
    compiled : bool
        Whether the KL corrections run the compiled kernels
        (:func:`~espm_lite.kernels.compiled.indicator_times`; the engine in force
        when the fit starts, as for its passes), else SciPy's sparse products.
    """

    def __init__(self, indicator, dtype):
        csr = sp.csr_matrix(indicator, copy=True)
        csr.sum_duplicates()
        csr.data = np.ones(csr.nnz, dtype=dtype)
        self.csr = csr
        p, n = csr.shape
        self.n_missing = int(csr.nnz)
        per_row = np.diff(csr.indptr)
        per_col = np.bincount(csr.indices, minlength=n)
        self.empty_rows = per_row == n
        self.empty_cols = per_col == p
        self.heavy_rows = 2 * per_row > n
        self.heavy_cols = 2 * per_col > p
        self.compiled = _compiled.use_compiled()
        self.row_pattern, self.patterns = _shared_rows(csr)
        self._heavy_col_observed = (
            np.asarray(1 - csr[:, np.flatnonzero(self.heavy_cols)].toarray(), dtype=dtype)
            if self.heavy_cols.any()
            else None
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.csr.shape

    @property
    def n_observed(self) -> int:
        return self.shape[0] * self.shape[1] - self.n_missing

    def block(self, rows: slice) -> sp.csr_matrix:
        """The missing entries of rows ``rows`` (a CSR view, no copy of the indices)."""
        csr = self.csr
        lo, hi = csr.indptr[rows.start], csr.indptr[rows.stop]
        indptr = csr.indptr[rows.start : rows.stop + 1] - lo
        return sp.csr_matrix(
            (csr.data[lo:hi], csr.indices[lo:hi], indptr),
            shape=(rows.stop - rows.start, csr.shape[1]),
            copy=False,
        )


#: Rows are grouped by missing pattern when there are at most ``p / SHARED_ROWS`` patterns.
SHARED_ROWS = 8


def _shared_rows(csr: sp.csr_matrix) -> tuple[np.ndarray | None, sp.csr_matrix | None]:
    """``(row_pattern, patterns)`` of the rows of ``csr`` grouped by their stored columns,
    or ``(None, None)`` when there are more than ``p / SHARED_ROWS`` patterns.

    Rows are grouped by a random 64-bit hash of their columns (sums of random words,
    modulo 2^64) and the grouping is then checked entry by entry (lengths included),
    so it is exact.
    """
    p, n = csr.shape
    if p < SHARED_ROWS or csr.nnz == 0:
        return None, None
    words = (
        np.random.default_rng(0)
        .integers(
            np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64, endpoint=True
        )
        .view(np.uint64)
    )
    sums = np.zeros(csr.nnz + 1, dtype=np.uint64)
    np.cumsum(words[csr.indices], dtype=np.uint64, out=sums[1:])
    keys = sums[csr.indptr[1:]] - sums[csr.indptr[:-1]]
    _, first, row_pattern = np.unique(keys, return_index=True, return_inverse=True)
    if first.size * SHARED_ROWS > p:
        return None, None
    row_pattern = row_pattern.ravel()
    patterns = csr[first]
    patterns.sort_indices()
    expanded = patterns[row_pattern]
    expanded.sort_indices()
    csr_sorted = csr if csr.has_sorted_indices else csr.sorted_indices()
    if not np.array_equal(expanded.indptr, csr_sorted.indptr) or not np.array_equal(
        expanded.indices, csr_sorted.indices
    ):
        return None, None  # a hash collision (about 2^-64 per pair of rows)
    return row_pattern, patterns


def pattern_sums(missing: MissingEntries, D, loss: str) -> np.ndarray | None:
    """``patterns @ D`` (``(u, k)``: the spectra summed over each pattern's missing
    columns) for :func:`map_terms`, once per pass; None without shared patterns or
    for the Frobenius loss (whose corrections weigh each entry by the model)."""
    if missing.patterns is None or loss != "kl":
        return None
    return _times(missing, missing.patterns, D, loss)


def _model_values(block: sp.csr_matrix, Ab: np.ndarray, D: np.ndarray) -> sp.csr_matrix:
    """``Y = A_b D^T`` at the stored entries of ``block``, as a CSR matrix of that pattern."""
    local_rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    values = np.einsum("ek,ek->e", Ab[local_rows], D[block.indices])
    return sp.csr_matrix((values, block.indices, block.indptr), shape=block.shape, copy=False)


def map_terms(
    missing: MissingEntries, rows: slice, Ab, D, loss: str, negative, positive, sums=None
):
    """The map-gradient terms and the loss part of one block of rows, masked.

    Parameters
    ----------
    missing : MissingEntries
    rows : slice
        The block's rows.
    Ab : ndarray (rows, k)
        Maps of the block at the iterate the pass evaluates.
    D : ndarray (n, k)
    loss : {"kl", "l2"}
    negative, positive : ndarray (rows, k)
        The unmasked terms of the pass (``R D`` and ``1^T D``, or ``X D`` and
        ``A D^T D``); ``X`` is zero at the missing entries.
    sums : ndarray (u, k) or None
        :func:`pattern_sums` of ``D`` (KL, rows in shared patterns).

    Returns
    -------
    negative, positive : ndarray (rows, k)
        The terms over the observed entries.
    loss_part : float
        What the missing entries add to the unmasked data term (``-sum Y`` or
        ``-1/2 sum Y^2``).
    """
    if sums is not None:  # KL, rows in shared patterns: no per-entry work
        removed = sums[missing.row_pattern[rows]]
        loss_part = -float(np.vdot(Ab, removed))
    else:
        block = missing.block(rows)
        weights = block if loss == "kl" else _model_values(block, Ab, D)
        removed = _times(missing, weights, D, loss)
        loss_part = (
            -float(np.vdot(Ab, removed))
            if loss == "kl"
            else -0.5 * float(weights.data @ weights.data)
        )
    new_positive = np.maximum(positive - removed, 0)
    heavy = np.flatnonzero(missing.heavy_rows[rows])
    if heavy.size:
        observed = 1 - missing.block(rows)[heavy].toarray()
        if loss == "l2":
            observed *= Ab[heavy] @ D.T
        new_positive[heavy] = observed @ D
    empty = np.flatnonzero(missing.empty_rows[rows])
    if empty.size:  # no data: imputation with the current model
        new_positive[empty] = positive[empty]
        negative = np.array(negative, copy=True)
        negative[empty] = positive[empty]
    return negative, new_positive, loss_part


def spectra_removed(missing: MissingEntries, rows: slice, Ab, D, loss: str) -> np.ndarray:
    """The part of the spectra's positive gradient term the block's missing entries remove.

    ``\\bar M_b^T A_b`` (KL) or ``(\\bar M \\odot Y)_b^T A_b`` (Frobenius), ``(n, k)``,
    with ``A_b`` the block's updated maps. For KL with rows in shared patterns, the
    ``(u, k)`` sums of ``A_b`` over the rows of each pattern instead: the sum of these
    over the blocks is made ``(n, k)`` once by :func:`removed_total`.
    """
    if loss == "kl" and missing.patterns is not None:
        which = missing.row_pattern[rows]
        u = missing.patterns.shape[0]
        return np.stack(
            [np.bincount(which, weights=Ab[:, j], minlength=u) for j in range(Ab.shape[1])],
            axis=1,
        ).astype(Ab.dtype, copy=False)
    block = missing.block(rows)
    if loss == "kl":
        return _times_transposed(missing, block, Ab)
    return np.asarray(_model_values(block, Ab, D).T @ Ab)


def removed_total(missing: MissingEntries, total, loss: str) -> np.ndarray:
    """The ``(n, k)`` spectra term of the sum of :func:`spectra_removed` over the blocks."""
    if loss == "kl" and missing.patterns is not None:
        return _times_transposed(missing, missing.patterns, total)
    return total


def _times_transposed(missing: MissingEntries, indicator: sp.csr_matrix, A) -> np.ndarray:
    """``indicator.T @ A`` for an indicator (all ones): compiled, else SciPy's product."""
    if missing.compiled:
        return _compiled.indicator_transpose_times(indicator, A)
    return np.asarray(indicator.T @ A)


def _times(missing: MissingEntries, weights: sp.csr_matrix, D, loss: str) -> np.ndarray:
    """``weights @ D``: compiled for the KL indicator (all ones), else SciPy's product."""
    if loss == "kl" and missing.compiled:
        return _compiled.indicator_times(weights, D)
    return np.asarray(weights @ D)


def spectra_terms(missing: MissingEntries, negative, positive, removed, A, D, loss: str):
    """The spectra-gradient terms ``(negative, positive)`` in channel space, masked.

    ``negative`` is ``R^T A`` (``X^T A``) of the pass, ``positive`` the
    unmasked positive part (``1 (1^T A)`` or ``D A^T A``, ``(n, k)``) and
    ``removed`` the sum of :func:`spectra_removed` over the blocks.
    """
    new_positive = np.maximum(positive - removed, 0)
    heavy = np.flatnonzero(missing.heavy_cols)
    if heavy.size:
        observed = missing._heavy_col_observed  # (p, n_heavy)
        if loss == "l2":
            observed = observed * (A @ D[heavy].T)
        new_positive[heavy] = observed.T @ A
    empty = np.flatnonzero(missing.empty_cols)
    if empty.size:  # no data: imputation with the current model
        new_positive[empty] = positive[empty]
        negative = np.array(negative, copy=True)
        negative[empty] = positive[empty]
    return negative, new_positive


def as_missing_indicator(mask, shape: tuple[int, int], name: str = "mask") -> sp.csr_matrix:
    """A validated mask (True = missing) of ``shape`` as a CSR indicator of the missing entries.

    ``mask`` is a boolean array of ``shape`` or a sparse matrix whose stored
    non-zero entries are the missing ones. Raises ``ValueError`` (naming
    ``name``) for a wrong shape or type, and when every entry is missing.
    """
    if sp.issparse(mask):
        if mask.shape != tuple(shape):
            raise ValueError(f"{name} must have the shape of X {tuple(shape)}, got {mask.shape}.")
        indicator = sp.csr_matrix(mask, copy=True)
        indicator.eliminate_zeros()
        indicator.sum_duplicates()
    else:
        arr = np.asarray(mask)
        if arr.dtype != bool:
            raise ValueError(
                f"{name} must be a boolean array (True = missing entry) or a sparse matrix, "
                f"got dtype {arr.dtype}."
            )
        if arr.shape != tuple(shape):
            raise ValueError(f"{name} must have the shape of X {tuple(shape)}, got {arr.shape}.")
        indicator = sp.csr_matrix(arr)
    indicator.data = np.ones(indicator.nnz, dtype=bool)
    if indicator.nnz >= shape[0] * shape[1]:
        raise ValueError(f"{name} masks every entry of X: nothing is left to fit.")
    return indicator


def zero_missing(X, indicator: sp.csr_matrix):
    """A copy of ``X`` (dense or sparse, same orientation as ``indicator``) with the
    missing entries set to zero; the caller's array is never modified."""
    if sp.issparse(X):
        csr = sp.csr_matrix(X)
        if not csr.has_canonical_format:
            csr = csr.copy()
            csr.sum_duplicates()
        p, n = csr.shape
        missing = indicator if indicator.has_sorted_indices else indicator.sorted_indices()
        # Entries as row * n + column: increasing in canonical CSR order, so one
        # search of the stored entries among the missing ones finds them.
        rows = np.repeat(np.arange(p, dtype=np.int64), np.diff(csr.indptr))
        stored = rows * n + csr.indices
        lost = np.repeat(np.arange(p, dtype=np.int64), np.diff(missing.indptr)) * n
        lost += missing.indices
        at = np.minimum(np.searchsorted(lost, stored), max(lost.size - 1, 0))
        keep = lost[at] != stored if lost.size else np.ones(stored.size, dtype=bool)
        indptr = np.zeros(p + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[keep], minlength=p), out=indptr[1:])
        kept = (csr.data[keep], csr.indices[keep], indptr)
        return sp.csr_matrix(kept, shape=csr.shape)
    arr = np.array(X, copy=True)
    if arr.ndim != 2:
        return arr  # the shape error comes from the validation of X
    coo = indicator.tocoo()
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        arr = arr.astype(np.float64)
    arr[coo.row, coo.col] = 0
    return arr

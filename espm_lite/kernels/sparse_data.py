"""The forms of the data taken by :func:`~espm_lite.kernels.data_pass`.

Sparse data
-----------
Counts of low-dose spectrum images are mostly zeros.  The KL data term and its
gradients only need the model ``Y_ij`` where ``X_ij > 0`` (``sum Y`` comes from
column sums), so for CSR data :func:`~espm_lite.kernels.data_pass` evaluates
``Y`` at the stored entries only and uses sparse-times-dense products: an
iteration costs ``O(nnz k)`` time and memory instead of ``O(n p k)``.  The data
are split once into row blocks (:class:`SparseData`); dense data that are
mostly zeros can be sent there too (:func:`choose_path`,
:data:`SPARSE_DENSITY_THRESHOLD`).  Sparse data sent to the dense path are
wrapped in :class:`DensifiedRows` and densified block by block.

This module also holds the constants of the data term that depend on ``X``
only (:func:`data_constants`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from .chunked import BandView, ChunkedData
from .compiled import use_compiled
from .threads import num_threads

#: Size in bytes of one block of data rows processed at once by
#: :func:`~espm_lite.kernels.data_pass` (NumPy: blocks that stay in cache, spread over
#: threads), and by the sums over dense data (their temporaries stay this small).
BLOCK_BYTES = 1 << 20


def row_blocks(
    n_rows: int, n_cols: int, itemsize: int, block_bytes: int = BLOCK_BYTES
) -> list[slice]:
    """Split ``range(n_rows)`` into contiguous blocks of about ``block_bytes``."""
    size = max(1, block_bytes // max(1, n_cols * itemsize))
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


#: Number of stored entries per row block of the sparse path of
#: :func:`~espm_lite.kernels.data_pass` (at most; see :data:`BLOCKS_PER_THREAD`).
SPARSE_BLOCK_NNZ = 1 << 18
#: Smaller data are cut into at least this many blocks per data-pass thread (blocks
#: of at least :data:`MIN_BLOCK_NNZ` entries), so that the threads get equal work:
#: three blocks on two threads left one thread idle a third of each pass.
BLOCKS_PER_THREAD = 8
MIN_BLOCK_NNZ = 1 << 14

#: Density (fraction of non-zero entries) below which ``sparse="auto"`` sends
#: dense float64 data to the sparse path, with the compiled kernels (the
#: default engine). Measured with ``benchmarks/bench_sparse.py`` (table 2,
#: 80x80x1980 phantom, 3 phases, 2 cores): the compiled sparse path costs about
#: 140 ms x density per iteration, the dense path about 40 ms in float64 (22 ms
#: in float32), so they cross near a density of 0.28 (0.15 in float32); at 1500
#: counts/pixel (density 0.23) sparse takes 34 ms, dense 39 ms. Since the dense
#: float64 path runs compiled too (:mod:`.fused`), both cost about the same at these
#: densities (one run: 24 / 22 ms at density 0.13, 38 / 39 at 0.23, 62 / 63 at 0.42,
#: sparse / dense); the threshold is unchanged.
SPARSE_DENSITY_THRESHOLD = 0.27

#: The same for float32 data (the dense path is twice as fast in float32, the
#: sparse path, bound by index gathers, much less).
SPARSE_DENSITY_THRESHOLD_FLOAT32 = 0.14

#: The two thresholds with the NumPy engine (``espm_lite.config_context(engine="numpy")``),
#: whose sparse path costs about 170 ms x density per iteration on the same data.
SPARSE_DENSITY_THRESHOLD_NUMPY = 0.18
SPARSE_DENSITY_THRESHOLD_FLOAT32_NUMPY = 0.09


def dense_block(X, rows: slice) -> np.ndarray:
    """Rows ``rows`` of ``X`` as a dense array (a view for dense ``X``).

    ``X`` may be a sparse matrix (or :class:`DensifiedRows`); the block is then
    densified, which is what the dense path does with sparse data it was
    forced to take.
    """
    if isinstance(X, BandView):  # one band of data read from disk
        return X.rows(rows)
    if isinstance(X, DensifiedRows):
        X = X.csr
    if sp.issparse(X):
        return X[rows].toarray()
    return X[rows, :]


def canonical_csr(X) -> sp.csr_matrix:
    """``X`` as a CSR matrix without duplicate entries, never modifying the input.

    A canonical CSR input is returned as is (no copy); otherwise a new matrix
    is built and its duplicates summed.
    """
    if not sp.issparse(X):
        return sp.csr_matrix(X)
    if X.format == "csr":
        if X.has_canonical_format:
            return X
        X = X.copy()
    else:
        X = X.tocsr()
    X.sum_duplicates()
    return X


class SparseRowBlock:
    """One block of rows of a :class:`SparseData`.

    Attributes
    ----------
    rows : slice
        Rows of the data in the block.
    matrix : scipy.sparse.csr_matrix (rows, n)
        The block, sharing ``data`` and ``indices`` with the whole matrix.
    local_rows : ndarray of intp (nnz_b,)
        Row of each stored entry, relative to ``rows.start``.
    cols : ndarray of intp (nnz_b,)
        Column of each stored entry.

    ``local_rows`` and ``cols`` (16 bytes per stored entry) are made on first use:
    the NumPy engine needs them, the compiled kernels read the CSR arrays.
    """

    def __init__(self, rows: slice, matrix: sp.csr_matrix):
        self.rows = rows
        self.matrix = matrix

    @cached_property
    def local_rows(self) -> np.ndarray:
        counts = np.diff(self.matrix.indptr)
        return np.repeat(np.arange(self.matrix.shape[0], dtype=np.intp), counts)

    @cached_property
    def cols(self) -> np.ndarray:
        return self.matrix.indices.astype(np.intp)

    @property
    def values(self) -> np.ndarray:
        return self.matrix.data


class _CSRBacked:
    """Shape and dtype of a wrapper of the CSR matrix ``self.csr``."""

    csr: sp.csr_matrix

    @property
    def shape(self) -> tuple[int, int]:
        return self.csr.shape

    @property
    def dtype(self) -> np.dtype:
        return self.csr.dtype


class SparseData(_CSRBacked):
    """CSR data ``(p, n)`` split once into row blocks for the sparse path.

    Each block holds about :data:`SPARSE_BLOCK_NNZ` stored entries, fewer
    for data too small to give each thread :data:`BLOCKS_PER_THREAD` blocks (at
    least one row) and the row and column index of each entry, so that an iteration
    only gathers and scatters.  Extra memory: two index arrays of ``nnz``
    entries.

    Parameters
    ----------
    X : sparse matrix or ndarray (p, n)
        Converted with :func:`canonical_csr` (the input is never modified; a
        canonical CSR matrix is used without copy).
    block_nnz : int, optional
        Stored entries per block (default :data:`SPARSE_BLOCK_NNZ`).
    row_offset : int, default=0
        Row of the whole data that the first row of ``X`` is (a band of data read
        from disk): the blocks' ``rows`` index the whole data's maps.
    """

    def __init__(self, X, block_nnz: int | None = None, row_offset: int = 0):
        csr = canonical_csr(X)
        self.csr = csr
        p, n = csr.shape
        indptr = csr.indptr.astype(np.intp, copy=False)
        block_nnz = max(1, int(block_nnz or _default_block_nnz(csr.nnz)))
        targets = np.arange(block_nnz, csr.nnz, block_nnz)
        cuts = np.unique(np.concatenate([[0], np.searchsorted(indptr, targets, "right"), [p]]))
        cuts = cuts[(cuts >= 0) & (cuts <= p)]
        blocks = []
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            lo, hi = indptr[start], indptr[stop]
            local_indptr = (indptr[start : stop + 1] - lo).astype(csr.indices.dtype)
            matrix = sp.csr_matrix(
                (csr.data[lo:hi], csr.indices[lo:hi], local_indptr),
                shape=(stop - start, n),
                copy=False,
            )
            rows = slice(int(start) + row_offset, int(stop) + row_offset)
            blocks.append(SparseRowBlock(rows, matrix))
        self.blocks: list[SparseRowBlock] = blocks

    @property
    def nnz(self) -> int:
        return self.csr.nnz


def _default_block_nnz(nnz: int) -> int:
    """Entries per block: :data:`SPARSE_BLOCK_NNZ`, fewer so that each thread has several."""
    even = -(-nnz // (BLOCKS_PER_THREAD * num_threads()))
    return min(SPARSE_BLOCK_NNZ, max(MIN_BLOCK_NNZ, even))


@dataclass(frozen=True)
class DensifiedRows(_CSRBacked):
    """Sparse data sent to the dense path: each block is densified in turn."""

    csr: sp.csr_matrix


def density(X) -> float:
    """Fraction of non-zero entries of ``X`` (dense or sparse)."""
    size = X.shape[0] * X.shape[1]
    if size == 0:
        return 0.0
    if sp.issparse(X):
        return X.count_nonzero() / size
    return np.count_nonzero(X) / size


def density_threshold(dtype, sparse="auto") -> float:
    """Density below which dense data of ``dtype`` take the sparse path (see :func:`choose_path`).

    ``sparse=True`` gives ``inf`` (always sparse), ``False`` gives 0 (never).
    """
    if sparse is True or sparse is False:
        return np.inf if sparse else 0.0
    if isinstance(sparse, str):
        if sparse != "auto":
            raise ValueError(
                f"sparse must be 'auto', True, False or a density threshold in (0, 1], "
                f"got {sparse!r}."
            )
        # The thresholds are read from the package namespace at call time, so
        # that setting ``espm_lite.kernels.SPARSE_DENSITY_THRESHOLD`` (the public
        # name) takes effect.
        from .. import kernels

        suffix = "" if use_compiled() else "_NUMPY"
        if np.dtype(dtype) == np.float32:
            return getattr(kernels, "SPARSE_DENSITY_THRESHOLD_FLOAT32" + suffix)
        return getattr(kernels, "SPARSE_DENSITY_THRESHOLD" + suffix)
    threshold = float(sparse)
    if not 0 < threshold <= 1:
        raise ValueError(f"sparse as a density threshold must be in (0, 1], got {sparse!r}.")
    return threshold


def choose_path(X, sparse="auto") -> str:
    """Which path of :func:`~espm_lite.kernels.data_pass` suits ``X``: ``"sparse"`` / ``"dense"``.

    Parameters
    ----------
    X : ndarray, sparse matrix or ChunkedData
    sparse : {"auto", True, False} or float in (0, 1]
        ``True`` / ``False`` force the path.  ``"auto"``: sparse matrices take
        the sparse path, dense arrays take it when their density is below
        :data:`SPARSE_DENSITY_THRESHOLD` (float64) or
        :data:`SPARSE_DENSITY_THRESHOLD_FLOAT32` (``..._NUMPY`` with the NumPy
        engine); a float is used as that
        threshold for dense arrays of either type (:func:`density_threshold`).

    Returns
    -------
    str
    """
    threshold = density_threshold(X.dtype, sparse)
    if sparse is True or sparse is False:
        return "sparse" if sparse else "dense"
    if sp.issparse(X):
        return "sparse"
    if isinstance(X, ChunkedData):
        return "sparse" if X.density() < threshold else "dense"
    return "sparse" if density(X) < threshold else "dense"


def prepare_data(X, path: str):
    """``X`` (p, n) in the form :func:`~espm_lite.kernels.data_pass` takes for ``path``.

    ``"sparse"``: a :class:`SparseData` (dense ``X`` is converted to CSR once,
    O(nnz) memory).  ``"dense"``: dense ``X`` as is, sparse ``X`` wrapped in
    :class:`DensifiedRows` (densified block by block at every pass).
    """
    if isinstance(X, ChunkedData):  # data on disk: each band read for the path
        return X.with_path(path)
    if path == "sparse":
        return X if isinstance(X, SparseData) else SparseData(X)
    if path != "dense":
        raise ValueError(f"path must be 'sparse' or 'dense', got {path!r}.")
    if isinstance(X, SparseData):
        return DensifiedRows(X.csr)
    if sp.issparse(X):
        return DensifiedRows(canonical_csr(X))
    return X


def _values(X):
    """The array holding the entries of ``X`` (stored values when sparse)."""
    if isinstance(X, (SparseData, DensifiedRows)):
        X = X.csr
    return X.data if sp.issparse(X) else X


def xlogx_sum(X) -> float:
    """``sum X log X`` with ``0 log 0 = 0`` (dense or sparse ``X``; dense by blocks of rows,
    so that its temporaries stay small)."""
    values = _values(X)
    if values.ndim < 2:
        return _xlogx(values)
    return sum(_xlogx(values[rows]) for rows in row_blocks(*values.shape, values.itemsize))


def _xlogx(values: np.ndarray) -> float:
    positive = values[values > 0].astype(np.float64, copy=False)
    return float(np.dot(positive, np.log(positive)))


def data_sum(X) -> float:
    """``sum X`` in float64."""
    return float(_values(X).sum(dtype=np.float64))


def data_constants(X, loss: str) -> tuple[float, float]:
    """The constants of the data term that depend on ``X`` only (see ``data_pass``).

    KL: ``(sum X log X, sum X)``; Frobenius: ``(||X||^2, 0)``.
    """
    if isinstance(X, ChunkedData):
        return X.constants(loss)
    if loss == "l2":
        values = _values(X)
        return float(np.vdot(values, values)), 0.0
    return xlogx_sum(X), data_sum(X)


def model_at(Ab: np.ndarray, local_rows: np.ndarray, d_cols: list[np.ndarray]) -> np.ndarray:
    r"""The model ``y_e = \sum_l A_{r_e l} D_{c_e l}`` at stored entries ``e``.

    ``local_rows`` are the rows ``r_e`` (in the block ``Ab``) and ``d_cols[l]``
    the gathered ``D_{c_e l}``: one gather and one multiply-add per component,
    on contiguous 1-D arrays (faster than gathering ``(nnz, k)`` rows).
    """
    At = np.ascontiguousarray(Ab.T)
    y = np.take(At[0], local_rows)
    y *= d_cols[0]
    for l in range(1, len(d_cols)):
        y += np.take(At[l], local_rows) * d_cols[l]
    return y


def csr_like(matrix: sp.csr_matrix, values: np.ndarray) -> sp.csr_matrix:
    """A CSR matrix with the structure of ``matrix`` and the stored ``values``."""
    return sp.csr_matrix((values, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)

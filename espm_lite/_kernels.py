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

Sparse data
-----------
Counts of low-dose spectrum images are mostly zeros.  The KL data term and its
gradients only need the model ``Y_ij`` where ``X_ij > 0`` (``sum Y`` comes from
column sums), so for CSR data :func:`data_pass` evaluates ``Y`` at the stored
entries only and uses sparse-times-dense products: an iteration costs
``O(nnz k)`` time and memory instead of ``O(n p k)``.  The data are split once
into row blocks (:class:`SparseData`); dense data that are mostly zeros can
be sent there too (:func:`choose_path`, :data:`SPARSE_DENSITY_THRESHOLD`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from array_api_compat import array_namespace, device, is_numpy_namespace
from threadpoolctl import ThreadpoolController

#: Size in bytes of one block of data rows processed at once by :func:`data_pass`
#: (NumPy: blocks that stay in cache, spread over threads).
BLOCK_BYTES = 1 << 20
#: The same for other array libraries (GPUs): large blocks, so that each kernel
#: launch has enough work, within a bounded memory for the block temporaries.
DEVICE_BLOCK_BYTES = 1 << 28


def row_blocks(
    n_rows: int, n_cols: int, itemsize: int, block_bytes: int = BLOCK_BYTES
) -> list[slice]:
    """Split ``range(n_rows)`` into contiguous blocks of about ``block_bytes``."""
    size = max(1, block_bytes // max(1, n_cols * itemsize))
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


#: Number of stored entries per row block of the sparse path of :func:`data_pass`.
SPARSE_BLOCK_NNZ = 1 << 18

#: Density (fraction of non-zero entries) below which ``sparse="auto"`` sends
#: dense float64 data to the sparse path.  Measured with
#: ``benchmarks/bench_sparse.py`` (table 2, 80x80x1980 phantom, 2 cores): the
#: sparse path costs about 170 ms x density per iteration, the dense path about
#: 32 ms in float64 (16 ms in float32), so they cross near a density of 0.19
#: (0.1 in float32); at 500 counts/pixel (density 0.13) sparse takes 22 ms,
#: dense 36 ms.
SPARSE_DENSITY_THRESHOLD = 0.18

#: The same for float32 data (the dense path is twice as fast in float32, the
#: sparse path, bound by index gathers, much less).
SPARSE_DENSITY_THRESHOLD_FLOAT32 = 0.09


def dense_block(X, rows: slice) -> np.ndarray:
    """Rows ``rows`` of ``X`` as a dense array (a view for dense ``X``).

    ``X`` may be a sparse matrix (or :class:`DensifiedRows`); the block is then
    densified, which is what the dense path does with sparse data it was
    forced to take.
    """
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


@dataclass(frozen=True)
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
    """

    rows: slice
    matrix: sp.csr_matrix
    local_rows: np.ndarray
    cols: np.ndarray

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

    Each block holds about :data:`SPARSE_BLOCK_NNZ` stored entries (at least
    one row) and the row and column index of each entry, so that an iteration
    only gathers and scatters.  Extra memory: two index arrays of ``nnz``
    entries.

    Parameters
    ----------
    X : sparse matrix or ndarray (p, n)
        Converted with :func:`canonical_csr` (the input is never modified; a
        canonical CSR matrix is used without copy).
    block_nnz : int, optional
        Stored entries per block (default :data:`SPARSE_BLOCK_NNZ`).
    """

    def __init__(self, X, block_nnz: int | None = None):
        csr = canonical_csr(X)
        self.csr = csr
        p, n = csr.shape
        indptr = csr.indptr.astype(np.intp, copy=False)
        block_nnz = max(1, int(block_nnz or SPARSE_BLOCK_NNZ))
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
            local_rows = np.repeat(np.arange(stop - start, dtype=np.intp), np.diff(local_indptr))
            cols = csr.indices[lo:hi].astype(np.intp)
            blocks.append(SparseRowBlock(slice(int(start), int(stop)), matrix, local_rows, cols))
        self.blocks: list[SparseRowBlock] = blocks

    @property
    def nnz(self) -> int:
        return self.csr.nnz


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


def choose_path(X, sparse="auto") -> str:
    """Which path of :func:`data_pass` suits ``X``: ``"sparse"`` or ``"dense"``.

    Parameters
    ----------
    X : ndarray or sparse matrix
    sparse : {"auto", True, False} or float in (0, 1]
        ``True`` / ``False`` force the path.  ``"auto"``: sparse matrices take
        the sparse path, dense arrays take it when their density is below
        :data:`SPARSE_DENSITY_THRESHOLD` (float64) or
        :data:`SPARSE_DENSITY_THRESHOLD_FLOAT32`; a float is used as that
        threshold for dense arrays of either type.

    Returns
    -------
    str
    """
    if sparse is True or sparse is False:
        return "sparse" if sparse else "dense"
    if isinstance(sparse, str):
        if sparse != "auto":
            raise ValueError(
                f"sparse must be 'auto', True, False or a density threshold in (0, 1], "
                f"got {sparse!r}."
            )
        threshold = (
            SPARSE_DENSITY_THRESHOLD_FLOAT32 if X.dtype == np.float32 else SPARSE_DENSITY_THRESHOLD
        )
    else:
        threshold = float(sparse)
        if not 0 < threshold <= 1:
            raise ValueError(f"sparse as a density threshold must be in (0, 1], got {sparse!r}.")
    if sp.issparse(X):
        return "sparse"
    return "sparse" if density(X) < threshold else "dense"


def prepare_data(X, path: str):
    """``X`` (p, n) in the form :func:`data_pass` takes for ``path``.

    ``"sparse"``: a :class:`SparseData` (dense ``X`` is converted to CSR once,
    O(nnz) memory).  ``"dense"``: dense ``X`` as is, sparse ``X`` wrapped in
    :class:`DensifiedRows` (densified block by block at every pass).
    """
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
    """``sum X log X`` with ``0 log 0 = 0`` (dense or sparse ``X``)."""
    values = _values(X)
    positive = values[values > 0]
    return float(np.dot(positive.astype(np.float64), np.log(positive.astype(np.float64))))


def data_sum(X) -> float:
    """``sum X`` in float64."""
    return float(_values(X).sum(dtype=np.float64))


def data_constants(X, loss: str) -> tuple[float, float]:
    """The constants of the data term that depend on ``X`` only (see :func:`data_pass`).

    KL: ``(sum X log X, sum X)``; Frobenius: ``(||X||^2, 0)``.
    """
    if loss == "l2":
        values = _values(X)
        return float(np.vdot(values, values)), 0.0
    return xlogx_sum(X), data_sum(X)


class ArrayOps:
    """The array operations of the kernels, for one array-API namespace.

    The kernels are written against the array API standard (through
    ``array-api-compat``), so they run on NumPy, CuPy or PyTorch arrays alike.
    With NumPy, results go to preallocated buffers (``out=``) and
    :func:`data_pass` spreads blocks over threads; other namespaces allocate.
    """

    def __init__(self, *arrays):
        self.xp = array_namespace(*arrays)
        self.numpy = is_numpy_namespace(self.xp)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype) if self.numpy else None

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out) if self.numpy and out is not None else a @ b

    def log(self, x, out=None):
        return np.log(x, out=out) if self.numpy and out is not None else self.xp.log(x)

    def divide(self, a, b, out=None):
        return np.divide(a, b, out=out) if self.numpy and out is not None else a / b

    def dot_all(self, a, b) -> float:
        """``sum(a * b)`` over all entries, as a Python float."""
        if self.numpy:
            return float(np.vdot(a, b))
        return float(self.xp.sum(a * b))

    def errstate(self):
        return np.errstate(divide="ignore", invalid="ignore") if self.numpy else nullcontext()


def _float_mask(xp, free, dtype):
    """A boolean mask as 0/1 of ``dtype`` (the array API has no bool-float promotion)."""
    return None if free is None else xp.astype(free, dtype)


def _free_row_sums(xp, values, free, keepdims: bool = False):
    """Row sums of ``values`` over the free entries (all entries when ``free`` is None)."""
    mask = _float_mask(xp, free, values.dtype)
    return xp.sum(values if mask is None else values * mask, axis=1, keepdims=keepdims)


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
    r"""One pass over the data: data term, map update and spectra-gradient terms.

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
    :func:`num_threads` threads (NumPy and SciPy release the GIL in their
    kernels).

    **Sparse path** (``X`` a :class:`SparseData` or a sparse matrix): the
    model is evaluated only at the stored entries ``(i, j)`` of the block,

    .. math:: y_{ij} = \sum_l A_{il} D_{jl},

    the KL terms are ``-sum_ij x_ij log y_ij`` (``sum Y = 1^T D^T A 1`` and
    ``sum X log X - sum X`` come from column sums and ``x_constants``), ``R``
    is the CSR matrix of ``x_ij / y_ij`` with the structure of ``X``, and the
    products ``R_b D``, ``R_b^T A_b``, ``(X / Y^2)_b`` times the Hessian rows,
    ``X_b D`` and ``X_b^T A_b`` are sparse-times-dense: ``O(nnz k)`` time, no
    ``(rows, n)`` buffer, the data never densified.  Both paths give the same
    results up to rounding.

    Parameters
    ----------
    X : ndarray, sparse matrix, SparseData or DensifiedRows of shape (p, n)
        Data, never written to.  A sparse matrix takes the sparse path (split
        into blocks at each call: prefer a :class:`SparseData` made once).
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
    if sp.issparse(X):
        X = SparseData(X)
    sparse = isinstance(X, SparseData)
    ops = ArrayOps(A, D)
    xp = ops.xp
    p, n = X.shape
    k = A.shape[1]
    dtype = A.dtype
    col_d = xp.sum(D, axis=0)
    gram_d = D.T @ D if loss == "l2" else None
    # Rows D_i (x) D_i: the KL Hessian of pixel j in its maps is
    # sum_i X_ij / Y_ij^2 D_i D_i^T, i.e. (X/Y^2)_j @ outer_rows reshaped (k, k).
    outer_rows = (
        xp.reshape(D[:, :, None] * D[:, None, :], (n, k * k))
        if need_curvature and loss == "kl"
        else None
    )
    l2_curvature = (
        float(xp.linalg.eigvalsh(gram_d)[-1]) if need_curvature and loss == "l2" else None
    )
    Dt = np.ascontiguousarray(D.T) if ops.numpy else D.T
    total = 0.0
    if need_loss and loss == "kl":
        total = x_constants[0] - x_constants[1] + ops.dot_all(col_d, xp.sum(A, axis=0))
    if need_loss and loss == "l2":
        total = 0.5 * x_constants[0] + 0.5 * ops.dot_all(A.T @ A, gram_d)

    def l2_terms(Xb, Ab, nb):
        negative = Xb @ D
        positive = Ab @ gram_d
        part = -ops.dot_all(Ab, negative) if need_loss else 0.0
        curvature = (
            None
            if l2_curvature is None
            else xp.full((nb,), l2_curvature, dtype=dtype, device=device(A))
        )
        return negative, positive, curvature, part

    def run_dense(my_blocks: list[slice]) -> tuple[float, np.ndarray | None]:
        rows_max = max((b.stop - b.start for b in my_blocks), default=0)
        buf_y = ops.empty((rows_max, n), dtype)
        buf_r = ops.empty((rows_max, n), dtype)

        def buffer(buf, nb):
            return None if buf is None else buf[:nb]

        w_neg = xp.zeros((n, k), dtype=dtype, device=device(A)) if need_w_terms else None
        part = 0.0
        for rows in my_blocks:
            nb = rows.stop - rows.start
            Xb = dense_block(X, rows)
            Ab = A[rows, :]
            R = None
            if loss == "kl":
                Y = ops.matmul(Ab, Dt, out=buffer(buf_y, nb))
                if need_loss:
                    part -= ops.dot_all(Xb, ops.log(Y, out=buffer(buf_r, nb)))
                R = ops.divide(Xb, Y, out=buffer(buf_r, nb))
                negative = R @ D
                positive = xp.broadcast_to(col_d, negative.shape)
                curvature = None
                if outer_rows is not None:
                    curvature = _largest_eigenvalues(ops.divide(R, Y, out=Y) @ outer_rows, k)
            else:
                negative, positive, curvature, loss_part = l2_terms(Xb, Ab, nb)
                part += loss_part
            if map_rule is not None:
                A[rows, :] = map_rule(rows, negative, positive, curvature)
                Ab = A[rows, :]
                if loss == "kl" and need_w_terms:
                    Y = ops.matmul(Ab, Dt, out=buffer(buf_y, nb))
                    R = ops.divide(Xb, Y, out=buffer(buf_r, nb))
            if need_w_terms:
                w_neg += (R.T @ Ab) if loss == "kl" else (Xb.T @ Ab)
        return part, w_neg

    def run_sparse(my_blocks: list[SparseRowBlock]) -> tuple[float, np.ndarray | None]:
        w_neg = np.zeros((n, k), dtype=dtype) if need_w_terms else None
        part = 0.0
        for block in my_blocks:
            rows = block.rows
            nb = rows.stop - rows.start
            Xb = block.matrix
            Ab = A[rows]
            R = None
            if loss == "kl":
                values = block.values
                # The spectra at the columns of the stored entries: D does not change
                # during the pass, so they serve before and after the map update.
                d_cols = [np.take(Dt[l], block.cols) for l in range(k)]
                y = _model_at(Ab, block.local_rows, d_cols)
                if need_loss:
                    part -= float(np.dot(values, np.log(y)))
                ratio = np.divide(values, y, out=None if outer_rows is not None else y)
                R = _like(Xb, ratio)
                negative = np.asarray(R @ D)
                positive = np.broadcast_to(col_d, negative.shape)
                curvature = None
                if outer_rows is not None:
                    # X / Y^2 at the stored entries, times the rows D_i (x) D_i.
                    hessians = np.asarray(_like(Xb, np.divide(ratio, y, out=y)) @ outer_rows)
                    curvature = _largest_eigenvalues(hessians, k)
            else:
                negative, positive, curvature, loss_part = l2_terms(Xb, Ab, nb)
                negative = np.asarray(negative)
                part += loss_part
            if map_rule is not None:
                A[rows] = map_rule(rows, negative, positive, curvature)
                Ab = A[rows]
                if loss == "kl" and need_w_terms:
                    y = _model_at(Ab, block.local_rows, d_cols)
                    R = _like(Xb, np.divide(values, y, out=y))
            if need_w_terms:
                w_neg += np.asarray((R.T @ Ab) if loss == "kl" else (Xb.T @ Ab))
        return part, w_neg

    if sparse:
        blocks, run = X.blocks, run_sparse
    else:
        block_bytes = BLOCK_BYTES if ops.numpy else DEVICE_BLOCK_BYTES
        blocks, run = row_blocks(p, n, xp.finfo(dtype).bits // 8, block_bytes), run_dense
    # Threads for NumPy, which releases the GIL; other libraries parallelise themselves.
    threads = min(num_threads(), len(blocks)) if ops.numpy else 1
    if threads <= 1 and not sparse:
        results = [run(blocks)]
    else:
        # One BLAS thread per worker; the sparse path never needs BLAS threads
        # (waking them for its small products costs more than they bring).
        with _blas_controller().limit(limits=1, user_api="blas"):
            if threads <= 1:
                results = [run(blocks)]
            else:
                parts = [blocks[i::threads] for i in range(threads)]
                results = list(_executor().map(run, parts))
    total += sum(part for part, _ in results)
    w_neg = None
    if need_w_terms:
        w_neg = results[0][1]
        for _, other in results[1:]:
            w_neg += other
    return PassResult(data_loss=total if need_loss else None, w_negative=w_neg)


def _model_at(Ab: np.ndarray, local_rows: np.ndarray, d_cols: list[np.ndarray]) -> np.ndarray:
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


def _like(matrix: sp.csr_matrix, values: np.ndarray) -> sp.csr_matrix:
    """A CSR matrix with the structure of ``matrix`` and the stored ``values``."""
    return sp.csr_matrix((values, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)


def _largest_eigenvalues(hessian_rows, k: int):
    """Largest eigenvalue of each ``(k, k)`` matrix stored as a row of ``k * k`` entries."""
    xp = array_namespace(hessian_rows)
    return xp.linalg.eigvalsh(xp.reshape(hessian_rows, (-1, k, k)))[:, -1]


_EXECUTOR: ThreadPoolExecutor | None = None
_BLAS_CONTROLLER: ThreadpoolController | None = None


def _blas_controller() -> ThreadpoolController:
    """A cached :class:`threadpoolctl.ThreadpoolController` (building one scans libraries)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER


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


def _floored(xp, x, floor: float):
    """``max(x, floor)`` entry by entry."""
    return np.maximum(x, floor) if is_numpy_namespace(xp) else xp.clip(x, min=floor)


def _where_free(xp, free, x, fill: float):
    """``x`` on the free entries, ``fill`` elsewhere (``x`` when all are free)."""
    return x if free is None else xp.where(free, x, _scalar(xp, fill, x))


def _scalar(xp, value: float, like):
    """A 0-d array of ``value`` with the dtype and device of ``like``."""
    return xp.asarray(value, dtype=like.dtype, device=device(like))


def bisect_multiplier(
    values_at: Callable,
    lower,
    upper,
    free,
    tol: float,
    max_iter: int = 200,
):
    """Find, row by row, the multiplier ``nu`` such that ``sum(values_at(nu)) = 1``.

    ``values_at(nu)`` returns an array ``(r, c)`` whose row sums (over the free
    entries) decrease with ``nu`` (one multiplier per row).  The bracket
    ``[lower, upper]`` must satisfy ``sum >= 1`` at ``lower`` and ``sum <= 1``
    at ``upper``; rows where this fails are reported with ``nan``.  Any
    array-API namespace; the multiplier is computed in float64.

    Returns
    -------
    nu : array (r,)
        Multiplier per row, such that ``|sum - 1| <= tol`` (or the bracket has
        collapsed to machine precision).
    """
    xp = array_namespace(lower, upper)
    lo = xp.astype(lower, xp.float64)
    hi = xp.astype(upper, xp.float64)

    def row_sums(nu):
        return _free_row_sums(xp, values_at(nu), free)

    bad = (row_sums(lo) < 1.0 - tol) | (row_sums(hi) > 1.0 + tol)
    nu = 0.5 * (lo + hi)
    for _ in range(max_iter):
        nu = 0.5 * (lo + hi)
        err = row_sums(nu) - 1.0
        if bool(xp.all((xp.abs(err) <= tol) | bad)):
            break
        above = err > 0
        lo = xp.where(above, nu, lo)
        hi = xp.where(above, hi, nu)
    return xp.where(bad, _scalar(xp, float("nan"), nu), nu)


def mu_update(
    current,
    negative,
    positive,
    *,
    floor: float,
    simplex: bool = False,
    free=None,
    tol: float = 1e-5,
):
    """Multiplicative update ``x <- x * negative / (positive + nu)``, floored.

    With ``simplex=True`` one multiplier ``nu`` per row makes every row (its
    ``free`` entries) sum to one: the exact minimiser of the separable
    majoriser on the simplex.  Rows where no multiplier exists (all-zero
    numerator) keep their current values.  Any array-API namespace.

    Parameters
    ----------
    current, negative, positive : arrays (r, c)
        Current value, numerator and denominator terms (``positive > 0``).
    floor : float
        Lower bound of every entry.
    simplex : bool
    free : bool array (r, c), optional
        Entries that count in the simplex sums (default all).
    tol : float
        Tolerance of the row sums.
    """
    ops = ArrayOps(current, negative)
    xp = ops.xp
    numerator = current * negative
    if not simplex:
        return _floored(xp, numerator / positive, floor)

    def values_at(nu):
        return _floored(xp, numerator / (positive + _shift(xp, nu, free)), floor)

    inf = float("inf")
    lower = -xp.min(_where_free(xp, free, positive, inf), axis=1) * (1 - 1e-12)
    num_sum = xp.sum(_where_free(xp, free, numerator, 0.0), axis=1)
    upper = xp.clip(num_sum, min=0.0) + xp.abs(lower) + 1.0
    # Tighter bracket from the sum S of the free numerators: with P the largest
    # (smallest) free denominator term, sum_i num_i / (pos_i + nu) >= S / (P + nu)
    # (<=), so the sum is >= 1 at nu = S - P_max, and <= 1 at nu = S - P_min when
    # the floors do not bind (checked).  When the denominators of a row are
    # equal (the W update with G = I) this is the exact root.
    pos_free_max = xp.max(_where_free(xp, free, positive, -inf), axis=1)
    with ops.errstate():
        tight_lower = xp.where(num_sum > 0, xp.maximum(lower, num_sum - pos_free_max), lower)
        tight_upper = xp.maximum(num_sum + lower / (1 - 1e-12), tight_lower)
        fits = _free_row_sums(xp, values_at(tight_upper), free) <= 1.0 + tol
    upper = xp.where(fits & (tight_upper < upper), tight_upper, upper)
    nu = bisect_multiplier(values_at, tight_lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def quadratic_root_update(
    current, a: float, b, c, *, floor: float, simplex: bool = False, free=None, tol: float = 1e-5
):
    """Positive root of ``a x^2 + (b + nu) x - c = 0`` entry by entry, floored.

    ``a >= 0`` and ``c >= 0``.  With ``a = 0`` this is ``c / (b + nu)``.  The
    root is computed in the cancellation-free form ``2c / (b + sqrt(b^2+4ac))``
    when ``b >= 0``.  ``simplex`` and ``free`` as in :func:`mu_update`.  Any
    array-API namespace.
    """
    ops = ArrayOps(current, b, c)
    xp = ops.xp

    def values_at(nu):
        bb = b if nu is None else b + _shift(xp, nu, free)
        disc = xp.sqrt(bb * bb + 4.0 * a * c)
        with ops.errstate():
            if a > 0:
                root = xp.where(bb >= 0, 2.0 * c / (bb + disc), (disc - bb) / (2.0 * a))
            else:
                root = c / bb
        root = xp.where(xp.isfinite(root), root, _scalar(xp, floor, root))
        return _floored(xp, root, floor)

    if not simplex:
        return values_at(None)
    inf = float("inf")
    b_free = _where_free(xp, free, b, inf)
    if a > 0:
        # The root grows without bound as nu -> -inf: expand a bracket.
        lower = -xp.max(xp.abs(_where_free(xp, free, b, 0.0)), axis=1) - 1.0
        for _ in range(200):
            sums = _free_row_sums(xp, values_at(lower), free)
            if bool(xp.all(sums >= 1.0)):
                break
            lower = xp.where(sums < 1.0, 2.0 * lower - 1.0, lower)
    else:
        lower = -xp.min(b_free, axis=1) * (1 - 1e-12)
    # With b + nu >= sum(c) every root is <= c / sum(c): the sum is <= 1.
    c_sum = xp.sum(_where_free(xp, free, c, 0.0), axis=1)
    upper = xp.max(xp.abs(b), axis=1) + c_sum + 1.0
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def projected_step(
    current, gradient, step, *, floor: float, simplex: bool = False, free=None, tol: float = 1e-5
):
    """Gradient step ``x - step * gradient`` projected on ``{x >= floor}``.

    With ``simplex=True`` the projection is the Euclidean projection on
    ``{x >= floor, sum of the free entries of each row = 1}``, found by
    bisection on the shift ``nu`` of ``max(z - nu, floor)``.  Any array-API
    namespace.
    """
    xp = array_namespace(current, gradient)
    z = current - step * gradient
    if not simplex:
        return _floored(xp, z, floor)

    def values_at(nu):
        return _floored(xp, z - _shift(xp, nu, free), floor)

    inf = float("inf")
    # At nu = min(z) - 1 every free entry is >= 1; at nu = max(z) all are at the floor.
    lower = xp.min(_where_free(xp, free, z, inf), axis=1) - 1.0
    upper = xp.max(_where_free(xp, free, z, -inf), axis=1)
    nu = bisect_multiplier(values_at, lower, upper, free, tol)
    return _apply_multiplier(values_at, nu, current, free)


def _shift(xp, nu, free):
    """The multiplier of each row, on its free entries only."""
    column = nu[:, None]
    return column if free is None else column * _float_mask(xp, free, nu.dtype)


def _apply_multiplier(values_at, nu, current, free=None):
    """Values at the multipliers found, renormalised so the free sums are exactly one.

    The bisection stops within ``tol`` of the constraint; dividing by the sum
    then makes the iterate feasible while changing the majoriser only to
    second order (its gradient at the constrained minimum is normal to the
    simplex), which keeps the objective non-increasing.  Rows without a
    multiplier keep ``current``.
    """
    xp = array_namespace(nu, current)
    ok = xp.isfinite(nu)
    out = values_at(xp.where(ok, nu, xp.zeros_like(nu)))
    sums = _free_row_sums(xp, out, free, keepdims=True)
    positive = sums > 0
    scale = xp.where(
        positive, 1.0 / xp.where(positive, sums, xp.ones_like(sums)), xp.ones_like(sums)
    )
    out = out * scale if free is None else xp.where(free, out * scale, out)
    out = xp.where(ok[:, None], out, xp.astype(current, out.dtype))
    return xp.astype(out, current.dtype, copy=False)

r"""Compiled (numba) kernels of the sparse KL pass over the data.

For a CSR block of data rows ``X_b`` (entries ``x_e`` at row ``r_e``, column
``c_e``), maps ``A_b`` and spectra ``D``, the NumPy path of
:func:`~espm_lite.kernels.data_pass` gathers ``D`` at the stored columns, forms
the model ``y_e = \sum_l A_{r_e l} D_{c_e l}`` and the ratio ``x_e / y_e`` as
arrays of ``nnz`` entries, then multiplies a CSR matrix of the ratios by ``D``
(SciPy).  Here one loop per row block does it without the temporaries:

* :func:`kl_map_terms`: for each row, the model at its entries (kept in ``y``
  for the data term) and, in the same loop, the negative part of the gradient
  in the maps, ``(R_b D)_r = \sum_{e \in r} (x_e / y_e) D_{c_e}``;
* :func:`kl_spectra_terms`: with the updated maps, the model again and the
  spectra term ``(R_b^T A_b)_c \mathrel{+}= (x_e / y_e) A_{r_e}``;
* :func:`kl_row_terms`: the objective, gradient and Hessian of the exact row
  solves (:mod:`espm_lite.kernels.newton_rows`), whose logarithms are taken in
  the loop (each row needs its own sum).

The logarithms of the data term, ``\sum_e x_e \log y_e``, are taken by NumPy
on the ``y`` buffer: its vectorised ``log`` is several times faster than the
scalar one of a compiled loop.

The sums run in the order of the NumPy path (entries of a row in storage
order, components in order, no fused multiply-add: numba compiles without
``fastmath``), so both engines give the same iterates to rounding. The
kernels release the GIL (``nogil``): :func:`~espm_lite.kernels.data_pass`
runs them on its threads, one group of row blocks per thread, and adds the
per-thread spectra terms in thread order, so results are deterministic for a
given thread count. Compiled code is cached on disk (``cache=True``): a new
process loads it instead of compiling (the first fit compiles the kernels it
uses, per float type and number of phases: about a second and a half on 2 cores).

:func:`compress_rows` turns a dense band of data read from disk into CSR in
two passes over it (entries per row, then the entries), in the band's own type
(for example ``uint16`` counts): about 10x faster than
``scipy.sparse.csr_matrix`` of the band cast to floats. :func:`dense_to_csr`
does the same for a whole array in memory (the input of a fit, the data of the
exact row solves), with the index types SciPy's own operations expect.

The engine is chosen by :func:`espm_lite.config_context` /
:func:`espm_lite.set_config` (``engine="auto"``, ``"numba"`` or ``"numpy"``).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import scipy.sparse as sp

from .._config import get_config
from .threads import num_threads, run_parts


@cache
def _numba():
    """The numba module, or None when it cannot be imported."""
    try:
        import numba
    except ImportError:
        return None
    return numba


def jit(function):
    """``function`` compiled by numba, ``nogil`` (so that the data-pass threads can run
    it) and cached on disk. Only called when :func:`use_compiled` is true.

    Divisions follow IEEE (``error_model="numpy"``: ``x / 0`` is ``inf`` or ``nan``, as
    in NumPy) instead of testing every divisor to raise ``ZeroDivisionError``: the
    fused pass on 100x400x3746 at 15 counts/pixel, ``k = 2``, one thread, went from
    3.9 to 3.3 ms, with the same values.
    """
    return _numba().njit(nogil=True, cache=True, error_model="numpy")(function)


def use_compiled() -> bool:
    """Whether the passes of a fit starting now use the compiled kernels."""
    engine = get_config()["engine"]
    if engine == "numpy":
        return False
    if _numba() is None:
        if engine == "numba":
            raise ImportError("engine='numba' needs numba: pip install numba.")
        return False
    return True


#: Up to this many phases the kernels are compiled for the number of phases
#: itself (constant trip counts, which the compiler unrolls: map terms 1.4-1.7x faster
#: at k = 2 to 4); above it, one kernel serves every k.
UNROLLED_MAX_K = 8


def _kernels(k: int | None):
    """The two kernels, for ``k`` phases (None: any number, read from the arrays)."""

    def map_terms(indptr, cols, values, A, D, y, negative):
        nb = A.shape[0]
        n_phases = A.shape[1] if k is None else k
        row_sum = np.zeros(n_phases, dtype=negative.dtype)
        for r in range(nb):
            for j in range(n_phases):
                row_sum[j] = 0
            for e in range(indptr[r], indptr[r + 1]):
                c = cols[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                y[e] = s
                t = values[e] / s
                for j in range(n_phases):
                    row_sum[j] += t * D[c, j]
            for j in range(n_phases):
                negative[r, j] = row_sum[j]

    def spectra_terms(indptr, cols, values, A, D, w_negative):
        nb = A.shape[0]
        n_phases = A.shape[1] if k is None else k
        for r in range(nb):
            for e in range(indptr[r], indptr[r + 1]):
                c = cols[e]
                s = A[r, 0] * D[c, 0]
                for j in range(1, n_phases):
                    s += A[r, j] * D[c, j]
                t = values[e] / s
                for j in range(n_phases):
                    w_negative[c, j] += t * A[r, j]

    def row_terms(indptr, cols, values, which, C, A, s, f, g, H, hessian):
        n_phases = C.shape[1] if k is None else k
        sums = np.zeros(n_phases, dtype=f.dtype)
        for i in range(which.shape[0]):
            r = which[i]
            linear = C[i, 0] * s[0]
            for j in range(1, n_phases):
                linear += C[i, j] * s[j]
            log_sum = 0.0
            if hessian:
                for j in range(n_phases):
                    sums[j] = 0
                    for m in range(n_phases):
                        H[i, j, m] = 0
            for e in range(indptr[r], indptr[r + 1]):
                c = cols[e]
                y = C[i, 0] * A[c, 0]
                for j in range(1, n_phases):
                    y += C[i, j] * A[c, j]
                x = values[e]
                log_sum += x * np.log(y)
                if hessian:
                    t = x / y
                    u = x / (y * y)
                    for j in range(n_phases):
                        sums[j] += t * A[c, j]
                        for m in range(j, n_phases):
                            H[i, j, m] += u * (A[c, j] * A[c, m])
            f[i] = linear - log_sum
            if hessian:
                for j in range(n_phases):
                    g[i, j] = s[j] - sums[j]
                    for m in range(j + 1, n_phases):
                        H[i, m, j] = H[i, j, m]

    return {"map": map_terms, "spectra": spectra_terms, "rows": row_terms}


@cache
def _compiled(name: str, k: int | None):
    return jit(_kernels(k)[name])


def _kernel(name: str, k: int):
    return _compiled(name, k if k <= UNROLLED_MAX_K else None)


def kl_map_terms(block, A_b, D, y, negative) -> None:
    """Model at the stored entries of ``block`` into ``y``, ``R_b D`` into ``negative``.

    Parameters
    ----------
    block : SparseRowBlock
        The CSR rows (``block.matrix``).
    A_b : ndarray (nb, k), C-ordered
        Maps of the block's rows.
    D : ndarray (n, k), C-ordered
        Spectra in channel space, all entries > 0.
    y : ndarray (nnz_b,)
        Written: the model at the stored entries.
    negative : ndarray (nb, k)
        Written: ``sum_e (x_e / y_e) D_{c_e}`` per row.
    """
    m = block.matrix
    _kernel("map", A_b.shape[1])(m.indptr, m.indices, m.data, A_b, D, y, negative)


def kl_spectra_terms(block, A_b, D, w_negative) -> None:
    """Add ``R_b^T A_b`` (``R = X / (A D^T)`` at the stored entries) to ``w_negative`` (n, k)."""
    m = block.matrix
    _kernel("spectra", A_b.shape[1])(m.indptr, m.indices, m.data, A_b, D, w_negative)


def _indicator_kernel_pair(k: int | None):
    """The two products with a 0/1 CSR matrix for ``k`` columns (None: any number)."""

    def rows(indptr, cols, D, out):
        n_phases = D.shape[1] if k is None else k
        sums = np.zeros(n_phases, dtype=out.dtype)  # a local buffer: 2x faster than `out`
        for r in range(out.shape[0]):
            for j in range(n_phases):
                sums[j] = 0
            for e in range(indptr[r], indptr[r + 1]):
                c = cols[e]
                for j in range(n_phases):
                    sums[j] += D[c, j]
            for j in range(n_phases):
                out[r, j] = sums[j]

    def columns(indptr, cols, A, out):
        n_phases = A.shape[1] if k is None else k
        row = np.zeros(n_phases, dtype=out.dtype)
        for r in range(A.shape[0]):
            for j in range(n_phases):
                row[j] = A[r, j]
            for e in range(indptr[r], indptr[r + 1]):
                c = cols[e]
                for j in range(n_phases):
                    out[c, j] += row[j]

    return rows, columns


def _poisson_deviance_at(indptr, cols, values, A, S, tiny):
    """``sum_e (y_e - x_e + x_e log(x_e / y_e))`` at the stored entries, ``y_e = A_r . S_c``."""
    k = A.shape[1]
    total = 0.0
    for r in range(A.shape[0]):
        for e in range(indptr[r], indptr[r + 1]):
            c = cols[e]
            y = A[r, 0] * S[c, 0]
            for j in range(1, k):
                y += A[r, j] * S[c, j]
            y = max(y, tiny)
            x = values[e]
            total += y - x
            if x > 0:
                total += x * np.log(x / y)
    return total


@cache
def _indicator_kernels(k: int | None):
    return tuple(jit(kernel) for kernel in _indicator_kernel_pair(k))


@cache
def _deviance_kernel():
    return jit(_poisson_deviance_at)


def indicator_times(indicator: sp.csr_matrix, D: np.ndarray) -> np.ndarray:
    """``indicator @ D`` for a CSR matrix whose stored entries are all ones, ``(rows, k)``.

    The same sums in the same order as SciPy's product (entries of a row in
    storage order), without reading the ones.
    """
    k = D.shape[1]
    out = np.empty((indicator.shape[0], k), dtype=D.dtype)
    rows = _indicator_kernels(k if k <= UNROLLED_MAX_K else None)[0]
    rows(indicator.indptr, indicator.indices, np.ascontiguousarray(D), out)
    return out


def indicator_transpose_times(indicator: sp.csr_matrix, A: np.ndarray) -> np.ndarray:
    """``indicator.T @ A`` for a CSR matrix of ones, ``(columns, k)`` (SciPy's order)."""
    k = A.shape[1]
    out = np.zeros((indicator.shape[1], k), dtype=A.dtype)
    columns = _indicator_kernels(k if k <= UNROLLED_MAX_K else None)[1]
    columns(indicator.indptr, indicator.indices, np.ascontiguousarray(A), out)
    return out


def poisson_deviance_at(entries: sp.csr_matrix, A: np.ndarray, S: np.ndarray) -> float:
    r"""``\sum_e y_e - x_e + x_e \log(x_e / y_e)`` over the stored entries ``x_e`` of
    ``entries`` (CSR), with the model ``y_e = \sum_l A_{r_e l} S_{c_e l}`` floored at
    the smallest normal float64 (``0 \log 0 = 0``). float64."""
    A = np.ascontiguousarray(A, dtype=np.float64)
    S = np.ascontiguousarray(S, dtype=np.float64)
    values = np.asarray(entries.data, dtype=np.float64)
    tiny = np.finfo(np.float64).tiny
    return float(_deviance_kernel()(entries.indptr, entries.indices, values, A, S, tiny))


#: Rows of :func:`compress_rows` are split between the threads in parts of at least
#: this many rows.
COMPRESS_ROWS = 1024


def kl_row_terms(csr, which, C, A, s, hessian: bool):
    r"""Objective, gradient and Hessian of the KL row problems of
    :mod:`espm_lite.kernels.newton_rows` (without the sparsity term), in one loop.

    For the rows ``which`` of ``csr`` (``x``) and their coefficients ``C`` (one
    row each): ``f = s^T c - \sum_e x_e \log y_e``, ``g = s - A^T (x / y)``
    and ``H = A^T \operatorname{diag}(x / y^2) A`` with ``y = A c`` at the
    stored entries; ``g`` and ``H`` are None unless ``hessian``. float64.
    """
    n_rows, k = C.shape
    f = np.empty(n_rows)
    g = np.empty((n_rows, k)) if hessian else np.empty((0, k))
    H = np.empty((n_rows, k, k)) if hessian else np.empty((0, k, k))
    _kernel("rows", k)(csr.indptr, csr.indices, csr.data, which, C, A, s, f, g, H, hessian)
    return f, (g if hessian else None), (H if hessian else None)


def _row_counts(values, counts):
    """``counts[r]`` = non-zero entries of row ``r`` of the dense ``values``."""
    for r in range(values.shape[0]):
        total = 0
        for c in range(values.shape[1]):
            if values[r, c] != 0:
                total += 1
        counts[r] = total


#: :func:`_fill_rows` tests this many entries at once and skips them when all are zero
#: (one vectorised test instead of a branch per entry: 1.2-1.9x faster on a band of
#: counts 2 % non-zero).
FILL_SKIP = 8


def _fill_rows(values, indptr, indices, data):
    """The stored entries of ``values`` (row by row, columns in order) into ``indices, data``."""
    n = values.shape[1]
    whole = n - n % FILL_SKIP
    for r in range(values.shape[0]):
        e = indptr[r]
        row = values[r]
        for first in range(0, whole, FILL_SKIP):
            nonzero = 0
            for j in range(FILL_SKIP):
                nonzero += row[first + j] != 0
            if nonzero:
                for c in range(first, first + FILL_SKIP):
                    if row[c] != 0:
                        indices[e] = c
                        data[e] = row[c]
                        e += 1
        c = whole
        while c < n:  # the last entries, fewer than FILL_SKIP
            if row[c] != 0:
                indices[e], data[e] = c, row[c]
                e += 1
            c += 1


@cache
def _compression_kernels():
    return jit(_row_counts), jit(_fill_rows)


def compress_rows(values, dtype, *, shared: bool = True) -> sp.csr_matrix:
    """The dense 2-D array ``values`` as a canonical CSR matrix of ``dtype``.

    The same matrix as ``scipy.sparse.csr_matrix(values.astype(dtype))``
    (int32 column indices, int64 row pointers), made in two compiled passes
    over ``values`` in its own type (no floating-point copy of the dense
    array), the rows shared between the data-pass threads (``shared``) or in
    the calling thread (a reading thread, while the data-pass threads work).
    SciPy's conversion with the NumPy engine.
    """
    values = np.asarray(values)
    dtype = np.dtype(dtype)
    if not use_compiled():
        matrix = sp.csr_matrix(values.astype(dtype, copy=False))
        matrix.indices = matrix.indices.astype(np.int32, copy=False)
        matrix.indptr = matrix.indptr.astype(np.int64, copy=False)
        return matrix
    values = np.ascontiguousarray(values)
    count, fill = _compression_kernels()
    p = values.shape[0]
    # Rows in parts, shared by the data-pass threads (the kernels release the GIL).
    size = max(COMPRESS_ROWS, -(-p // num_threads()))
    parts = [slice(lo, min(lo + size, p)) for lo in range(0, p, size)]
    indptr = np.zeros(p + 1, dtype=np.int64)

    def count_parts(mine):
        for rows in mine:
            count(values[rows], indptr[rows.start + 1 : rows.stop + 1])

    def run(pass_over):  # not shared: in this thread, without run_parts's BLAS limit
        if shared:
            run_parts(pass_over, parts, len(parts))
        else:
            pass_over(parts)

    run(count_parts)
    np.cumsum(indptr, out=indptr)
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    data = np.empty(int(indptr[-1]), dtype=dtype)

    def fill_parts(mine):
        for rows in mine:
            fill(values[rows], indptr[rows.start : rows.stop + 1], indices, data)

    run(fill_parts)
    matrix = sp.csr_matrix((data, indices, indptr), shape=values.shape, copy=False)
    matrix.has_canonical_format = True  # columns increase within each row, no duplicates
    return matrix


def csr_index_dtype(nnz: int, n_cols: int) -> type:
    """The one index type of both index arrays of a CSR matrix (int32 when it holds them),
    as SciPy's own operations on the matrix expect."""
    return np.int32 if max(nnz, n_cols) < np.iinfo(np.int32).max else np.int64


def dense_to_csr(values, dtype) -> sp.csr_matrix:
    """:func:`compress_rows` with one index type for both index arrays
    (:func:`csr_index_dtype`)."""
    matrix = compress_rows(values, dtype)
    index_dtype = csr_index_dtype(matrix.nnz, matrix.shape[1])
    matrix.indices = matrix.indices.astype(index_dtype, copy=False)
    matrix.indptr = matrix.indptr.astype(index_dtype, copy=False)
    return matrix

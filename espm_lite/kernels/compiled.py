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
  spectra term ``(R_b^T A_b)_c \mathrel{+}= (x_e / y_e) A_{r_e}``.

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
process loads it instead of compiling (the first compilation takes about half
a second per float type on 2 cores).

The engine is chosen by :func:`espm_lite.config_context` /
:func:`espm_lite.set_config` (``engine="auto"``, ``"numba"`` or ``"numpy"``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .._config import get_config


@cache
def _numba():
    """The numba module, or None when it cannot be imported."""
    try:
        import numba
    except ImportError:
        return None
    return numba


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

    return {"map": map_terms, "spectra": spectra_terms}


@cache
def _compiled(name: str, k: int | None):
    return _numba().njit(nogil=True, cache=True)(_kernels(k)[name])


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

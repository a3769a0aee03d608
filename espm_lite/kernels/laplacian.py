"""The graph Laplacian of a pixel grid (the smoothness penalty on the maps)."""

from __future__ import annotations

from functools import cache, cached_property

import numpy as np
import scipy.sparse as sp

from . import compiled


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


class GridLaplacian:
    """``L @ A`` for the Laplacian ``L`` of a pixel grid and maps ``A`` ``(ny*nx, k)``.

    With the compiled engine (:func:`espm_lite.kernels.compiled.use_compiled`)
    and a C-ordered NumPy ``A`` of the matrix's type, the product is a
    five-point stencil (:func:`_stencil`): no matrix is read, and the sums
    run in SciPy's order (the neighbour above, left, the pixel, right,
    below; the entries of a CSR row in column order), so both engines give
    the same values. Otherwise SciPy's product with :func:`grid_laplacian`.
    On a 100x400 grid with two phases the stencil takes 0.03-0.05 ms, SciPy's
    product 0.45 ms (``python benchmarks/bench_sparse.py --only parts``).

    Parameters
    ----------
    shape_2d : (int, int)
        ``(ny, nx)``.
    dtype : numpy dtype
    """

    def __init__(self, shape_2d: tuple[int, int], dtype=np.float64):
        self.shape_2d = (int(shape_2d[0]), int(shape_2d[1]))
        self.dtype = np.dtype(dtype)

    @cached_property
    def matrix(self) -> sp.csr_matrix:
        """:func:`grid_laplacian`, made at the first product that needs it (the stencil
        does not: on a 512x512 grid the matrix takes 94 ms and 17 MB to build)."""
        return grid_laplacian(self.shape_2d, self.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        n = self.shape_2d[0] * self.shape_2d[1]
        return (n, n)

    def __matmul__(self, A):
        if (
            isinstance(A, np.ndarray)
            and A.ndim == 2
            and A.dtype == self.dtype
            and A.flags.c_contiguous
            and compiled.use_compiled()
        ):
            out = np.empty_like(A)
            _compiled_stencil()(A, self.shape_2d[0], self.shape_2d[1], out)
            return out
        return self.matrix @ A


def _stencil(A, ny, nx, out):
    """``out = L A`` for the grid Laplacian, in the order of SciPy's CSR product.

    ``A`` is read flat: the neighbours of entry ``f`` are ``f -+ k`` (left,
    right) and ``f -+ nx k`` (above, below). Each row of the grid is done in
    three runs of the same neighbours (its first pixel, its inner pixels, its
    last pixel), each one loop over five shifted views of ``A`` (a missing
    neighbour reads zeros: subtracting zero changes no sum), which the
    compiler vectorises: ~8x faster than indexing with offsets.
    """
    k = A.shape[1]
    a = A.reshape(-1)
    o = out.reshape(-1)
    row = nx * k
    zeros = np.zeros(row, dtype=a.dtype)
    for y in range(ny):
        base = y * row
        up = a[base - row : base] if y > 0 else zeros
        down = a[base + row : base + 2 * row] if y < ny - 1 else zeros
        vertical = (y > 0) + (y < ny - 1)
        for part in range(3):
            if part == 0:  # the first pixel: no left neighbour
                lo, hi, has_left, has_right = 0, k, False, nx > 1
            elif part == 1:  # the inner pixels
                lo, hi, has_left, has_right = k, row - k, True, True
            else:  # the last pixel: no right neighbour
                lo, hi, has_left, has_right = row - k, row, True, False
            if hi <= lo or (part == 2 and nx == 1):
                continue
            n = hi - lo
            left = a[base + lo - k : base + hi - k] if has_left else zeros[:n]
            right = a[base + lo + k : base + hi + k] if has_right else zeros[:n]
            centre = a[base + lo : base + hi]
            above = up[lo:hi]
            below = down[lo:hi]
            target = o[base + lo : base + hi]
            d = a.dtype.type(vertical + has_left + has_right)
            for i in range(n):
                target[i] = (((-above[i]) - left[i]) + d * centre[i]) - right[i] - below[i]


@cache
def _compiled_stencil():
    return compiled.jit(_stencil)

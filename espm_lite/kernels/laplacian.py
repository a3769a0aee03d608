"""The graph Laplacian of a pixel grid (the smoothness penalty on the maps)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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

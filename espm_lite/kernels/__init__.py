"""Shared numerical kernels of the espm_lite estimators.

Every update term of ``docs/maths.md`` is written once here and used by all estimators:

* the data terms (generalised Kullback-Leibler and Frobenius) evaluated in one
  cache-friendly pass over the data, pixel block by pixel block
  (:func:`data_pass`, module :mod:`espm_lite.kernels.data_pass`),
* the forms of the data it takes, dense, sparse (:class:`SparseData`) or
  sparse densified block by block (:class:`DensifiedRows`), and the choice
  between them (:func:`choose_path`; module :mod:`espm_lite.kernels.sparse_data`),
* the graph Laplacian of a pixel grid (:func:`grid_laplacian`, and :class:`GridLaplacian`
  for its products, compiled as a stencil; module
  :mod:`espm_lite.kernels.laplacian`),
* the exact simplex projection by bisection on a Lagrange multiplier
  (:func:`bisect_multiplier`) and the multiplicative / quadratic-root /
  projected-gradient updates of a non-negative factor (:func:`mu_update`,
  :func:`quadratic_root_update`, :func:`projected_step`; module
  :mod:`espm_lite.kernels.simplex`),
* the array operations for any array-API namespace (:class:`ArrayOps`),
* row-by-row solves with the other factor fixed, used by every ``transform``
  (module :mod:`espm_lite.kernels.rows`: multiplicative updates;
  :mod:`espm_lite.kernels.least_squares`: exact Cholesky / NNLS solves).

Internal layout
---------------
All kernels work in the *pixels x channels* layout: the data ``X`` is
``(p, n)`` (C-contiguous, or CSR when sparse), the maps are ``A = H^T``
``(p, k)`` and the channel-space spectra ``D = G W`` ``(n, k)``, so that the
model is ``Y = A D^T``.  A block of pixels is then a contiguous block of rows.

The density thresholds of :func:`choose_path` are read from this namespace:
set ``espm_lite.kernels.SPARSE_DENSITY_THRESHOLD`` to change them.
"""

from ._array_ops import ArrayOps, column_max, column_means, column_sums
from .data_pass import DEVICE_BLOCK_BYTES, MapRule, PassResult, data_pass
from .fused import MultiplicativeMapRule
from .laplacian import LAPLACIAN_NORM_BOUND, GridLaplacian, grid_laplacian
from .simplex import bisect_multiplier, mu_update, projected_step, quadratic_root_update
from .sparse_data import (
    BLOCK_BYTES,
    SPARSE_BLOCK_NNZ,
    SPARSE_DENSITY_THRESHOLD,
    SPARSE_DENSITY_THRESHOLD_FLOAT32,
    SPARSE_DENSITY_THRESHOLD_FLOAT32_NUMPY,
    SPARSE_DENSITY_THRESHOLD_NUMPY,
    DensifiedRows,
    SparseData,
    SparseRowBlock,
    canonical_csr,
    choose_path,
    data_constants,
    data_sum,
    dense_block,
    density,
    density_threshold,
    prepare_data,
    row_blocks,
    xlogx_sum,
)
from .threads import num_threads, one_blas_thread_if

__all__ = [
    "BLOCK_BYTES",
    "DEVICE_BLOCK_BYTES",
    "LAPLACIAN_NORM_BOUND",
    "SPARSE_BLOCK_NNZ",
    "SPARSE_DENSITY_THRESHOLD",
    "SPARSE_DENSITY_THRESHOLD_FLOAT32",
    "SPARSE_DENSITY_THRESHOLD_FLOAT32_NUMPY",
    "SPARSE_DENSITY_THRESHOLD_NUMPY",
    "ArrayOps",
    "DensifiedRows",
    "MapRule",
    "MultiplicativeMapRule",
    "PassResult",
    "SparseData",
    "SparseRowBlock",
    "bisect_multiplier",
    "canonical_csr",
    "choose_path",
    "column_max",
    "column_means",
    "column_sums",
    "data_constants",
    "data_pass",
    "data_sum",
    "dense_block",
    "density",
    "density_threshold",
    "GridLaplacian",
    "grid_laplacian",
    "mu_update",
    "num_threads",
    "one_blas_thread_if",
    "prepare_data",
    "projected_step",
    "quadratic_root_update",
    "row_blocks",
    "xlogx_sum",
]

r"""Dask arrays as estimator input: streamed once into memory, compressed when sparse.

A spectrum image larger than memory usually arrives as a dask array (a lazy
HyperSpy signal, or ``dask.array.from_zarr`` / ``from_array`` over an HDF5
dataset).  Low-dose counts are mostly zeros, and the KL passes over the data
only need the stored entries (:mod:`espm_lite.kernels.sparse_data`), so
:func:`in_memory` reads the array once, band of pixels by band of pixels, and
keeps each band as a CSR matrix:

* each band (one row of dask chunks of the pixels-x-channels layout) is
  computed where the active dask scheduler runs it (threads, processes or the
  workers of a ``dask.distributed`` cluster, which then read the data
  themselves) and turned into CSR there, so only the compressed band travels;
* every band is checked on the way (finite, and non-negative for count
  models), the error naming the estimator and its input;
* the bands are kept while their total stays within the memory budget
  (``max_memory``), then joined into one CSR matrix that the in-memory sparse
  path fits: the same iterates as a fit of the same data in memory.

When the data are too dense for the sparse path (see
:func:`espm_lite.kernels.density_threshold`) they are kept dense if that fits
the budget.  Data that fit neither way stay on disk: SmoothNMF then reads them
at every pass (:class:`espm_lite.kernels.chunked.ChunkedData`, exact passes
over the chunks); the other estimators raise a ``MemoryError`` naming the
budget.

Memory: at most ``2 x`` the compressed size while the bands are joined (the
dense form is filled in place), plus the bands being computed (one per CPU).

A dense NumPy array in memory takes the same road when the fit would take the
sparse path (:func:`compressed_if_sparse`): it is compressed in its own type
(integer counts, as HyperSpy loads them) before any floating-point copy is made.
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from .kernels.chunked import ChunkedData, check_values, chunk_tasks
from .kernels.compiled import compress_rows, csr_index_dtype, dense_to_csr
from .kernels.sparse_data import density_threshold

_logger = logging.getLogger(__name__)

#: Fraction of the available memory that ``max_memory=None`` allows.
MEMORY_FRACTION = 0.5


def is_dask_array(X) -> bool:
    """Whether ``X`` is a ``dask.array.Array`` (without importing dask)."""
    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(X, dask_array.Array)


def available_memory() -> int | None:
    """Bytes of physical memory available now (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(max_memory) -> int:
    """``max_memory`` in bytes: an int, a string such as ``"2GB"`` or None.

    None is :data:`MEMORY_FRACTION` of the available memory (4 GiB where the
    system does not say).
    """
    if max_memory is None:
        available = available_memory()
        return int(MEMORY_FRACTION * available) if available else 4 << 30
    if isinstance(max_memory, str):
        from dask.utils import parse_bytes

        try:
            return int(parse_bytes(max_memory))
        except ValueError as error:
            raise ValueError(
                f"max_memory must be a number of bytes or a size such as '2GB', got {max_memory!r}."
            ) from error
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer, float)):
        raise TypeError(f"max_memory must be an int, a string or None, got {max_memory!r}.")
    if not max_memory > 0:
        raise ValueError(f"max_memory must be positive, got {max_memory!r}.")
    return int(max_memory)


def in_memory(estimator, X, *, where: str = "input X"):
    """For a dask array its values in memory (CSR when sparse); a dense array bound for
    the sparse path compressed (:func:`compressed_if_sparse`); anything else as it is.

    Parameters
    ----------
    estimator : NMFEstimator
        Read for ``hspy_comp`` (which axis holds the pixels), ``dtype``,
        ``sparse``, ``max_memory``, ``verbose`` and whether it takes signed data.
    X : array-like, sparse matrix or dask array
        In the estimator's orientation.
    where : str
        Named in error messages.

    Returns
    -------
    ndarray or sparse matrix
        In the orientation of ``X``; a sparse matrix when the data go to the
        sparse path (CSR; CSC when the pixels of a dask array are its columns,
        or when a dense array is stored by columns).

    Raises
    ------
    ValueError
        ``X`` not 2-D, not finite, or negative for a count model.
    MemoryError
        The data fit ``max_memory`` neither compressed nor dense.
    """
    if not is_dask_array(X):
        return compressed_if_sparse(estimator, X)
    if X.ndim != 2:
        raise ValueError(f"{where} must be 2-D, got a dask array of shape {X.shape}.")
    budget = memory_budget(getattr(estimator, "max_memory", None))
    dtype = _dtype(estimator, X.dtype)
    pixels_first = bool(estimator.hspy_comp)
    Xi = _banded(X if pixels_first else X.T, dtype.itemsize, budget)
    check_sign = bool(estimator._non_negative_input)
    name = f"{type(estimator).__name__} {where}"
    csr = None
    if estimator._uses_data_pass and estimator.sparse is not False:
        csr = _stream_csr(Xi, dtype, budget, check_sign, name, estimator.verbose)
    p, n = csr.shape if csr is not None else Xi.shape
    dense_bytes = p * n * dtype.itemsize if np.isfinite(p) else None
    if csr is not None:
        threshold = density_threshold(dtype, estimator.sparse)
        if csr.nnz < threshold * p * n or dense_bytes > budget:
            _logger.info(
                "%s: dask array streamed into CSR (%d stored entries, %.3g GB).",
                name,
                csr.nnz,
                _csr_bytes(csr) / 1e9,
            )
            return csr if pixels_first else csr.T
        dense = csr.toarray()
    elif dense_bytes is not None and dense_bytes <= budget:
        dense = _stream_dense(Xi, dtype, check_sign, name, estimator.verbose)
    elif getattr(estimator, "_fits_chunks", False):
        _logger.info("%s: the dask array stays on disk, read band by band at every pass.", name)
        # Bands within the budget as stored: the passes hold raw bands, and cast them
        # block by block or compress them as they are read.
        raw_bands = _banded(X if pixels_first else X.T, X.dtype.itemsize, budget)
        return ChunkedData(
            raw_bands,
            dtype,
            n_features=X.shape[1],
            where=name,
            check_sign=check_sign,
            verbose=estimator.verbose,
        )
    else:
        raise MemoryError(
            f"{name}: the dask array of shape {X.shape} fits max_memory={budget / 1e9:.3g} GB "
            f"neither as a sparse (CSR) matrix nor dense, and {type(estimator).__name__} "
            "cannot read it at every pass (SmoothNMF can): raise max_memory, crop or bin the "
            "data, or fit a part and use transform on the rest."
        )
    _logger.info("%s: dask array computed into memory (dense, %.3g GB).", name, dense.nbytes / 1e9)
    return dense if pixels_first else dense.T


def compressed_if_sparse(estimator, X):
    """A dense NumPy array that the fit will take on the sparse path, as a sparse matrix.

    The array is compressed in its own type (:func:`~espm_lite.kernels.compiled.dense_to_csr`:
    integer counts are never copied to a dense floating-point array, which for a
    240x320x2048 map of ``uint8`` counts is 1.3 GB and most of the time of a fit), in the
    orientation of ``X`` (CSR of its rows, or CSC when it is stored by columns); its
    stored values are then checked by the usual validation. Anything else is returned
    as it is: other types, arrays the sparse path would not take (``sparse=False``,
    density above :func:`~espm_lite.kernels.density_threshold`, estimators without the
    pass over the data), and data given to a callable ``G``, which receives them dense.
    """
    if not (
        isinstance(X, np.ndarray)
        and not isinstance(X, np.matrix)
        and X.ndim == 2
        and X.size > 0
        and (X.dtype.kind in "iu" or X.dtype in (np.float32, np.float64))
        and estimator._uses_data_pass
        and estimator.sparse is not False
        and not callable(getattr(estimator, "G", None))
    ):
        return X
    dtype = _dtype(estimator, X.dtype)
    stored = np.count_nonzero(X)
    threshold = density_threshold(dtype, estimator.sparse)
    if estimator.sparse is not True and stored >= threshold * X.size:
        return X
    by_columns = X.flags.f_contiguous and not X.flags.c_contiguous
    matrix = dense_to_csr(X.T if by_columns else X, dtype)
    matrix = matrix.T if by_columns else matrix  # CSC: the columns as stored
    _logger.info(
        "%s: dense input compressed into a sparse matrix (%d stored entries, %.3g GB).",
        type(estimator).__name__,
        stored,
        _csr_bytes(matrix) / 1e9,
    )
    return matrix


def _dtype(estimator, dtype) -> np.dtype:
    """The floating type the fit will compute in (as ``validate_input`` chooses it)."""
    if estimator.dtype is not None:
        return np.dtype(estimator.dtype)
    return np.dtype(np.float32) if np.dtype(dtype) == np.float32 else np.dtype(np.float64)


#: Largest fraction of the budget one band (a row of chunks, all channels, in memory) takes.
BAND_FRACTION = 1 / 8


def _banded(Xi, itemsize: int, budget: int):
    """``Xi`` with whole rows of channels per chunk, each band within :data:`BAND_FRACTION`
    of the budget (chunks that split the channels, or bands too large, are rechunked)."""
    n = Xi.shape[1]
    rows = max(Xi.chunks[0]) if Xi.chunks[0] else 0
    too_large = np.isfinite(rows) and rows * n * itemsize > BAND_FRACTION * budget
    if too_large:
        rows = max(1, int(BAND_FRACTION * budget) // max(1, n * itemsize))
        return Xi.rechunk({0: rows, 1: -1})
    return Xi.rechunk({1: -1}) if Xi.numblocks[1] > 1 else Xi


def _bands(Xi) -> list:
    """The rows of dask chunks of ``Xi`` (each band: all its channels), a dask task each
    (:func:`~espm_lite.kernels.chunked.chunk_tasks`: no copy of the chunks)."""
    return chunk_tasks(Xi)


def _groups(bands: list, verbose) -> list[list]:
    """Bands in groups computed together (one per scheduler thread), with a progress bar."""
    size = max(1, min(os.cpu_count() or 1, 16))
    groups = [bands[i : i + size] for i in range(0, len(bands), size)]
    return tqdm(groups, desc="espm_lite: reading chunks", disable=not verbose, leave=False)


def _stream_csr(Xi, dtype, budget: int, check_sign: bool, name: str, verbose):
    """``Xi`` (p, n) as one CSR matrix, or None as soon as it exceeds ``budget`` bytes."""
    import dask

    parts: list[sp.csr_matrix] = []
    stored = 0
    for group in _groups(_bands(Xi), verbose):
        tasks = [dask.delayed(_band_csr)(band, dtype, check_sign, name) for band in group]
        for part in dask.compute(*tasks):
            parts.append(part)
            stored += _csr_bytes(part)
        if 2 * stored > budget:  # the join needs the parts and the result at once
            _logger.info("%s: more than max_memory as CSR; not compressed.", name)
            return None
    return _join(parts, dtype)


def _stream_dense(Xi, dtype, check_sign: bool, name: str, verbose) -> np.ndarray:
    """``Xi`` (p, n) computed band by band into one dense array (its size known)."""
    import dask

    out = np.empty(Xi.shape, dtype=dtype)
    row = 0
    for group in _groups(_bands(Xi), verbose):
        tasks = [dask.delayed(_checked)(band, dtype, check_sign, name) for band in group]
        for values in dask.compute(*tasks):
            out[row : row + values.shape[0]] = values
            row += values.shape[0]
    return out


def _checked(band, dtype, check_sign: bool, name: str) -> np.ndarray:
    """One band as an array of ``dtype``, checked finite (and non-negative)."""
    values = np.asarray(band)
    if values.ndim != 2:
        raise ValueError(f"{name}: a band of the dask array has shape {values.shape}.")
    values = values.astype(dtype, copy=False)
    check_values(values, name, check_sign)
    return values


def _band_csr(band, dtype, check_sign: bool, name: str) -> sp.csr_matrix:
    """One band checked (:func:`_checked`) and compressed (runs where the band is read)."""
    return compress_rows(_checked(band, dtype, check_sign, name), dtype)


def _csr_bytes(matrix: sp.csr_matrix) -> int:
    return matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes


def _join(parts: list[sp.csr_matrix], dtype) -> sp.csr_matrix:
    """The bands stacked into one canonical CSR matrix (index arrays copied once)."""
    n = parts[0].shape[1]
    p = sum(part.shape[0] for part in parts)
    nnz = sum(part.nnz for part in parts)
    index_dtype = csr_index_dtype(nnz, n)
    data = np.empty(nnz, dtype=dtype)
    indices = np.empty(nnz, dtype=index_dtype)
    indptr = np.empty(p + 1, dtype=index_dtype)
    indptr[0] = 0
    row = at = 0
    while parts:
        part = parts.pop(0)  # freed once copied
        rows, stored = part.shape[0], part.nnz
        data[at : at + stored] = part.data
        indices[at : at + stored] = part.indices
        indptr[row + 1 : row + rows + 1] = part.indptr[1:] + at
        row, at = row + rows, at + stored
    matrix = sp.csr_matrix((data, indices, indptr), shape=(p, n), copy=False)
    matrix.has_canonical_format = True  # each band was canonical, bands are row-disjoint
    return matrix

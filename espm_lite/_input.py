"""The data a fit takes: dask arrays brought in, then validated by scikit-learn.

:func:`validate_input` is the one entry of the data of ``fit``, ``transform``
and ``loss``: a dask array is first read into memory, or left on disk
(:func:`espm_lite._lazy.in_memory`), then scikit-learn checks the rest (type,
finiteness, sign, number of features).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_non_negative, validate_data

from ._lazy import in_memory
from .kernels.chunked import ChunkedData
from .kernels.sparse_data import canonical_csr


def validate_input(estimator, X, *, reset: bool, where: str):
    """``X`` validated by scikit-learn for ``estimator`` (dtype, finiteness, sign, features).

    ``reset=True`` records ``n_features_in_`` (fit); otherwise it is checked.
    Counts must be non-negative unless the estimator takes signed data. A dask
    array is first brought into memory, or left on disk and checked as it is
    read (:func:`espm_lite._lazy.in_memory`).
    """
    X = in_memory(estimator, X, where=where)
    if isinstance(X, ChunkedData):  # checked as it is read (ChunkedData.summary)
        return _checked_features(estimator, X, reset)
    X = validate_data(
        estimator,
        X,
        accept_sparse=("csr", "csc", "coo"),
        dtype=compute_dtype(estimator.dtype),
        reset=reset,
    )
    if estimator._non_negative_input:
        check_non_negative(X, f"{type(estimator).__name__} {where}")
    return X


def transform_input(estimator, X):
    """``X`` of ``transform``: validated, CSR when sparse.

    Data left on disk are read band by band of pixels, so they can be
    transformed only with pixels as rows (``hspy_comp=True``): with channels
    as rows each solved row would need every pixel at once.
    """
    X = validate_input(estimator, X, reset=False, where="transform (input X)")
    if isinstance(X, ChunkedData) and not estimator.hspy_comp:
        raise ValueError(
            f"{type(estimator).__name__}.transform with hspy_comp=False solves each channel "
            "from all the pixels at once, and this dask array is left on disk (larger than "
            "max_memory): raise max_memory, or transform pixels (hspy_comp=True)."
        )
    return canonical_csr(X) if sp.issparse(X) else X


def _checked_features(estimator, X: ChunkedData, reset: bool) -> ChunkedData:
    """What scikit-learn's validation records or checks of data left on disk: the features."""
    if reset:
        estimator.n_features_in_ = X.n_features
    elif X.n_features != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.n_features} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input."
        )
    return X


def compute_dtype(dtype):
    """The ``dtype`` argument of ``validate_data`` for an estimator's ``dtype`` parameter."""
    if dtype is None:
        return [np.float64, np.float32]
    allowed = (np.dtype(np.float32), np.dtype(np.float64))
    try:
        value = np.dtype(dtype)
    except TypeError:
        value = None
    if value not in allowed:
        raise ValueError(f"dtype must be None, numpy.float32 or numpy.float64, got {dtype!r}.")
    return value

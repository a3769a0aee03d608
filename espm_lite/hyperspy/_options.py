"""Algorithm names and the checks of ``decomposition``'s arguments.

The espm_lite algorithm names (:data:`ALGORITHMS`) and HyperSpy's own
(:data:`HYPERSPY_ALGORITHMS`), how a name or an estimator object becomes the
estimator to fit (:func:`resolve_estimator`), HyperSpy's ``decomposition``
keywords that apply or not to espm_lite estimators, and mask flattening.
All re-exported by :mod:`espm_lite.hyperspy.decomposition`.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.base import clone

from ..estimators import PNMF, SNMF, ConvexNMF, NMFEstimator, SmoothNMF

# The logger of ``decomposition``'s messages, named as before this module was split off.
_logger = logging.getLogger(__package__ + ".decomposition")

#: Algorithm names accepted by ``decomposition(algorithm=...)`` (in any case).
ALGORITHMS: dict[str, type[NMFEstimator]] = {
    "SmoothNMF": SmoothNMF,
    "SNMF": SNMF,
    "ConvexNMF": ConvexNMF,
    "PNMF": PNMF,
}

#: HyperSpy's own algorithm names (eager and lazy), passed through to HyperSpy.
HYPERSPY_ALGORITHMS: tuple[str, ...] = (
    "SVD",
    "MLPCA",
    "sklearn_pca",
    "NMF",
    "sparse_pca",
    "mini_batch_sparse_pca",
    "RPCA",
    "ORPCA",
    "ORNMF",
    "PCA",
)

_BY_LOWER_NAME = {name.lower(): name for name in (*ALGORITHMS, *HYPERSPY_ALGORITHMS)}


def canonical_algorithm(algorithm):
    """``algorithm`` with a name spelled as registered (names are case-insensitive).

    Objects are returned unchanged.

    Raises
    ------
    ValueError
        An unknown name, listing the valid ones.
    """
    if not isinstance(algorithm, str):
        return algorithm
    name = _BY_LOWER_NAME.get(algorithm.lower())
    if name is None:
        raise ValueError(
            f"Unknown decomposition algorithm {algorithm!r}. espm_lite's algorithms (any "
            f"case): {', '.join(ALGORITHMS)}. HyperSpy's own algorithms are passed through "
            f"to HyperSpy: {', '.join(HYPERSPY_ALGORITHMS)}; an estimator object "
            "(espm_lite's or scikit-learn-like) is accepted too."
        )
    return name


def resolve_estimator(algorithm, output_dimension, kwargs: dict) -> NMFEstimator | None:
    """The espm_lite estimator to fit, or None when ``algorithm`` is not one of ours.

    A registered name (any case) builds a new estimator from
    ``output_dimension`` (required: the number of phases) and ``kwargs``, with
    ``normalize=True`` unless given (so that ``lambda_L`` and ``mu`` mean the
    same at any number of counts); an estimator instance is cloned (the
    caller's object is never modified), with ``output_dimension`` / ``kwargs``
    as parameter overrides; without ``output_dimension`` its own
    ``n_components`` is used.

    Raises
    ------
    ValueError
        An unknown algorithm name, or a name without ``output_dimension``.
    """
    algorithm = canonical_algorithm(algorithm)
    overrides = dict(kwargs)
    if output_dimension is not None:
        overrides["n_components"] = output_dimension
    if isinstance(algorithm, str) and algorithm in ALGORITHMS:
        if output_dimension is None:
            raise ValueError(
                f"decomposition(algorithm={algorithm!r}) needs output_dimension=, the number "
                "of phases (components) to fit, e.g. output_dimension=3, or "
                "output_dimension='auto' to choose it by held-out likelihood "
                "(s.estimate_n_components() shows the scores first)."
            )
        try:
            return ALGORITHMS[algorithm](**{"normalize": True, **overrides})
        except TypeError as exc:
            raise TypeError(f"decomposition(algorithm={algorithm!r}): {exc}") from exc
    if isinstance(algorithm, NMFEstimator):
        estimator = clone(algorithm)
        if output_dimension is None:
            _logger.info(
                "espm_lite decomposition: no output_dimension, using the estimator's "
                "n_components=%r.",
                estimator.n_components,
            )
        if overrides:
            estimator.set_params(**overrides)
        return estimator
    return None


def _flat_mask(mask, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """A boolean mask (True = excluded) flattened in array order, or None.

    Accepted: a flat array of the right size, or an array of ``shape`` (array
    order) or of ``shape`` reversed (HyperSpy's axes order), or a signal.
    """
    if mask is None:
        return None
    from hyperspy.signal import BaseSignal

    arr = mask.data if isinstance(mask, BaseSignal) else np.asarray(mask)
    if arr.dtype != bool:
        raise TypeError(f"{name} must be a boolean array or signal, got dtype {arr.dtype}.")
    what = "pixels" if name == "navigation_mask" else "channels"
    if arr.size != int(np.prod(shape)):
        raise ValueError(
            f"{name} has {arr.size} entries but the signal has {int(np.prod(shape))} "
            f"{what} (shape {shape})."
        )
    if arr.ndim > 1:
        if arr.shape != tuple(shape) and arr.T.shape == tuple(shape):
            arr = arr.T  # given in HyperSpy's axes order
        elif arr.shape != tuple(shape):
            raise ValueError(
                f"{name} has shape {arr.shape}, but the {what} of the signal have shape "
                f"{tuple(shape)} (array order) or {tuple(shape)[::-1]} (HyperSpy's axes "
                f"order); pass a mask of one of these shapes or a flat one of {arr.size}."
            )
    return arr.reshape(-1)


def _check_hyperspy_keywords(kwargs: dict, lazy: bool) -> dict:
    """Take HyperSpy's own ``decomposition`` keywords out of ``kwargs``.

    Those that make sense with an espm_lite estimator are honoured (``copy``
    and ``auto_transpose`` are accepted with no effect: the data are never
    modified and there is no SVD to transpose; ``get`` is the dask scheduler
    that computes a lazy signal); the others are refused with a ValueError
    saying why. Returns the honoured options.
    """
    options = {}
    refused = {
        "centre": "centring makes the counts signed, which breaks non-negativity and the "
        "Poisson (KL) model; leave centre=None",
        "reproject": "the fit gives the loadings of every unmasked pixel and the factors of "
        "every unmasked channel; reprojecting the masked ones is not supported, leave "
        "reproject=None",
        "var_array": "it is only used by HyperSpy's MLPCA; espm_lite's KL loss already "
        "models Poisson variance",
        "var_func": "it is only used by HyperSpy's MLPCA; espm_lite's KL loss already "
        "models Poisson variance",
        "svd_solver": "it is only used by algorithm='SVD'",
        "num_chunks": "it is only used by HyperSpy's incremental lazy algorithms; espm_lite "
        "reads a lazy signal in its own chunks",
    }
    for name, why in refused.items():
        if name in kwargs:
            value = kwargs.pop(name)
            if value is not None:
                raise ValueError(
                    f"{name}={value!r} is not supported with espm_lite estimators: {why}."
                )
    for name in ("copy", "auto_transpose"):
        if name in kwargs:
            value = kwargs.pop(name)
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {value!r}.")
            _logger.debug("espm_lite decomposition: %s=%r has no effect.", name, value)
    if "get" in kwargs:
        value = kwargs.pop("get")
        if value is not None:
            if not lazy:
                raise ValueError(
                    f"get={value!r} (a dask scheduler) only applies to lazy signals; this "
                    "signal is in memory."
                )
            options["scheduler"] = value
    return options


def _is_espm_algorithm(algorithm) -> bool:
    """Whether ``algorithm`` (as :func:`canonical_algorithm` returns it) is fitted by espm_lite."""
    return isinstance(algorithm, NMFEstimator) or (
        isinstance(algorithm, str) and algorithm in ALGORITHMS
    )

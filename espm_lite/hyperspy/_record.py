"""What an espm_lite fit stores in ``learning_results``, and reading it back.

Besides HyperSpy's own fields (factors, loadings, masks...), an espm_lite
fit keeps ``learning_results.espm_parameters`` (the estimator's parameters in
a form the hspy writer keeps, :func:`_serialisable_params`; what it cannot
keep becomes a :data:`NOT_SAVED` marker) and ``learning_results.espm_W``:
with them a reloaded file can be quantified (:func:`_read_fit_record`).
"""

from __future__ import annotations

import numpy as np

from ..estimators import NMFEstimator
from ._options import ALGORITHMS

#: Marker stored in ``learning_results.espm_parameters`` for what a file cannot hold.
NOT_SAVED = "<not saved: {}>"


def _learning_results(estimator, factors, loadings, nav_mask, sig_mask, nav_shape, n_channels):
    """HyperSpy's ``LearningResults`` of a fit: factors and loadings in full, with NaN
    where masked, and the masks in the signal's shapes."""
    from hyperspy.learn import LearningResults

    target = LearningResults()
    target.factors = factors
    target.loadings = loadings
    target.explained_variance = None
    target.explained_variance_ratio = None
    target.number_significant_components = None
    # A string, not the estimator: RosettaSciIO can save it.
    target.decomposition_algorithm = type(estimator).__name__
    target.poissonian_noise_normalized = False
    target.output_dimension = estimator.n_components_
    target.unfolded = False
    target.centre = None
    target.mean = None
    target.unmixing_matrix = None
    target.bss_algorithm = None
    target.bss_factors = None
    target.bss_loadings = None
    target.navigation_mask = None
    target.signal_mask = None
    if nav_mask is not None:
        target.navigation_mask = nav_mask.reshape(nav_shape)
    if sig_mask is not None:
        target.signal_mask = sig_mask.reshape((n_channels,))
    return target


def _store_record(learning_results, estimator, params: dict) -> None:
    """Add the espm_lite record of a fit to ``learning_results``."""
    # What a reloaded file needs to reproduce and quantify the fit: the
    # parameters (a labelled G as values, labels and simplex rows) and W
    # (the maps H are the loadings, G W the factors).
    learning_results.espm_parameters = params
    learning_results.espm_W = np.array(estimator.W_)


def _read_fit_record(lr):
    """``(W, H, G)`` of the espm_lite fit recorded in ``lr`` (``learning_results``);
    see ``EspmDecompositionMixin._espm_fit_record``."""
    from ..models import LabelledG

    params = getattr(lr, "espm_parameters", None)
    W = getattr(lr, "espm_W", None)
    G = params.get("G") if isinstance(params, dict) else None
    if isinstance(G, dict) and {"values", "labels", "simplex_rows"} <= set(G):
        G = LabelledG(
            np.asarray(G["values"], dtype=np.float64),
            tuple(str(label) for label in G["labels"]),
            np.asarray(G["simplex_rows"], dtype=bool),
        )
    if W is None or not hasattr(G, "labels") or lr.factors is None or lr.loadings is None:
        raise ValueError(
            "No EDX fit: run s.decomposition(algorithm='SmoothNMF', G='edx', ...) "
            "(or G=s.build_G(...)) first."
        )
    W = np.asarray(W, dtype=np.float64)
    factors = np.asarray(lr.factors, dtype=np.float64)
    loadings = np.asarray(lr.loadings, dtype=np.float64)
    sig_mask = getattr(lr, "signal_mask", None)
    nav_mask = getattr(lr, "navigation_mask", None)
    if sig_mask is not None:
        factors = factors[~np.asarray(sig_mask, dtype=bool).ravel()]
    if nav_mask is not None:
        loadings = loadings[~np.asarray(nav_mask, dtype=bool).ravel()]
    expected = G.values @ W if W.shape[0] == G.shape[1] else None
    if (
        lr.decomposition_algorithm not in ALGORITHMS
        or expected is None
        or factors.shape != expected.shape
        or loadings.shape[1] != W.shape[1]
        or not np.all(np.isfinite(factors))
        or np.linalg.norm(factors - expected) > 1e-4 * max(np.linalg.norm(expected), 1e-300)
    ):
        raise ValueError(
            "The stored EDX fit is not the current decomposition: learning_results were "
            "changed since (another decomposition, crop_decomposition_dimension, reversed "
            "or normalised components...). Run s.decomposition(algorithm='SmoothNMF', "
            "G='edx', ...) again."
        )
    if np.any(W < 0):
        raise ValueError(
            f"The {lr.decomposition_algorithm} fit has negative entries in W (a signed "
            "fit): element fractions are not defined. Quantify a non-negative fit "
            "(SmoothNMF, PNMF, ConvexNMF) with G='edx'."
        )
    return W, loadings.T, G


def _serialisable_params(estimator: NMFEstimator) -> tuple[dict, list[str]]:
    """The estimator's parameters in a form HyperSpy's hspy writer keeps, and what is not.

    Scalars and strings as they are; sequences of numbers or strings as lists;
    arrays as arrays; a labelled ``G`` as ``{"values", "labels",
    "simplex_rows"}``; a dtype as its name. Anything else (a callable ``G``, a
    ``RandomState``...) becomes the marker ``"<not saved: ...>"`` and is
    listed in the second value, as ``"name (kind)"``.
    """
    out = {}
    not_saved = []
    for name, value in estimator.get_params(deep=False).items():
        if value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif isinstance(value, (np.bool_, np.integer, np.floating)):
            out[name] = value.item()
        elif isinstance(value, np.dtype) or (
            isinstance(value, type) and issubclass(value, np.generic)
        ):
            out[name] = np.dtype(value).name
        elif hasattr(value, "labels") and hasattr(value, "simplex_rows"):  # a labelled G
            out[name] = {
                "values": np.array(value.values, dtype=np.float64),
                "labels": [str(label) for label in value.labels],
                "simplex_rows": np.array(value.simplex_rows, dtype=bool),
            }
        elif isinstance(value, (tuple, list)) and value and all(isinstance(v, str) for v in value):
            out[name] = list(value)
        elif isinstance(value, (tuple, list)) and all(
            isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating)) for v in value
        ):
            out[name] = [v.item() if isinstance(v, np.generic) else v for v in value]
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[name] = np.array(value)
        else:
            kind = (
                "callable"
                if callable(value)
                else "RandomState"
                if isinstance(value, (np.random.RandomState, np.random.Generator))
                else type(value).__name__
            )
            out[name] = NOT_SAVED.format(kind)
            not_saved.append(f"{name} ({kind})")
    return out, not_saved

"""``decomposition`` for spectrum-image signals with the espm_lite estimators.

:class:`EspmDecompositionMixin` is mixed into espm_lite's HyperSpy signal
classes.  With an espm_lite estimator (an instance, or a registered name such
as ``"SmoothNMF"``) it fits the data itself, in HyperSpy's orientation, and
fills ``learning_results`` as HyperSpy does, so that
``get_decomposition_factors()``, ``get_decomposition_loadings()``,
``plot_decomposition_results()`` and ``get_decomposition_model()`` work.  Any
other algorithm goes to the parent class unchanged.

Why not HyperSpy's own ``decomposition``: it refuses integer counts, hands the
estimator a view of the user's data, cannot fill in ``shape_2d`` from the
navigation axes, and (with exspy's defaults) normalises Poisson noise, which
breaks the Poisson (KL) model.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
from sklearn.base import clone

from ..estimators import PNMF, SNMF, ConvexNMF, NMFEstimator, SmoothNMF

_logger = logging.getLogger(__name__)

#: Algorithm names accepted by ``decomposition(algorithm=...)``.
ALGORITHMS: dict[str, type[NMFEstimator]] = {
    "SmoothNMF": SmoothNMF,
    "SNMF": SNMF,
    "ConvexNMF": ConvexNMF,
    "PNMF": PNMF,
}


def resolve_estimator(algorithm, output_dimension, kwargs: dict) -> NMFEstimator | None:
    """The espm_lite estimator to fit, or None when ``algorithm`` is not one of ours.

    A registered name builds a new estimator from ``output_dimension`` and
    ``kwargs``, with ``normalize=True`` unless given (so that ``lambda_L`` and
    ``mu`` mean the same at any number of counts); an estimator instance is
    cloned (the caller's object is never modified), with ``output_dimension``
    / ``kwargs`` as parameter overrides.
    """
    overrides = dict(kwargs)
    if output_dimension is not None:
        overrides["n_components"] = output_dimension
    if isinstance(algorithm, str) and algorithm in ALGORITHMS:
        try:
            return ALGORITHMS[algorithm](**{"normalize": True, **overrides})
        except TypeError as exc:
            raise TypeError(f"decomposition(algorithm={algorithm!r}): {exc}") from exc
    if isinstance(algorithm, NMFEstimator):
        estimator = clone(algorithm)
        if overrides:
            estimator.set_params(**overrides)
        return estimator
    return None


def _flat_mask(mask, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """A boolean mask (True = excluded) flattened in array order, or None."""
    if mask is None:
        return None
    from hyperspy.signal import BaseSignal

    arr = mask.data if isinstance(mask, BaseSignal) else np.asarray(mask)
    if arr.dtype != bool:
        raise TypeError(f"{name} must be a boolean array or signal, got dtype {arr.dtype}.")
    if arr.size != int(np.prod(shape)):
        raise ValueError(
            f"{name} has {arr.size} entries but the signal has {int(np.prod(shape))} "
            f"{'pixels' if name == 'navigation_mask' else 'channels'} (shape {shape})."
        )
    if arr.ndim > 1 and arr.shape != tuple(shape) and arr.T.shape == tuple(shape):
        arr = arr.T  # given in HyperSpy's axes order
    return arr.reshape(-1)


class EspmDecompositionMixin:
    """Adds espm_lite estimators to ``decomposition`` (see the module docstring)."""

    def decomposition(
        self,
        normalize_poissonian_noise=None,
        algorithm="SmoothNMF",
        output_dimension=None,
        navigation_mask=None,
        signal_mask=None,
        return_info=False,
        print_info=True,
        **kwargs,
    ):
        """Decompose the spectrum image; espm_lite estimators are fitted here.

        Parameters
        ----------
        normalize_poissonian_noise : bool or None, default None
            With an espm_lite estimator (KL loss: the Poisson model itself)
            ``True`` is refused with a warning and ignored; ``None`` means
            ``False``.  Other algorithms get the parent class's default.
        algorithm : str or estimator, default "SmoothNMF"
            A name of :data:`ALGORITHMS` (built with ``output_dimension`` as
            ``n_components``, ``kwargs`` as parameters and ``normalize=True``
            unless given), an espm_lite
            estimator (cloned; ``hspy_comp=True`` and ``shape_2d`` are filled
            in on the clone), or any algorithm of the parent class.
        output_dimension : int or None
            Number of components.
        navigation_mask : bool array or signal, optional
            Pixels marked True are not used (their loadings are NaN). Not
            supported with Laplacian smoothing (``lambda_L > 0``).
        signal_mask : bool array or signal, optional
            Channels marked True are not used (their factors are NaN).
        return_info : bool
            Return the fitted estimator.
        print_info : bool
            Log a summary at INFO level (espm_lite never prints).
        **kwargs
            Estimator parameters. ``G="edx"`` builds the known matrix of the
            X-ray lines of the signal's elements (``EDS_espm_lite`` signals,
            see ``build_G``); masked channels are dropped from any ``G``.

        Returns
        -------
        The fitted estimator when ``return_info`` is True, else None.
        """
        estimator = resolve_estimator(algorithm, output_dimension, kwargs)
        if estimator is None:
            parent_kwargs = dict(kwargs)
            if normalize_poissonian_noise is not None:
                parent_kwargs["normalize_poissonian_noise"] = normalize_poissonian_noise
            return super().decomposition(
                algorithm=algorithm,
                output_dimension=output_dimension,
                navigation_mask=navigation_mask,
                signal_mask=signal_mask,
                return_info=return_info,
                print_info=print_info,
                **parent_kwargs,
            )
        if normalize_poissonian_noise:
            warnings.warn(
                "normalize_poissonian_noise=True is ignored with espm_lite estimators: "
                "their Kullback-Leibler loss is the Poisson likelihood of the raw counts, "
                "and rescaling the counts would break it.",
                UserWarning,
                stacklevel=2,
            )
        return self._espm_decomposition(estimator, navigation_mask, signal_mask, return_info)

    # ------------------------------------------------------------------
    def _espm_data(self) -> np.ndarray:
        """The data as an in-memory array (the lazy classes compute it)."""
        return self.data

    def _espm_decomposition(self, estimator, navigation_mask, signal_mask, return_info):
        from hyperspy.learn import LearningResults

        if self.axes_manager.signal_dimension != 1:
            raise ValueError(
                "espm_lite decompositions need a 1-D signal (spectra); this signal has "
                f"signal dimension {self.axes_manager.signal_dimension}."
            )
        nav_shape = tuple(self.axes_manager._navigation_shape_in_array)
        n_channels = self.axes_manager.signal_size
        n_pixels = int(np.prod(nav_shape)) if nav_shape else 1
        data = self._espm_data()
        # Signal axis last in array order for Signal1D: (pixels, channels) is a view.
        matrix = np.asarray(data).reshape(n_pixels, n_channels)
        nav_mask = _flat_mask(navigation_mask, nav_shape or (1,), "navigation_mask")
        sig_mask = _flat_mask(signal_mask, (n_channels,), "signal_mask")
        keep_rows = slice(None) if nav_mask is None else ~nav_mask
        keep_cols = slice(None) if sig_mask is None else ~sig_mask
        X = matrix[keep_rows][:, keep_cols] if sig_mask is not None else matrix[keep_rows]
        if X.size == 0:
            raise ValueError("All the data are masked: change navigation_mask / signal_mask.")

        self._espm_known_matrix(estimator, sig_mask)
        smoothing = getattr(estimator, "lambda_L", 0) > 0
        if nav_mask is not None and nav_mask.any():
            if smoothing:
                raise ValueError(
                    "navigation_mask with Laplacian smoothing (lambda_L > 0) is not supported: "
                    "the masked pixels break the scan grid the Laplacian is built on. Crop "
                    "the signal instead, or use lambda_L=0."
                )
            shape_2d = None
        elif len(nav_shape) == 2:
            shape_2d = nav_shape  # (ny, nx) in array order
        elif len(nav_shape) == 1:
            shape_2d = (1, nav_shape[0])  # a line scan: a one-row grid
        else:
            shape_2d = None
            if smoothing:
                raise ValueError(
                    "Laplacian smoothing (lambda_L > 0) needs a navigation space of 1 or 2 "
                    f"dimensions; this signal has {len(nav_shape)}."
                )
        estimator.set_params(hspy_comp=True, shape_2d=shape_2d)
        _logger.info("espm_lite decomposition of %s with %r", self, estimator)
        loadings = estimator.fit_transform(X)
        factors = estimator.components_.T

        if sig_mask is not None:
            full = np.full((n_channels, factors.shape[1]), np.nan, dtype=factors.dtype)
            full[keep_cols] = factors
            factors = full
        if nav_mask is not None:
            full = np.full((n_pixels, loadings.shape[1]), np.nan, dtype=loadings.dtype)
            full[keep_rows] = loadings
            loadings = full

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
        if nav_mask is not None:
            target.navigation_mask = nav_mask.reshape(nav_shape or (1,))
        if sig_mask is not None:
            target.signal_mask = sig_mask.reshape((n_channels,))
        self.learning_results.__dict__.update(target.__dict__)
        self.learning_results.espm_parameters = _serialisable_params(estimator)
        self._espm_estimator = estimator
        return estimator if return_info else None

    def _espm_known_matrix(self, estimator, sig_mask) -> None:
        """Resolve ``G="edx"`` (built from this signal) and drop masked channels from ``G``."""
        params = estimator.get_params(deep=False)
        if "G" not in params:
            return
        G = params["G"]
        if isinstance(G, str):
            if G != "edx":
                raise ValueError(f"G must be an array, a callable, None or 'edx', got {G!r}.")
            build = getattr(self, "build_G", None)
            if build is None:
                raise ValueError(
                    "G='edx' needs an EDX signal: set_signal_type('EDS_espm_lite') and "
                    "add elements and the beam energy to the metadata."
                )
            G = build()
        if sig_mask is not None and G is not None and not callable(G):
            keep = ~sig_mask
            if hasattr(G, "labels"):
                G = dataclasses.replace(G, values=np.asarray(G.values)[keep])
            else:
                G = np.asarray(G)[keep]
        estimator.set_params(G=G)

    def _get_factors(self, factors):
        """Factor signals of this class, with the sample and instrument metadata."""
        signal = super()._get_factors(factors)
        for key in ("Sample", "Acquisition_instrument"):
            if key in self.metadata:
                signal.metadata.add_dictionary({key: self.metadata.get_item(key).as_dictionary()})
        return signal

    @property
    def espm_estimator(self) -> NMFEstimator | None:
        """The fitted estimator of the last espm_lite decomposition (not saved to file)."""
        return getattr(self, "_espm_estimator", None)


def _serialisable_params(estimator: NMFEstimator) -> dict:
    """The estimator's parameters, arrays and callables made file-friendly."""
    out = {}
    for name, value in estimator.get_params(deep=False).items():
        if value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value
        elif isinstance(value, (tuple, list)) and all(
            isinstance(v, (int, float, np.integer, np.floating)) for v in value
        ):
            out[name] = [float(v) if isinstance(v, (float, np.floating)) else int(v) for v in value]
        elif hasattr(value, "labels"):  # a labelled G
            out[name] = f"<G of shape {np.shape(value.values)}, columns {list(value.labels)}>"
        elif isinstance(value, np.ndarray):
            out[name] = f"<array of shape {value.shape}>"
        else:
            out[name] = repr(value)
    return out

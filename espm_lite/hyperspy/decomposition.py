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

Details of ``decomposition``'s arguments:

- ``algorithm``: a name of :data:`ALGORITHMS`, in any case, is built with
  ``output_dimension`` as ``n_components``, the keyword arguments as
  parameters and ``normalize=True`` unless given; an espm_lite estimator is
  cloned, and ``hspy_comp=True`` and ``shape_2d`` (from the navigation axes)
  are filled in on the clone.
- ``navigation_mask``: a flat array, or one of the navigation shape in array
  order or in HyperSpy's axes order (a signal too).  Not supported with
  Laplacian smoothing (``lambda_L > 0``).
- keyword arguments: ``G="edx"`` builds the known matrix of the X-ray lines
  of the signal's elements (``EDS_espm_lite`` signals, see ``build_G``);
  masked channels are dropped from any ``G``.  HyperSpy's own keywords:
  ``copy`` and ``auto_transpose`` are accepted (no effect: the data are never
  modified), ``get`` (lazy signals) is the dask scheduler that reads the
  chunks; ``centre``, ``reproject``, ``var_array``, ``var_func``,
  ``svd_solver`` and ``num_chunks`` are refused unless None.

The algorithm names and argument checks live in :mod:`espm_lite.hyperspy._options`, what is
stored in ``learning_results`` (and read back from a file) in :mod:`espm_lite.hyperspy._record`;
their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from typing import Any

import numpy as np

from ..estimators import NMFEstimator
from ._n_components import NComponentsMixin, estimator_for
from ._options import (
    ALGORITHMS,
    HYPERSPY_ALGORITHMS,
    _check_hyperspy_keywords,
    _flat_mask,
    _is_espm_algorithm,
    canonical_algorithm,
    resolve_estimator,
)
from ._record import (
    NOT_SAVED,
    _learning_results,
    _read_fit_record,
    _serialisable_params,
    _store_record,
)

__all__ = [
    "ALGORITHMS",
    "HYPERSPY_ALGORITHMS",
    "NOT_SAVED",
    "EspmDecompositionMixin",
    "canonical_algorithm",
    "resolve_estimator",
]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _MaskedData:
    """The data to fit, ``X`` (unmasked pixels x unmasked channels), and where it lies."""

    X: Any  # ndarray, or a dask array for lazy signals
    nav_shape: tuple[int, ...]
    n_pixels: int
    n_channels: int
    nav_mask: np.ndarray | None
    sig_mask: np.ndarray | None
    keep_rows: slice | np.ndarray
    keep_cols: slice | np.ndarray


class EspmDecompositionMixin(NComponentsMixin):
    """Adds espm_lite estimators to ``decomposition`` (see the module docstring), and
    ``estimate_n_components`` / ``plot_n_components_scores`` (:class:`NComponentsMixin`)."""

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
            A name of :data:`ALGORITHMS`, in any case, an espm_lite estimator
            (cloned), or any algorithm of the parent class (a name of
            :data:`HYPERSPY_ALGORITHMS`, any case, or an object).
        output_dimension : int or "auto"
            Number of phases: required with an algorithm name (``"auto"``: see
            :meth:`estimate_n_components`), else the estimator's ``n_components``.
        navigation_mask : bool array or signal, optional
            Pixels marked True are not used (their loadings are NaN).
        signal_mask : bool array or signal, optional
            Channels marked True are not used (their factors are NaN).
        return_info : bool
            Return the fitted estimator.
        print_info : bool
            Log a summary at INFO level (DEBUG when False); never prints.
        **kwargs
            Estimator parameters (``G="edx"``: from the signal's elements) and
            some of HyperSpy's keywords (see the module docstring).

        Returns
        -------
        The fitted estimator when ``return_info`` is True, else None.

        Raises
        ------
        ValueError
            An unknown algorithm name; no ``output_dimension`` with a name; a
            signal without navigation axes (or a single pixel); a HyperSpy
            keyword that does not apply; a mask of the wrong size or shape.
        """
        algorithm = canonical_algorithm(algorithm)
        if not _is_espm_algorithm(algorithm):
            return self._parent_decomposition(
                normalize_poissonian_noise,
                algorithm,
                output_dimension,
                navigation_mask,
                signal_mask,
                return_info,
                print_info,
                kwargs,
            )
        kwargs = dict(kwargs)
        hyperspy_options = _check_hyperspy_keywords(kwargs, lazy=bool(getattr(self, "_lazy", 0)))
        estimator = estimator_for(self, algorithm, output_dimension, kwargs, print_info)
        if normalize_poissonian_noise:
            warnings.warn(
                "normalize_poissonian_noise=True is ignored with espm_lite estimators: "
                "their Kullback-Leibler loss is the Poisson likelihood of the raw counts, "
                "and rescaling the counts would break it.",
                UserWarning,
                stacklevel=2,
            )
        return self._espm_decomposition(
            estimator,
            navigation_mask,
            signal_mask,
            return_info,
            print_info=print_info,
            scheduler=hyperspy_options.get("scheduler"),
        )

    def blind_source_separation(self, *args, **kwargs):
        """HyperSpy's blind source separation; it clears the espm_lite fit record.

        The separated components are no longer the espm_lite fit, so
        :attr:`espm_estimator`, ``learning_results.espm_parameters`` and
        ``learning_results.espm_W`` (what ``concentration_table`` reads) are
        removed. Arguments: see HyperSpy's ``blind_source_separation``.
        """
        result = super().blind_source_separation(*args, **kwargs)
        self._clear_espm_fit()
        return result

    # ------------------------------------------------------------------
    def _parent_decomposition(
        self,
        normalize_poissonian_noise,
        algorithm,
        output_dimension,
        navigation_mask,
        signal_mask,
        return_info,
        print_info,
        kwargs,
    ):
        """The parent class's ``decomposition`` (not an espm_lite algorithm)."""
        parent_kwargs = dict(kwargs)
        if normalize_poissonian_noise is not None:
            parent_kwargs["normalize_poissonian_noise"] = normalize_poissonian_noise
        result = super().decomposition(
            algorithm=algorithm,
            output_dimension=output_dimension,
            navigation_mask=navigation_mask,
            signal_mask=signal_mask,
            return_info=return_info,
            print_info=print_info,
            **parent_kwargs,
        )
        self._clear_espm_fit()  # the espm_lite fit is no longer the decomposition
        return result

    # ------------------------------------------------------------------
    def _clear_espm_fit(self) -> None:
        """Forget the espm_lite fit: the estimator and its record in ``learning_results``."""
        self._espm_estimator = None
        for name in [key for key in vars(self.learning_results) if key.startswith("espm_")]:
            delattr(self.learning_results, name)

    def _espm_decomposition(
        self,
        estimator,
        navigation_mask,
        signal_mask,
        return_info,
        print_info=True,
        scheduler=None,
    ):
        """Fit ``estimator`` to the unmasked data and store the results in ``learning_results``."""
        signal_mask = self._espm_signal_mask(estimator, signal_mask)
        masked = self._espm_masked_data(navigation_mask, signal_mask)
        with _dask_scheduler(scheduler):
            self._espm_known_matrix(estimator, masked.sig_mask)
            shape_2d = self._espm_grid(estimator, masked.nav_shape, masked.nav_mask)
            estimator.set_params(hspy_comp=True, shape_2d=shape_2d)
            loadings, params = self._espm_fit(estimator, masked.X, print_info)
        self._espm_store(estimator, loadings, params, masked)
        _logger.log(
            logging.INFO if print_info else logging.DEBUG,
            "espm_lite decomposition: %s, %d components, %d iterations.",
            type(estimator).__name__,
            estimator.n_components_,
            getattr(estimator, "n_iter_", -1),
        )
        return estimator if return_info else None

    def _espm_signal_mask(self, estimator, signal_mask):
        """The channels to leave out: the caller's ``signal_mask``, and those an EDX
        signal's ``_edx_signal_mask`` adds (the zero peak, for fits with ``G``)."""
        extra = getattr(self, "_edx_signal_mask", None)
        return signal_mask if extra is None else extra(estimator, signal_mask)

    def _espm_masked_data(self, navigation_mask, signal_mask) -> _MaskedData:
        """Check the signal's shape and the masks; the data to fit (lazy if the signal is)."""
        if self.axes_manager.signal_dimension != 1:
            raise ValueError(
                "espm_lite decompositions need a 1-D signal (spectra); this signal has "
                f"signal dimension {self.axes_manager.signal_dimension}."
            )
        if self.axes_manager.navigation_dimension == 0 or self.axes_manager.navigation_size < 2:
            raise ValueError(
                "A decomposition needs several spectra (a navigation size of 2 or more): "
                f"this signal has navigation shape {self.axes_manager.navigation_shape}. "
                "Decompose a spectrum image or a line scan, not a single spectrum."
            )
        nav_shape = tuple(self.axes_manager._navigation_shape_in_array)
        n_channels = self.axes_manager.signal_size
        n_pixels = int(np.prod(nav_shape))
        nav_mask = _flat_mask(navigation_mask, nav_shape, "navigation_mask")
        sig_mask = _flat_mask(signal_mask, (n_channels,), "signal_mask")
        # Signal axis last in array order for Signal1D: (pixels, channels) is a view.
        matrix = self.data.reshape(n_pixels, n_channels)  # a dask array if lazy
        # Integer indices: a dask array then keeps known chunk sizes.
        keep_rows = slice(None) if nav_mask is None else np.flatnonzero(~nav_mask)
        keep_cols = slice(None) if sig_mask is None else np.flatnonzero(~sig_mask)
        X = matrix[keep_rows][:, keep_cols] if sig_mask is not None else matrix[keep_rows]
        if 0 in X.shape:
            raise ValueError("All the data are masked: change navigation_mask / signal_mask.")
        return _MaskedData(
            X, nav_shape, n_pixels, n_channels, nav_mask, sig_mask, keep_rows, keep_cols
        )

    @staticmethod
    def _espm_grid(estimator, nav_shape, nav_mask):
        """``shape_2d`` of the scan grid (None without one); refuses the Laplacian
        smoothing (``lambda_L > 0``) where there is no grid."""
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
        return shape_2d

    def _espm_fit(self, estimator, X, print_info):
        """Fit; returns the loadings of ``X`` and the parameters to store, warning
        about those a file cannot hold."""
        params, not_saved = _serialisable_params(estimator)
        if not_saved:
            warnings.warn(
                "espm_lite: these parameters cannot be saved with the signal and are stored "
                f"as markers in learning_results.espm_parameters: {', '.join(not_saved)}. "
                "A saved file keeps the results but cannot reproduce the fit exactly.",
                UserWarning,
                stacklevel=4,  # the caller of decomposition
            )
        _logger.log(
            logging.INFO if print_info else logging.DEBUG,
            "espm_lite decomposition of %s with %r",
            self,
            estimator,
        )
        loadings = estimator.fit_transform(X)
        return loadings, params

    def _espm_store(self, estimator, loadings, params, masked: _MaskedData) -> None:
        """Store the fit in ``learning_results`` (NaN where masked) and keep the estimator."""
        factors = estimator.components_.T
        if masked.sig_mask is not None:
            full = np.full((masked.n_channels, factors.shape[1]), np.nan, dtype=factors.dtype)
            full[masked.keep_cols] = factors
            factors = full
        if masked.nav_mask is not None:
            full = np.full((masked.n_pixels, loadings.shape[1]), np.nan, dtype=loadings.dtype)
            full[masked.keep_rows] = loadings
            loadings = full
        target = _learning_results(
            estimator,
            factors,
            loadings,
            masked.nav_mask,
            masked.sig_mask,
            masked.nav_shape,
            masked.n_channels,
        )
        self._clear_espm_fit()
        self.learning_results.__dict__.update(target.__dict__)
        _store_record(self.learning_results, estimator, params)
        self._espm_estimator = estimator

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

    def _espm_fit_record(self):
        """``(W, H, G)`` of the current decomposition when it is an espm_lite fit with a
        labelled ``G`` (in memory or loaded from a file).

        Raises
        ------
        ValueError
            No such fit, a fit with a ``W`` of negative entries (signed, e.g.
            SNMF), or a record that no longer matches ``learning_results``
            (the decomposition was changed or replaced since).
        """
        return _read_fit_record(self.learning_results)

    def _get_factors(self, factors):
        """Factor signals of this class, with the sample and instrument metadata."""
        signal = super()._get_factors(factors)
        for key in ("Sample", "Acquisition_instrument"):
            if key in self.metadata:
                signal.metadata.add_dictionary({key: self.metadata.get_item(key).as_dictionary()})
        return signal

    @property
    def espm_estimator(self) -> NMFEstimator | None:
        """The fitted estimator of the last espm_lite decomposition (not saved to file).

        None after any other decomposition or a blind source separation.
        """
        return getattr(self, "_espm_estimator", None)


def _dask_scheduler(scheduler):
    """A context in which dask computes with ``scheduler`` (HyperSpy's ``get``), if given."""
    if scheduler is None:
        return contextlib.nullcontext()
    import dask

    return dask.config.set(scheduler=scheduler)

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

#: Marker stored in ``learning_results.espm_parameters`` for what a file cannot hold.
NOT_SAVED = "<not saved: {}>"


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
                "of phases (components) to fit, e.g. output_dimension=3."
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
        "computes a lazy signal into memory",
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
            A name of :data:`ALGORITHMS`, in any case (built with
            ``output_dimension`` as ``n_components``, ``kwargs`` as parameters
            and ``normalize=True`` unless given), an espm_lite estimator
            (cloned; ``hspy_comp=True`` and ``shape_2d`` are filled in on the
            clone), or any algorithm of the parent class (a name of
            :data:`HYPERSPY_ALGORITHMS`, any case, or an object).
        output_dimension : int
            Number of components (phases). Required with an algorithm name;
            with an estimator object its ``n_components`` is used when not given.
        navigation_mask : bool array or signal, optional
            Pixels marked True are not used (their loadings are NaN). Not
            supported with Laplacian smoothing (``lambda_L > 0``). A flat
            array, or one of the navigation shape in array order or in
            HyperSpy's axes order.
        signal_mask : bool array or signal, optional
            Channels marked True are not used (their factors are NaN).
        return_info : bool
            Return the fitted estimator.
        print_info : bool
            Log a summary at INFO level (DEBUG when False); espm_lite never prints.
        **kwargs
            Estimator parameters. ``G="edx"`` builds the known matrix of the
            X-ray lines of the signal's elements (``EDS_espm_lite`` signals,
            see ``build_G``); masked channels are dropped from any ``G``.
            HyperSpy's own keywords: ``copy`` and ``auto_transpose`` are
            accepted (no effect: the data are never modified), ``get`` (lazy
            signals) is the dask scheduler used to compute the data;
            ``centre``, ``reproject``, ``var_array``, ``var_func``,
            ``svd_solver`` and ``num_chunks`` are refused unless None.

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
        if not (
            isinstance(algorithm, NMFEstimator)
            or (isinstance(algorithm, str) and algorithm in ALGORITHMS)
        ):
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
        kwargs = dict(kwargs)
        hyperspy_options = _check_hyperspy_keywords(kwargs, lazy=bool(getattr(self, "_lazy", 0)))
        estimator = resolve_estimator(algorithm, output_dimension, kwargs)
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
    def _clear_espm_fit(self) -> None:
        """Forget the espm_lite fit: the estimator and its record in ``learning_results``."""
        self._espm_estimator = None
        for name in [key for key in vars(self.learning_results) if key.startswith("espm_")]:
            delattr(self.learning_results, name)

    def _espm_data(self, scheduler=None) -> np.ndarray:
        """The data as an in-memory array (the lazy classes compute it)."""
        return self.data

    def _espm_decomposition(
        self,
        estimator,
        navigation_mask,
        signal_mask,
        return_info,
        print_info=True,
        scheduler=None,
    ):
        from hyperspy.learn import LearningResults

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
        data = self._espm_data(scheduler)
        # Signal axis last in array order for Signal1D: (pixels, channels) is a view.
        matrix = np.asarray(data).reshape(n_pixels, n_channels)
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
        params, not_saved = _serialisable_params(estimator)
        if not_saved:
            warnings.warn(
                "espm_lite: these parameters cannot be saved with the signal and are stored "
                f"as markers in learning_results.espm_parameters: {', '.join(not_saved)}. "
                "A saved file keeps the results but cannot reproduce the fit exactly.",
                UserWarning,
                stacklevel=3,
            )
        _logger.log(
            logging.INFO if print_info else logging.DEBUG,
            "espm_lite decomposition of %s with %r",
            self,
            estimator,
        )
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
        target.bss_factors = None
        target.bss_loadings = None
        target.navigation_mask = None
        target.signal_mask = None
        if nav_mask is not None:
            target.navigation_mask = nav_mask.reshape(nav_shape)
        if sig_mask is not None:
            target.signal_mask = sig_mask.reshape((n_channels,))
        self._clear_espm_fit()
        self.learning_results.__dict__.update(target.__dict__)
        # What a reloaded file needs to reproduce and quantify the fit: the
        # parameters (a labelled G as values, labels and simplex rows) and W
        # (the maps H are the loadings, G W the factors).
        self.learning_results.espm_parameters = params
        self.learning_results.espm_W = np.array(estimator.W_)
        self._espm_estimator = estimator
        _logger.log(
            logging.INFO if print_info else logging.DEBUG,
            "espm_lite decomposition: %s, %d components, %d iterations.",
            type(estimator).__name__,
            estimator.n_components_,
            getattr(estimator, "n_iter_", -1),
        )
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
        from ..models import LabelledG

        lr = self.learning_results
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

"""``estimate_n_components`` / ``plot_n_components_scores`` on the espm_lite signals.

HyperSpy glue only: the signal's data and scan shape are handed to
:func:`espm_lite.model_selection.select_n_components`, whose result is kept
on the signal (``s.n_components_scores``, not saved to file) and plotted.
"""

from __future__ import annotations

import dataclasses
import logging

from ._options import _flat_mask

_logger = logging.getLogger(__name__)


class NComponentsMixin:
    """Choosing the number of phases of a spectrum image (mixed into the signal classes)."""

    def estimate_n_components(
        self,
        candidates=range(1, 9),
        algorithm=None,
        *,
        signal_mask=None,
        plot: bool = False,
        n_folds: int = 3,
        fraction: float = 0.1,
        random_state=None,
        progress: bool = True,
        max_memory=None,
        **kwargs,
    ):
        """Choose the number of phases by the Poisson deviance of held-out entries.

        Random single entries of the spectrum image (``fraction`` of them per
        fold, ``n_folds`` disjoint folds) are left out of fits with each
        candidate number of phases; each fit predicts them, scored by the
        mean Poisson deviance per held-out entry; the chosen number is the
        smallest within one standard error of the best
        (:func:`espm_lite.model_selection.select_n_components`). Use it as
        ``s.decomposition(output_dimension=result.n_components)``, or call
        ``s.decomposition(output_dimension="auto")``.

        Parameters
        ----------
        candidates : iterable of int, default=range(1, 9)
        algorithm : None, str or espm_lite estimator
            The model of the scoring fits. None (default): SmoothNMF with
            Laplacian smoothing on the scan grid
            (:func:`espm_lite.model_selection.default_lambda_L`, ``normalize=True``).
            A name or an estimator: built as in ``decomposition`` (keyword
            arguments are its parameters; it must accept a mask, as SmoothNMF
            does).
        signal_mask : bool array or signal, optional
            Channels left out (True), as in ``decomposition``.
        plot : bool, default=False
            Also plot the scores (:meth:`plot_n_components_scores`).
        n_folds, fraction, random_state, progress
            See :func:`~espm_lite.model_selection.select_n_components`.
        max_memory : int, str or None, default=None
            A lazy signal is read into memory once, dense (the scoring fits
            mask single entries), within this many bytes (``"8GB"``; default
            half of the available memory), else ``MemoryError``.
        **kwargs
            Parameters of the scoring estimator (with ``algorithm``), or
            ``max_iter`` / ``tol`` of the scoring fits.

        Returns
        -------
        espm_lite.model_selection.NComponentsScores
            Also kept as ``s.n_components_scores``.
        """
        from ..model_selection import select_n_components

        fit_options = {key: kwargs.pop(key) for key in ("max_iter", "tol") if key in kwargs}
        estimator, masked, shape_2d = self._n_components_setup(
            algorithm, signal_mask, kwargs, max_memory
        )
        result = select_n_components(
            masked.X if estimator is not None else masked.X.T,  # a view: (channels, pixels)
            candidates,
            estimator,
            shape_2d=shape_2d,
            n_folds=n_folds,
            fraction=fraction,
            random_state=random_state,
            progress=progress,
            **fit_options,
        )
        self._n_components_scores = result
        _logger.info(
            "estimate_n_components: %d phases chosen (held-out Poisson deviance, candidates %s).",
            result.n_components,
            list(result.candidates),
        )
        if plot:
            self.plot_n_components_scores()
        return result

    def _n_components_setup(self, algorithm, signal_mask, kwargs, max_memory=None):
        """``(scoring estimator, masked data, shape_2d)`` of :meth:`estimate_n_components`."""
        from .._lazy import in_memory, is_dask_array
        from ..estimators.smooth_nmf import SmoothNMF
        from ..kernels.chunked import ChunkedData
        from ._options import resolve_estimator

        n_channels = self.axes_manager.signal_size
        sig_mask = _flat_mask(signal_mask, (n_channels,), "signal_mask")
        estimator = None
        if algorithm is not None or kwargs:
            estimator = resolve_estimator(algorithm or "SmoothNMF", 1, {"verbose": 0, **kwargs})
            self._espm_known_matrix(estimator, sig_mask)
            estimator.set_params(hspy_comp=True)
        masked = self._espm_masked_data(None, sig_mask)
        if is_dask_array(masked.X):  # the scoring fits share one copy in memory
            reader = SmoothNMF(hspy_comp=True, sparse=False, verbose=0, max_memory=max_memory)
            X = in_memory(reader, masked.X, where="estimate_n_components (the signal's data)")
            if isinstance(X, ChunkedData):  # too large: the masked scoring fits need it all
                raise MemoryError(
                    f"estimate_n_components holds the data in memory, dense ({X.shape[0]} x "
                    f"{X.shape[1]} values), and they exceed max_memory={max_memory!r}: pass a "
                    "larger max_memory, or score a crop of the scan (s.inav[...])."
                )
            masked = dataclasses.replace(masked, X=X)
        if estimator is None:  # the default of select_n_components, pixels as rows
            estimator = SmoothNMF(hspy_comp=True, verbose=0)
            shape_2d = self._espm_grid(estimator, masked.nav_shape, None)
            return None, masked, shape_2d
        return estimator, masked, self._espm_grid(estimator, masked.nav_shape, None)

    @property
    def n_components_scores(self):
        """The result of the last :meth:`estimate_n_components` (None before; not saved)."""
        return getattr(self, "_n_components_scores", None)

    def plot_n_components_scores(self, ax=None):
        """Plot the held-out deviance against the number of phases, the chosen one marked.

        Runs :meth:`estimate_n_components` with its defaults first if it has
        not been run. Returns the matplotlib axes.
        """
        result = self.n_components_scores
        if result is None:
            result = self.estimate_n_components()
        ax = result.plot(ax=ax)
        ax.set_title(self.metadata.General.title or "number of phases")
        return ax


def estimator_for(signal, algorithm, output_dimension, kwargs: dict, print_info: bool):
    """:func:`~espm_lite.hyperspy._options.resolve_estimator` of ``decomposition``, where
    ``output_dimension="auto"`` is the number chosen by ``estimate_n_components`` (logged)."""
    from ._options import resolve_estimator

    if isinstance(output_dimension, str) and output_dimension == "auto":
        output_dimension = _auto_dimension(signal, print_info)
    return resolve_estimator(algorithm, output_dimension, kwargs)


def _auto_dimension(signal, print_info: bool) -> int:
    """The number of phases chosen by ``signal.estimate_n_components()`` (logged)."""
    result = signal.estimate_n_components()
    _logger.log(
        logging.INFO if print_info else logging.DEBUG,
        "decomposition: output_dimension='auto' -> %d phases, chosen by held-out Poisson "
        "deviance (s.estimate_n_components(); scores in s.n_components_scores).",
        result.n_components,
    )
    return int(result.n_components)


__all__ = ["NComponentsMixin", "estimator_for"]

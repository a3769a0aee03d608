"""espm_lite's HyperSpy signal classes (registered in ``hyperspy_extension.yaml``).

* ``EDS_espm_lite``: :class:`EDSespmSpectrum`, an exspy ``EDSTEMSpectrum``
  (elements, beam energy, X-ray lines all work) whose ``decomposition`` fits
  espm_lite estimators on the raw counts.
* ``EDS_espm_lite_SEM``: :class:`EDSespmSEMSpectrum`, the same on an exspy
  ``EDSSEMSpectrum`` (a bulk specimen): decompositions and maps, but no
  thin-film quantification. ``set_signal_type("EDS_espm_lite")`` on a signal
  whose metadata describe an SEM (``Acquisition_instrument.SEM``, no ``.TEM``)
  gives this class, so that exspy does not turn the SEM metadata into TEM.
* ``spectrum_image``: :class:`EspmSpectrumImage`, any spectrum image (EELS,
  cathodoluminescence, Raman...): a ``Signal1D`` with the same
  ``decomposition``.

Each has a lazy twin, whose dask array the estimator reads chunk by chunk:
once, kept compressed when the counts are sparse, within the estimator's
``max_memory``, or at every pass beyond it (:mod:`espm_lite._lazy`).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import numpy as np
from exspy.signals import (
    EDSSEMSpectrum,
    EDSSpectrum,
    EDSTEMSpectrum,
    LazyEDSSEMSpectrum,
    LazyEDSTEMSpectrum,
)
from hyperspy.signals import LazySignal1D, Signal1D

from ..models.edx import check_beam_energy
from .decomposition import EspmDecompositionMixin

_logger = logging.getLogger(__name__)


class LazyEspmDecompositionMixin(EspmDecompositionMixin):
    """Lazy variant: the estimator is given the dask array (``self.data``), which it
    reads chunk by chunk (:mod:`espm_lite._lazy`)."""


#: Why a bulk (SEM) signal is not quantified with the thin-film EDX model.
BULK_SPECIMEN_REASON = (
    "this is an SEM signal of a bulk specimen, and espm_lite's EDX model is a thin-film "
    "model: the absorption and fluorescence (ZAF) corrections a bulk specimen needs are "
    "not modelled, so thin-film element fractions would be wrong"
)


@contextmanager
def _seen_by_exspy(signal):
    """Let exspy code that tests ``signal_type == "EDS_TEM"`` (or ``"EDS_SEM"``)
    accept the signal."""
    signal_type = signal.metadata.Signal.signal_type
    signal.metadata.Signal.signal_type = signal._exspy_signal_type
    try:
        yield
    finally:
        signal.metadata.Signal.signal_type = signal_type


def _describes_sem(signal, kwargs: dict) -> bool:
    """Whether the metadata an ``EDS_espm_lite`` signal is being built with describe
    an SEM: ``Acquisition_instrument.SEM`` and no ``Acquisition_instrument.TEM``.

    ``signal.metadata`` when HyperSpy changes the class of an existing signal
    (``set_signal_type``, ``full_initialisation=False``), else the ``metadata``
    keyword (``hs.load``, the constructor).
    """
    from hyperspy.misc.utils import DictionaryTreeBrowser

    if kwargs.get("full_initialisation", True):
        metadata = kwargs.get("metadata")
        if isinstance(metadata, dict):
            metadata = DictionaryTreeBrowser(metadata)
    else:
        metadata = signal.metadata
    if not isinstance(metadata, DictionaryTreeBrowser):
        return False
    return metadata.has_item("Acquisition_instrument.SEM") and not metadata.has_item(
        "Acquisition_instrument.TEM"
    )


class _EDXMixin:
    """EDX physics shared by the TEM and SEM classes: the metadata paths differ
    (``Acquisition_instrument.<_microscope>``)."""

    _microscope = "TEM"
    _exspy_signal_type = "EDS_TEM"
    _example_beam_energy = 200

    def _set_default_param(self):
        super()._set_default_param()  # exspy writes "EDS_TEM" there (TEM)
        self.metadata.Signal.signal_type = self._signal_type

    def _get_line_energy(self, *args, **kwargs):
        with _seen_by_exspy(self):
            return super()._get_line_energy(*args, **kwargs)

    def get_take_off_angle(self):
        with _seen_by_exspy(self):
            return super().get_take_off_angle()

    get_take_off_angle.__doc__ = EDSSpectrum.get_take_off_angle.__doc__

    def set_microscope_parameters(self, beam_energy=None, *args, **kwargs):
        """exspy's ``set_microscope_parameters``; ``beam_energy`` (keV) is checked first.

        Raises
        ------
        ValueError
            ``beam_energy`` outside the plausible range of keV
            (:data:`~espm_lite.models.edx.BEAM_ENERGY_RANGE_KEV`), e.g. given in eV.
        """
        if beam_energy is not None:
            beam_energy = check_beam_energy(beam_energy)
        return super().set_microscope_parameters(beam_energy, *args, **kwargs)

    def edx_model(self, elements=None, beam_energy=None, **model_kwargs):
        """The :class:`~espm_lite.models.EDXModel` of this signal.

        Reads the elements (``metadata.Sample.elements``), the beam energy
        (``metadata.Acquisition_instrument.TEM.beam_energy``, keV; ``.SEM.``
        on an ``EDS_espm_lite_SEM`` signal) and the energy axis (offset, scale,
        size; units must be keV) from the signal; ``elements`` /
        ``beam_energy`` given here take precedence.

        Parameters
        ----------
        elements : sequence of str, optional
        beam_energy : float, optional
            keV.
        **model_kwargs
            Other :class:`~espm_lite.models.EDXModel` parameters
            (``fwhm_mn_ka``, ``n_background``, ``element_factors``,
            ``mass_thickness``...). With ``mass_thickness`` (self-absorption)
            the take-off angle comes from the metadata (``get_take_off_angle``)
            unless given.

        Raises
        ------
        ValueError
            Listing every missing item and the metadata path (or method) to set it.
        """
        from ._edx_setup import model_from_signal

        return model_from_signal(self, elements, beam_energy, model_kwargs)

    def build_G(
        self,
        elements=None,
        beam_energy=None,
        *,
        calibrate="auto",
        add_missing: bool = False,
        check_missing: bool = True,
        **model_kwargs,
    ):
        """Known matrix ``G`` of this signal's X-ray lines and bremsstrahlung.

        ``s.decomposition(algorithm="SmoothNMF", G="edx")`` calls it with the
        defaults; pass ``G=s.build_G(...)`` to choose. On the spectrum summed
        over the pixels it first refines the calibration, then looks for
        elements the spectrum shows but the model lacks
        (:meth:`find_missing_elements`).

        Parameters
        ----------
        elements, beam_energy
            As in :meth:`edx_model` (default: the metadata). With no elements
            at all, the elements whose lines the spectrum shows are used (with
            a warning).
        calibrate : {"auto", True, False}, default="auto"
            Refine the energy offset, the gain and the detector resolution
            (FWHM at Mn Kα; the metadata's ``energy_resolution_MnKa`` is the
            start) on the summed spectrum; ``"auto"``: when it has at least
            10^4 counts. The result is logged (INFO) and stored in
            ``metadata.espm_lite.calibration``; the signal's axis is not
            changed.
        add_missing : bool, default=False
            Add the elements found by the search to ``G``.
        check_missing : bool, default=True
            Search for missing elements and warn (``MissingElementsWarning``)
            with the candidates when there are some.
        **model_kwargs
            :class:`~espm_lite.models.EDXModel` parameters (``line_families``,
            ``n_background``, ``fwhm_mn_ka``, ``element_factors``...).

        Returns
        -------
        espm_lite.models.LabelledG
            Element columns first (see :meth:`EDXModel.build_G
            <espm_lite.models.EDXModel.build_G>`).
        """
        from ._edx_setup import edx_setup

        model, _ = edx_setup(
            self,
            elements,
            beam_energy,
            calibrate=calibrate,
            add_missing=add_missing,
            check_missing=check_missing,
            **model_kwargs,
        )
        return model.build_G()

    def _edx_signal_mask(self, estimator, signal_mask):
        from ._edx_setup import zero_peak_mask

        return zero_peak_mask(self, estimator, signal_mask)

    def find_missing_elements(
        self, elements=None, beam_energy=None, *, calibrate="auto", significance=5.0, **model_kwargs
    ):
        """Elements whose X-ray lines the summed spectrum shows but the model lacks, ranked.

        Fits ``G`` of the elements (metadata or ``elements``; may be none) to
        the spectrum summed over the pixels (after the calibration, see
        :meth:`build_G`), finds the residual peaks above ``significance``
        standard deviations and the elements of exspy's database whose lines
        explain them (see :mod:`espm_lite.models.element_search`).

        Returns
        -------
        list of espm_lite.models.element_search.ElementCandidate
            Most significant first; each with its lines on the peaks, the
            counts it explains and its significance. Empty when the elements
            explain the spectrum.

        Examples
        --------
        >>> s = exspy.data.EDS_TEM_FePt_nanoparticles()  # doctest: +SKIP
        >>> s.set_signal_type("EDS_espm_lite")  # doctest: +SKIP
        >>> [c.element for c in s.find_missing_elements()]  # doctest: +SKIP
        ['Cu', 'C', 'Si']
        """
        from ._edx_setup import missing_elements

        return missing_elements(
            self,
            elements,
            beam_energy,
            calibrate=calibrate,
            significance=significance,
            **model_kwargs,
        )

    def concentration_table(
        self,
        kind: str = "atomic",
        uncertainty: str = "counting",
        n_bootstrap: int = 20,
        random_state: int | np.random.Generator | None = None,
        progress: bool = True,
    ):
        """Element fractions of every phase of the last ``G="edx"`` decomposition.

        Parameters
        ----------
        kind : {"atomic", "weight"}, default="atomic"
            Atomic or weight fractions of the characteristic part of each
            phase (bremsstrahlung excluded).
        uncertainty : {"counting", "bootstrap"}, default="counting"
            ``"counting"``: counting statistics only (instant; a lower bound:
            the unmixing error, several times larger, is left out).
            ``"bootstrap"``: adds the unmixing error, a bias estimate from the
            purest pixels of each phase plus the spread of ``n_bootstrap``
            refits of Poisson redraws of the fit (costs ``n_bootstrap``
            refits; needs the fitted estimator, :attr:`espm_estimator`). See
            :mod:`espm_lite.uncertainty`.
        n_bootstrap : int, default=20
            Number of refits (``"bootstrap"``), at least 2.
        random_state : None, int or numpy Generator
            Seed of the Poisson redraws (same seed, same table).
        progress : bool, default=True
            Show a tqdm progress bar over the refits.

        Returns
        -------
        espm_lite.quantification.ConcentrationTable
            Printable; values, uncertainties (the kind asked for), the
            counting-statistics sd (``counting``) and counts.

        Raises
        ------
        ValueError
            A bad argument (named); no ``G="edx"`` fit is the current
            decomposition (none was run, or another decomposition or a blind
            source separation came since); the fit is signed (negative ``W``,
            e.g. SNMF); ``"bootstrap"`` on a fit loaded from a file (the
            estimator is not saved: run the decomposition again).

        Notes
        -----
        The counting uncertainties work on a signal loaded from a file: the
        fit's ``G`` and ``W`` are saved in ``learning_results``
        (``espm_parameters["G"]``, ``espm_W``) and the maps are the loadings.
        """
        from ..models.edx import atomic_weights
        from ..quantification import concentration_table

        if kind not in ("atomic", "weight"):
            raise ValueError(f"kind must be 'atomic' or 'weight', got {kind!r}.")
        W, H, G = self._espm_fit_record()
        estimator = self.espm_estimator
        if uncertainty == "bootstrap" and estimator is None:
            raise ValueError(
                "uncertainty='bootstrap' refits the fitted estimator, which is not saved "
                "with a file: run s.decomposition(algorithm='SmoothNMF', G='edx', ...) again."
            )
        weights = atomic_weights(G.element_labels) if kind == "weight" else None
        return concentration_table(
            W,
            H,
            G,
            kind=kind,
            atomic_weights=weights,
            uncertainty=uncertainty,
            estimator=estimator,
            n_bootstrap=n_bootstrap,
            random_state=random_state,
            progress=progress,
        )

    def plot_element_contributions(self, phases=None):
        """Each phase spectrum with its element and background contributions stacked.

        Parameters
        ----------
        phases : sequence of int, optional
            Phases to show (default all), each in ``0 .. n_phases - 1``.

        Returns
        -------
        matplotlib Figure
        """
        from ..quantification import plot_element_contributions

        W, H, G = self._espm_fit_record()
        axis = self.axes_manager.signal_axes[0]
        energy = np.asarray(axis.axis, dtype=np.float64)
        mask = getattr(self.learning_results, "signal_mask", None)
        if mask is not None:
            energy = energy[~np.asarray(mask, dtype=bool).ravel()]
        return plot_element_contributions(W, H, G, energy, phases=phases)


class EDSespmSpectrum(EspmDecompositionMixin, _EDXMixin, EDSTEMSpectrum):
    """EDX spectrum image (exspy ``EDS_TEM``) with espm_lite decompositions.

    Everything of exspy's ``EDSTEMSpectrum`` works (elements, lines, beam
    energy, take-off angle); the metadata's ``signal_type`` is
    ``"EDS_espm_lite"`` so that saved files load back as this class.

    A signal whose metadata describe an SEM (``Acquisition_instrument.SEM``
    and no ``.TEM``) becomes an :class:`EDSespmSEMSpectrum` instead (a bulk
    specimen: no thin-film quantification), rather than having exspy move its
    SEM metadata to ``.TEM``.
    """

    _signal_type = "EDS_espm_lite"

    def __init__(self, *args, **kwargs):
        if _describes_sem(self, kwargs):
            _logger.info(
                "espm_lite: the metadata describe an SEM (bulk specimen): this signal is "
                "an EDS_espm_lite_SEM (decompositions, no thin-film quantification)."
            )
            self.__class__ = LazyEDSespmSEMSpectrum if self._lazy else EDSespmSEMSpectrum
            self.__init__(*args, **kwargs)
            return
        super().__init__(*args, **kwargs)


class LazyEDSespmSpectrum(LazyEspmDecompositionMixin, EDSespmSpectrum, LazyEDSTEMSpectrum):
    """Lazy :class:`EDSespmSpectrum`."""


class EDSespmSEMSpectrum(EspmDecompositionMixin, _EDXMixin, EDSSEMSpectrum):
    """EDX spectrum image of a bulk specimen (exspy ``EDS_SEM``) with espm_lite decompositions.

    The metadata stay under ``Acquisition_instrument.SEM`` (beam energy
    included). Decompositions work, ``G="edx"`` included, but the thin-film
    EDX model is then only an approximate spectral basis: ``build_G`` warns,
    and ``concentration_table`` is refused (:data:`BULK_SPECIMEN_REASON`).
    """

    _signal_type = "EDS_espm_lite_SEM"
    _microscope = "SEM"
    _exspy_signal_type = "EDS_SEM"
    _example_beam_energy = 15

    def build_G(self, elements=None, beam_energy=None, **kwargs):
        """The thin-film ``G`` (see :meth:`EDSespmSpectrum.build_G`), with a warning.

        Warns
        -----
        UserWarning
            The thin-film model is only an approximate spectral basis for a
            bulk specimen, and quantification is refused.
        """
        warnings.warn(
            "espm_lite: the thin-film EDX model is used as an approximate spectral basis "
            "for this SEM (bulk) signal: absorption and fluorescence (ZAF) are not "
            "modelled, so quantification (concentration_table) is refused; the "
            "decomposition and its maps remain usable.",
            UserWarning,
            stacklevel=2,
        )
        return super().build_G(elements, beam_energy, **kwargs)

    def concentration_table(self, *args, **kwargs):
        """Refused on SEM data: see :data:`BULK_SPECIMEN_REASON`.

        Raises
        ------
        ValueError
            Always, saying why.
        """
        raise ValueError(
            f"No thin-film quantification of this signal: {BULK_SPECIMEN_REASON}. "
            "The decomposition (phase spectra and maps) is still valid; quantify the "
            "phases with a bulk (ZAF or phi-rho-z) method."
        )


class LazyEDSespmSEMSpectrum(LazyEspmDecompositionMixin, EDSespmSEMSpectrum, LazyEDSSEMSpectrum):
    """Lazy :class:`EDSespmSEMSpectrum`."""


class EspmSpectrumImage(EspmDecompositionMixin, Signal1D):
    """Any spectrum image (1-D signal, usually 2-D navigation) with espm_lite decompositions."""

    _signal_type = "spectrum_image"


class LazyEspmSpectrumImage(LazyEspmDecompositionMixin, EspmSpectrumImage, LazySignal1D):
    """Lazy :class:`EspmSpectrumImage`."""

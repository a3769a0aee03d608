"""espm_lite's HyperSpy signal classes (registered in ``hyperspy_extension.yaml``).

* ``EDS_espm_lite``: :class:`EDSespmSpectrum`, an exspy ``EDSTEMSpectrum``
  (elements, beam energy, X-ray lines all work) whose ``decomposition`` fits
  espm_lite estimators on the raw counts.
* ``spectrum_image``: :class:`EspmSpectrumImage`, any spectrum image (EELS,
  cathodoluminescence, Raman...): a ``Signal1D`` with the same
  ``decomposition``.

Each has a lazy twin that computes the data into memory before fitting an
espm_lite estimator (out-of-core fitting is not available yet).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import numpy as np
from exspy.signals import EDSTEMSpectrum, LazyEDSTEMSpectrum
from hyperspy.signals import LazySignal1D, Signal1D

from ..models.edx import BEAM_ENERGY_RANGE_KEV, check_beam_energy
from .decomposition import EspmDecompositionMixin

_logger = logging.getLogger(__name__)

#: Fraction of the available memory a lazy signal may take once computed.
LAZY_MEMORY_FRACTION = 0.5


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class LazyEspmDecompositionMixin(EspmDecompositionMixin):
    """Lazy variant: espm_lite estimators fit the data computed into memory."""

    def _espm_data(self, scheduler=None) -> np.ndarray:
        needed = int(np.prod(self.data.shape)) * max(self.data.dtype.itemsize, 8) * 2
        available = _available_memory()
        if available is not None and needed > LAZY_MEMORY_FRACTION * available:
            raise MemoryError(
                f"This lazy signal needs about {needed / 1e9:.1f} GB in memory to be fitted "
                f"by espm_lite ({available / 1e9:.1f} GB available); out-of-core fitting is "
                "not supported yet: crop or rebin the signal first."
            )
        _logger.info(
            "espm_lite: computing the lazy signal into memory (%.2f GB) before fitting.",
            self.data.nbytes / 1e9,
        )
        if scheduler is not None:
            return np.asarray(self.data.compute(scheduler=scheduler))
        return np.asarray(self.data.compute())


@contextmanager
def _seen_as_eds_tem(signal):
    """Let exspy code that tests ``signal_type == "EDS_TEM"`` accept the signal."""
    signal_type = signal.metadata.Signal.signal_type
    signal.metadata.Signal.signal_type = "EDS_TEM"
    try:
        yield
    finally:
        signal.metadata.Signal.signal_type = signal_type


class EDSespmSpectrum(EspmDecompositionMixin, EDSTEMSpectrum):
    """EDX spectrum image (exspy ``EDS_TEM``) with espm_lite decompositions.

    Everything of exspy's ``EDSTEMSpectrum`` works (elements, lines, beam
    energy, take-off angle); the metadata's ``signal_type`` is
    ``"EDS_espm_lite"`` so that saved files load back as this class.
    """

    _signal_type = "EDS_espm_lite"

    def _set_default_param(self):
        super()._set_default_param()  # exspy writes "EDS_TEM" there
        self.metadata.Signal.signal_type = self._signal_type

    def _get_line_energy(self, *args, **kwargs):
        with _seen_as_eds_tem(self):
            return super()._get_line_energy(*args, **kwargs)

    def get_take_off_angle(self):
        with _seen_as_eds_tem(self):
            return super().get_take_off_angle()

    get_take_off_angle.__doc__ = EDSTEMSpectrum.get_take_off_angle.__doc__

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

    # ------------------------------------------------------------ EDX physics
    def edx_model(self, elements=None, beam_energy=None, **model_kwargs):
        """The :class:`~espm_lite.models.EDXModel` of this signal.

        Reads the elements (``metadata.Sample.elements``), the beam energy
        (``metadata.Acquisition_instrument.TEM.beam_energy``, keV) and the
        energy axis (offset, scale, size; units must be keV) from the
        signal; ``elements`` / ``beam_energy`` given here take precedence.

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
        from ..models import EDXModel

        problems = []
        if elements is None:
            if self.metadata.has_item("Sample.elements") and len(self.metadata.Sample.elements):
                elements = list(self.metadata.Sample.elements)
            else:
                problems.append(
                    "no elements: set metadata.Sample.elements with s.add_elements(['Fe', 'O'])"
                    " or pass elements=..."
                )
        if beam_energy is None:
            path = "Acquisition_instrument.TEM.beam_energy"
            if self.metadata.has_item(path):
                beam_energy = float(self.metadata.get_item(path))
                low, high = BEAM_ENERGY_RANGE_KEV
                if not low <= beam_energy <= high:
                    problems.append(
                        f"metadata.{path} is {beam_energy:g}, but the beam energy is in keV, "
                        f"between {low:g} and {high:g} keV (eV by mistake?): set it with "
                        "s.set_microscope_parameters(beam_energy=200)"
                    )
            else:
                problems.append(
                    f"no beam energy: set metadata.{path} (keV) with "
                    "s.set_microscope_parameters(beam_energy=200) or pass beam_energy=..."
                )
        axis = self.axes_manager.signal_axes[0]
        if str(axis.units).strip() != "keV":
            problems.append(
                f"the energy axis is in {axis.units!r}, not 'keV': set "
                "axes_manager.signal_axes[0].units = 'keV' and its offset and scale in keV"
            )
        elif not getattr(axis, "is_uniform", True):
            problems.append("the energy axis is not uniform (offset + i * scale is needed)")
        if problems:
            raise ValueError("Cannot build the EDX model of this signal: " + "; ".join(problems))
        if model_kwargs.get("mass_thickness") is not None and "take_off_angle" not in model_kwargs:
            # self-absorption: the take-off angle of the detector in the metadata (exspy)
            model_kwargs["take_off_angle"] = float(self.get_take_off_angle())
        return EDXModel(
            elements,
            beam_energy,
            energy_offset=float(axis.offset),
            energy_scale=float(axis.scale),
            n_channels=int(axis.size),
            **model_kwargs,
        )

    def build_G(self, elements=None, beam_energy=None, **model_kwargs):
        """Known matrix ``G`` of this signal's X-ray lines and bremsstrahlung.

        ``s.decomposition(algorithm="SmoothNMF", G="edx")`` calls it; pass
        ``G=s.build_G(...)`` to choose the model parameters. See
        :meth:`edx_model` for the parameters and the metadata read.

        Returns
        -------
        espm_lite.models.LabelledG
            ``(n_channels, n_elements + n_background)``, element columns first.
        """
        return self.edx_model(elements, beam_energy, **model_kwargs).build_G()

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


class LazyEDSespmSpectrum(LazyEspmDecompositionMixin, EDSespmSpectrum, LazyEDSTEMSpectrum):
    """Lazy :class:`EDSespmSpectrum`."""


class EspmSpectrumImage(EspmDecompositionMixin, Signal1D):
    """Any spectrum image (1-D signal, usually 2-D navigation) with espm_lite decompositions."""

    _signal_type = "spectrum_image"


class LazyEspmSpectrumImage(LazyEspmDecompositionMixin, EspmSpectrumImage, LazySignal1D):
    """Lazy :class:`EspmSpectrumImage`."""

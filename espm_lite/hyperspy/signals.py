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

    def _espm_data(self) -> np.ndarray:
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


class LazyEDSespmSpectrum(LazyEspmDecompositionMixin, EDSespmSpectrum, LazyEDSTEMSpectrum):
    """Lazy :class:`EDSespmSpectrum`."""


class EspmSpectrumImage(EspmDecompositionMixin, Signal1D):
    """Any spectrum image (1-D signal, usually 2-D navigation) with espm_lite decompositions."""

    _signal_type = "spectrum_image"


class LazyEspmSpectrumImage(LazyEspmDecompositionMixin, EspmSpectrumImage, LazySignal1D):
    """Lazy :class:`EspmSpectrumImage`."""

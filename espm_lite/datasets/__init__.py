"""Synthetic spectrum images with a known truth (Poisson counts).

:func:`make_spectrum_image` draws generic phases (Gaussian peaks over a
background); :func:`make_edx_spectrum_image` builds EDX phases from the
physics matrix ``G`` of :class:`~espm_lite.models.EDXModel` (chosen elements
and atomic fractions), so that a fit with ``G`` can be checked element by
element.

A phantom has ``k`` phases: each a spectrum of Gaussian peaks (X-ray-line-like
widths) over a decaying bremsstrahlung-like background, and a smooth abundance
map; the abundances of each pixel sum to one.  The counts are Poisson draws
around ``counts_per_pixel * spectra @ maps``.

Modules: ``_synthetic`` (generic phases, :class:`SyntheticSpectrumImage`),
``_maps`` (abundance maps), ``_edx_phantom`` (EDX phases from ``G``).
"""

from ._edx_phantom import (
    DEFAULT_ELEMENTS,
    DEFAULT_FRACTIONS,
    EDXSpectrumImage,
    make_edx_spectrum_image,
)
from ._maps import MAP_KINDS, make_maps
from ._synthetic import SyntheticSpectrumImage, make_spectra, make_spectrum_image

__all__ = [
    "DEFAULT_ELEMENTS",
    "DEFAULT_FRACTIONS",
    "MAP_KINDS",
    "EDXSpectrumImage",
    "SyntheticSpectrumImage",
    "make_edx_spectrum_image",
    "make_maps",
    "make_spectra",
    "make_spectrum_image",
]

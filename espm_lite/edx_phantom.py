"""EDX phantoms built from the physics matrix ``G``, with known element fractions.

Each phase is a composition (atomic fractions of the chosen elements) plus a
bremsstrahlung share; its spectrum is ``G W`` with ``G`` from
:class:`~espm_lite.models.EDXModel`, so a fit with the same ``G`` can be
checked element by element.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .datasets import (
    SyntheticSpectrumImage,
    _check_positive_float,
    _check_positive_int,
    _check_shape_2d,
    make_maps,
)
from .models import EDXModel, LabelledG

#: Default elements: a silicate matrix, an Fe-Ti oxide and a Ca-Mg carbonate-like phase.
DEFAULT_ELEMENTS = ("O", "Mg", "Al", "Si", "Ca", "Ti", "Fe")
#: Default atomic fractions (rows: phases, columns: ``DEFAULT_ELEMENTS``).
DEFAULT_FRACTIONS = (
    (0.60, 0.03, 0.10, 0.25, 0.01, 0.005, 0.005),
    (0.55, 0.02, 0.02, 0.005, 0.005, 0.15, 0.25),
    (0.585, 0.15, 0.005, 0.005, 0.25, 0.0025, 0.0025),
)
#: Split of the bremsstrahlung between the background columns of ``G``.
_BACKGROUND_SPLIT = (0.7, 0.3)


@dataclass(frozen=True)
class EDXSpectrumImage(SyntheticSpectrumImage):
    """An EDX phantom and its truth (see :class:`~espm_lite.datasets.SyntheticSpectrumImage`).

    Attributes
    ----------
    model : EDXModel
    G : LabelledG
        ``(n, n_elements + n_background)``.
    W : ndarray (m, k)
        True ``W``: element rows are the atomic fractions, background rows the
        bremsstrahlung (``spectra`` is ``G W`` normalised per column).
    fractions : ndarray (k, n_elements)
        True atomic fractions, each row sums to 1.
    elements : tuple of str
    beam_energy : float
        keV.
    """

    model: EDXModel = None
    G: LabelledG = None
    W: np.ndarray = None
    fractions: np.ndarray = None
    elements: tuple[str, ...] = ()
    beam_energy: float = 200.0

    def to_signal(self, signal_type: str = "EDS_espm_lite", beam_energy: float | None = None):
        """An ``EDS_espm_lite`` signal with the elements and beam energy in its metadata."""
        s = super().to_signal(signal_type, self.beam_energy if beam_energy is None else beam_energy)
        if hasattr(s, "add_elements"):
            s.add_elements(list(self.elements))
        else:
            s.metadata.set_item("Sample.elements", sorted(self.elements))
        s.metadata.General.title = f"Synthetic {self.spectra.shape[1]}-phase EDX spectrum image"
        return s


def make_edx_spectrum_image(
    elements=DEFAULT_ELEMENTS,
    fractions=None,
    *,
    shape_2d=(80, 80),
    beam_energy: float = 200.0,
    energy_offset: float = 0.2,
    energy_scale: float = 0.01,
    n_channels: int = 1980,
    counts_per_pixel: float = 200.0,
    background_fraction: float = 0.2,
    map_kind: str = "discs",
    seed=None,
    model_kwargs: dict | None = None,
) -> EDXSpectrumImage:
    """A Poisson EDX spectrum image with known phases, maps and element fractions.

    Parameters
    ----------
    elements : sequence of str, default ("O", "Mg", "Al", "Si", "Ca", "Ti", "Fe")
    fractions : array-like (k, n_elements) or None
        Atomic fractions of each phase (rows are normalised to sum to 1).
        Default: three phases of the default elements (a silicate matrix,
        an Fe-Ti oxide, a Ca-Mg carbonate-like phase), each with 3 or 4
        elements above 10 %.
    shape_2d : (int, int), default=(80, 80)
    beam_energy : float, default=200
        keV.
    energy_offset, energy_scale : float
        keV (defaults 0.2 keV and 10 eV).
    n_channels : int, default=1980
    counts_per_pixel : float, default=200
        Mean counts of a pixel.
    background_fraction : float in [0, 1), default=0.2
        Share of each phase's counts that is bremsstrahlung.
    map_kind : {"discs", "gradients"}
    seed : int, Generator or None
    model_kwargs : dict, optional
        More :class:`~espm_lite.models.EDXModel` parameters (``fwhm_mn_ka``,
        ``element_factors``...). ``n_background`` must be 2 (or 0 with
        ``background_fraction=0``).

    Returns
    -------
    EDXSpectrumImage
        Its ``elements`` (and the columns of ``fractions`` and ``G``) are in
        alphabetical order, the order of HyperSpy's ``metadata.Sample.elements``.
    """
    elements = tuple(elements)
    ny, nx = _check_shape_2d(shape_2d)
    counts_per_pixel = _check_positive_float("counts_per_pixel", counts_per_pixel)
    n_channels = _check_positive_int("n_channels", n_channels)
    if not 0 <= background_fraction < 1:
        raise ValueError(f"background_fraction must be in [0, 1), got {background_fraction!r}.")
    if fractions is None:
        if elements != DEFAULT_ELEMENTS:
            raise ValueError("fractions must be given for elements other than the default.")
        fractions = DEFAULT_FRACTIONS
    fractions = np.array(fractions, dtype=np.float64)
    if fractions.ndim != 2 or fractions.shape[1] != len(elements):
        raise ValueError(
            f"fractions must have shape (n_phases, {len(elements)}), got {fractions.shape}."
        )
    if np.any(fractions < 0) or np.any(fractions.sum(axis=1) <= 0):
        raise ValueError("fractions must be non-negative with a positive sum per phase.")
    fractions /= fractions.sum(axis=1, keepdims=True)
    # Alphabetical order, as HyperSpy keeps metadata.Sample.elements.
    order = sorted(range(len(elements)), key=lambda i: elements[i])
    elements = tuple(elements[i] for i in order)
    fractions = fractions[:, order]
    kwargs = {"n_background": len(_BACKGROUND_SPLIT), **(model_kwargs or {})}
    model = EDXModel(
        list(elements),
        beam_energy,
        energy_offset=energy_offset,
        energy_scale=energy_scale,
        n_channels=n_channels,
        **kwargs,
    )
    G = model.build_G()
    n_background = model.n_background
    if background_fraction > 0 and n_background != len(_BACKGROUND_SPLIT):
        raise ValueError(f"model_kwargs n_background must be {len(_BACKGROUND_SPLIT)}.")
    factors = G.values.sum(axis=0)[: len(elements)]
    characteristic = fractions @ factors  # counts per unit amount of each phase
    background = characteristic * background_fraction / (1 - background_fraction)
    W = np.vstack(
        [fractions.T] + ([np.outer(_BACKGROUND_SPLIT, background)] if n_background else [])
    )
    D = G.values @ W
    spectra = D / D.sum(axis=0)
    rng = np.random.default_rng(seed)
    maps = make_maps((ny, nx), fractions.shape[0], map_kind, rng)
    X = rng.poisson(counts_per_pixel * spectra @ maps).astype(np.float64)
    return EDXSpectrumImage(
        X=X,
        spectra=spectra,
        maps=maps,
        shape_2d=(ny, nx),
        energy=model.energy,
        counts_per_pixel=counts_per_pixel,
        model=model,
        G=G,
        W=W,
        fractions=fractions,
        elements=elements,
        beam_energy=float(beam_energy),
    )

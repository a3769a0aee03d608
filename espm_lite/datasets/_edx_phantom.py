"""EDX phantoms: phases of known elements and atomic fractions, built with ``G``.

The phases are columns of ``W`` in ``X ~ G W H`` with the
:class:`~espm_lite.models.EDXModel` matrix ``G`` of the chosen elements, so a
fit with ``G`` can be checked element by element.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._validation import check_shape_2d, composition_rows, positive_float, positive_int
from ..models import EDXModel, LabelledG
from ._maps import make_maps
from ._synthetic import SyntheticSpectrumImage

#: Default elements: a silicate matrix, an Fe-Ti oxide and a Ca-Mg carbonate-like phase.
DEFAULT_ELEMENTS = ("O", "Mg", "Al", "Si", "Ca", "Ti", "Fe")
#: Default atomic fractions (rows: phases, columns: ``DEFAULT_ELEMENTS``).
DEFAULT_FRACTIONS = (
    (0.60, 0.03, 0.10, 0.25, 0.01, 0.005, 0.005),
    (0.55, 0.02, 0.02, 0.005, 0.005, 0.15, 0.25),
    (0.585, 0.15, 0.005, 0.005, 0.25, 0.0025, 0.0025),
)
#: Ratio of successive background columns' shares of the bremsstrahlung (0.7 / 0.3 for two).
_BACKGROUND_RATIO = 3.0 / 7.0


def _background_split(n_background: int) -> np.ndarray:
    """Shares of the bremsstrahlung per background column: geometric, summing to 1."""
    split = _BACKGROUND_RATIO ** np.arange(n_background, dtype=np.float64)
    return split / split.sum()


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
        """The phantom as an ``EDS_espm_lite`` HyperSpy signal of integer counts.

        Parameters
        ----------
        signal_type : str, default="EDS_espm_lite"
        beam_energy : float, optional
            keV; default: the phantom's beam energy.

        Returns
        -------
        EDSespmSpectrum
            Data ``(ny, nx, n)`` int64, a keV energy axis (``energy_offset``,
            ``energy_scale``), ``metadata.Sample.elements`` and
            ``metadata.Acquisition_instrument.TEM.beam_energy`` set, so that
            ``s.build_G()`` rebuilds :attr:`G`'s model.
        """
        s = super().to_signal(signal_type, self.beam_energy if beam_energy is None else beam_energy)
        if hasattr(s, "add_elements"):
            s.add_elements(list(self.elements))
        else:
            s.metadata.set_item("Sample.elements", sorted(self.elements))
        s.metadata.General.title = f"Synthetic {self.spectra.shape[1]}-phase EDX spectrum image"
        return s


def make_edx_spectrum_image(
    elements: Sequence[str] = DEFAULT_ELEMENTS,
    fractions: ArrayLike | None = None,
    *,
    shape_2d: tuple[int, int] = (80, 80),
    beam_energy: float = 200.0,
    energy_offset: float = 0.2,
    energy_scale: float = 0.01,
    n_channels: int = 1980,
    counts_per_pixel: float = 200.0,
    background_fraction: float = 0.2,
    map_kind: str = "discs",
    seed: int | np.random.Generator | None = 0,
    model_kwargs: Mapping | None = None,
) -> EDXSpectrumImage:
    r"""A Poisson EDX spectrum image with known phases, maps and element fractions.

    Parameters
    ----------
    elements : sequence of str, default ("O", "Mg", "Al", "Si", "Ca", "Ti", "Fe")
    fractions : array-like (k, n_elements) or None
        Atomic fractions of each phase (rows are normalised to sum to 1).
        Default: ``DEFAULT_FRACTIONS``, three phases of the default elements
        (a silicate matrix, an Fe-Ti oxide, a Ca-Mg carbonate-like phase),
        each with three elements at 10 % or more.
    shape_2d : (int, int), default=(80, 80)
    beam_energy : float, default=200
        keV.
    energy_offset, energy_scale : float
        keV (defaults 0.2 keV and 10 eV).
    n_channels : int, default=1980
    counts_per_pixel : float, default=200
        Mean counts of a pixel.
    background_fraction : float in [0, 1), default=0.2
        Share of each phase's counts that is bremsstrahlung (split between
        the background columns of ``G`` in geometric proportions, 0.7 / 0.3
        for the default two).
    map_kind : {"discs", "gradients"}
    seed : int, Generator or None, default=0
        Same seed, same data (maps and Poisson draws).
    model_kwargs : dict, optional
        More :class:`~espm_lite.models.EDXModel` parameters (``fwhm_mn_ka``,
        ``element_factors``, ``n_background``...). ``n_background=0`` needs
        ``background_fraction=0``.

    Returns
    -------
    EDXSpectrumImage
        Its ``elements`` (and the columns of ``fractions`` and ``G``) are in
        alphabetical order, the order of HyperSpy's ``metadata.Sample.elements``.

    Notes
    -----
    ``W``: atomic fractions in the element rows, bremsstrahlung rows making a
    share ``beta`` of each phase's counts (see :func:`_edx_phase_W`);
    ``spectra = G W`` normalised per column and

    .. math:: X_{ij} \sim \mathrm{Poisson}(c\, (\text{spectra} \cdot \text{maps})_{ij}),

    ``c = counts_per_pixel``.

    Raises
    ------
    ValueError
        Bad shapes, fractions (negative, non-finite, wrong shape, missing for
        non-default elements), ``background_fraction`` outside ``[0, 1)``, or
        any invalid :class:`~espm_lite.models.EDXModel` parameter.
    """
    shape = check_shape_2d(shape_2d)
    counts_per_pixel = positive_float("counts_per_pixel", counts_per_pixel)
    elements, fractions = _sorted_composition(elements, fractions)
    background_fraction = _check_background_fraction(background_fraction)
    model = _phantom_model(
        elements, beam_energy, energy_offset, energy_scale, n_channels, model_kwargs
    )
    return _draw_phantom(
        model, fractions, background_fraction, shape, counts_per_pixel, map_kind, seed
    )


def _draw_phantom(
    model: EDXModel,
    fractions: np.ndarray,
    background_fraction: float,
    shape: tuple[int, int],
    counts_per_pixel: float,
    map_kind: str,
    seed,
) -> EDXSpectrumImage:
    """The phantom of checked arguments: its ``G``, ``W``, spectra, maps and Poisson counts."""
    G = model.build_G()
    W = _edx_phase_W(G, fractions, background_fraction)
    D = G.values @ W
    spectra = D / D.sum(axis=0)
    rng = np.random.default_rng(seed)
    maps = make_maps(shape, fractions.shape[0], map_kind, rng)
    X = rng.poisson(counts_per_pixel * spectra @ maps).astype(np.float64)
    return EDXSpectrumImage(
        X=X,
        spectra=spectra,
        maps=maps,
        shape_2d=shape,
        energy=model.energy,
        counts_per_pixel=counts_per_pixel,
        model=model,
        G=G,
        W=W,
        fractions=fractions,
        elements=model.elements,
        beam_energy=model.beam_energy,
    )


def _sorted_composition(elements, fractions) -> tuple[tuple[str, ...], np.ndarray]:
    """Checked elements and fractions (rows normalised), in alphabetical order of the elements.

    Alphabetical, as HyperSpy keeps ``metadata.Sample.elements``.
    """
    elements = tuple(elements)
    if isinstance(elements, str) or not elements:
        raise ValueError(f"elements must be a non-empty list of symbols, got {elements!r}.")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must be unique, got {list(elements)}.")
    if fractions is None:
        if elements != DEFAULT_ELEMENTS:
            raise ValueError("fractions must be given for elements other than the default.")
        fractions = DEFAULT_FRACTIONS
    fractions = composition_rows("fractions", fractions, len(elements))
    fractions /= fractions.sum(axis=1, keepdims=True)
    order = sorted(range(len(elements)), key=lambda i: elements[i])
    return tuple(elements[i] for i in order), fractions[:, order]


def _check_background_fraction(background_fraction) -> float:
    if (
        isinstance(background_fraction, bool)
        or not isinstance(background_fraction, numbers.Real)
        or not 0 <= background_fraction < 1
    ):
        raise ValueError(f"background_fraction must be in [0, 1), got {background_fraction!r}.")
    return float(background_fraction)


def _phantom_model(
    elements, beam_energy, energy_offset, energy_scale, n_channels, model_kwargs
) -> EDXModel:
    """The :class:`EDXModel` of a phantom (two background columns unless ``model_kwargs`` says)."""
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise ValueError(f"model_kwargs must be a dict, got {model_kwargs!r}.")
    kwargs = {"n_background": 2, "line_families": "joint", **(model_kwargs or {})}
    for reserved in ("elements", "beam_energy", "energy_offset", "energy_scale", "n_channels"):
        if reserved in kwargs:
            raise ValueError(
                f"model_kwargs must not hold {reserved!r}: it is an argument of this function."
            )
    return EDXModel(
        list(elements),
        beam_energy,
        energy_offset=energy_offset,
        energy_scale=energy_scale,
        n_channels=positive_int("n_channels", n_channels),
        **kwargs,
    )


def _edx_phase_W(G: LabelledG, fractions: np.ndarray, background_fraction: float) -> np.ndarray:
    r"""The true ``W`` of EDX phases of given atomic fractions.

    Parameters
    ----------
    G : LabelledG
        ``(n, n_elements + n_background)``, element columns first (summing to
        their factors ``f_e``), as built by :class:`~espm_lite.models.EDXModel`.
    fractions : ndarray (k, n_elements)
        Atomic fractions of each phase, rows summing to 1.
    background_fraction : float in [0, 1)
        Share ``beta`` of each phase's counts that is bremsstrahlung.

    Returns
    -------
    ndarray (n_elements + n_background, k)

    Raises
    ------
    ValueError
        ``background_fraction > 0`` with no background column.

    Notes
    -----
    Phase ``r`` has ``W[e, r] = x_re`` (atomic fractions) and background rows

    .. math:: W_{br} = s_b \frac{\beta}{1 - \beta} \sum_e x_{re} f_e

    (``beta`` the ``background_fraction``, ``s_b`` the geometric split of
    :func:`_background_split`), so that a share ``beta`` of its counts
    (``G W``) is bremsstrahlung.
    """
    n_elements = fractions.shape[1]
    n_background = G.shape[1] - n_elements
    if background_fraction > 0 and n_background == 0:
        raise ValueError(
            "background_fraction > 0 needs bremsstrahlung columns: model_kwargs n_background "
            "must be >= 1 (or set background_fraction=0)."
        )
    factors = G.values.sum(axis=0)[:n_elements]
    characteristic = fractions @ factors  # counts per unit amount of each phase
    background = characteristic * background_fraction / (1 - background_fraction)
    return np.vstack(
        [fractions.T]
        + ([np.outer(_background_split(n_background), background)] if n_background else [])
    )

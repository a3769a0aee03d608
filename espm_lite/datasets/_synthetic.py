"""Generic synthetic spectrum images: Gaussian-peak phases over a background."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .._validation import check_shape_2d, finite_float, positive_float, positive_int
from ..measures import spectral_angles
from ._maps import MAP_KINDS, make_maps


@dataclass(frozen=True)
class SyntheticSpectrumImage:
    """A phantom and its truth.

    Attributes
    ----------
    X : ndarray (n, p)
        Poisson counts (integer values, float dtype), channels x pixels.
    spectra : ndarray (n, k)
        True phase spectra, each column sums to 1.
    maps : ndarray (k, p)
        True abundances, each column (pixel) sums to 1.
    shape_2d : (int, int)
        ``(ny, nx)``; pixels are row-major.
    energy : ndarray (n,)
        Channel energies in keV.
    counts_per_pixel : float
    """

    X: np.ndarray
    spectra: np.ndarray
    maps: np.ndarray
    shape_2d: tuple[int, int]
    energy: np.ndarray
    counts_per_pixel: float

    @property
    def expected(self) -> np.ndarray:
        """Noise-free counts ``counts_per_pixel * spectra @ maps`` (n, p)."""
        return self.counts_per_pixel * self.spectra @ self.maps

    def angles(self, spectra: ArrayLike) -> np.ndarray:
        """Matched angles (degrees) of estimated spectra ``(n, k)`` to the true ones."""
        from ..measures import matched_angles

        return matched_angles(self.spectra, spectra)

    def map_errors(self, spectra: ArrayLike, maps: ArrayLike) -> np.ndarray:
        """Matched mean squared errors of estimated abundances, per true phase.

        ``spectra`` ``(n, k)`` and ``maps`` ``(k, p)`` are a factorisation of
        ``X`` in counts: each map is rescaled by its spectrum's sum and divided
        by ``counts_per_pixel`` so that it is comparable to the abundances.
        """
        from ..measures import matched_map_errors

        return matched_map_errors(self.maps, maps, self.spectra * self.counts_per_pixel, spectra)

    def to_signal(self, signal_type: str = "EDS_espm_lite", beam_energy: float = 200.0):
        """The phantom as a HyperSpy signal of integer counts.

        Parameters
        ----------
        signal_type : str, default "EDS_espm_lite"
            Any registered signal type (``"spectrum_image"`` for the generic one).
        beam_energy : float, default 200
            keV, written to ``Acquisition_instrument.TEM.beam_energy``.

        Returns
        -------
        hyperspy signal of shape ``(nx, ny | n)`` with a keV energy axis.
        """
        import hyperspy.api as hs

        s = hs.signals.Signal1D(np.rint(self.to_hspy_layout()).astype(np.int64))
        s.set_signal_type(signal_type)
        axis = s.axes_manager.signal_axes[0]
        axis.name, axis.units = "Energy", "keV"
        axis.offset = float(self.energy[0])
        axis.scale = float(self.energy[1] - self.energy[0]) if self.energy.size > 1 else 1.0
        for nav_axis, name in zip(s.axes_manager.navigation_axes, ("x", "y"), strict=False):
            nav_axis.name, nav_axis.units = name, "nm"
        s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", float(beam_energy))
        s.metadata.General.title = f"Synthetic {self.spectra.shape[1]}-phase spectrum image"
        return s

    def to_hspy_layout(self) -> np.ndarray:
        """The counts as ``(ny, nx, n)``, HyperSpy's layout of a spectrum image (a new array)."""
        ny, nx = self.shape_2d
        return np.ascontiguousarray(self.X.T).reshape(ny, nx, -1)


def _check_n_channels(n_channels) -> int:
    """``n_channels`` if it is an integer ``>= 2`` (a spectrum needs an energy range)."""
    n_channels = positive_int("n_channels", n_channels)
    if n_channels < 2:
        raise ValueError(
            f"n_channels must be at least 2 (the peaks need an energy range), got {n_channels}."
        )
    return n_channels


def make_spectra(
    n_channels: int, n_phases: int, energy: ArrayLike, rng: np.random.Generator
) -> np.ndarray:
    """Phase spectra ``(n, k)``: Gaussian peaks over a decaying background, columns sum to 1.

    Peaks (3 to 6 per phase, widths 0.05-0.15 keV) carry 75-90 % of each
    spectrum; phases are redrawn until every pair is more than 20 degrees apart.
    """
    n_channels = _check_n_channels(n_channels)
    n_phases = positive_int("n_phases", n_phases)
    energy = np.asarray(energy, dtype=np.float64)
    if energy.shape != (n_channels,):
        raise ValueError(
            f"energy must be a 1-D array of n_channels={n_channels} values, "
            f"got shape {energy.shape}."
        )
    e_min, e_max = float(energy.min()), float(energy.max())
    span = max(e_max - e_min, 1e-9)
    channel_width = span / max(n_channels - 1, 1)
    for _attempt in range(100):
        spectra = np.empty((n_channels, n_phases))
        for r in range(n_phases):
            decay = rng.uniform(0.15, 0.4) * span
            background = np.exp(-(energy - e_min) / decay) * (
                1 - np.exp(-(energy - e_min + 0.05 * span) / (0.05 * span))
            )
            background /= background.sum()
            peaks = np.zeros(n_channels)
            for _ in range(int(rng.integers(3, 7))):
                centre = rng.uniform(e_min + 0.05 * span, e_max - 0.05 * span)
                width = max(rng.uniform(0.05, 0.15), 1.5 * channel_width)
                peaks += rng.uniform(0.2, 1.0) * np.exp(-0.5 * ((energy - centre) / width) ** 2)
            if peaks.sum() <= 0:
                peaks[rng.integers(n_channels)] = 1.0
            peaks /= peaks.sum()
            peak_share = rng.uniform(0.75, 0.9)
            spectra[:, r] = peak_share * peaks + (1 - peak_share) * background
        spectra /= spectra.sum(axis=0)
        angles = spectral_angles(spectra, spectra)
        off_diagonal = angles[~np.eye(n_phases, dtype=bool)]
        if n_phases == 1 or off_diagonal.min() > 20.0:
            return spectra
    raise ValueError(
        f"could not draw {n_phases} phase spectra more than 20 degrees apart over "
        f"n_channels={n_channels} channels: use more channels (or a larger energy_scale) "
        "or fewer phases (n_phases)."
    )


def make_spectrum_image(
    shape_2d: tuple[int, int] = (80, 80),
    n_channels: int = 1980,
    n_phases: int = 3,
    counts_per_pixel: float = 500.0,
    energy_offset: float = 0.2,
    energy_scale: float = 0.01,
    map_kind: str = "discs",
    seed: int | np.random.Generator | None = None,
    dtype: DTypeLike = np.float64,
) -> SyntheticSpectrumImage:
    """A Poisson spectrum image with known spectra and maps.

    Parameters
    ----------
    shape_2d : (int, int), default=(80, 80)
        ``(ny, nx)`` of the scan.
    n_channels : int, default=1980
    n_phases : int, default=3
    counts_per_pixel : float, default=500
        Mean number of counts of a pixel.
    energy_offset, energy_scale : float
        Energy axis ``offset + i * scale`` in keV (defaults: 0.2 keV, 10 eV).
    map_kind : {"discs", "gradients"}
    seed : int, Generator or None
        Same seed, same data.
    dtype : float dtype of ``X``, default float64

    Returns
    -------
    SyntheticSpectrumImage

    Raises
    ------
    ValueError
        Naming the argument: bad sizes (``n_channels < 2``, ``n_phases < 1``,
        a bad ``shape_2d``), counts or energy axis, or too few channels to
        draw ``n_phases`` distinct spectra.
    """
    ny, nx = check_shape_2d(shape_2d)
    n_channels = _check_n_channels(n_channels)
    n_phases = positive_int("n_phases", n_phases)
    counts_per_pixel = positive_float("counts_per_pixel", counts_per_pixel)
    energy_scale = positive_float("energy_scale", energy_scale)
    energy_offset = finite_float("energy_offset", energy_offset)
    if map_kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {map_kind!r}.")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}.") from None
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    rng = np.random.default_rng(seed)
    energy = energy_offset + energy_scale * np.arange(n_channels)
    spectra = make_spectra(n_channels, n_phases, energy, rng)
    maps = make_maps((ny, nx), n_phases, map_kind, rng)
    X = rng.poisson(counts_per_pixel * spectra @ maps).astype(dtype)
    return SyntheticSpectrumImage(
        X=X,
        spectra=spectra,
        maps=maps,
        shape_2d=(ny, nx),
        energy=energy,
        counts_per_pixel=float(counts_per_pixel),
    )

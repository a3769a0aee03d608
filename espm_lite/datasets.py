"""Synthetic spectrum images with a known truth (Poisson counts).

A phantom has ``k`` phases: each a spectrum of Gaussian peaks (X-ray-line-like
widths) over a decaying bremsstrahlung-like background, and a smooth abundance
map; the abundances of each pixel sum to one.  The counts are Poisson draws
around ``counts_per_pixel * spectra @ maps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAP_KINDS = ("discs", "gradients")


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

    def angles(self, spectra) -> np.ndarray:
        """Matched angles (degrees) of estimated spectra ``(n, k)`` to the true ones."""
        from .measures import matched_angles

        return matched_angles(self.spectra, spectra)

    def map_errors(self, spectra, maps) -> np.ndarray:
        """Matched mean squared errors of estimated abundances, per true phase.

        ``spectra`` ``(n, k)`` and ``maps`` ``(k, p)`` are a factorisation of
        ``X`` in counts: each map is rescaled by its spectrum's sum and divided
        by ``counts_per_pixel`` so that it is comparable to the abundances.
        """
        from .measures import matched_map_errors

        return matched_map_errors(self.maps, maps, self.spectra * self.counts_per_pixel, spectra)

    def to_hspy_layout(self) -> np.ndarray:
        """The counts as ``(ny, nx, n)``, HyperSpy's layout of a spectrum image (a new array)."""
        ny, nx = self.shape_2d
        return np.ascontiguousarray(self.X.T).reshape(ny, nx, -1)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _angles_deg(S: np.ndarray) -> np.ndarray:
    unit = S / np.linalg.norm(S, axis=0)
    cos = np.clip(unit.T @ unit, -1, 1)
    return np.degrees(np.arccos(cos))


def make_spectra(
    n_channels: int, n_phases: int, energy: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Phase spectra ``(n, k)``: Gaussian peaks over a decaying background, columns sum to 1.

    Peaks (3 to 6 per phase, widths 0.05-0.15 keV) carry 60-80 % of each
    spectrum; phases are redrawn until every pair is more than 20 degrees apart.
    """
    n_channels = _check_positive_int("n_channels", n_channels)
    n_phases = _check_positive_int("n_phases", n_phases)
    energy = np.asarray(energy, dtype=np.float64)
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
            peak_share = rng.uniform(0.6, 0.8)
            spectra[:, r] = peak_share * peaks + (1 - peak_share) * background
        spectra /= spectra.sum(axis=0)
        angles = _angles_deg(spectra)
        off_diagonal = angles[~np.eye(n_phases, dtype=bool)]
        if n_phases == 1 or off_diagonal.min() > 20.0:
            return spectra
    raise RuntimeError("could not draw phase spectra 20 degrees apart; use more channels")


def make_maps(shape_2d, n_phases: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Smooth abundance maps ``(k, p)`` whose columns sum to 1.

    ``"discs"``: phase 0 is a matrix, every other phase sits in soft-edged
    discs where it dominates (abundance > 0.8 at the centres).
    ``"gradients"``: smooth ramps and waves, normalised per pixel.
    """
    ny, nx = (
        _check_positive_int("shape_2d[0]", shape_2d[0]),
        _check_positive_int("shape_2d[1]", shape_2d[1]),
    )
    n_phases = _check_positive_int("n_phases", n_phases)
    if kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {kind!r}.")
    yy, xx = np.meshgrid(np.linspace(0, 1, ny), np.linspace(0, 1, nx), indexing="ij")
    if n_phases == 1:
        return np.ones((1, ny * nx))
    weights = np.empty((n_phases, ny, nx))
    if kind == "discs":
        weights[0] = 0.15
        for r in range(1, n_phases):
            field = np.zeros((ny, nx))
            for _ in range(int(rng.integers(1, 3))):
                cy, cx = rng.uniform(0.15, 0.85, size=2)
                radius = rng.uniform(0.12, 0.22)
                dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
                # soft edge of ~0.05 (relative size)
                field = np.maximum(field, 1.0 / (1.0 + np.exp((dist - radius) / 0.03)))
            weights[r] = 3.0 * field
    else:
        for r in range(n_phases):
            angle = rng.uniform(0, np.pi)
            freq = rng.uniform(0.5, 1.5)
            phase = rng.uniform(0, 2 * np.pi)
            ramp = np.cos(angle) * xx + np.sin(angle) * yy
            weights[r] = 1.0 + np.cos(2 * np.pi * freq * ramp + phase)
        weights = weights**2 + 0.02
    maps = weights.reshape(n_phases, -1)
    return maps / maps.sum(axis=0, keepdims=True)


def make_spectrum_image(
    shape_2d=(80, 80),
    n_channels: int = 1980,
    n_phases: int = 3,
    counts_per_pixel: float = 500.0,
    energy_offset: float = 0.2,
    energy_scale: float = 0.01,
    map_kind: str = "discs",
    seed=None,
    dtype=np.float64,
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
    """
    if len(tuple(shape_2d)) != 2:
        raise ValueError(f"shape_2d must be a pair (ny, nx), got {shape_2d!r}.")
    n_channels = _check_positive_int("n_channels", n_channels)
    n_phases = _check_positive_int("n_phases", n_phases)
    if not np.isfinite(counts_per_pixel) or counts_per_pixel <= 0:
        raise ValueError(f"counts_per_pixel must be positive, got {counts_per_pixel!r}.")
    if not energy_scale > 0:
        raise ValueError(f"energy_scale must be positive, got {energy_scale!r}.")
    if map_kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {map_kind!r}.")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}.")
    rng = np.random.default_rng(seed)
    energy = energy_offset + energy_scale * np.arange(n_channels)
    spectra = make_spectra(n_channels, n_phases, energy, rng)
    maps = make_maps(tuple(shape_2d), n_phases, map_kind, rng)
    X = rng.poisson(counts_per_pixel * spectra @ maps).astype(dtype)
    return SyntheticSpectrumImage(
        X=X,
        spectra=spectra,
        maps=maps,
        shape_2d=(int(shape_2d[0]), int(shape_2d[1])),
        energy=energy,
        counts_per_pixel=float(counts_per_pixel),
    )

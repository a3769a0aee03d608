"""Synthetic spectrum images with a known truth (Poisson counts).

A phantom has ``k`` phases: each a spectrum of Gaussian peaks (X-ray-line-like
widths) over a decaying bremsstrahlung-like background, and a smooth abundance
map; the abundances of each pixel sum to one.  The counts are Poisson draws
around ``counts_per_pixel * spectra @ maps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

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


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_positive_float(name: str, value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}.") from None
    if isinstance(value, bool) or not np.isfinite(out) or out <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return out


def _check_shape_2d(shape_2d) -> tuple[int, int]:
    try:
        pair = tuple(shape_2d)
    except TypeError:
        raise ValueError(f"shape_2d must be a pair (ny, nx), got {shape_2d!r}.") from None
    if len(pair) != 2:
        raise ValueError(f"shape_2d must be a pair (ny, nx), got {shape_2d!r}.")
    return (
        _check_positive_int("shape_2d[0]", pair[0]),
        _check_positive_int("shape_2d[1]", pair[1]),
    )


def _angles_deg(S: np.ndarray) -> np.ndarray:
    unit = S / np.linalg.norm(S, axis=0)
    cos = np.clip(unit.T @ unit, -1, 1)
    return np.degrees(np.arccos(cos))


def make_spectra(
    n_channels: int, n_phases: int, energy: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Phase spectra ``(n, k)``: Gaussian peaks over a decaying background, columns sum to 1.

    Peaks (3 to 6 per phase, widths 0.05-0.15 keV) carry 75-90 % of each
    spectrum; phases are redrawn until every pair is more than 20 degrees apart.
    """
    n_channels = _check_positive_int("n_channels", n_channels)
    n_phases = _check_positive_int("n_phases", n_phases)
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
        angles = _angles_deg(spectra)
        off_diagonal = angles[~np.eye(n_phases, dtype=bool)]
        if n_phases == 1 or off_diagonal.min() > 20.0:
            return spectra
    raise RuntimeError(
        "could not draw phase spectra more than 20 degrees apart; widen the energy range "
        "(more channels or a larger energy_scale) or use fewer phases."
    )


def _grid_shape(ny: int, nx: int, n_cells: int) -> tuple[int, int]:
    """A grid ``(gy, gx)`` of at least ``n_cells`` cells (capped at the pixel count).

    Cells hold at least one pixel each and are as square as possible.
    """
    n_cells = min(n_cells, ny * nx)
    best, best_score = (ny, nx), np.inf
    for gy in range(1, min(ny, n_cells) + 1):
        gx = -(-n_cells // gy)
        if gx > nx:
            continue
        score = abs(np.log((ny / gy) / (nx / gx))) + 0.3 * (gy * gx - n_cells) / n_cells
        if score < best_score:
            best, best_score = (gy, gx), score
    return best


def _cell_pixel(lo: float, hi: float, target: float) -> int:
    """The pixel index ``i`` with ``lo <= i < hi`` that is nearest to ``target``."""
    first, last = int(np.ceil(lo)), int(np.ceil(hi)) - 1
    return int(np.clip(np.rint(target), first, max(first, last)))


def _disc_weights(ny: int, nx: int, n_phases: int, rng: np.random.Generator) -> np.ndarray:
    """Unnormalised ``(k, ny, nx)`` weights: a matrix phase 0 and soft-edged discs.

    The scan is split into a grid of at least ``k`` cells; each of the phases
    ``1 .. k-1`` gets a disc in a cell of its own, at least one cell is left to
    the matrix, and the other cells may hold a second disc of a random phase.
    Disc centres sit on pixels, so every phase is nearly pure somewhere
    whenever the scan has at least ``k`` pixels.
    """
    gy, gx = _grid_shape(ny, nx, n_phases)
    cell_h, cell_w = ny / gy, nx / gx
    cell = min(cell_h, cell_w)
    order = rng.permutation(gy * gx)
    owners = [(r, int(order[(r - 1) % order.size])) for r in range(1, n_phases)]
    for c in order[n_phases - 1 : -1]:  # the last cell stays matrix only
        if rng.random() < 0.5:
            owners.append((int(rng.integers(1, n_phases)), int(c)))
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    fields = np.zeros((n_phases, ny, nx))
    for r, c in owners:
        iy, ix = divmod(c, gx)
        rel_radius = rng.uniform(0.38, 0.45)
        jitter = max(0.0, 0.5 - rel_radius - 0.05) * cell
        cy = (iy + 0.5) * cell_h - 0.5 + rng.uniform(-jitter, jitter)
        cx = (ix + 0.5) * cell_w - 0.5 + rng.uniform(-jitter, jitter)
        cy = _cell_pixel(iy * cell_h - 0.5, (iy + 1) * cell_h - 0.5, cy)
        cx = _cell_pixel(ix * cell_w - 0.5, (ix + 1) * cell_w - 0.5, cx)
        radius = rel_radius * cell
        dist = np.hypot(yy - cy, xx - cx)
        # logistic edge, ~radius/7 wide: smooth in space, nearly 1 at the centre
        fields[r] = np.maximum(fields[r], expit((radius - dist) / (0.15 * radius)))
    # The matrix fades inside the discs, so disc centres are (nearly) pure.
    fields[0] = np.clip(1.0 - fields[1:].max(axis=0), 0.0, None) + 1e-3
    return fields


def make_maps(
    shape_2d: tuple[int, int], n_phases: int, kind: str, rng: np.random.Generator
) -> np.ndarray:
    """Smooth abundance maps ``(k, p)`` whose columns sum to 1.

    Parameters
    ----------
    shape_2d : (int, int)
        ``(ny, nx)``; ``p = ny * nx`` pixels, row-major.
    n_phases : int
        Number of phases ``k``.
    kind : {"discs", "gradients"}
        ``"discs"``: phase 0 is a matrix and every other phase sits in
        soft-edged discs, nearly pure (abundance > 0.8) at their centres; the
        matrix is nearly pure in at least one region too (every phase
        dominates somewhere as long as ``p >= k``).
        ``"gradients"``: smooth ramps and waves, normalised per pixel.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray (k, p)
    """
    ny, nx = _check_shape_2d(shape_2d)
    n_phases = _check_positive_int("n_phases", n_phases)
    if kind not in MAP_KINDS:
        raise ValueError(f"map_kind must be one of {MAP_KINDS}, got {kind!r}.")
    if n_phases == 1:
        return np.ones((1, ny * nx))
    if kind == "discs":
        weights = _disc_weights(ny, nx, n_phases, rng)
    else:
        yy, xx = np.meshgrid(np.linspace(0, 1, ny), np.linspace(0, 1, nx), indexing="ij")
        weights = np.empty((n_phases, ny, nx))
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
    ny, nx = _check_shape_2d(shape_2d)
    n_channels = _check_positive_int("n_channels", n_channels)
    n_phases = _check_positive_int("n_phases", n_phases)
    counts_per_pixel = _check_positive_float("counts_per_pixel", counts_per_pixel)
    energy_scale = _check_positive_float("energy_scale", energy_scale)
    if isinstance(energy_offset, bool) or not np.isfinite(energy_offset):
        raise ValueError(f"energy_offset must be a finite number, got {energy_offset!r}.")
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

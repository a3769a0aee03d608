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
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .models import EDXModel, LabelledG

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


# ------------------------------------------------------------------ EDX phantoms
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
    seed=0,
    model_kwargs: dict | None = None,
) -> EDXSpectrumImage:
    r"""A Poisson EDX spectrum image with known phases, maps and element fractions.

    Parameters
    ----------
    elements : sequence of str, default ("O", "Mg", "Al", "Si", "Ca", "Ti", "Fe")
    fractions : array-like (k, n_elements) or None
        Atomic fractions of each phase (rows are normalised to sum to 1).
        Default: three phases of the default elements (a silicate matrix,
        an Fe-Ti oxide, a Ca-Mg carbonate-like phase), each with three
        elements at 10 % or more (``DEFAULT_FRACTIONS``).
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
    Phase ``r`` has ``W[e, r] = x_re`` (atomic fractions) and background rows
    ``W[b, r] = s_b beta/(1-beta) sum_e x_re f_e`` (``beta`` the
    ``background_fraction``, ``s_b`` the split), so that a share ``beta`` of
    its counts is bremsstrahlung. ``spectra = G W`` normalised per column and

    .. math:: X_{ij} \sim \mathrm{Poisson}(c\, (\text{spectra} \cdot \text{maps})_{ij}),

    ``c = counts_per_pixel``.

    Raises
    ------
    ValueError
        Bad shapes, fractions (negative, non-finite, wrong shape, missing for
        non-default elements), ``background_fraction`` outside ``[0, 1)``, or
        any invalid :class:`~espm_lite.models.EDXModel` parameter.
    """
    elements = tuple(elements)
    ny, nx = _check_shape_2d(shape_2d)
    counts_per_pixel = _check_positive_float("counts_per_pixel", counts_per_pixel)
    n_channels = _check_positive_int("n_channels", n_channels)
    if isinstance(elements, str) or not elements:
        raise ValueError(f"elements must be a non-empty list of symbols, got {elements!r}.")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must be unique, got {list(elements)}.")
    if (
        isinstance(background_fraction, bool)
        or not isinstance(background_fraction, numbers.Real)
        or not 0 <= background_fraction < 1
    ):
        raise ValueError(f"background_fraction must be in [0, 1), got {background_fraction!r}.")
    background_fraction = float(background_fraction)
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise ValueError(f"model_kwargs must be a dict, got {model_kwargs!r}.")
    if fractions is None:
        if elements != DEFAULT_ELEMENTS:
            raise ValueError("fractions must be given for elements other than the default.")
        fractions = DEFAULT_FRACTIONS
    try:
        fractions = np.array(fractions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be an array of numbers, got {fractions!r}.") from None
    if fractions.ndim != 2 or fractions.shape[1] != len(elements):
        raise ValueError(
            f"fractions must have shape (n_phases, {len(elements)}), got {fractions.shape}."
        )
    if (
        fractions.shape[0] < 1
        or not np.all(np.isfinite(fractions))
        or np.any(fractions < 0)
        or np.any(fractions.sum(axis=1) <= 0)
    ):
        raise ValueError("fractions must be finite, non-negative, with a positive sum per phase.")
    fractions /= fractions.sum(axis=1, keepdims=True)
    # Alphabetical order, as HyperSpy keeps metadata.Sample.elements.
    order = sorted(range(len(elements)), key=lambda i: elements[i])
    elements = tuple(elements[i] for i in order)
    fractions = fractions[:, order]
    kwargs = {"n_background": 2, **(model_kwargs or {})}
    for reserved in ("elements", "beam_energy", "energy_offset", "energy_scale", "n_channels"):
        if reserved in kwargs:
            raise ValueError(
                f"model_kwargs must not hold {reserved!r}: it is an argument of this function."
            )
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
    if background_fraction > 0 and n_background == 0:
        raise ValueError(
            "background_fraction > 0 needs bremsstrahlung columns: model_kwargs n_background "
            "must be >= 1 (or set background_fraction=0)."
        )
    factors = G.values.sum(axis=0)[: len(elements)]
    characteristic = fractions @ factors  # counts per unit amount of each phase
    background = characteristic * background_fraction / (1 - background_fraction)
    W = np.vstack(
        [fractions.T]
        + ([np.outer(_background_split(n_background), background)] if n_background else [])
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

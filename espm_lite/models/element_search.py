r"""Elements a spectrum shows but the model does not have: residual peaks, ranked.

Forward selection on one spectrum ``x`` (usually a spectrum image summed over
its pixels), starting from the model's elements (or from the bremsstrahlung
alone):

1. fit ``G`` (:func:`~espm_lite.models.spectrum_fit.fit_spectrum`) and find the
   residual peaks: channels where the excess counts over a window of one
   detector FWHM, ``z_i = \sum_w (x - m) / \sqrt{\sum_w m}``, is a local
   maximum above ``significance``, and stands as high above the residual of
   its lower flank (a window of half a FWHM on each side, the lower of the
   two: an X-ray line is one FWHM wide, so a peak beside it does not hide
   it). The second test is a top-hat filter: a broad misfit of the
   continuum (a thin-film bremsstrahlung on a bulk SEM spectrum, absorption
   not modelled) raises the residual over many FWHM, flanks included, and is
   not taken for lines. Without it the search proposed eight elements (I,
   Sb, Rh, Tl...) on a real 15 kV SEM map of Al and Cu, whose spectrum has
   no peak there;
2. the candidates are the elements of exspy's database (common ones, see
   :data:`EXCLUDED`) with a main line (weight >= 0.1) within one FWHM of such
   a peak, excited by the beam;
3. each candidate's column (all its lines at the model's ratios, so that an
   element whose other lines are absent is penalised) is added in turn; the
   one with the largest drop of the Poisson deviance ``\Delta D`` is kept if
   ``\sqrt{\Delta D / \phi} \ge`` ``significance``, with ``\phi`` the
   deviance per degree of freedom of the larger fit (at least 1): a
   likelihood-ratio test whose scale allows for the misfit of a "lite"
   model on strong spectra (quasi-Poisson);
   a peak within one FWHM of a line already modelled whose excess is
   less than twice the counts modelled there is taken as misfit of that line
   (so a minor element whose lines all coincide with modelled lines cannot
   be found), and an element is only proposed when its strongest line lies
   on a peak (not for its minor lines) above 0.2 keV (below, the zero peak
   and the detector window);
4. repeat until no peak or no candidate passes.

The result is ranked: the first element explains the most counts that the
model missed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .._validation import positive_float, positive_int
from .spectrum_fit import fit_spectrum, fitted_channels, poisson_deviance
from .xray_physics import element_entry, elements_database, fwhm_at

__all__ = ["EXCLUDED", "ElementCandidate", "candidate_elements", "find_missing_elements"]

#: Never proposed: noble gases other than Ar (argon is implanted by ion milling) and
#: elements without a stable or long-lived isotope.
EXCLUDED = frozenset({"He", "Ne", "Kr", "Xe", "Rn", "Tc", "Pm", "Po", "At", "Fr", "Ra", "Ac", "Pa"})
#: Heaviest element proposed (U).
MAX_Z = 92
#: A line explains a peak when it lies within this many FWHM of it...
PEAK_TOLERANCE_FWHM = 1.0
#: ...and is a main line of its family (exspy weight at least this).
MAIN_LINE_WEIGHT = 0.1
#: A peak within this many FWHM of a modelled line may be misfit of that line...
MISFIT_DISTANCE_FWHM = 1.0
#: ...near a modelled line, a peak is a new element only if its excess is this many times the
#: counts modelled in its window (else it is misfit of that line: wrong ratio or shape).
MISFIT_EXCESS_RATIO = 2.0
#: Lines below this energy (keV) are not evidence: the zero peak and the detector window.
MIN_LINE_ENERGY = 0.2


@dataclass(frozen=True)
class ElementCandidate:
    """An element that explains residual peaks of a spectrum.

    Attributes
    ----------
    element : str
    lines : tuple of (str, float)
        Its lines (name, keV) that lie on the residual peaks it was chosen for.
    counts : float
        Counts its column takes in the fit of the spectrum.
    significance : float
        ``sqrt(Delta D / phi)``: the deviance drop when it is added, in
        standard deviations (see the module).
    """

    element: str
    lines: tuple[tuple[str, float], ...]
    counts: float
    significance: float

    def __str__(self) -> str:
        lines = ", ".join(f"{name} {energy:.3f} keV" for name, energy in self.lines)
        return f"{self.element} ({lines}; {self.counts:.4g} counts, {self.significance:.1f} sd)"


def candidate_elements() -> list[str]:
    """Symbols the search may propose: Z from 4 to :data:`MAX_Z`, not :data:`EXCLUDED`."""
    out = []
    for symbol in elements_database().keys():
        z = int(element_entry(symbol).General_properties.Z)
        if 4 <= z <= MAX_Z and symbol not in EXCLUDED:
            out.append(symbol)
    return out


def _window_sums(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``sum(values[lo_i:hi_i])`` for every ``i``."""
    total = np.concatenate([[0.0], np.cumsum(values)])
    return total[hi] - total[lo]


def _residual_peaks(fit, counts, model, significance: float) -> list[tuple[float, float, float]]:
    """``(energy keV, z, excess / modelled counts)`` of the residual peaks above
    ``significance`` (windows of one FWHM) that also stand above their lower flank
    (see the module), strongest first."""
    x = np.asarray(counts, dtype=np.float64)
    energy = model.energy
    half = np.maximum(1, np.round(0.5 * fwhm_at(energy, model.fwhm_mn_ka) / model.energy_scale))
    half = half.astype(int)
    fitted = fit.channels
    residual = np.where(fitted, x - fit.model, 0.0)
    modelled = np.where(fitted, fit.model, 0.0)
    idx = np.arange(x.size)
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, x.size)
    excess, expected = _window_sums(residual, lo, hi), _window_sums(modelled, lo, hi)
    z = np.where(fitted, excess / np.sqrt(np.maximum(expected, 1.0)), 0.0)
    windows = (lo, hi, excess, expected)
    above_flank = _above_lower_flank(residual, modelled, fitted.astype(np.float64), windows, half)
    peaks = []
    for i in np.flatnonzero((z >= significance) & (above_flank >= significance)):
        if z[i] >= z[lo[i] : hi[i]].max():
            ratio = excess[i] / max(expected[i], 1.0)
            peaks.append((float(energy[i]), float(z[i]), float(ratio)))
    return sorted(peaks, key=lambda p: -p[1])


def _above_lower_flank(residual, modelled, fitted, windows, half) -> np.ndarray:
    """Excess of each window over the mean residual of its lower flank, in standard
    deviations. ``windows``: the windows ``[lo, hi)`` and their sums of ``residual``
    and ``modelled``; flanks: ``half`` fitted channels or fewer on each side."""
    lo, hi, excess, expected = windows
    n = residual.size
    flanks = [(np.maximum(lo - half, 0), lo), (hi, np.minimum(hi + half, n))]
    channels = np.stack([_window_sums(fitted, a, b) for a, b in flanks])
    sums = np.stack([_window_sums(residual, a, b) for a, b in flanks])
    variances = np.stack([_window_sums(modelled, a, b) for a, b in flanks])
    levels = np.where(channels > 0, sums / np.maximum(channels, 1), np.inf)
    pick = (np.argmin(levels, axis=0), np.arange(n))  # the lower flank of each window
    level = np.where(np.isfinite(levels[pick]), levels[pick], 0.0)  # no fitted flank: 0
    in_window = _window_sums(fitted, lo, hi)
    weight = in_window / np.maximum(channels[pick], 1)
    spread = expected + weight**2 * variances[pick]
    return (excess - in_window * level) / np.sqrt(np.maximum(spread, 1.0))


def _on_peak(energy: float, model, peaks) -> bool:
    tolerance = PEAK_TOLERANCE_FWHM * float(fwhm_at(energy, model.fwhm_mn_ka))
    return any(abs(energy - peak[0]) <= tolerance for peak in peaks)


def _lines_on_peaks(single, peaks) -> tuple[tuple[str, float], ...]:
    """Main lines of the single-element model ``single`` on a peak; () unless its
    strongest line is on one (an element is not proposed for its minor lines)."""
    (element,) = single.elements
    lines = single.lines_[element]
    strongest = lines[int(np.argmax(single._line_intensities(element)))]
    if strongest[1] < MIN_LINE_ENERGY or not _on_peak(strongest[1], single, peaks):
        return ()
    return tuple(
        (name, energy)
        for name, energy, weight in lines
        if weight >= MAIN_LINE_WEIGHT
        and energy >= MIN_LINE_ENERGY
        and _on_peak(energy, single, peaks)
    )


def _free_peaks(peaks, line_energies, model) -> list[tuple[float, float, float]]:
    """Peaks that are not misfit: misfit is an excess below :data:`MISFIT_EXCESS_RATIO` times
    the counts modelled in its window within one FWHM of a line already modelled."""
    line_energies = np.asarray(line_energies, dtype=np.float64)
    if line_energies.size == 0:
        return peaks
    return [
        peak
        for peak in peaks
        if peak[2] >= MISFIT_EXCESS_RATIO
        or np.min(np.abs(line_energies - peak[0]))
        > MISFIT_DISTANCE_FWHM * float(fwhm_at(peak[0], model.fwhm_mn_ka))
    ]


def _single_model(element, model):
    """``element`` alone (all its lines in one column), ``None`` if it shows no line."""
    try:
        return model.replace(
            elements=[element], line_families="joint", element_factors="equal", quant_families=None
        )
    except ValueError:
        return None


def find_missing_elements(
    counts: ArrayLike,
    model,
    *,
    channels: ArrayLike | None = None,
    significance: float = 5.0,
    max_elements: int = 10,
    candidates: list[str] | None = None,
) -> list[ElementCandidate]:
    """Elements whose lines explain significant residual peaks, ranked (see the module).

    Parameters
    ----------
    counts : array-like (n_channels,)
        The spectrum (e.g. the sum over the pixels).
    model : EDXModel
        The model's elements (may be none), energy axis and resolution.
    channels : array-like of bool, optional
        Channels fitted (default: above the zero peak,
        :data:`~espm_lite.models.spectrum_fit.MIN_FIT_ENERGY`).
    significance : float, default=5.0
        Standard deviations a peak and an element's deviance drop must reach.
    max_elements : int, default=10
        Most elements returned.
    candidates : list of str, optional
        Elements the search may propose (default :func:`candidate_elements`).

    Returns
    -------
    list of ElementCandidate
        Ranked: the most significant first; empty when the model explains
        the spectrum.

    Raises
    ------
    ValueError
        ``counts`` not one finite non-negative value per channel, a
        non-positive ``significance`` or ``max_elements``.
    """
    x = np.asarray(counts, dtype=np.float64)
    if x.shape != (model.n_channels,) or not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(
            f"counts must be {model.n_channels} finite non-negative values (one per channel "
            f"of the model), got shape {x.shape}."
        )
    significance = positive_float("significance", significance)
    max_elements = positive_int("max_elements", max_elements)
    channels = fitted_channels(model.energy) if channels is None else np.asarray(channels, bool)
    pool = [e for e in (candidates or candidate_elements()) if e not in model.elements]
    singles = {e: _single_model(e, model) for e in pool}
    singles = {e: m for e, m in singles.items() if m is not None}
    G = np.asarray(model.build_G())
    found: list[ElementCandidate] = []
    fit = fit_spectrum(x, G, channels)
    modelled = [energy for e in model.elements for _, energy, _ in model.lines_[e]]
    while len(found) < max_elements:
        peaks = _free_peaks(_residual_peaks(fit, x, model, significance), modelled, model)
        step = _next_element(x, G, fit, peaks, singles, channels, significance, model)
        if step is None:
            break
        candidate, fit = step
        found.append(candidate)
        single = singles.pop(candidate.element)
        G = np.column_stack([G, single.element_column(candidate.element)])
        modelled += [energy for _, energy, _ in single.lines_[candidate.element]]
    return found


def _next_element(x, G, fit, peaks, singles, channels, significance, model):
    """The element that best explains the strongest explicable peak, if significant.

    Peaks are taken strongest first; the candidates of a peak are the
    elements with a main line on it (and their strongest line on some peak);
    the one that lowers the deviance most in the peak's window (one FWHM each
    side) is tested on the whole spectrum.
    """
    n_fit = int(channels.sum())
    dof = max(n_fit - G.shape[1] - 1, 1)
    trials = {}
    for peak in peaks:
        half_width = float(fwhm_at(peak[0], model.fwhm_mn_ka))
        window = channels & (np.abs(model.energy - peak[0]) <= half_width)
        before = poisson_deviance(x[window], fit.model[window]).sum()
        best = None
        for element, single in singles.items():
            lines = _lines_on_peaks(single, peaks)
            if not lines or not _on_peak_any(lines, single, peak):
                continue
            if element not in trials:
                column = single.element_column(element)
                trials[element] = (fit_spectrum(x, np.column_stack([G, column]), channels), column)
            trial = trials[element][0]
            local = before - poisson_deviance(x[window], trial.model[window]).sum()
            if best is None or local > best[0]:
                best = (local, element, lines)
        if best is None:
            continue
        _, element, lines = best
        trial, column = trials[element]
        dispersion = max(1.0, trial.deviance * n_fit / dof)
        drop = (fit.deviance - trial.deviance) * n_fit
        score = float(np.sqrt(max(drop, 0.0) / dispersion))
        if score >= significance:
            counts = float(trial.coefficients[-1] * column.sum())
            return ElementCandidate(element, lines, counts, score), trial
    return None


def _on_peak_any(lines, single, peak) -> bool:
    """Whether one of ``lines`` lies on ``peak``."""
    return any(_on_peak(energy, single, [peak]) for _, energy in lines)

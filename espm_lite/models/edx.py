r"""The EDX physics matrix ``G``: X-ray lines of elements plus bremsstrahlung.

``X ~ G W H``: column ``e`` of ``G`` is the detected spectrum of element
``e`` per unit atomic fraction, so that a phase's column of ``W`` holds its
atomic fractions (element rows, on the simplex) and its bremsstrahlung
weights (background rows, free).

Physical model and its simplifications (a "lite" model, documented so that
its limits are known; the formulas that do not depend on the energy axis are in
:mod:`espm_lite.models.xray_physics`):

* **Lines.** Energies and relative weights from exspy's elements database
  (``exspy.material.elements``). exspy's weights are relative within one
  line family (K, L, M): each family emits ``omega Q`` X-rays per atom (see
  the element factor), shared among its lines in proportion to their
  weights. Lines outside the energy range, above the beam energy or weaker
  than ``min_line_weight`` are dropped (logged at DEBUG level) with their
  share of the intensity. So are lines whose shell is not ionised by the
  beam (critical energy ``E_c >= E_0``).
* **Peak shape.** A Gaussian per line, integrated over each channel (erf
  differences, so a peak narrower than a channel keeps its area), with the
  detector resolution ``FWHM(E)^2 = FWHM_MnKa^2 + 2.5 eV (E - 5898.7 eV)``
  (Fiori & Newbury; computed by exspy's ``get_FWHM_at_Energy``), floored
  at 30 % of FWHM_MnKa at very low energy; FWHM_MnKa 130 eV by default.
  No escape or sum peaks, no incomplete-charge tail, no natural line width.
* **Element factor** ``f_e`` (expected detected characteristic counts per
  unit atomic fraction, relative): a thin-film model, the sum over the kept
  lines of ``omega_F(Z) Q_F(U) (w_l / sum_F w) eff(E_l)``, with the
  fluorescence yield
  ``omega = Z^4 / (a + Z^4)`` (Wentzel-type fit; ``a`` = 1.12e6, 1.0e8,
  1.0e9 for K, L, M), the ionisation cross-section ``Q ~ ln(U) / (U E_c^2)``
  with ``U = E_0 / E_c`` (Bethe, non-relativistic, no shell-occupancy or
  relativistic factor) and ``E_c`` the binding energy of the shell (exspy's
  ``Binding_energies``: K, L3 or L23, M5 or M45; where exspy has none,
  ``1.01 x`` the highest line energy of the family), and ``eff`` the
  detector efficiency at the line. By default no absorption or
  fluorescence in the sample (thin film; ``mass_thickness`` adds a uniform
  self-absorption factor, see :class:`EDXModel`), no Coster-Kronig
  transitions. Splitting each family by its own exspy weights (rather than
  using the weights as given across families) is what makes the K and L
  lines of one element comparable.
  Factors are relative: they are divided by their mean over the given
  elements (so the mean factor is 1). Pass ``element_factors={...}`` (e.g.
  from Cliff-Lorimer k-factors: ``f_e`` is proportional to ``1 / k_e``) to
  override them; :attr:`EDXModel.factor_source` says which are used.
* **Normalisation.** Element column ``e`` sums (over the channels) to
  ``f_e``: ``sum_i G_ie = f_e``, "column e integrates to f_e". A phase with
  atomic fractions ``x_e`` (``sum_e x_e = 1``, the element rows of its column
  of ``W``) then has ``sum_e x_e f_e`` characteristic counts per unit of
  ``H``, and the element rows of a fitted ``W`` on the simplex *are* atomic
  fractions. Each bremsstrahlung column sums to 1, so its row of ``W`` is
  the phase's bremsstrahlung counts per unit of ``H``.
* **Bremsstrahlung.** ``n_background`` smooth non-negative shapes
  ``eff(E) (E_0 - E) / E^{1 + j}``, ``j = 0, 1, ...`` (Kramers' law and
  steeper variants), so the fit can adjust the background's slope; zero at
  and below 0 keV and above ``E_0``. No coherent bremsstrahlung, no
  absorption edges, no spurious (system) peaks.
* **Detector efficiency** (``detector_efficiency=True``): a generic silicon
  drift detector, ``exp(-(0.25 keV / E)^2.5) (1 - exp(-(15 keV / E)^3))``:
  window absorption at low energy, transparency of the crystal at high
  energy. No absorption edges. ``False`` gives 1; a callable of the energy
  (keV) replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import erf

from .._validation import finite_float, non_negative_int, positive_float, positive_int
from .known_matrix import LabelledG
from .xray_physics import (
    FAMILY_SHELL,
    FLUORESCENCE_A,
    MN_KA,
    atomic_to_weight_fractions,
    atomic_weights,
    critical_energy,
    default_detector_efficiency,
    family_yield,
    film_transmission,
    fwhm_at,
    is_known_element,
    weight_to_atomic_fractions,
    xray_lines,
)

__all__ = [
    "BEAM_ENERGY_RANGE_KEV",
    "FAMILY_SHELL",
    "FLUORESCENCE_A",
    "MN_KA",
    "EDXModel",
    "atomic_to_weight_fractions",
    "atomic_weights",
    "check_beam_energy",
    "default_detector_efficiency",
    "fwhm_at",
    "weight_to_atomic_fractions",
]

#: Plausible electron-beam energies (keV) of SEM and TEM EDX: outside, a unit mistake.
BEAM_ENERGY_RANGE_KEV = (1.0, 400.0)


def check_beam_energy(beam_energy) -> float:
    """``beam_energy`` as a float if it is a plausible beam energy in keV.

    Raises
    ------
    ValueError
        Not a number in :data:`BEAM_ENERGY_RANGE_KEV` (e.g. 200000, eV by mistake).
    """
    value = positive_float("beam_energy", beam_energy)
    low, high = BEAM_ENERGY_RANGE_KEV
    if not low <= value <= high:
        hint = f" ({value:g} eV is {value / 1000:g} keV)" if value > high else ""
        raise ValueError(
            f"beam_energy is in keV and must be between {low:g} and {high:g} keV, got "
            f"{beam_energy!r}{hint}."
        )
    return value


logger = logging.getLogger(__name__)


class EDXModel:
    """Physics matrix ``G`` of an EDX spectrum image (see the module docstring).

    Parameters
    ----------
    elements : sequence of str
        Element symbols (exspy's database), one column of ``G`` each.
    beam_energy : float
        keV, in :data:`BEAM_ENERGY_RANGE_KEV` (1 to 400 keV).
    energy_offset, energy_scale : float
        keV; channel ``i`` is at ``energy_offset + i * energy_scale`` (its centre).
    n_channels : int
    fwhm_mn_ka : float, default=0.130
        Detector resolution at Mn Kα, keV.
    n_background : int, default=2
        Number of bremsstrahlung columns (0 allowed).
    element_factors : None, "equal" or mapping, default=None
        ``None``: the thin-film model; ``"equal"``: all 1; a mapping gives
        every element's factor (positive).
    min_line_weight : float, default=0.01
        Lines with a smaller exspy weight are dropped.
    detector_efficiency : bool or callable, default=True
        ``True``: the generic curve :func:`default_detector_efficiency`;
        ``False``: 1 everywhere; a callable ``f(energy_keV_array) -> array``
        (finite, non-negative). Applied to the lines (at the line energy) and
        to the bremsstrahlung.
    mass_thickness : float or None, default=None
        Self-absorption in the sample, g/cm^2 (density times thickness, e.g.
        3e-5 for 100 nm at 3 g/cm^3). ``None``: a thin film, no absorption.
        X-rays generated uniformly through the film leave it with the
        probability ``A(E) = (1 - e^{-chi}) / chi``,
        ``chi = (mu/rho)(E) rho t / sin(take_off_angle)``, with the mass
        absorption coefficient ``mu/rho`` of ``absorber`` (exspy's
        ``mass_absorption_mixture``, Chantler's tables). ``A`` multiplies the
        lines (at their energy) and the bremsstrahlung. One composition for
        the whole sample: phases of other compositions are absorbed as if
        they were the ``absorber``.
    take_off_angle : float or None
        Degrees; required with ``mass_thickness`` (``s.build_G`` reads it
        from the signal).
    absorber : mapping or None
        ``{element: weight fraction}`` of the absorbing sample; default:
        equal weight fractions of ``elements``.

    Raises
    ------
    ValueError
        Unknown element (all are listed), an element without any X-ray line
        in the energy range below the beam energy, duplicate elements, a
        non-positive or non-finite number, an incomplete or non-positive
        ``element_factors``.
    TypeError
        ``elements`` not a list of str, ``detector_efficiency`` neither a
        bool nor a callable, ``element_factors`` of another type.

    Attributes
    ----------
    energy : ndarray (n_channels,)
    lines_ : dict
        Element -> list of ``(line, energy keV, weight)`` kept.
    element_factors_ : dict
        Element -> factor used (the sum of its column of ``G``).
    factor_source : str
        ``"default thin-film model"``, ``"equal"`` or ``"user"``.

    Examples
    --------
    >>> from espm_lite.models import EDXModel
    >>> model = EDXModel(["Fe", "O"], 200.0, energy_offset=0.2, energy_scale=0.01,
    ...                  n_channels=1980)
    >>> G = model.build_G()
    >>> G.shape, G.labels
    ((1980, 4), ('Fe', 'O', 'bremsstrahlung_0', 'bremsstrahlung_1'))
    """

    def __init__(
        self,
        elements: Sequence[str],
        beam_energy: float,
        *,
        energy_offset: float,
        energy_scale: float,
        n_channels: int,
        fwhm_mn_ka: float = 0.130,
        n_background: int = 2,
        element_factors: None | str | Mapping[str, float] = None,
        min_line_weight: float = 0.01,
        detector_efficiency: bool | Callable = True,
        mass_thickness: float | None = None,
        take_off_angle: float | None = None,
        absorber: Mapping[str, float] | None = None,
    ) -> None:
        if isinstance(elements, str) or not isinstance(elements, Sequence | np.ndarray):
            raise TypeError(f"elements must be a list of element symbols, got {elements!r}.")
        elements = list(elements)
        if not elements:
            raise ValueError("elements must name at least one element, got an empty list.")
        not_str = [e for e in elements if not isinstance(e, str)]
        if not_str:
            raise TypeError(f"elements must be symbols (str), got {not_str}.")
        if len(set(elements)) != len(elements):
            raise ValueError(f"elements must be unique, got {list(elements)}.")
        unknown = [e for e in elements if not is_known_element(e)]
        if unknown:
            raise ValueError(f"Unknown elements {unknown}: not in exspy's elements database.")
        self.elements = tuple(elements)
        self.beam_energy = check_beam_energy(beam_energy)
        self.energy_offset = finite_float("energy_offset", energy_offset)
        self.energy_scale = positive_float("energy_scale", energy_scale)
        self.n_channels = positive_int("n_channels", n_channels)
        self.fwhm_mn_ka = positive_float("fwhm_mn_ka", fwhm_mn_ka)
        self.n_background = non_negative_int("n_background", n_background)
        self.min_line_weight = finite_float("min_line_weight", min_line_weight)
        if not 0 <= self.min_line_weight < 1:
            raise ValueError(f"min_line_weight must be in [0, 1), got {min_line_weight!r}.")
        if not (isinstance(detector_efficiency, bool) or callable(detector_efficiency)):
            raise TypeError(
                f"detector_efficiency must be a bool or a callable, got {detector_efficiency!r}."
            )
        self.detector_efficiency = detector_efficiency
        self._set_absorption(mass_thickness, take_off_angle, absorber)
        self.lines_ = {e: self._lines_in_range(e) for e in self.elements}
        self.element_factors_, self.factor_source = self._factors(element_factors)

    # ----------------------------------------------------------- quantities
    @property
    def energy(self) -> np.ndarray:
        """Channel energies (keV): ``energy_offset + i * energy_scale``."""
        return self.energy_offset + self.energy_scale * np.arange(self.n_channels)

    def transmission(self, energy: ArrayLike) -> np.ndarray:
        """Fraction of the X-rays at ``energy`` (keV) leaving the sample (1: thin film)."""
        if self.mass_thickness is None:
            return np.ones_like(np.asarray(energy, dtype=np.float64))
        return film_transmission(energy, self.mass_thickness, self.take_off_angle, self.absorber_)

    def detection(self, energy: ArrayLike) -> np.ndarray:
        """Detector efficiency times sample transmission at ``energy`` (keV)."""
        return self.efficiency(energy) * self.transmission(energy)

    def efficiency(self, energy: ArrayLike) -> np.ndarray:
        """Detector efficiency at ``energy`` (keV): the curve chosen by ``detector_efficiency``.

        Raises
        ------
        ValueError
            If a user callable returns negative or non-finite values.
        """
        energy = np.asarray(energy, dtype=np.float64)
        if self.detector_efficiency is True:
            return default_detector_efficiency(energy)
        if self.detector_efficiency is False:
            return np.ones_like(energy)
        values = np.asarray(self.detector_efficiency(energy), dtype=np.float64)
        try:
            values = np.broadcast_to(values, energy.shape).copy()
        except ValueError:
            raise ValueError(
                "detector_efficiency must return one value per energy, got shape "
                f"{values.shape} for energies of shape {energy.shape}."
            ) from None
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("detector_efficiency must return finite, non-negative values.")
        return values

    def build_G(self) -> LabelledG:
        """The known matrix of ``X ~ G W H``.

        Returns
        -------
        LabelledG
            ``(n_channels, n_elements + n_background)``: element columns
            (labels: the symbols, ``simplex_rows`` True, column ``e`` sums to
            ``element_factors_[e]``) then bremsstrahlung columns (labels
            ``"bremsstrahlung_j"``, ``simplex_rows`` False, each sums to 1).
        """
        columns = [self.element_column(e) for e in self.elements]
        columns += [self.background_column(j) for j in range(self.n_background)]
        labels = list(self.elements) + [f"bremsstrahlung_{j}" for j in range(self.n_background)]
        rows = np.array([True] * len(self.elements) + [False] * self.n_background)
        return LabelledG(np.column_stack(columns), tuple(labels), rows)

    def element_column(self, element: str) -> np.ndarray:
        r"""Column of ``element``: its lines at their relative intensities, summing to its factor.

        .. math:: G_{ie} = f_e \frac{\sum_l I_l \int_{\text{bin } i} \mathcal{N}(E; E_l,
                  \sigma_l^2)\,dE}{\sum_{i'} \sum_l I_l \int_{\text{bin } i'}
                  \mathcal{N}(E; E_l, \sigma_l^2)\,dE},
                  \qquad \sigma_l = \mathrm{FWHM}(E_l) / (2\sqrt{2\ln 2})

        with ``I_l`` the thin-film intensity of line ``l`` (see the module).
        """
        edges = self.energy_offset + self.energy_scale * (np.arange(self.n_channels + 1) - 0.5)
        column = np.zeros(self.n_channels)
        for (_, energy, _), intensity in zip(
            self.lines_[element], self._line_intensities(element), strict=True
        ):
            sigma = fwhm_at(energy, self.fwhm_mn_ka) / (2 * np.sqrt(2 * np.log(2)))
            cdf = 0.5 * erf((edges - energy) / (np.sqrt(2) * sigma))
            column += intensity * np.diff(cdf)
        total = column.sum()
        if not total > 0:
            raise ValueError(
                f"{element} has no detected intensity in the energy range (its lines are not "
                "excited or the detector efficiency is zero there): remove it from the elements."
            )
        return column * (self.element_factors_[element] / total)

    def _line_intensities(self, element: str) -> np.ndarray:
        """Detected intensity of each kept line per unit atomic fraction (thin film).

        Line ``l`` of family ``F``: ``omega_F Q_F w_l / sum_{F} w eff(E_l)``, the
        family's yield split by exspy's weights (over all the family's lines,
        so lines out of range take their share with them).
        """
        family_weight: dict[str, float] = {}
        for name, (_, weight) in xray_lines(element).items():
            family_weight[name[0]] = family_weight.get(name[0], 0.0) + weight
        return np.array(
            [
                family_yield(element, name[0], self.beam_energy)
                * weight
                / family_weight[name[0]]
                * float(self.detection(energy))
                for name, energy, weight in self.lines_[element]
            ],
            dtype=np.float64,
        )

    def background_column(self, j: int) -> np.ndarray:
        r"""Bremsstrahlung column ``j``, summing to 1.

        .. math:: b_j(E) \propto \epsilon(E)\,\frac{\max(E_0 - E, 0)}{E^{1+j}},
                  \quad E > 0 \qquad (0 \text{ for } E \le 0)
        """
        energy = self.energy
        positive = energy > 0
        shape = np.zeros(self.n_channels)
        e = energy[positive]
        shape[positive] = (
            self.detection(e) * np.maximum(self.beam_energy - e, 0.0) / e ** (1 + int(j))
        )
        total = shape.sum()
        if not (np.isfinite(total) and total > 0):
            raise ValueError(
                "The energy range has no bremsstrahlung (no channel between 0 keV and "
                "beam_energy with a non-zero detector efficiency): use n_background=0."
            )
        return shape / total

    # ------------------------------------------------------------- internals
    def _set_absorption(self, mass_thickness, take_off_angle, absorber) -> None:
        self.mass_thickness = None
        self.take_off_angle = None
        self.absorber_ = None
        if mass_thickness is None:
            if absorber is not None:
                raise ValueError("absorber needs mass_thickness (g/cm^2).")
            return
        self.mass_thickness = positive_float("mass_thickness", mass_thickness)
        if take_off_angle is None:
            raise ValueError("mass_thickness needs take_off_angle (degrees).")
        self.take_off_angle = positive_float("take_off_angle", take_off_angle)
        if not self.take_off_angle < 90:
            raise ValueError(f"take_off_angle must be in (0, 90) degrees, got {take_off_angle!r}.")
        if absorber is None:
            absorber = {e: 1.0 for e in self.elements}
        if not isinstance(absorber, Mapping) or not absorber:
            raise TypeError(f"absorber must be a mapping element -> weight, got {absorber!r}.")
        unknown = [e for e in absorber if not is_known_element(e)]
        if unknown:
            raise ValueError(f"absorber has unknown elements {unknown}.")
        weights = {e: float(w) for e, w in absorber.items()}
        if any(not (np.isfinite(w) and w >= 0) for w in weights.values()) or not sum(
            weights.values()
        ):
            raise ValueError("absorber weights must be non-negative with a positive sum.")
        total = sum(weights.values())
        self.absorber_ = {e: w / total for e, w in weights.items()}

    def _lines_in_range(self, element: str) -> list[tuple[str, float, float]]:
        low = self.energy_offset - 0.5 * self.energy_scale
        high = self.energy_offset + (self.n_channels - 0.5) * self.energy_scale
        kept = []
        for name, (energy, weight) in xray_lines(element).items():
            if weight < self.min_line_weight:
                logger.debug("%s %s (%.4g keV): weight %.3g dropped", element, name, energy, weight)
            elif not low <= energy <= high:
                logger.debug(
                    "%s %s at %.4g keV is outside the energy range [%.4g, %.4g] keV: dropped",
                    element,
                    name,
                    energy,
                    low,
                    high,
                )
            elif energy >= self.beam_energy:
                logger.debug(
                    "%s %s at %.4g keV is above the beam energy: dropped", element, name, energy
                )
            elif critical_energy(element, name[0]) >= self.beam_energy:
                logger.debug(
                    "%s %s at %.4g keV: its shell (critical energy %.4g keV) is not ionised by "
                    "the beam: dropped",
                    element,
                    name,
                    energy,
                    critical_energy(element, name[0]),
                )
            else:
                kept.append((name, energy, weight))
        if not kept:
            raise ValueError(
                f"{element} has no X-ray line in the energy range [{low:.4g}, {high:.4g}] keV "
                f"below the beam energy {self.beam_energy:g} keV: remove it from the elements."
            )
        return kept

    def _factors(self, element_factors) -> tuple[dict[str, float], str]:
        if element_factors is None:
            raw = {e: self._thin_film_factor(e) for e in self.elements}
            mean = float(np.mean(list(raw.values())))
            return {e: f / mean for e, f in raw.items()}, "default thin-film model"
        if isinstance(element_factors, str):
            if element_factors != "equal":
                raise ValueError(
                    f"element_factors must be None, 'equal' or a mapping, got {element_factors!r}."
                )
            return {e: 1.0 for e in self.elements}, "equal"
        if not isinstance(element_factors, Mapping):
            raise TypeError(
                f"element_factors must be None, 'equal' or a mapping, got {element_factors!r}."
            )
        missing = [e for e in self.elements if e not in element_factors]
        if missing:
            raise ValueError(f"element_factors has no factor for {missing}.")
        factors = {e: float(element_factors[e]) for e in self.elements}
        bad = [e for e, f in factors.items() if not (np.isfinite(f) and f > 0)]
        if bad:
            raise ValueError(f"element_factors must be positive and finite; not for {bad}.")
        return factors, "user"

    def _thin_film_factor(self, element: str) -> float:
        """Detected characteristic counts per unit atomic fraction (relative, thin film)."""
        return float(self._line_intensities(element).sum())

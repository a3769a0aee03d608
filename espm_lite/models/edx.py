r"""The EDX physics matrix ``G``: X-ray lines of elements plus bremsstrahlung.

``X ~ G W H``: column ``e`` of ``G`` is the detected spectrum of element
``e`` per unit atomic fraction, so that a phase's column of ``W`` holds its
atomic fractions (element rows, on the simplex) and its bremsstrahlung
weights (background rows, free).

The simplifications of this "lite" model, so that its limits are known (the
formulas that do not depend on the energy axis: :mod:`.xray_physics`):

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

import copy
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import erf

from .._validation import finite_float, non_negative_int, positive_float, positive_int
from ._edx_params import (
    BEAM_ENERGY_RANGE_KEV,
    FAMILIES,
    LINE_FAMILY_MODES,
    check_absorption,
    check_beam_energy,
    check_element_factors,
    check_elements,
    check_line_families,
)
from .known_matrix import LabelledG
from .xray_physics import (
    FAMILY_SHELL,
    FLUORESCENCE_A,
    MN_KA,
    atomic_to_weight_fractions,
    atomic_weights,
    default_detector_efficiency,
    detector_efficiency_curve,
    excited_lines,
    family_yield,
    film_transmission,
    fwhm_at,
    weight_to_atomic_fractions,
    xray_lines,
)

__all__ = [
    "BEAM_ENERGY_RANGE_KEV",
    "FAMILY_SHELL",
    "FLUORESCENCE_A",
    "MN_KA",
    "FAMILIES",
    "LINE_FAMILY_MODES",
    "EDXModel",
    "atomic_to_weight_fractions",
    "atomic_weights",
    "check_beam_energy",
    "default_detector_efficiency",
    "fwhm_at",
    "weight_to_atomic_fractions",
]

logger = logging.getLogger(__name__)


class EDXModel:
    """Physics matrix ``G`` of an EDX spectrum image (see the module docstring).

    Parameters
    ----------
    elements : sequence of str
        Element symbols (exspy's database), one column of ``G`` each (or
        one per line family, see ``line_families``). May be empty: ``G`` is
        then the bremsstrahlung alone (where an element search starts).
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
    line_families : {"separate", "joint"}, default="separate"
        ``"separate"``: each (element, line family K/L/M) has its own column,
        so the ratios between an element's families (which differ between
        cross-section tables by tens of percent) are fitted, not imposed.
        The element's *quantified* family (see ``quant_families``) is its
        column labelled with the symbol, on the simplex; its other families
        are free columns labelled ``"Fe_L"``, ``"Pt_M"``..., each summing to
        the family's share of the element factor (so their row of ``W``
        equals the element's row when the tables are right). ``"joint"``:
        one column per element with all its lines at the model's ratios.
    quant_families : mapping or None
        ``{element: "K" | "L" | "M"}``: the family quantified (``"separate"``
        only). Default per element: K when its lines are in the energy
        range and excited by the beam, else L, else M (Cliff-Lorimer
        practice).

    Raises
    ------
    ValueError
        Unknown element (all are listed), an element without any X-ray line
        in the energy range below the beam energy, duplicate elements, no
        element and no bremsstrahlung column, a
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
    quant_families_ : dict
        Element -> family quantified (``None`` with ``line_families="joint"``).
    columns_ : list of (label, element, family)
        The columns of ``G`` before the bremsstrahlung (family ``None``: all
        the element's lines).
    element_factors_ : dict
        Element -> factor used (the sum of its column of ``G``).
    calibration_ : Calibration or None
        Set by :func:`espm_lite.models.spectrum_fit.calibrate` on the model it
        returns: how the axis and resolution were refined.
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
        line_families: str = "separate",
        quant_families: Mapping[str, str] | None = None,
    ) -> None:
        self._parameters = dict(locals())
        del self._parameters["self"]
        self.elements = check_elements(elements)
        self.beam_energy = check_beam_energy(beam_energy)
        self.energy_offset = finite_float("energy_offset", energy_offset)
        self.energy_scale = positive_float("energy_scale", energy_scale)
        self.n_channels = positive_int("n_channels", n_channels)
        self.fwhm_mn_ka = positive_float("fwhm_mn_ka", fwhm_mn_ka)
        self.n_background = non_negative_int("n_background", n_background)
        if not self.elements and not self.n_background:
            raise ValueError("EDXModel needs elements or n_background > 0, got neither.")
        self.min_line_weight = finite_float("min_line_weight", min_line_weight)
        if not 0 <= self.min_line_weight < 1:
            raise ValueError(f"min_line_weight must be in [0, 1), got {min_line_weight!r}.")
        if not (isinstance(detector_efficiency, bool) or callable(detector_efficiency)):
            raise TypeError(
                f"detector_efficiency must be a bool or a callable, got {detector_efficiency!r}."
            )
        self.detector_efficiency = detector_efficiency
        self.mass_thickness, self.take_off_angle, self.absorber_ = check_absorption(
            mass_thickness, take_off_angle, absorber, self.elements
        )
        self.line_families = line_families
        overrides = check_line_families(line_families, quant_families, self.elements)
        self.lines_ = {e: self._lines_in_range(e) for e in self.elements}
        self._family_intensity = {e: self._family_intensities(e) for e in self.elements}
        self.quant_families_ = {e: self._quant_family(e, overrides.get(e)) for e in self.elements}
        self.calibration_ = None
        self.element_factors_, self.factor_source = self._factors(
            check_element_factors(element_factors, self.elements)
        )

    def replace(self, **changes) -> EDXModel:
        """A new model with the same parameters except ``changes`` (checked as in ``__init__``).

        Examples
        --------
        >>> wider = model.replace(fwhm_mn_ka=0.140, elements=["Fe", "O", "Cu"])  # doctest: +SKIP
        """
        unknown = sorted(set(changes) - set(self._parameters))
        if unknown:
            raise TypeError(f"EDXModel has no parameters {unknown}.")
        return type(self)(**{**self._parameters, **changes})

    def recalibrated(
        self, energy_offset: float, energy_scale: float, fwhm_mn_ka: float
    ) -> EDXModel:
        """The same lines and factors on a refined axis and resolution (a calibration:
        unlike :meth:`replace`, lines near the ends of the range do not come and go)."""
        new = copy.copy(self)
        new.energy_offset = finite_float("energy_offset", energy_offset)
        new.energy_scale = positive_float("energy_scale", energy_scale)
        new.fwhm_mn_ka = positive_float("fwhm_mn_ka", fwhm_mn_ka)
        new._parameters = {
            **self._parameters,
            "energy_offset": new.energy_offset,
            "energy_scale": new.energy_scale,
            "fwhm_mn_ka": new.fwhm_mn_ka,
        }
        return new

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
        return detector_efficiency_curve(self.detector_efficiency, energy)

    def build_G(self) -> LabelledG:
        """The known matrix of ``X ~ G W H``.

        Returns
        -------
        LabelledG
            ``(n_channels, m)``: the element columns (labels: the symbols,
            ``simplex_rows`` True, column ``e`` sums to
            ``element_factors_[e]``), then with ``line_families="separate"``
            the other families of each element (labels ``"Fe_L"``...,
            ``simplex_rows`` False), then the bremsstrahlung columns (labels
            ``"bremsstrahlung_j"``, ``simplex_rows`` False, each sums to 1).
        """
        columns = [self.family_column(e, f) for _, e, f in self.columns_]
        columns += [self.background_column(j) for j in range(self.n_background)]
        labels = [label for label, _, _ in self.columns_]
        labels += [f"bremsstrahlung_{j}" for j in range(self.n_background)]
        rows = np.array(
            [label in self.elements for label, _, _ in self.columns_] + [False] * self.n_background
        )
        return LabelledG(np.column_stack(columns), tuple(labels), rows)

    @property
    def columns_(self) -> list[tuple[str, str, str | None]]:
        """``(label, element, family)`` of each column of ``G`` before the bremsstrahlung."""
        if self.line_families == "joint":
            return [(e, e, None) for e in self.elements]
        quantified = [(e, e, self.quant_families_[e]) for e in self.elements]
        others = [
            (f"{e}_{family}", e, family)
            for e in self.elements
            for family in self._family_intensity[e]
            if family != self.quant_families_[e]
        ]
        return quantified + others

    def element_column(self, element: str) -> np.ndarray:
        """Column of ``element``'s quantified lines (all its lines with ``"joint"``)."""
        return self.family_column(element, self.quant_families_[element])

    def family_column(self, element: str, family: str | None) -> np.ndarray:
        r"""Column of the lines of one family of ``element`` (``None``: all its lines).

        .. math:: G_{iF} = f_e \frac{I_F}{I_{q(e)}} \frac{\sum_{l \in F} I_l
                  \int_{\text{bin } i} \mathcal{N}(E; E_l, \sigma_l^2)\,dE}{\sum_{i'}
                  \sum_{l \in F} I_l \int_{\text{bin } i'} \mathcal{N}(E; E_l,
                  \sigma_l^2)\,dE}, \qquad \sigma_l = \mathrm{FWHM}(E_l) / (2\sqrt{2\ln 2})

        with ``I_l`` the thin-film intensity of line ``l``, ``I_F`` the sum over
        the family ``F`` and ``q(e)`` the quantified family (all lines for
        ``None``): the quantified column sums to ``f_e``, another family to
        its share of it at the model's ratios.
        """
        edges = self.energy_offset + self.energy_scale * (np.arange(self.n_channels + 1) - 0.5)
        column = np.zeros(self.n_channels)
        for (name, energy, _), intensity in zip(
            self.lines_[element], self._line_intensities(element), strict=True
        ):
            if family is not None and name[0] != family:
                continue
            sigma = fwhm_at(energy, self.fwhm_mn_ka) / (2 * np.sqrt(2 * np.log(2)))
            cdf = 0.5 * erf((edges - energy) / (np.sqrt(2) * sigma))
            column += intensity * np.diff(cdf)
        total = column.sum()
        if not total > 0:
            raise ValueError(
                f"{element} has no detected intensity in the energy range (its lines are not "
                "excited or the detector efficiency is zero there): remove it from the elements."
            )
        share = self._intensity(element, family) / self._intensity(
            element, self.quant_families_[element]
        )
        return column * (self.element_factors_[element] * share / total)

    def _intensity(self, element: str, family: str | None) -> float:
        """Thin-film intensity of a family of ``element`` (``None``: all its lines)."""
        per_family = self._family_intensity[element]
        return float(sum(per_family.values()) if family is None else per_family[family])

    def _family_intensities(self, element: str) -> dict[str, float]:
        """Family -> summed thin-film intensity of its kept lines (families with lines only)."""
        out: dict[str, float] = {}
        for (name, _, _), intensity in zip(
            self.lines_[element], self._line_intensities(element), strict=True
        ):
            out[name[0]] = out.get(name[0], 0.0) + float(intensity)
        return {f: out[f] for f in FAMILIES if out.get(f, 0.0) > 0}

    def _quant_family(self, element: str, override: str | None) -> str | None:
        """The family quantified: ``override``, else K, L, M, the first present."""
        present = list(self._family_intensity[element])
        if not present:
            raise ValueError(
                f"{element} has no detected intensity in the energy range (its lines are not "
                "excited or the detector efficiency is zero there): remove it from the elements."
            )
        if self.line_families == "joint":
            return None
        if override is not None:
            if override not in present:
                raise ValueError(
                    f"quant_families[{element!r}] is {override!r}, but {element} has lines of "
                    f"the families {present} only in this energy range and beam energy."
                )
            return override
        return present[0]

    def _line_intensities(self, element: str) -> np.ndarray:
        """Detected intensity of each kept line per unit atomic fraction (computed once)."""
        cache = self.__dict__.setdefault("_intensity_cache", {})
        if element not in cache:
            cache[element] = self._thin_film_intensities(element)
        return cache[element]

    def _thin_film_intensities(self, element: str) -> np.ndarray:
        """Detected intensity of each kept line per unit atomic fraction (thin film).

        Line ``l`` of family ``F``: ``omega_F Q_F w_l / sum_{F} w eff(E_l)``, the
        family's yield split by exspy's weights (over all the family's lines,
        so lines out of range take their share with them).
        """
        family_weight: dict[str, float] = {}
        for name, (_, weight) in xray_lines(element).items():
            family_weight[name[0]] = family_weight.get(name[0], 0.0) + weight
        lines = self.lines_[element]
        detection = self.detection(np.array([energy for _, energy, _ in lines]))
        return np.array(
            [
                family_yield(element, name[0], self.beam_energy) * weight / family_weight[name[0]]
                for name, _, weight in lines
            ],
            dtype=np.float64,
        ) * np.asarray(detection, dtype=np.float64).reshape(-1)

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
    def _lines_in_range(self, element: str) -> list[tuple[str, float, float]]:
        low = self.energy_offset - 0.5 * self.energy_scale
        high = self.energy_offset + (self.n_channels - 0.5) * self.energy_scale
        return excited_lines(element, (low, high), self.beam_energy, self.min_line_weight)

    def _factors(self, element_factors) -> tuple[dict[str, float], str]:
        """Factors of the quantified columns: thin-film (mean 1), equal or the user's."""
        if element_factors is None:
            raw = {e: self._intensity(e, self.quant_families_[e]) for e in self.elements}
            mean = float(np.mean(list(raw.values()))) if raw else 1.0
            return {e: f / mean for e, f in raw.items()}, "default thin-film model"
        if element_factors == "equal":
            return {e: 1.0 for e in self.elements}, "equal"
        return element_factors, "user"

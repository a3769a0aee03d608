r"""X-ray physics of the EDX model: exspy's database and the thin-film formulas.

Everything :class:`~espm_lite.models.EDXModel` needs that does not depend on
the energy axis of a spectrum image (see :mod:`espm_lite.models.edx` for the
model and its simplifications):

* the elements database of exspy (``exspy.material.elements``): X-ray lines
  (energy, weight), binding energies, atomic numbers and weights;
* conversions between atomic and weight fractions (exspy's
  ``atomic_to_weight`` / ``weight_to_atomic``, on fractions instead of
  percent);
* the detector: resolution (exspy's ``get_FWHM_at_Energy``) and a generic
  efficiency curve;
* the emission of a line family: fluorescence yield and ionisation
  cross-section at the critical energy of its shell;
* the self-absorption of a uniform film (exspy's ``mass_absorption_mixture``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .._validation import composition_rows

__all__ = [
    "FAMILY_SHELL",
    "FLUORESCENCE_A",
    "MN_KA",
    "atomic_to_weight_fractions",
    "atomic_weights",
    "critical_energy",
    "default_detector_efficiency",
    "detector_efficiency_curve",
    "excited_lines",
    "family_yield",
    "film_transmission",
    "fwhm_at",
    "weight_to_atomic_fractions",
]

logger = logging.getLogger(__name__)

#: Energy (keV) of Mn Kα, the reference of the detector resolution.
MN_KA = 5.8987
#: Fluorescence-yield constants ``a`` of ``Z^4 / (a + Z^4)`` per line family.
FLUORESCENCE_A = {"K": 1.12e6, "L": 1.0e8, "M": 1.0e9}
#: Shells (first found in exspy's ``Binding_energies``) giving each family's critical energy.
FAMILY_SHELL = {"K": ("K",), "L": ("L3", "L23"), "M": ("M5", "M45")}
#: Critical energy / highest line energy of the family, where exspy has no binding energy.
_FALLBACK_EDGE_RATIO = 1.01
#: Floor of the resolution, as a fraction of FWHM_MnKa (the formula goes to 0 at low energy).
_FWHM_FLOOR = 0.3


# ------------------------------------------------------------------- database
def elements_database():
    """exspy's elements database (``exspy.material.elements``)."""
    from exspy.material import elements

    return elements


def is_known_element(element: object) -> bool:
    """Whether ``element`` is a symbol of exspy's elements database."""
    return isinstance(element, str) and element in elements_database()


def element_entry(element: str):
    """The database entry of ``element``.

    Raises
    ------
    ValueError
        If ``element`` is not in exspy's database.
    """
    if not is_known_element(element):
        raise ValueError(f"Unknown element {element!r}: not in exspy's elements database.")
    return elements_database()[element]


def xray_lines(element: str) -> dict[str, tuple[float, float]]:
    """``{line: (energy keV, weight)}`` of ``element`` in exspy's database (may be empty)."""
    return dict(_xray_lines(element))


@functools.cache
def _xray_lines(element: str) -> tuple[tuple[str, tuple[float, float]], ...]:
    """Cached :func:`xray_lines` (exspy's database is slow to browse)."""
    atomic = element_entry(element).Atomic_properties
    if not atomic.has_item("Xray_lines"):
        return ()
    lines = atomic.Xray_lines
    return tuple(
        (name, (float(lines[name]["energy (keV)"]), float(lines[name]["weight"])))
        for name in lines.keys()
    )


def atomic_weights(elements: Sequence[str]) -> np.ndarray:
    """Atomic weights (g/mol) of ``elements`` from exspy's database.

    Parameters
    ----------
    elements : sequence of str

    Returns
    -------
    ndarray (len(elements),) float64
    """
    if isinstance(elements, str):
        elements = [elements]
    return np.array(
        [float(element_entry(e).General_properties.atomic_weight) for e in elements],
        dtype=np.float64,
    )


def excited_lines(
    element: str, energy_range: tuple[float, float], beam_energy: float, min_weight: float
) -> list[tuple[str, float, float]]:
    """``(line, energy keV, weight)`` of ``element`` seen in a spectrum, in exspy's order.

    A line is kept when its weight is at least ``min_weight``, its energy lies
    in ``energy_range`` (keV) below ``beam_energy`` and its shell is ionised
    (:func:`critical_energy` below ``beam_energy``); the others are logged
    at DEBUG level.

    Raises
    ------
    ValueError
        If no line is kept.
    """
    low, high = energy_range
    kept = []
    for name, (energy, weight) in xray_lines(element).items():
        if weight < min_weight:
            why = f"weight {weight:.3g} below {min_weight:g}"
        elif not low <= energy <= high:
            why = f"outside the energy range [{low:.4g}, {high:.4g}] keV"
        elif energy >= beam_energy:
            why = "above the beam energy"
        elif critical_energy(element, name[0]) >= beam_energy:
            why = f"shell not ionised (critical energy {critical_energy(element, name[0]):.4g} keV)"
        else:
            kept.append((name, energy, weight))
            continue
        logger.debug("%s %s (%.4g keV) dropped: %s", element, name, energy, why)
    if not kept:
        raise ValueError(
            f"{element} has no X-ray line in the energy range [{low:.4g}, {high:.4g}] keV "
            f"below the beam energy {beam_energy:g} keV: remove it from the elements."
        )
    return kept


# ------------------------------------------------------------------ fractions
def _composition(fractions: ArrayLike, elements: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Checked ``(k, n_elements)`` fractions and the element list (all known)."""
    elements = [elements] if isinstance(elements, str) else list(elements)
    for element in elements:
        element_entry(element)
    return composition_rows("fractions", fractions, len(elements), allow_1d=True), elements


def atomic_to_weight_fractions(fractions: ArrayLike, elements: Sequence[str]) -> np.ndarray:
    r"""Weight fractions from atomic fractions (exspy's ``atomic_to_weight``).

    .. math:: w_{re} = \frac{x_{re} A_e}{\sum_{e'} x_{re'} A_{e'}}

    with ``A_e`` the atomic weight of element ``e``.

    Parameters
    ----------
    fractions : array-like (k, n_elements) or (n_elements,)
        Atomic fractions, one row per phase (rows need not sum to 1).
    elements : sequence of str
        The element of each column.

    Returns
    -------
    ndarray (k, n_elements)
        Weight fractions, each row sums to 1.
    """
    from exspy.material import atomic_to_weight

    fractions, elements = _composition(fractions, elements)
    return np.asarray(atomic_to_weight(fractions.T, elements), dtype=np.float64).T / 100.0


def weight_to_atomic_fractions(fractions: ArrayLike, elements: Sequence[str]) -> np.ndarray:
    r"""Atomic fractions from weight fractions (exspy's ``weight_to_atomic``).

    The inverse of :func:`atomic_to_weight_fractions`:

    .. math:: x_{re} = \frac{w_{re} / A_e}{\sum_{e'} w_{re'} / A_{e'}}

    Parameters
    ----------
    fractions : array-like (k, n_elements) or (n_elements,)
        Weight fractions, one row per phase.
    elements : sequence of str

    Returns
    -------
    ndarray (k, n_elements)
        Atomic fractions, each row sums to 1.
    """
    from exspy.material import weight_to_atomic

    fractions, elements = _composition(fractions, elements)
    return np.asarray(weight_to_atomic(fractions.T, elements), dtype=np.float64).T / 100.0


# ------------------------------------------------------------------- detector
def default_detector_efficiency(energy: ArrayLike) -> np.ndarray:
    r"""Generic SDD efficiency: window absorption and crystal transparency.

    .. math:: \epsilon(E) = e^{-(0.25 / E)^{2.5}} \left(1 - e^{-(15 / E)^3}\right),
              \quad E \text{ in keV}

    Parameters
    ----------
    energy : array-like
        keV.

    Returns
    -------
    ndarray
        In ``[0, 1]``; 0 at and below 0 keV.
    """
    energy = np.maximum(np.asarray(energy, dtype=np.float64), 1e-6)
    return np.exp(-((0.25 / energy) ** 2.5)) * (1.0 - np.exp(-((15.0 / energy) ** 3)))


def detector_efficiency_curve(choice, energy: ArrayLike) -> np.ndarray:
    """Detector efficiency at ``energy`` (keV) for an ``EDXModel.detector_efficiency`` choice.

    ``True``: :func:`default_detector_efficiency`; ``False``: 1; a callable of
    the energy (keV), checked.

    Raises
    ------
    ValueError
        If a callable returns values of the wrong shape, negative or non-finite.
    """
    energy = np.asarray(energy, dtype=np.float64)
    if choice is True:
        return default_detector_efficiency(energy)
    if choice is False:
        return np.ones_like(energy)
    values = np.asarray(choice(energy), dtype=np.float64)
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


def fwhm_at(energy: ArrayLike, fwhm_mn_ka: float = 0.130) -> np.ndarray:
    r"""Detector resolution FWHM (keV) at ``energy`` (keV), Fiori & Newbury.

    .. math:: \mathrm{FWHM}(E)^2 = \mathrm{FWHM}_{MnK\alpha}^2
              + 2.5\times10^{-3}\,\mathrm{keV}\,(E - 5.8987\,\mathrm{keV})

    (2.5 eV times the energy difference in eV, in keV^2), computed by exspy's
    ``get_FWHM_at_Energy`` (which takes ``FWHM_MnKa`` in eV), floored at 30 %
    of ``FWHM_MnKa`` (the formula would go to zero at very low energy): the
    energy is raised to the one where the formula gives the floor.

    Parameters
    ----------
    energy : array-like
        keV.
    fwhm_mn_ka : float, default=0.130
        keV.

    Returns
    -------
    ndarray
        keV.
    """
    from exspy._misc.eds.utils import get_FWHM_at_Energy

    energy = np.asarray(energy, dtype=np.float64)
    floor_energy = MN_KA - (1.0 - _FWHM_FLOOR**2) * fwhm_mn_ka**2 / 2.5e-3
    above = energy > floor_energy
    floored = np.where(above, energy, floor_energy)
    fwhm = np.vectorize(lambda e: get_FWHM_at_Energy(1000.0 * fwhm_mn_ka, e), otypes=[float])
    return np.where(above, fwhm(floored), _FWHM_FLOOR * fwhm_mn_ka)


# ------------------------------------------------------------------- emission
@functools.cache
def critical_energy(element: str, family: str) -> float:
    """Critical ionisation energy (keV) of a line family (``"K"``, ``"L"``, ``"M"``) of ``element``.

    The binding energy of the family's shell in exspy's ``Binding_energies``
    (K, L3 or L23, M5 or M45); where exspy has none, ``1.01 x`` the highest
    line energy of the family.
    """
    atomic = element_entry(element).Atomic_properties
    if atomic.has_item("Binding_energies"):
        binding = atomic.Binding_energies
        for shell in FAMILY_SHELL.get(family, ()):
            if binding.has_item(shell):
                return float(binding[shell]["onset_energy (eV)"]) / 1000.0
    family_energies = [e for name, (e, _) in xray_lines(element).items() if name[0] == family]
    return _FALLBACK_EDGE_RATIO * max(family_energies)


@functools.cache
def family_yield(element: str, family: str, beam_energy: float) -> float:
    r"""``omega(Z) Q(U)`` of a line family: X-rays emitted per atom, relative.

    .. math:: \omega = \frac{Z^4}{a_F + Z^4}, \qquad
              Q \propto \frac{\ln U}{U E_c^2}, \quad U = E_0 / E_c

    (Wentzel-type fluorescence yield, ``a_F`` in :data:`FLUORESCENCE_A`;
    non-relativistic Bethe cross-section), ``E_c`` the
    :func:`critical_energy` and ``E_0`` the ``beam_energy`` (keV); 0 when
    ``U <= 1``.
    """
    z = float(element_entry(element).General_properties.Z)
    omega = z**4 / (FLUORESCENCE_A.get(family, FLUORESCENCE_A["M"]) + z**4)
    critical = critical_energy(element, family)
    overvoltage = beam_energy / critical
    if overvoltage <= 1:
        return 0.0
    return float(omega * np.log(overvoltage) / (overvoltage * critical**2))


# ----------------------------------------------------------------- absorption
def film_transmission(
    energy: ArrayLike, mass_thickness: float, take_off_angle: float, absorber: Mapping[str, float]
) -> np.ndarray:
    r"""Fraction of the X-rays generated uniformly through a film that leave it.

    .. math:: A(E) = \frac{1 - e^{-\chi}}{\chi}, \qquad
              \chi = \frac{(\mu/\rho)(E)\, \rho t}{\sin \theta}

    with the mass absorption coefficient ``mu/rho`` of the ``absorber``
    (exspy's ``mass_absorption_mixture``, Chantler's tables).

    Parameters
    ----------
    energy : array-like
        keV.
    mass_thickness : float
        ``rho t``, g/cm^2.
    take_off_angle : float
        ``theta``, degrees.
    absorber : mapping
        ``{element: weight fraction}`` (summing to 1).

    Returns
    -------
    ndarray, the shape of ``energy``
    """
    from exspy.material import mass_absorption_mixture

    energy = np.asarray(energy, dtype=np.float64)
    elements = list(absorber)
    percent = [100.0 * absorber[e] for e in elements]
    flat = np.atleast_1d(energy).ravel()
    mu = np.asarray(mass_absorption_mixture(percent, elements, list(flat)), dtype=np.float64)
    chi = mu * mass_thickness / np.sin(np.radians(take_off_angle))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(chi > 1e-12, -np.expm1(-chi) / chi, 1.0)
    return out.reshape(energy.shape)

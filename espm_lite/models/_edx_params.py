"""Checks of the parameters of :class:`~espm_lite.models.EDXModel` (one error per mistake)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .._validation import positive_float
from .xray_physics import is_known_element

#: Plausible electron-beam energies (keV) of SEM and TEM EDX: outside, a unit mistake.
BEAM_ENERGY_RANGE_KEV = (1.0, 400.0)
#: How the lines of an element are grouped into columns of ``G``.
LINE_FAMILY_MODES = ("separate", "joint")
#: Line families, in the order of preference for quantification (Cliff-Lorimer practice).
FAMILIES = ("K", "L", "M")


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


def check_elements(elements: Sequence[str]) -> tuple[str, ...]:
    """``elements`` as a tuple of unique symbols of exspy's database.

    Raises
    ------
    TypeError
        Not a list of str.
    ValueError
        Duplicates or unknown symbols (all listed).
    """
    if isinstance(elements, str) or not isinstance(elements, Sequence | np.ndarray):
        raise TypeError(f"elements must be a list of element symbols, got {elements!r}.")
    elements = list(elements)
    not_str = [e for e in elements if not isinstance(e, str)]
    if not_str:
        raise TypeError(f"elements must be symbols (str), got {not_str}.")
    if len(set(elements)) != len(elements):
        raise ValueError(f"elements must be unique, got {list(elements)}.")
    unknown = [e for e in elements if not is_known_element(e)]
    if unknown:
        raise ValueError(f"Unknown elements {unknown}: not in exspy's elements database.")
    return tuple(elements)


def check_line_families(line_families, quant_families, elements) -> dict[str, str]:
    """Check ``line_families`` and return the checked ``quant_families`` overrides.

    Raises
    ------
    ValueError
        ``line_families`` not in :data:`LINE_FAMILY_MODES`; a ``quant_families``
        entry for an element not in ``elements`` or a family not in
        :data:`FAMILIES`; overrides with ``line_families="joint"``.
    TypeError
        ``quant_families`` not a mapping.
    """
    if line_families not in LINE_FAMILY_MODES:
        raise ValueError(
            f"line_families must be one of {LINE_FAMILY_MODES}, got {line_families!r}."
        )
    if quant_families is None:
        return {}
    if not isinstance(quant_families, Mapping):
        raise TypeError(
            f"quant_families must be a mapping element -> 'K', 'L' or 'M', got {quant_families!r}."
        )
    if line_families == "joint" and quant_families:
        raise ValueError("quant_families needs line_families='separate'.")
    unknown = [e for e in quant_families if e not in elements]
    if unknown:
        raise ValueError(f"quant_families names elements that are not in elements: {unknown}.")
    bad = {e: f for e, f in quant_families.items() if f not in FAMILIES}
    if bad:
        raise ValueError(f"quant_families values must be one of {FAMILIES}, got {bad}.")
    return dict(quant_families)


def check_absorption(mass_thickness, take_off_angle, absorber, elements):
    """``(mass_thickness, take_off_angle, absorber weight fractions)``, all None for a thin film.

    Raises
    ------
    ValueError
        ``absorber`` or no ``take_off_angle`` without/with ``mass_thickness``,
        an angle outside (0, 90) degrees, unknown absorber elements, negative
        or all-zero absorber weights.
    TypeError
        ``absorber`` not a non-empty mapping.
    """
    if mass_thickness is None:
        if absorber is not None:
            raise ValueError("absorber needs mass_thickness (g/cm^2).")
        return None, None, None
    mass_thickness = positive_float("mass_thickness", mass_thickness)
    if take_off_angle is None:
        raise ValueError("mass_thickness needs take_off_angle (degrees).")
    angle = positive_float("take_off_angle", take_off_angle)
    if not angle < 90:
        raise ValueError(f"take_off_angle must be in (0, 90) degrees, got {take_off_angle!r}.")
    if absorber is None:
        absorber = {e: 1.0 for e in elements}
    if not isinstance(absorber, Mapping) or not absorber:
        raise TypeError(f"absorber must be a mapping element -> weight, got {absorber!r}.")
    unknown = [e for e in absorber if not is_known_element(e)]
    if unknown:
        raise ValueError(f"absorber has unknown elements {unknown}.")
    weights = {e: float(w) for e, w in absorber.items()}
    if any(not (np.isfinite(w) and w >= 0) for w in weights.values()) or not sum(weights.values()):
        raise ValueError("absorber weights must be non-negative with a positive sum.")
    total = sum(weights.values())
    return mass_thickness, angle, {e: w / total for e, w in weights.items()}


def check_element_factors(element_factors, elements) -> dict[str, float] | str | None:
    """``None``, ``"equal"`` or the checked ``{element: factor}`` of every element.

    Raises
    ------
    ValueError
        Another string, a missing element, a non-positive or non-finite factor.
    TypeError
        Neither None, a string nor a mapping.
    """
    if element_factors is None:
        return None
    if isinstance(element_factors, str):
        if element_factors != "equal":
            raise ValueError(
                f"element_factors must be None, 'equal' or a mapping, got {element_factors!r}."
            )
        return "equal"
    if not isinstance(element_factors, Mapping):
        raise TypeError(
            f"element_factors must be None, 'equal' or a mapping, got {element_factors!r}."
        )
    missing = [e for e in elements if e not in element_factors]
    if missing:
        raise ValueError(f"element_factors has no factor for {missing}.")
    factors = {e: float(element_factors[e]) for e in elements}
    bad = [e for e, f in factors.items() if not (np.isfinite(f) and f > 0)]
    if bad:
        raise ValueError(f"element_factors must be positive and finite; not for {bad}.")
    return factors

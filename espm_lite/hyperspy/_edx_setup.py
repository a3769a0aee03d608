"""What ``s.build_G()`` does before it builds ``G``: calibration and missing elements.

On the spectrum image summed over its pixels:

1. the energy offset, gain and detector resolution are refined
   (:func:`espm_lite.models.spectrum_fit.calibrate`) when the counts allow
   (``calibrate="auto"``: at least :data:`CALIBRATION_MIN_COUNTS`), logged
   and stored in ``metadata.espm_lite.calibration``;
2. elements the spectrum shows but the model lacks are searched
   (:func:`espm_lite.models.element_search.find_missing_elements`): added with
   ``add_missing=True``, else named in a warning; with no element at all the
   search proposes the list.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..models import EDXModel
from ..models.edx import BEAM_ENERGY_RANGE_KEV
from ..models.element_search import find_missing_elements
from ..models.spectrum_fit import MIN_FIT_ENERGY
from ..models.spectrum_fit import calibrate as calibrate_model
from ._options import _flat_mask

_logger = logging.getLogger(__name__)

#: ``calibrate="auto"`` refines the calibration when the summed spectrum has this many counts.
CALIBRATION_MIN_COUNTS = 1e4
#: Metadata node where the calibration is recorded.
CALIBRATION_PATH = "espm_lite.calibration"


class MissingElementsWarning(UserWarning):
    """The spectrum has significant peaks that the model's elements do not explain."""


def model_from_signal(signal, elements, beam_energy, model_kwargs: dict):
    """The :class:`~espm_lite.models.EDXModel` of ``signal`` (see ``s.edx_model``).

    Raises
    ------
    ValueError
        Listing every missing item and the metadata path (or method) to set it.
    """
    problems = []
    if elements is None:
        if signal.metadata.has_item("Sample.elements") and len(signal.metadata.Sample.elements):
            elements = list(signal.metadata.Sample.elements)
        else:
            problems.append(
                "no elements: set metadata.Sample.elements with s.add_elements(['Fe', 'O'])"
                " or pass elements=..."
            )
    if beam_energy is None:
        beam_energy = metadata_beam_energy(signal, problems)
    axis = signal.axes_manager.signal_axes[0]
    if str(axis.units).strip() != "keV":
        problems.append(
            f"the energy axis is in {axis.units!r}, not 'keV': set "
            "axes_manager.signal_axes[0].units = 'keV' and its offset and scale in keV"
        )
    elif not getattr(axis, "is_uniform", True):
        problems.append("the energy axis is not uniform (offset + i * scale is needed)")
    if problems:
        raise ValueError("Cannot build the EDX model of this signal: " + "; ".join(problems))
    if model_kwargs.get("mass_thickness") is not None and "take_off_angle" not in model_kwargs:
        # self-absorption: the take-off angle of the detector in the metadata (exspy)
        model_kwargs["take_off_angle"] = float(signal.get_take_off_angle())
    return EDXModel(
        elements,
        beam_energy,
        energy_offset=float(axis.offset),
        energy_scale=float(axis.scale),
        n_channels=int(axis.size),
        **model_kwargs,
    )


def metadata_beam_energy(signal, problems: list) -> float | None:
    """The beam energy (keV) in the metadata; what is wrong goes to ``problems``."""
    path = f"Acquisition_instrument.{signal._microscope}.beam_energy"
    how = f"s.set_microscope_parameters(beam_energy={signal._example_beam_energy})"
    if not signal.metadata.has_item(path):
        problems.append(
            f"no beam energy: set metadata.{path} (keV) with {how} or pass beam_energy=..."
        )
        return None
    beam_energy = float(signal.metadata.get_item(path))
    low, high = BEAM_ENERGY_RANGE_KEV
    if not low <= beam_energy <= high:
        problems.append(
            f"metadata.{path} is {beam_energy:g}, but the beam energy is in keV, "
            f"between {low:g} and {high:g} keV (eV by mistake?): set it with {how}"
        )
    return beam_energy


def zero_peak_mask(signal, estimator, signal_mask):
    """``signal_mask`` with the channels below :data:`MIN_FIT_ENERGY` added, for a fit with ``G``.

    Below 0.2 keV lies the detector's zero (noise) peak, which no column of
    the EDX model describes: fitted with ``G``, its counts would be forced
    onto the phases. Fits without ``G`` (or with a callable) keep every
    channel.
    """
    G = estimator.get_params(deep=False).get("G")
    if G is None or callable(G):
        return signal_mask
    axis = signal.axes_manager.signal_axes[0]
    low = np.asarray(axis.axis, dtype=np.float64) < MIN_FIT_ENERGY
    if not low.any():
        return signal_mask
    _logger.info(
        "espm_lite: %d channels below %g keV (the zero peak) are left out of the fit with G.",
        int(low.sum()),
        MIN_FIT_ENERGY,
    )
    user = _flat_mask(signal_mask, (low.size,), "signal_mask")
    return low if user is None else user | low


def summed_spectrum(signal) -> np.ndarray:
    """The signal summed over its navigation axes (float64, computed if lazy)."""
    data = signal.data
    axes = tuple(range(data.ndim - 1))
    total = data.sum(axis=axes) if axes else data
    if hasattr(total, "compute"):
        total = total.compute()
    return np.asarray(total, dtype=np.float64)


def _detector_resolution(signal) -> float | None:
    """FWHM at Mn Kα (keV) from exspy's metadata (stored in eV), if any."""
    for microscope in ("TEM", "SEM"):
        path = f"Acquisition_instrument.{microscope}.Detector.EDS.energy_resolution_MnKa"
        if signal.metadata.has_item(path):
            value = float(signal.metadata.get_item(path))
            if np.isfinite(value) and value > 0:
                return value / 1000.0
    return None


def _should_calibrate(calibrate, counts: np.ndarray, model) -> bool:
    if calibrate not in (True, False, "auto"):
        raise ValueError(f"calibrate must be True, False or 'auto', got {calibrate!r}.")
    if not model.elements:
        return False
    if calibrate == "auto":
        return bool(counts.sum() >= CALIBRATION_MIN_COUNTS)
    return bool(calibrate)


def _calibrated(counts, model, calibrate):
    if not _should_calibrate(calibrate, counts, model):
        return model
    return calibrate_model(counts, model)[0]


def _record(signal, model):
    """Store ``model``'s calibration (if it was calibrated) in the signal's metadata."""
    if model.calibration_ is not None:
        record = {**model.calibration_.as_dict(), "elements": model.elements}
        signal.metadata.set_item(CALIBRATION_PATH, record)
    return model


def _start(signal, elements, beam_energy, calibrate, model_kwargs):
    """``(calibrated model, summed spectrum, whether no element was given or in the metadata)``.

    The resolution defaults to the metadata's ``energy_resolution_MnKa``.
    """
    resolution = _detector_resolution(signal)
    if "fwhm_mn_ka" not in model_kwargs and resolution is not None:
        model_kwargs["fwhm_mn_ka"] = resolution
    no_elements = elements is None and not (
        signal.metadata.has_item("Sample.elements") and len(signal.metadata.Sample.elements)
    )
    model = signal.edx_model([] if no_elements else elements, beam_energy, **model_kwargs)
    counts = summed_spectrum(signal)
    return _calibrated(counts, model, calibrate), counts, no_elements


#: Rounds of search and calibration (each round calibrates with the elements found so far).
SEARCH_ROUNDS = 3


def _search(signal, counts, model, calibrate, significance, beam_energy, model_kwargs):
    """Search, add what was found, recalibrate, search again (at most :data:`SEARCH_ROUNDS`).

    A calibration with the missing elements is better, and it can reveal weaker peaks.
    Returns the model with every element found (calibrated) and the candidates in order.
    """
    found_all = []
    for _ in range(SEARCH_ROUNDS):
        found = find_missing_elements(counts, model, significance=significance)
        if not found:
            break
        found_all += found
        names = list(model.elements) + [c.element for c in found]
        model = _calibrated(counts, signal.edx_model(names, beam_energy, **model_kwargs), calibrate)
    return model, found_all


def missing_elements(
    signal, elements=None, beam_energy=None, *, calibrate="auto", significance=5.0, **model_kwargs
):
    """``find_missing_elements`` on the summed spectrum of ``signal`` (its method)."""
    model, counts, _ = _start(signal, elements, beam_energy, calibrate, model_kwargs)
    _record(signal, model)
    return _search(signal, counts, model, calibrate, significance, beam_energy, model_kwargs)[1]


def edx_setup(
    signal,
    elements=None,
    beam_energy=None,
    *,
    calibrate="auto",
    add_missing: bool = False,
    check_missing: bool = True,
    significance: float = 5.0,
    **model_kwargs,
):
    """The calibrated :class:`~espm_lite.models.EDXModel` of ``signal`` and the elements found.

    See the module; parameters as in ``EDSespmSpectrum.build_G``.

    Returns
    -------
    (EDXModel, list of ElementCandidate)
    """
    if not isinstance(add_missing, bool):
        raise TypeError(f"add_missing must be True or False, got {add_missing!r}.")
    model, counts, no_elements = _start(signal, elements, beam_energy, calibrate, model_kwargs)
    if not (check_missing or add_missing or no_elements):
        return _record(signal, model), []
    extended, found = _search(
        signal, counts, model, calibrate, significance, beam_energy, model_kwargs
    )
    names = [c.element for c in found]
    listing = "; ".join(str(c) for c in found)
    if no_elements:
        if not found:
            raise ValueError(
                "Cannot build the EDX model of this signal: no elements in the metadata and no "
                "significant X-ray peak in the summed spectrum: set them with "
                "s.add_elements(['Fe', 'O']) or pass elements=..."
            )
        warnings.warn(
            f"No elements in the metadata: using the elements whose lines the summed spectrum "
            f"shows, {names} ({listing}). Check them and set them with s.add_elements({names}).",
            MissingElementsWarning,
            stacklevel=3,
        )
    elif found and not add_missing:
        warnings.warn(
            f"The summed spectrum has significant X-ray peaks that the elements "
            f"{list(model.elements)} do not explain; candidates, most significant first: "
            f"{listing}. Add them with s.add_elements({names}) or build_G(add_missing=True).",
            MissingElementsWarning,
            stacklevel=3,
        )
        return _record(signal, model), found
    if found:
        _logger.info("EDX model: adding the elements %s found in the spectrum", names)
    return _record(signal, extended), found

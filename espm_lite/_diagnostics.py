"""Checks of a finished fit that the user should hear about (warnings, not errors)."""

from __future__ import annotations

import warnings

import numpy as np

#: A phase whose share of the fitted counts is below this is reported as empty.
EMPTY_PHASE_SHARE = 1e-9


class EmptyPhaseWarning(UserWarning):
    """A fitted phase carries (almost) none of the modelled counts."""


def empty_phases(spectra: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Indices of the phases whose share of the model ``spectra @ maps.T`` is negligible.

    The share of phase ``l`` is ``sum_i |D_il| sum_j |A_jl|`` over the sum of
    these products (spectra ``(n, k)``, maps ``(p, k)``; absolute values for
    the signed spectra of SNMF); empty below :data:`EMPTY_PHASE_SHARE`.
    """
    weight = np.sum(np.abs(spectra), axis=0, dtype=np.float64) * np.sum(
        np.abs(maps), axis=0, dtype=np.float64
    )
    total = weight.sum()
    if not np.isfinite(total) or total <= 0:
        return np.arange(0)
    return np.flatnonzero(weight / total < EMPTY_PHASE_SHARE)


def warn_empty_phases(name: str, spectra: np.ndarray, maps: np.ndarray) -> None:
    """Warn (:class:`EmptyPhaseWarning`) when a fitted phase is empty: the data support fewer."""
    empty = empty_phases(spectra, maps)
    if empty.size:
        warnings.warn(
            f"{name}: phase(s) {empty.tolist()} of {maps.shape[1]} carry none of the fitted "
            "counts (their maps or spectra are at the floor): the data support fewer phases "
            "than n_components. Fit fewer (espm_lite.model_selection.select_n_components "
            "scores the candidates).",
            EmptyPhaseWarning,
            stacklevel=4,
        )

r"""Fits of ``G`` to one spectrum: deviance, energy and resolution calibration.

The best non-negative fit of a known matrix to a spectrum of counts ``x``
(usually the sum of a spectrum image over its pixels) is the Poisson maximum
likelihood

.. math:: \hat w = \arg\min_{w \ge 0} \sum_i \big( (G w)_i - x_i \log (G w)_i \big),

solved exactly by projected Newton steps
(:func:`espm_lite.kernels.newton_rows.newton_rows`). Its quality is the
Poisson deviance per channel

.. math:: D = \frac{2}{n} \sum_i \Big( x_i \log \frac{x_i}{(G\hat w)_i} - x_i + (G\hat w)_i
          \Big),

about 1 when the model explains the spectrum up to counting noise.

Calibration refines the energy axis (offset and gain) and the detector
resolution (FWHM at Mn Kα) of an :class:`~espm_lite.models.EDXModel` by
minimising ``D``: a grid over the offset (a peak
shifted by more than its width leaves a narrow valley), then Nelder-Mead
over the shifts at the first and last fitted channels and the resolution.
A refinement is kept when it lowers the total deviance by at least
:data:`MIN_DEVIANCE_GAIN`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize

from ..kernels.newton_rows import newton_rows

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_FIT_ENERGY",
    "Calibration",
    "SpectrumFit",
    "calibrate",
    "fit_spectrum",
    "fitted_channels",
    "poisson_deviance",
]

#: Channels below this energy (keV) are not fitted: the detector's zero (noise) peak.
MIN_FIT_ENERGY = 0.2
#: Smallest coefficient of a fit, relative to the mean level (keeps the model positive).
COEFFICIENT_FLOOR = 1e-9
#: Relative change of the coefficients at which a fit stops (deviance exact to ~1e-12).
NEWTON_TOL = 1e-8
#: Largest shift of the energy axis (channels) the calibration searches.
MAX_SHIFT_CHANNELS = 10.0
#: A calibration is kept only if it lowers the total deviance by this much (a likelihood
#: ratio of e^-12.5 between the two, far beyond chance for three parameters).
MIN_DEVIANCE_GAIN = 25.0
#: Range of the detector resolution (keV, FWHM at Mn Kα) the calibration searches.
FWHM_RANGE = (0.060, 0.250)


def poisson_deviance(counts: ArrayLike, model: ArrayLike) -> np.ndarray:
    """Poisson deviance of ``counts`` under ``model``, per channel (``x log(x/m) - x + m``, x 2)."""
    x = np.asarray(counts, dtype=np.float64)
    m = np.maximum(np.asarray(model, dtype=np.float64), np.finfo(np.float64).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0) / m), 0.0)
    return 2.0 * (log_term - x + m)


def fitted_channels(energy: ArrayLike, min_energy: float = MIN_FIT_ENERGY) -> np.ndarray:
    """Boolean mask of the channels at or above ``min_energy`` keV."""
    return np.asarray(energy, dtype=np.float64) >= min_energy


@dataclass(frozen=True)
class SpectrumFit:
    """The best non-negative Poisson fit of ``G`` to one spectrum.

    Attributes
    ----------
    coefficients : ndarray (m,)
        ``w``, one per column of ``G``.
    model : ndarray (n,)
        ``G w`` on every channel.
    deviance : float
        Poisson deviance per fitted channel.
    channels : ndarray of bool (n,)
        The channels fitted.
    """

    coefficients: np.ndarray
    model: np.ndarray
    deviance: float
    channels: np.ndarray

    def residual_significance(self, counts: ArrayLike) -> np.ndarray:
        """``(x - m) / sqrt(m)`` per channel (0 outside the fitted channels)."""
        x = np.asarray(counts, dtype=np.float64)
        z = (x - self.model) / np.sqrt(np.maximum(self.model, 1.0))
        return np.where(self.channels, z, 0.0)


def fit_spectrum(
    counts: ArrayLike,
    G: ArrayLike,
    channels: ArrayLike | None = None,
    start: ArrayLike | None = None,
) -> SpectrumFit:
    """Best non-negative Poisson fit of the columns of ``G`` to ``counts``.

    Parameters
    ----------
    counts : array-like (n,)
        Non-negative counts.
    G : array-like (n, m)
        Non-negative columns.
    channels : array-like of bool (n,), optional
        Channels fitted (default all; channels where every column of ``G`` is
        zero, or 1e-12 of the mean, are never fitted).
    start : array-like (m,), optional
        Starting coefficients (e.g. a previous fit's); the result does not
        depend on it beyond rounding, only the time does.

    Returns
    -------
    SpectrumFit
    """
    x = np.asarray(counts, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    mask = np.ones(x.shape, dtype=bool) if channels is None else np.asarray(channels, dtype=bool)
    reach = G.sum(axis=1)
    mask = mask & (reach > 1e-12 * reach.mean())  # a channel no column reaches is not fitted
    basis = G[mask]
    usable = basis.sum(axis=0) > 0
    w = np.zeros(G.shape[1])
    if usable.any():
        sub = basis[:, usable]
        level = max(x[mask].sum(), 1.0) / sub.sum()
        if start is None:
            start = np.full((1, sub.shape[1]), level)
        else:
            start = np.maximum(np.asarray(start, dtype=np.float64)[usable][None], level * 1e-3)
        # a floor keeps the model positive wherever a column reaches (finite deviance)
        w[usable] = newton_rows(
            x[mask][None], sub, start, floor=COEFFICIENT_FLOOR * level, tol=NEWTON_TOL
        )[0]
    model = G @ w
    deviance = float(poisson_deviance(x[mask], model[mask]).mean())
    return SpectrumFit(w, model, deviance, mask)


@dataclass(frozen=True)
class Calibration:
    """Energy axis and resolution refined from a spectrum.

    Attributes
    ----------
    energy_offset, energy_scale : float
        keV (channel ``i`` at ``energy_offset + i * energy_scale``).
    fwhm_mn_ka : float
        keV.
    deviance_before, deviance_after : float
        Deviance per fitted channel with the given and the refined values.
    """

    energy_offset: float
    energy_scale: float
    fwhm_mn_ka: float
    deviance_before: float
    deviance_after: float

    def as_dict(self) -> dict[str, float]:
        """The fields, as plain floats (for metadata)."""
        return {k: float(v) for k, v in self.__dict__.items()}


def calibrate(counts: ArrayLike, model, channels: ArrayLike | None = None):
    """Refine ``model``'s energy offset, gain and resolution on ``counts``.

    Parameters
    ----------
    counts : array-like (n_channels,)
        The spectrum (e.g. a spectrum image summed over its pixels).
    model : EDXModel
        Its elements and starting calibration.
    channels : array-like of bool, optional
        Channels fitted (default: at or above :data:`MIN_FIT_ENERGY`).

    Returns
    -------
    (EDXModel, Calibration)
        A copy of the model on the refined axis and resolution (the given ones
        if nothing improved significantly), its ``calibration_`` the record,
        and the record.
    """
    x = np.asarray(counts, dtype=np.float64)
    if channels is None:
        channels = fitted_channels(model.energy)
    objective = _CalibrationObjective(x, model, np.asarray(channels, dtype=bool))
    before = objective((0.0, 0.0, model.fwhm_mn_ka))
    unchanged = Calibration(
        model.energy_offset, model.energy_scale, model.fwhm_mn_ka, before, before
    )
    n_fit = int(objective.channels.sum())
    params, after = objective.minimise(before)
    if not (before - after) * n_fit >= MIN_DEVIANCE_GAIN:
        return _with_record(model, unchanged), unchanged
    refined = objective.model_at(params)
    record = Calibration(
        refined.energy_offset, refined.energy_scale, refined.fwhm_mn_ka, before, after
    )
    logger.info(
        "EDX calibration: offset %.5g -> %.5g keV, gain %.6g -> %.6g keV/channel, "
        "FWHM(Mn Ka) %.1f -> %.1f eV; deviance per channel %.3g -> %.3g",
        model.energy_offset,
        refined.energy_offset,
        model.energy_scale,
        refined.energy_scale,
        1000 * model.fwhm_mn_ka,
        1000 * refined.fwhm_mn_ka,
        before,
        after,
    )
    return _with_record(refined, record), record


class _CalibrationObjective:
    """Deviance per channel of the best fit as a function of ``(low, high, fwhm)``:
    the axis shifts (channels) at the first and last fitted channel and the resolution."""

    def __init__(self, counts: np.ndarray, model, channels: np.ndarray) -> None:
        self.counts, self.model, self.channels = counts, model, channels
        self.first, last = np.flatnonzero(channels)[[0, -1]]
        self.span = max(int(last - self.first), 1)
        self.warm = None  # the last fit's coefficients: a start for the next, nearby axis

    def model_at(self, params):
        low, high, fwhm = params
        m = self.model
        scale = m.energy_scale * (1.0 + (high - low) / self.span)
        offset = m.energy_offset + m.energy_scale * low - (scale - m.energy_scale) * self.first
        return m.recalibrated(offset, scale, float(np.clip(fwhm, *FWHM_RANGE)))

    def __call__(self, params) -> float:
        if max(abs(params[0]), abs(params[1])) > MAX_SHIFT_CHANNELS:
            return np.inf
        try:
            G = self.model_at(params).build_G()
        except ValueError:  # the shift moved all the lines of a column out of the range
            return np.inf
        fit = fit_spectrum(self.counts, G, self.channels, self.warm)
        self.warm = fit.coefficients
        return fit.deviance

    def minimise(self, before: float) -> tuple[np.ndarray, float]:
        """A grid over a common shift, then Nelder-Mead over the three parameters."""
        fwhm = self.model.fwhm_mn_ka
        shifts = np.arange(-MAX_SHIFT_CHANNELS, MAX_SHIFT_CHANNELS + 0.5, 1.0)
        d0 = float(shifts[int(np.argmin([self((d, d, fwhm)) for d in shifts]))])
        start = np.array([d0, d0, fwhm])
        result = minimize(
            self,
            start,
            method="Nelder-Mead",
            options={
                "initial_simplex": start
                + np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0.01]]),
                "xatol": 0.02,
                "fatol": 1e-4 * max(before, 1.0),
                "maxfev": 300,
            },
        )
        return result.x, float(result.fun)


def _with_record(model, record: Calibration):
    """A copy of ``model`` on ``record``'s axis and resolution, with ``calibration_`` set."""
    out = model.recalibrated(record.energy_offset, record.energy_scale, record.fwhm_mn_ka)
    out.calibration_ = record
    return out

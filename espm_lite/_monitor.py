"""Truth tracking during a fit: a monitor for :func:`espm_lite._loop.run`.

espm records, at every iteration, the matched angles of the spectra to the
true ones (``true_D``) and the matched errors of the maps (``true_H``). The
estimators keep espm's parameter names; the measuring lives here, outside the
estimators, as a callback of the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .measures import matched_angles, matched_map_errors


def truth_monitor(true_D, true_H, n_channels: int, n_pixels: int) -> Callable | None:
    """A monitor recording ``ang_p{i}`` / ``mse_p{i}``, or None without a truth.

    Parameters
    ----------
    true_D : array-like (n_channels, k) or None
    true_H : array-like (k, n_pixels) or None
        ``(n_pixels, k)`` is accepted and transposed.
    n_channels, n_pixels : int

    Returns
    -------
    callable or None
        ``monitor(problem, solver, state) -> dict`` using
        ``solver.monitored(problem, state) -> (D (n, k), maps (p, k))``.
    """
    true_D = None if true_D is None else np.asarray(true_D, dtype=np.float64)
    true_H = None if true_H is None else np.asarray(true_H, dtype=np.float64)
    if true_D is not None and (true_D.ndim != 2 or true_D.shape[0] != n_channels):
        raise ValueError(
            f"true_D must have shape (n_channels, k) = ({n_channels}, k), got {true_D.shape}."
        )
    if true_H is not None:
        if true_H.ndim == 2 and true_H.shape[0] == n_pixels and true_H.shape[1] != n_pixels:
            true_H = true_H.T
        if true_H.ndim != 2 or true_H.shape[1] != n_pixels:
            raise ValueError(
                f"true_H must have shape (k, n_pixels) = (k, {n_pixels}), got {true_H.shape}."
            )
    if true_D is None and true_H is None:
        return None

    def monitor(problem, solver, state) -> dict[str, float]:
        D, maps = solver.monitored(problem, state)
        D = D.astype(np.float64)
        out = {}
        if true_D is not None:
            for i, angle in enumerate(matched_angles(true_D, D)):
                out[f"ang_p{i}"] = float(angle)
        if true_H is not None:
            errors = matched_map_errors(
                true_H, maps.T.astype(np.float64), true_D, D if true_D is not None else None
            )
            for i, err in enumerate(errors):
                out[f"mse_p{i}"] = float(err)
        return out

    return monitor

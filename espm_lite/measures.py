"""Measures of a factorisation against a known truth.

Spectra are compared by angle (scale-free), matched to the truth by the
Hungarian algorithm; maps by mean squared error after the same matching.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.special import xlogy

from ._validation import array_2d as _as_2d


def spectral_angles(true_spectra: ArrayLike, est_spectra: ArrayLike) -> np.ndarray:
    """Angles in degrees between every true and every estimated spectrum.

    Parameters
    ----------
    true_spectra : array-like (n, k_true)
    est_spectra : array-like (n, k_est)

    Returns
    -------
    ndarray (k_true, k_est)
        ``arccos`` of the cosine similarity of the columns; a column of zeros
        is at 90 degrees from everything.
    """
    T = _as_2d("true_spectra", true_spectra)
    E = _as_2d("est_spectra", est_spectra)
    if T.shape[0] != E.shape[0]:
        raise ValueError(
            f"true_spectra and est_spectra must have the same number of rows (channels), "
            f"got {T.shape[0]} and {E.shape[0]}."
        )
    nt = np.linalg.norm(T, axis=0)
    ne = np.linalg.norm(E, axis=0)
    cos = (T.T @ E) / np.maximum(np.outer(nt, ne), np.finfo(float).tiny)
    cos[(nt == 0)[:, None] | (ne == 0)[None, :]] = 0.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def match_components(true_spectra: ArrayLike, est_spectra: ArrayLike) -> np.ndarray:
    """Index of the estimated column matched to each true column.

    The matching is one-to-one and minimises the sum of the spectral angles
    (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`).

    Parameters
    ----------
    true_spectra : array-like (n, k_true)
    est_spectra : array-like (n, k_est)
        Requires ``k_est >= k_true``; extra estimated columns stay unmatched.

    Returns
    -------
    ndarray of int (k_true,)
        ``est_spectra[:, order[r]]`` is the estimate of ``true_spectra[:, r]``.
    """
    return _assign(spectral_angles(true_spectra, est_spectra), "est_spectra")


def _assign(cost: np.ndarray, est_name: str) -> np.ndarray:
    """Hungarian assignment of every row of ``cost`` to a distinct column."""
    k_true, k_est = cost.shape
    if k_est < k_true:
        raise ValueError(
            f"{est_name} has {k_est} components, fewer than the {k_true} true ones to match."
        )
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(k_true, dtype=np.intp)
    order[rows] = cols
    return order


def matched_angles(true_spectra: ArrayLike, est_spectra: ArrayLike) -> np.ndarray:
    """Angle of each true spectrum with its matched estimate.

    Parameters
    ----------
    true_spectra : array-like (n, k_true)
    est_spectra : array-like (n, k_est), ``k_est >= k_true``

    Returns
    -------
    ndarray (k_true,)
        Angles in degrees, in the order of the true spectra (see
        :func:`match_components`).
    """
    angles = spectral_angles(true_spectra, est_spectra)
    order = _assign(angles, "est_spectra")
    return angles[np.arange(angles.shape[0]), order]


def matched_map_errors(
    true_maps: ArrayLike,
    est_maps: ArrayLike,
    true_spectra: ArrayLike | None = None,
    est_spectra: ArrayLike | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Mean squared error of each true map with its matched estimated map.

    Parameters
    ----------
    true_maps : array-like (k_true, p)
    est_maps : array-like (k_est, p), ``k_est >= k_true``
    true_spectra : array-like (n, k_true), optional
    est_spectra : array-like (n, k_est), optional
        Give both or neither.  When given, maps are matched through their
        spectra (:func:`match_components`) and, with ``normalize``, each
        estimated map is rescaled as if its spectrum had the true spectrum's
        sum: ``est_map_r * sum(est_spectrum_r) / sum(true_spectrum_r)``.
        Otherwise maps are matched by (Pearson) correlation and compared as
        they are.
    normalize : bool, default=True
        Whether to rescale the estimated maps (only when spectra are given).

    Returns
    -------
    ndarray (k_true,)
        Mean over pixels of the squared differences, in the order of the true
        maps.  The inputs are not modified.
    """
    Ht = _as_2d("true_maps", true_maps)
    He = _as_2d("est_maps", est_maps)
    if Ht.shape[1] != He.shape[1]:
        raise ValueError(
            f"true_maps and est_maps must have the same number of pixels (columns), "
            f"got {Ht.shape[1]} and {He.shape[1]}."
        )
    if (true_spectra is None) != (est_spectra is None):
        raise ValueError("give both true_spectra and est_spectra, or neither.")
    if true_spectra is not None:
        T = _as_2d("true_spectra", true_spectra)
        E = _as_2d("est_spectra", est_spectra)
        if T.shape[1] != Ht.shape[0]:
            raise ValueError(
                f"true_spectra has {T.shape[1]} columns but true_maps has {Ht.shape[0]} rows."
            )
        if E.shape[1] != He.shape[0]:
            raise ValueError(
                f"est_spectra has {E.shape[1]} columns but est_maps has {He.shape[0]} rows."
            )
        order = match_components(T, E)
        He = He[order]
        if normalize:
            scale = E[:, order].sum(axis=0) / np.maximum(T.sum(axis=0), np.finfo(float).tiny)
            He = He * scale[:, None]
    else:
        centred_t = Ht - Ht.mean(axis=1, keepdims=True)
        centred_e = He - He.mean(axis=1, keepdims=True)
        nt = np.linalg.norm(centred_t, axis=1)
        ne = np.linalg.norm(centred_e, axis=1)
        corr = (centred_t @ centred_e.T) / np.maximum(np.outer(nt, ne), np.finfo(float).tiny)
        He = He[_assign(-corr, "est_maps")]
    return np.mean((Ht - He) ** 2, axis=1)


def kl_divergence(X: ArrayLike, Y: ArrayLike) -> float:
    """Generalised Kullback-Leibler divergence of ``Y`` from ``X``.

    Parameters
    ----------
    X : array-like
        Non-negative data (for instance counts).
    Y : array-like, same shape as ``X``
        Non-negative model.

    Returns
    -------
    float
        ``sum(X * log(X / Y) - X + Y)`` with ``0 log 0 = 0``; zero if and only
        if ``X == Y``, infinite where ``Y == 0 < X``.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.shape != Y.shape:
        raise ValueError(f"X and Y must have the same shape, got {X.shape} and {Y.shape}.")
    if X.size and (X.min() < 0 or Y.min() < 0):
        raise ValueError("X and Y must be non-negative.")
    return float(np.sum(xlogy(X, X) - xlogy(X, Y) - X + Y))

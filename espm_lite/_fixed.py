"""Entries of ``W`` and ``H`` held fixed during a fit (espm's ``fixed_W`` / ``fixed_H``).

A fixed entry is given as a value ``>= 0`` in an array of the factor's shape
(negative entries are free). Inside the fit the values are in the scale of
the fitted problem and floored at ``log_shift`` (a zero would lock the
multiplicative updates and the log of the model); the fitted attributes
return them exactly as given (:func:`exact_fixed`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FixedEntries:
    """Entries of ``W`` ``(m, k)`` and of the maps ``A = H^T`` ``(p, k)`` held fixed.

    ``*_mask`` is a boolean array (None: nothing fixed) and ``*_values`` the
    values, in the scale of the fitted problem.
    """

    W_mask: np.ndarray | None = None
    W_values: np.ndarray | None = None
    A_mask: np.ndarray | None = None
    A_values: np.ndarray | None = None

    def apply_W(self, W: np.ndarray) -> None:
        """Write the fixed values into ``W`` in place."""
        if self.W_mask is not None:
            W[self.W_mask] = self.W_values[self.W_mask]

    def apply_A(self, A: np.ndarray) -> None:
        """Write the fixed values into ``A`` in place."""
        if self.A_mask is not None:
            A[self.A_mask] = self.A_values[self.A_mask]


def _fixed_mask(value, name: str, shape: tuple[int, int], dtype):
    if value is None:
        return None, None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (negative entries mark free values).")
    mask = arr >= 0
    if not mask.any():
        return None, None
    return mask, np.where(mask, arr, 0).astype(dtype)


def fixed_entries(estimator, sizes, dtype, scale: float, intensity: str) -> FixedEntries:
    """The ``fixed_W`` / ``fixed_H`` entries in the scale of the fitted problem."""
    m, p, k = sizes
    floor = estimator.log_shift
    mask_W, val_W = _fixed_mask(estimator.fixed_W, "fixed_W", (m, k), dtype)
    mask_H, val_H = _fixed_mask(estimator.fixed_H, "fixed_H", (k, p), dtype)
    W_values = A_mask = A_values = None
    if val_W is not None:
        if intensity == "W":
            val_W = val_W / dtype.type(scale)
        W_values = np.maximum(val_W, floor)
    if val_H is not None:
        if intensity == "H":
            val_H = val_H / dtype.type(scale)
        A_mask = np.ascontiguousarray(mask_H.T)
        A_values = np.ascontiguousarray(np.maximum(val_H, floor).T)
    for active, name, sums in (
        (estimator._effective_simplex_W() and mask_W is not None, "simplex_W", "column"),
        (estimator.simplex_H and mask_H is not None, "simplex_H", "pixel"),
    ):
        if active:
            warnings.warn(
                f"{name} with fixed_{name[-1]} entries: the fixed entries are excluded from "
                f"the {sums} sums (the free entries of each {sums} sum to 1).",
                UserWarning,
                stacklevel=4,
            )
    return FixedEntries(mask_W if val_W is not None else None, W_values, A_mask, A_values)


def exact_fixed(values: np.ndarray, fixed) -> np.ndarray:
    """``values`` with the fixed entries (``>= 0`` in ``fixed``) exactly as the caller gave them.

    Inside the fit they are floored at ``log_shift`` (a zero would lock the
    multiplicative updates and the log of the model); the output gives them as given.
    """
    if fixed is None:
        return values
    fixed = np.asarray(fixed, dtype=np.float64)
    mask = fixed >= 0
    if not mask.any():
        return values
    out = np.array(values)
    out[mask] = fixed[mask]
    return out

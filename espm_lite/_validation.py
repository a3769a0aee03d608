"""Checks of scalar and array arguments shared by the models, datasets and measures.

Each function returns the value converted (``int``, ``float``, a tuple or a
float64 array) or raises ``ValueError`` with a message naming the argument.
Booleans are never accepted as numbers.
"""

from __future__ import annotations

import numbers

import numpy as np


def _is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def positive_int(name: str, value) -> int:
    """``value`` as an ``int`` if it is an integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def non_negative_int(name: str, value) -> int:
    """``value`` as an ``int`` if it is an integer ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    return int(value)


def finite_float(name: str, value) -> float:
    """``value`` as a ``float`` if it is a finite real number."""
    if not _is_real(value) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def positive_float(name: str, value) -> float:
    """``value`` as a ``float`` if it is a finite real number ``> 0``."""
    if not _is_real(value) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return float(value)


def check_shape_2d(value, name: str = "shape_2d") -> tuple[int, int]:
    """``(ny, nx)``: a pair of positive integers."""
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a pair (ny, nx), got {value!r}.") from None
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair (ny, nx), got {value!r}.")
    return positive_int(f"{name}[0]", pair[0]), positive_int(f"{name}[1]", pair[1])


def array_2d(name: str, value) -> np.ndarray:
    """``value`` as a float64 array if it is 2-D."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got {arr.ndim} dimension(s).")
    return arr


def composition_rows(name: str, value, n_columns: int, *, allow_1d: bool = False) -> np.ndarray:
    """Rows of non-negative, finite amounts (one column per element), each with a positive sum.

    With ``allow_1d`` a 1-D ``value`` is one row. Returns a new float64 array
    ``(k, n_columns)`` (not normalised).
    """
    try:
        rows = np.array(value, dtype=np.float64)
        rows = np.atleast_2d(rows) if allow_1d else rows
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers, got {value!r}.") from None
    if rows.ndim != 2 or rows.shape[1] != n_columns:
        raise ValueError(
            f"{name} must have shape (n_phases, {n_columns}) (one column per element), "
            f"got shape {rows.shape}."
        )
    if (
        rows.shape[0] < 1
        or not np.all(np.isfinite(rows))
        or np.any(rows < 0)
        or np.any(rows.sum(axis=1) <= 0)
    ):
        raise ValueError(f"{name} must be finite, non-negative, with a positive sum per row.")
    return rows


def per_component(value, name: str, k: int, *, sign: str = "any") -> np.ndarray:
    """A scalar or ``(k,)`` array-like as a finite float64 vector of ``k`` entries.

    ``sign``: ``"any"``, ``"non-negative"`` (entries ``>= 0``) or ``"positive"``
    (entries ``> 0``); a ``ValueError`` names ``name`` otherwise.
    """
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(k, float(arr))
    if arr.shape != (k,):
        raise ValueError(
            f"{name} must be a scalar or an array of shape (n_components,) = ({k},), "
            f"got shape {arr.shape}."
        )
    bad_sign = {"any": False, "non-negative": np.any(arr < 0), "positive": np.any(arr <= 0)}
    if not np.all(np.isfinite(arr)) or bad_sign[sign]:
        kind = "finite" if sign == "any" else f"finite and {sign}"
        raise ValueError(f"{name} must be {kind}, got {value!r}.")
    return arr

"""Small argument checks shared across the package (clear ``ValueError`` messages)."""

from __future__ import annotations

import numpy as np


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

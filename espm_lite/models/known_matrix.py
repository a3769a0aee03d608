"""A known matrix ``G`` whose columns carry labels (elements, background terms)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, repr=False)
class LabelledG:
    """A known matrix ``G`` ``(n_channels, m)`` with one label per column.

    Pass it as ``G=`` to any estimator: ``X ~ G W H``. With ``simplex_W``
    only the rows of ``W`` marked in ``simplex_rows`` (the elements) are on
    the simplex; the others (background terms) are free.

    Attributes
    ----------
    values : ndarray (n, m)
        Non-negative, finite (stored as a read-only float64 copy).
    labels : tuple of str
        One unique label per column.
    simplex_rows : ndarray of bool (m,)
        True for the rows of ``W`` that ``simplex_W`` constrains.

    Raises
    ------
    ValueError
        Naming the field: ``values`` not 2-D, negative or not finite;
        ``labels`` not one unique name per column; ``simplex_rows`` not
        ``m`` booleans.

    Examples
    --------
    >>> import numpy as np
    >>> G = LabelledG(np.ones((4, 2)), ("Fe", "bremsstrahlung_0"), [True, False])
    >>> G.shape, G.element_labels
    ((4, 2), ('Fe',))
    """

    values: np.ndarray
    labels: tuple[str, ...]
    simplex_rows: np.ndarray

    def __post_init__(self) -> None:
        try:
            values = np.array(self.values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"values must be a 2-D array of numbers, got {type(self.values).__name__}."
            ) from None
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ValueError(f"values must be a 2-D array (n, m), got shape {values.shape}.")
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("values must be finite and non-negative.")
        if isinstance(self.labels, str):
            raise ValueError(f"labels must be a sequence of names, got the string {self.labels!r}.")
        labels = tuple(str(label) for label in self.labels)
        if len(labels) != values.shape[1] or len(set(labels)) != len(labels):
            raise ValueError(
                f"labels must be {values.shape[1]} unique names (one per column), got {labels}."
            )
        raw_rows = np.asarray(self.simplex_rows)
        if raw_rows.dtype != bool and not (
            raw_rows.dtype.kind in "iuf" and np.all((raw_rows == 0) | (raw_rows == 1))
        ):
            raise ValueError(f"simplex_rows must be booleans (or 0/1), got {raw_rows.tolist()!r}.")
        rows = np.array(raw_rows, dtype=bool)
        if rows.shape != (values.shape[1],):
            raise ValueError(
                f"simplex_rows must be a boolean array of shape ({values.shape[1]},), "
                f"got shape {rows.shape}."
            )
        values.flags.writeable = False
        rows.flags.writeable = False
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "simplex_rows", rows)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``values`` (read-only) as ``dtype``; a writable copy when ``copy=True``.

        Follows NumPy 2's protocol: ``copy=False`` raises when a conversion
        needs a copy.
        """
        needs_copy = dtype is not None and np.dtype(dtype) != self.values.dtype
        if copy is False and needs_copy:
            raise ValueError(
                f"LabelledG holds float64 values; a {np.dtype(dtype)} array needs a copy."
            )
        if copy or needs_copy:
            return np.array(self.values, dtype=dtype, copy=True)
        return self.values

    def __repr__(self) -> str:
        return f"LabelledG(shape={self.shape}, labels={list(self.labels)})"

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_channels, m)``."""
        return self.values.shape

    @property
    def n_channels(self) -> int:
        """Number of rows ``n`` (energy channels)."""
        return self.values.shape[0]

    @property
    def element_labels(self) -> tuple[str, ...]:
        """Labels of the simplex (element) columns."""
        return tuple(label for label, on in zip(self.labels, self.simplex_rows, strict=True) if on)

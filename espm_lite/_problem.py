"""``prepare``: from an estimator and its data to a frozen description of one fit.

Every estimator's ``fit_transform`` takes the same path::

    problem = prepare(estimator, X, W0, H0)   # this module
    solver = estimator._solver(problem)       # espm_lite.solvers
    state = solver.start(problem)
    history = run(solver, problem, state, ...)  # espm_lite._loop
    estimator._set_fitted(problem, solver, state, history)

:class:`Problem` holds everything that does not change during the fit: the
data in the internal *pixels x channels* layout (see :mod:`espm_lite.kernels`),
the known matrix ``G`` with the products the updates need, the simplex rows,
the data scale and which factor carries it, the fixed entries and the start
values given by the caller.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval

from . import kernels
from ._fixed import FixedEntries, fixed_entries
from ._input import validate_input
from ._lazy import in_memory
from .kernels.chunked import ChunkedData
from .kernels.missing import MissingEntries, as_missing_indicator, zero_missing

logger = logging.getLogger(__name__)

Factor = Literal["W", "H"]


@dataclass(frozen=True)
class Problem:
    """One fit, fully described before the first iteration (never modified).

    Attributes
    ----------
    X : ndarray (p, n) or CSR matrix
        Data in the internal layout, divided by ``scale``; never written to.
        CSR when the fit takes the sparse path.
    data : ndarray, SparseData or DensifiedRows
        ``X`` in the form the passes over the data take.
    counts : ndarray (p, n) or sparse matrix
        The internal data before scaling and path conversion.
    G : ndarray (n, m) or None
        Known matrix (None: identity, never materialised).
    G_colsum, GtG : ndarray or None
        ``1^T G`` (m,) and ``G^T G`` (m, m), computed once (None without ``G``).
    loss : {"kl", "l2"}
    scale : float
        The data were divided by ``scale``, the mean (absolute) counts per
        pixel: always, so that the fit does not depend on the data's units
        (the floor, the starts and the arithmetic are relative to it).
    intensity : {"W", "H"}
        The factor that carries ``scale`` back to the data units.
    penalty_scale : float
        ``scale`` when the regularisation strengths are in the data's units
        (``normalize=False``: the solvers convert them exactly, so that the
        objective is that of the raw data divided by ``scale``), 1 when they
        are in the normalised units (``normalize=True``, espm's meaning).
    floor : float
        Lower bound of the non-negative factors (``log_shift``).
    x_constants : (float, float)
        Constants of the data term (see :func:`espm_lite.kernels.data_constants`).
    simplex_W, simplex_H : bool
    simplex_W_rows : ndarray of bool (m,) or None
        Rows of ``W`` under ``simplex_W`` (None: all rows).
    fixed : FixedEntries
    W0, A0 : ndarray or None
        Start values given by the caller, validated, in the data units.
    shape_2d : (int, int) or None
    data_path : {"dense", "sparse"}
    n_components : int
    missing : MissingEntries or None
        Entries of the data left out of the fit (``mask``), in the internal
        layout; ``X`` is zero there (see :mod:`espm_lite.kernels.missing`).
    """

    X: Any
    data: Any
    counts: Any
    G: np.ndarray | None
    G_colsum: np.ndarray | None
    GtG: np.ndarray | None
    loss: str
    scale: float
    intensity: Factor
    penalty_scale: float
    floor: float
    x_constants: tuple[float, float]
    simplex_W: bool
    simplex_H: bool
    simplex_W_rows: np.ndarray | None
    fixed: FixedEntries
    W0: np.ndarray | None
    A0: np.ndarray | None
    shape_2d: tuple[int, int] | None
    data_path: str
    n_components: int
    missing: MissingEntries | None = None

    @property
    def n_pixels(self) -> int:
        return self.X.shape[0]

    @property
    def n_channels(self) -> int:
        return self.X.shape[1]

    @property
    def n_entries(self) -> int:
        """Data entries in the data term (the observed ones with a mask)."""
        if self.missing is not None:
            return self.missing.n_observed
        return self.X.shape[0] * self.X.shape[1]

    @property
    def m(self) -> int:
        """Rows of ``W``: columns of ``G`` (channels without ``G``)."""
        return self.n_channels if self.G is None else self.G.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self.X.dtype

    def spectra(self, W: np.ndarray) -> np.ndarray:
        """``G W`` (``W`` itself without ``G``)."""
        return W if self.G is None else self.G @ W

    def scale_of(self, factor: Factor) -> float:
        """The factor by which ``factor`` is multiplied back to the data units."""
        return self.scale if factor == self.intensity else 1.0

    def penalty_units(self) -> tuple[float, float]:
        """``(s, h)``: the data divisor of the penalties and the part carried by the maps.

        With strengths in the data's units the objective of the raw data is
        ``s F'`` (KL) or ``s^2 F'`` (Frobenius) plus a constant, ``F'`` that of
        the scaled problem with converted strengths; ``h = s`` when the maps
        carry the scale, 1 otherwise. ``(1, 1)`` with normalised strengths.
        """
        s = self.penalty_scale
        return s, (s if self.intensity == "H" else 1.0)

    def simplex_free_W(self) -> np.ndarray | None:
        """Entries of ``W`` that count in the simplex sums (None: all)."""
        if self.fixed.W_mask is None and self.simplex_W_rows is None:
            return None
        free = np.ones((self.m, self.n_components), dtype=bool)
        if self.fixed.W_mask is not None:
            free &= ~self.fixed.W_mask
        if self.simplex_W_rows is not None:
            free &= self.simplex_W_rows[:, None]
        return free


def _with_G(G: np.ndarray | None) -> dict:
    """The ``G`` fields of a :class:`Problem`: ``G`` and its products, computed once."""
    if G is None:
        return {"G": None, "G_colsum": None, "GtG": None}
    return {"G": G, "G_colsum": G.sum(axis=0), "GtG": G.T @ G}


def internal_layout(X, hspy_comp: bool):
    """``X`` in the (p, n) layout: C-contiguous dense, or CSR without duplicates
    (data left on disk, :class:`~espm_lite.kernels.chunked.ChunkedData`, are in it)."""
    if isinstance(X, ChunkedData):
        return X
    Xi = X if hspy_comp else X.T
    if sp.issparse(Xi):
        return kernels.canonical_csr(Xi)
    return np.ascontiguousarray(Xi)


def data_scale(Xi) -> float:
    """The data divisor: the absolute values summed per pixel, averaged (1 when zero).

    Computed relative to the largest value, so that data near the float range
    (``1e300``) do not overflow.

    Raises
    ------
    ValueError
        When the counts of a pixel overflow float64: the maps, which carry
        them, could not be represented.
    """
    if isinstance(Xi, ChunkedData):
        return Xi.data_scale()
    values = Xi.data if sp.issparse(Xi) else Xi
    largest = float(max(values.max(), -values.min())) if values.size else 0.0
    if largest == 0:
        return 1.0
    if sp.issparse(Xi):
        per_pixel = np.asarray((abs(Xi) / largest).sum(axis=1, dtype=np.float64)).ravel()
    else:
        per_pixel = _relative_row_sums(Xi, largest)
    with np.errstate(over="ignore"):
        if not np.isfinite(per_pixel.max() * largest):
            raise ValueError(
                "X is too large: the sum over the channels of a pixel overflows float64 "
                f"(largest entry {largest:.3g}), so the maps cannot be represented; divide "
                "X by a constant first."
            )
    return float(per_pixel.mean()) * largest


def _relative_row_sums(Xi: np.ndarray, largest: float) -> np.ndarray:
    """``(|Xi| / largest).sum(axis=1)`` in float64, by blocks of rows (no copy of ``Xi``)."""
    sums = np.empty(Xi.shape[0], dtype=np.float64)
    for rows in kernels.row_blocks(*Xi.shape, Xi.itemsize):
        sums[rows] = (np.abs(Xi[rows]) / largest).sum(axis=1, dtype=np.float64)
    return sums


def divide(Xi, scale: float):
    """``Xi / scale`` in the dtype of ``Xi`` (a new array; ``Xi`` is untouched)."""
    if scale == 1.0:
        return Xi
    if isinstance(Xi, ChunkedData):
        return Xi.divided(scale)
    return Xi * (1.0 / scale) if sp.issparse(Xi) else Xi / Xi.dtype.type(scale)


def prepare(estimator, X, W0=None, H0=None, mask=None) -> Problem:
    """Validate ``X`` and the settings of ``estimator`` and describe the fit.

    Parameters
    ----------
    estimator : NMFEstimator
        Its parameters are read, never changed (``n_features_in_`` is set by
        scikit-learn's validation).
    X : array-like or sparse matrix
        In the estimator's orientation (``hspy_comp``).
    W0 : array-like (m, k), optional
    H0 : array-like (k, p), optional
        Start values (in the data units).
    mask : array-like of bool or sparse matrix, optional
        Missing entries of ``X`` (True / stored = left out of the fit), in the
        orientation of ``X``; see :func:`masked_input`.

    Returns
    -------
    Problem
    """
    reject_bool_integers(estimator)
    X, counts, indicator = masked_data(estimator, X, mask, reset=True, where="input X")
    p, n = counts.shape
    k = estimator.n_components
    estimator._check_settings(n, p)
    shape_2d = check_shape_2d(estimator.shape_2d, p, estimator.hspy_comp)
    dtype = counts.dtype
    G, simplex_rows = resolve_G(estimator.G, X, n, dtype)
    m = n if G is None else G.shape[1]
    scale = data_scale(counts)
    if not (counts.count_nonzero() if sp.issparse(counts) else counts.any()):
        raise ValueError(
            f"X is all zero: {type(estimator).__name__} has nothing to factor (input X of "
            f"shape {X.shape})."
        )
    Xs = divide(counts, scale)
    on_disk = isinstance(Xs, ChunkedData)
    path = estimator._choose_data_path(Xs)
    form = "sparse matrix" if sp.issparse(Xs) else "dense array"
    logger.info(
        "%s: %s path for data of %d pixels x %d channels (%s).",
        type(estimator).__name__,
        path,
        p,
        n,
        "dask array read band by band" if on_disk else form,
    )
    data = kernels.prepare_data(Xs, path) if estimator._uses_data_pass else Xs
    if isinstance(data, kernels.SparseData):
        Xs = data.csr  # converted once per fit; the start uses it too
    elif isinstance(data, ChunkedData):
        Xs = data  # on disk: the start and the row solves read it for the same path
    loss = "l2" if estimator.l2 else "kl"
    intensity = estimator._intensity_factor()
    floor = float(estimator.log_shift)
    return Problem(
        X=Xs,
        data=data,
        counts=counts,
        **_with_G(G),
        loss=loss,
        scale=scale,
        intensity=intensity,
        penalty_scale=1.0 if estimator.normalize else scale,
        floor=floor,
        x_constants=kernels.data_constants(Xs, loss),
        simplex_W=estimator._effective_simplex_W(),
        simplex_H=bool(estimator.simplex_H),
        simplex_W_rows=None if simplex_rows is None or simplex_rows.all() else simplex_rows,
        fixed=fixed_entries(estimator, (m, p, k), dtype, scale, intensity),
        W0=start_value(W0, "W", (m, k), dtype, signed=estimator._signed_W),
        A0=None if H0 is None else start_value(H0, "H", (k, p), dtype).T,
        shape_2d=shape_2d,
        data_path=path,
        n_components=k,
        missing=None if indicator is None else MissingEntries(indicator, dtype),
    )


def masked_data(estimator, X, mask, *, reset: bool, where: str):
    """``(X, Xi, indicator)``: ``X`` masked (:func:`masked_input`) and validated, the
    same in the internal layout, and the missing entries in the internal layout (or None).
    """
    X, indicator = masked_input(estimator, in_memory(estimator, X, where=where), mask)
    X = validate_input(estimator, X, reset=reset, where=where)
    if indicator is not None:
        indicator = internal_layout(indicator, estimator.hspy_comp)
    return X, internal_layout(X, estimator.hspy_comp), indicator


def masked_input(estimator, X, mask):
    """``(X, indicator)``: with a ``mask``, a copy of ``X`` zero at the missing entries.

    The mask is validated (:func:`espm_lite.kernels.missing.as_missing_indicator`:
    boolean array of the shape of ``X`` or sparse matrix, not every entry
    missing) and refused by estimators that do not fit masks. Missing entries
    may hold any value (NaN included): they are set to zero in a copy, the
    caller's array is never modified. An empty mask gives ``(X, None)``.
    """
    if mask is None:
        return X, None
    name = type(estimator).__name__
    if not estimator._supports_mask:
        raise ValueError(
            f"{name} does not fit masked data (mask=...); use SmoothNMF, which does, or "
            "remove the mask."
        )
    if isinstance(X, ChunkedData):
        raise ValueError(
            f"{name}: mask=... is not supported for a dask array left on disk (read at every "
            "pass); raise max_memory so that it is read into memory."
        )
    shape = X.shape if sp.issparse(X) else np.shape(X)
    if len(shape) != 2:
        raise ValueError(f"{name}: X must be 2-D to be masked, got shape {shape}.")
    indicator = as_missing_indicator(mask, shape, "mask")
    if indicator.nnz == 0:
        return X, None
    return zero_missing(X, indicator), indicator


def check_shape_2d(shape_2d, n_pixels: int, hspy_comp: bool) -> tuple[int, int] | None:
    """``shape_2d`` as ``(ny, nx)`` with ``ny * nx == n_pixels`` (ValueError otherwise)."""
    if shape_2d is None:
        return None
    shape = np.asarray(shape_2d)
    if shape.shape != (2,) or not np.all(shape == np.round(shape)) or np.any(shape < 1):
        raise ValueError(
            f"shape_2d must be a pair of positive integers (ny, nx), got {shape_2d!r}."
        )
    ny, nx = int(shape[0]), int(shape[1])
    if ny * nx != n_pixels:
        raise ValueError(
            f"shape_2d={(ny, nx)} has {ny * nx} pixels but X has {n_pixels} pixels "
            f"({'rows' if hspy_comp else 'columns'} of X)."
        )
    return ny, nx


def resolve_G(G, X, n_channels: int, dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``G`` as a validated array copy (None: identity) and its simplex rows (or None).

    A callable ``G`` is called with the validated data ``X``; a labelled
    ``G`` (:class:`espm_lite.models.LabelledG`) gives its ``simplex_rows``.
    """
    if G is None:
        return None, None
    if callable(G):
        if isinstance(X, ChunkedData):
            raise ValueError(
                "A callable G needs the data in memory, and this dask array is left on disk: "
                "pass G as an array, or raise max_memory."
            )
        G = G(read_only(X))  # the callable cannot change the caller's data
    rows = None
    if hasattr(G, "simplex_rows"):  # a labelled G
        rows = np.asarray(G.simplex_rows, dtype=bool)
        G = G.values
    try:
        G = np.array(G, dtype=dtype)  # a copy: the caller's G is never touched
    except (TypeError, ValueError) as exc:
        raise TypeError(f"G must be a numeric array of shape (n, m), got {type(G)}.") from exc
    if G.ndim != 2 or G.shape[0] != n_channels or G.shape[1] < 1:
        raise ValueError(
            f"G must have shape (n_channels, m) = ({n_channels}, m) with m >= 1, got {G.shape}."
        )
    if not np.all(np.isfinite(G)):
        raise ValueError("G must be finite (it contains NaN or inf).")
    if np.any(G < 0):
        raise ValueError("G must be non-negative (it has negative entries).")
    if np.any(G.sum(axis=0) <= 0):
        raise ValueError("G must not have an all-zero column.")
    if rows is not None and rows.shape != (G.shape[1],):
        raise ValueError(f"G.simplex_rows must have shape ({G.shape[1]},), got {rows.shape}.")
    return G, rows


def start_value(value, name: str, shape: tuple[int, int], dtype, *, signed: bool = False):
    """A start factor given by the caller: a finite (non-negative) copy of ``shape``."""
    if value is None:
        return None
    arr = np.array(value, dtype=dtype)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}.")
    if not np.all(np.isfinite(arr)) or (not signed and np.any(arr < 0)):
        kind = "finite" if signed else "finite and non-negative"
        raise ValueError(f"{name} must be {kind}.")
    return arr


def evaluation_problem(estimator, X, mask=None) -> Problem:
    """The problem of evaluating the objective of a fitted ``estimator`` on data ``X``.

    ``X`` (the caller's orientation) is validated and taken as given (no
    rescaling); ``G``, its simplex rows and ``shape_2d`` are the fitted ones;
    ``mask`` (optional, as in ``fit``) marks missing entries.
    """
    _, Xi, indicator = masked_data(estimator, X, mask, reset=False, where="loss (input X)")
    G = estimator.G_
    loss = "l2" if estimator.l2 else "kl"
    return Problem(
        X=Xi,
        data=Xi,
        counts=Xi,
        **_with_G(G),
        loss=loss,
        scale=1.0,
        intensity=estimator._intensity,
        penalty_scale=1.0,
        floor=float(estimator.log_shift),
        x_constants=kernels.data_constants(Xi, loss),
        simplex_W=estimator._effective_simplex_W(),
        simplex_H=bool(estimator.simplex_H),
        simplex_W_rows=estimator._G_simplex_rows,
        fixed=FixedEntries(),
        W0=None,
        A0=None,
        shape_2d=check_shape_2d(estimator.shape_2d, Xi.shape[0], estimator.hspy_comp),
        data_path="sparse" if sp.issparse(Xi) else "dense",
        n_components=estimator.n_components_,
        missing=None if indicator is None else MissingEntries(indicator, Xi.dtype),
    )


def read_only(X):
    """A view of ``X`` that cannot be written to (a copy for sparse matrices)."""
    if sp.issparse(X):
        X = X.copy()
        X.data.flags.writeable = False
        return X
    view = np.asarray(X).view()
    view.flags.writeable = False
    return view


def reject_bool_integers(estimator) -> None:
    """``TypeError`` for a bool given to an integer parameter (scikit-learn accepts them)."""
    for name, constraints in estimator._parameter_constraints.items():
        integral = any(
            isinstance(c, Interval) and c.type is numbers.Integral
            for c in (constraints if isinstance(constraints, list) else [])
        )
        value = getattr(estimator, name, None)
        if integral and isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be an integer, got {value!r}.")

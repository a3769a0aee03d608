"""The abstract :class:`NMFEstimator`: everything the NMF family shares.

It owns parameter validation, data orientation (``hspy_comp``), the known
matrix ``G``, initialisation, the iteration loop with its stopping rule, the
loss history and the fitted attributes.  A concrete estimator implements one
iteration (:meth:`NMFEstimator._iterate`) and the regularisation terms of its
objective (:meth:`NMFEstimator._penalty_terms`).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data
from tqdm.auto import tqdm

from .. import kernels
from .._initialization import INIT_METHODS, initial_factors, project_on_G
from ..measures import matched_angles, matched_map_errors

logger = logging.getLogger(__name__)


@dataclass
class FitState:
    """Working variables of one fit, in the internal layout (see ``kernels``).

    Attributes
    ----------
    X : ndarray (p, n) or CSR matrix
        Data (possibly rescaled), never written to.
    W : ndarray (m, k)
    A : ndarray (p, k)
        Maps, ``H^T``.
    G : ndarray (n, m) or None (identity)
    data : ndarray, SparseData or DensifiedRows
        ``X`` in the form the passes over the data use (see
        :func:`espm_lite.kernels.prepare_data`); defaults to ``X``.
    """

    X: Any
    W: np.ndarray
    A: np.ndarray
    G: np.ndarray | None
    floor: float
    x_constants: tuple[float, float]
    fixed_W: np.ndarray | None = None  # bool mask (m, k)
    fixed_W_values: np.ndarray | None = None
    fixed_A: np.ndarray | None = None  # bool mask (p, k)
    fixed_A_values: np.ndarray | None = None
    free_W_rows: np.ndarray | None = None  # bool mask (m,) of rows in the W simplex
    extras: dict = field(default_factory=dict)
    data: Any = None
    signed: bool = False  # spectra may be negative (semi-NMF): D is not floored
    spectra: Callable[[FitState], np.ndarray] | None = None  # D from the state, if not G W

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = self.X

    @property
    def D(self) -> np.ndarray:
        """Spectra in channel space ``G W`` (n, k), floored so that ``Y > 0``.

        ``spectra`` replaces ``G W`` when set (convex NMF); signed spectra are not floored.
        """
        if self.spectra is not None:
            D = self.spectra(self)
        else:
            D = self.W if self.G is None else self.G @ self.W
        return D if self.signed else np.maximum(D, self.floor)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        return self.W.copy(), self.A.copy()

    def restore(self, snap: tuple[np.ndarray, np.ndarray]) -> None:
        self.W[...] = snap[0]
        self.A[...] = snap[1]


def _apply_fixed(values: np.ndarray, mask: np.ndarray | None, fixed: np.ndarray | None) -> None:
    if mask is not None:
        values[mask] = fixed[mask]


class NMFEstimator(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, metaclass=ABCMeta
):
    r"""Abstract base of the espm_lite NMF estimators: ``X ~ G W H``.

    The model factors a spectrum image of ``p`` pixels and ``n`` channels,

    .. math:: X \approx G\,W\,H, \qquad W \ge 0,\ H \ge 0,

    with ``G`` ``(n, m)`` known (identity by default), ``W`` ``(m, k)`` and the
    maps ``H`` ``(k, p)``, by minimising the generalised Kullback-Leibler
    divergence (the Poisson negative log-likelihood up to a constant)

    .. math:: D_{KL}(X \| Y) = \sum_{ij} X_{ij}\log\frac{X_{ij}}{Y_{ij}} - X_{ij} + Y_{ij},
              \qquad Y = G W H,

    plus the regularisation terms of the concrete estimator.

    Parameters
    ----------
    n_components : int, default=2
        Number of phases ``k``.
    init : {"nndsvd", "nndsvda", "nndsvdar", "random"} or None, default=None
        Initialisation. ``None``: ``"nndsvda"`` when ``k <= min(n, p)``, else
        ``"random"``. Initial ``W`` / ``H`` passed to :meth:`fit_transform`
        take precedence.
    tol : float, default=1e-4
        Stop when the relative decrease of the objective ``|F_{t-1} - F_t| / |F_t|``
        is below ``tol``.
    max_iter : int, default=200
        Maximum number of iterations (a ``ConvergenceWarning`` is raised when
        it is reached before ``tol``).
    random_state : int, RandomState instance or None, default=None
        Seed of the initialisation.
    verbose : int, default=1
        0: silent; >= 1: progress bar (tqdm); the objective is logged at DEBUG
        level every ``eval_print`` iterations.
    debug : bool, default=False
        Check every iterate for non-finite values (raises ``FloatingPointError``).
    l2 : bool, default=False
        Use the Frobenius loss ``1/2 ||X - G W H||^2`` instead of the KL divergence.
    G : array-like of shape (n, m), callable or None, default=None
        Known matrix. ``None`` means identity (never materialised). A callable
        is called with the validated data ``X`` (in the orientation given) and
        must return the ``(n, m)`` array.
    shape_2d : (int, int) or None, default=None
        ``(ny, nx)`` of the scan, row-major, ``ny * nx = p``. Needed by the map
        smoothing of :class:`SmoothNMF`.
    normalize : bool, default=False
        Fit ``X / s`` with ``s`` the mean counts per pixel so that
        regularisation strengths mean the same on every data set; the outputs
        are rescaled back (``H`` carries ``s``, or ``W`` when ``simplex_H``).
        ``losses_`` are those of the rescaled problem.
    log_shift : float, default=1e-14
        Floor of every entry of ``W`` and ``H``.
    eval_print : int, default=10
        Period (iterations) of the objective shown in the progress bar and logs.
    true_D : array-like (n, k) or None
        True spectra: matched angles are recorded in :meth:`get_losses`.
    true_H : array-like (k, p) or None
        True maps: matched mean squared errors are recorded in :meth:`get_losses`.
    fixed_H : array-like (k, p) or None
        Entries ``>= 0`` are held at that value; negative entries are free.
    fixed_W : array-like (m, k) or None
        Same for ``W``.
    hspy_comp : bool, default=False
        ``False``: ``X`` is ``(n, p)`` (channels x pixels), ``fit_transform``
        returns ``G W`` ``(n, k)`` and ``components_ = H``. ``True`` (HyperSpy's
        orientation): ``X`` is ``(p, n)``, ``fit_transform`` returns ``H^T``
        and ``components_ = (G W)^T``.
    no_stop_criterion : bool, default=False
        Run exactly ``max_iter`` iterations.
    simplex_H : bool, default=False
        Each pixel's abundances sum to one.
    simplex_W : bool, default=True
        Each column of ``W`` sums to one (its free entries).
    sparse : {"auto", True, False} or float in (0, 1], default="auto"
        Which implementation of the passes over the data to use (same
        iterates up to rounding).  The sparse path evaluates ``G W H`` only at
        the non-zero entries of ``X``: an iteration costs ``O(nnz k)`` instead
        of ``O(n p k)``.  ``"auto"``: ``scipy.sparse`` input takes the sparse
        path; dense input takes it when its fraction of non-zero entries is
        below :data:`espm_lite.kernels.SPARSE_DENSITY_THRESHOLD` (0.18 in
        float64; ``SPARSE_DENSITY_THRESHOLD_FLOAT32``, 0.09, in float32), where
        the sparse path is the faster one (it is then converted to CSR once
        per fit, ``O(nnz)`` memory). A float replaces that threshold.
        ``True`` forces the sparse path; ``False`` the dense one (sparse input
        is then densified block by block at each iteration, which is slow: for
        comparisons only).
    dtype : {None, numpy.float32, numpy.float64}, default=None
        Floating type of the computation. ``None`` keeps float32 input in
        float32 and computes everything else (float64, integers) in float64;
        ``np.float32`` halves memory and roughly doubles speed.

    Attributes
    ----------
    W_ : ndarray (m, k)
    H_ : ndarray (k, p)
    G_ : ndarray (n, m) or None
        ``None`` stands for the identity.
    components_ : ndarray
        ``H_`` (``hspy_comp=False``) or ``(G W)^T`` (``hspy_comp=True``).
    n_components_ : int
    n_iter_ : int
        Iterations run.
    losses_ : ndarray
        Objective (per data entry) after each accepted iteration.
    reconstruction_err_ : float
        Data term (KL divergence, or Frobenius norm with ``l2``) of the fit.
    n_features_in_ : int
    data_path_ : {"dense", "sparse"}
        Path taken by the fit (see ``sparse``), also logged at INFO level.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(numbers.Integral, 1, None, closed="left")],
        "init": [StrOptions(set(INIT_METHODS)), None],
        "tol": [Interval(numbers.Real, 0, None, closed="left")],
        "max_iter": [Interval(numbers.Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "debug": ["boolean"],
        "l2": ["boolean"],
        "G": ["array-like", callable, None],
        "shape_2d": ["array-like", None],
        "normalize": ["boolean"],
        "log_shift": [Interval(numbers.Real, 0, None, closed="neither")],
        "eval_print": [Interval(numbers.Integral, 1, None, closed="left")],
        "true_D": ["array-like", None],
        "true_H": ["array-like", None],
        "fixed_H": ["array-like", None],
        "fixed_W": ["array-like", None],
        "hspy_comp": ["boolean"],
        "no_stop_criterion": ["boolean"],
        "simplex_H": ["boolean"],
        "simplex_W": ["boolean"],
        "sparse": [
            "boolean",
            StrOptions({"auto"}),
            Interval(numbers.Real, 0, 1, closed="right"),
        ],
        "dtype": "no_validation",
    }

    #: Class of the working state of a fit (estimators with more variables subclass it).
    _state_type: type[FitState] = FitState

    #: Objective terms recorded in the history, besides the data term.
    _penalty_names: tuple[str, ...] = ()

    def __init__(
        self,
        n_components=2,
        init=None,
        tol=1e-4,
        max_iter=200,
        random_state=None,
        verbose=1,
        debug=False,
        l2=False,
        G=None,
        shape_2d=None,
        normalize=False,
        log_shift=1e-14,
        eval_print=10,
        true_D=None,
        true_H=None,
        fixed_H=None,
        fixed_W=None,
        hspy_comp=False,
        no_stop_criterion=False,
        simplex_H=False,
        simplex_W=True,
        sparse="auto",
        dtype=None,
    ):
        self.n_components = n_components
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.debug = debug
        self.l2 = l2
        self.G = G
        self.shape_2d = shape_2d
        self.normalize = normalize
        self.log_shift = log_shift
        self.eval_print = eval_print
        self.true_D = true_D
        self.true_H = true_H
        self.fixed_H = fixed_H
        self.fixed_W = fixed_W
        self.hspy_comp = hspy_comp
        self.no_stop_criterion = no_stop_criterion
        self.simplex_H = simplex_H
        self.simplex_W = simplex_W
        self.sparse = sparse
        self.dtype = dtype

    # ------------------------------------------------------------------ hooks
    @abstractmethod
    def _iterate(self, state: FitState) -> dict[str, float]:
        """Update ``state.W`` and ``state.A`` in place (one iteration).

        Returns the objective terms (``"data"`` and the penalties) at the
        iterate *before* the update.
        """

    def _penalty_terms(self, state: FitState, A: np.ndarray) -> dict[str, float]:
        """Regularisation terms of the objective at maps ``A`` (p, k)."""
        return {}

    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        """Cross-parameter checks of the concrete estimator (raise ValueError)."""

    def _prepare(self, state: FitState) -> None:
        """Per-fit structures of the concrete estimator (stored in ``state.extras``)."""

    def _on_increase(self, state: FitState) -> bool:
        """Called when the objective increased; return True to go on (reverted)."""
        return False

    def _effective_simplex_W(self) -> bool:
        return bool(self.simplex_W)

    def _transform_denominator(self, A: np.ndarray) -> np.ndarray | float:
        """Extra denominator of the map update in :meth:`transform` (sparsity)."""
        return 0.0

    # ------------------------------------------------------------- public API
    def fit(self, X, y=None, **params):
        """Fit the model to ``X``; see :meth:`fit_transform`."""
        self.fit_transform(X, y, **params)
        return self

    def fit_transform(self, X, y=None, W=None, H=None):
        """Fit the model and return the sample-side factor.

        Parameters
        ----------
        X : array-like or sparse matrix
            ``(n, p)`` when ``hspy_comp=False``, ``(p, n)`` when ``True``.
            Non-negative and finite; never modified.
        y : ignored
        W : array-like (m, k), optional
            Initial ``W`` (replaces the initialisation).
        H : array-like (k, p), optional
            Initial ``H``.

        Returns
        -------
        ndarray
            ``G W`` ``(n, k)`` when ``hspy_comp=False``; ``H^T`` ``(p, k)`` when ``True``.
        """
        self._validate_params()
        X = self._validate_input(X, reset=True, where="input X")
        Xi = self._internal_data(X)
        p, n = Xi.shape
        k = self.n_components
        self._check_settings(n, p)
        self._check_shape_2d(p)
        dtype = Xi.dtype
        G = self._resolve_G(X, n, dtype)
        m = n if G is None else G.shape[1]

        scale = 1.0
        if self.normalize:
            scale = self._data_scale(Xi)
            Xi = Xi * (1.0 / scale) if sp.issparse(Xi) else (Xi / dtype.type(scale))
        self._scale = scale
        # The factor carrying the intensity is rescaled back after the fit.
        self._scaled_factor = "W" if self.simplex_H else "H"
        state = self._make_state(Xi, G)
        state.free_W_rows = self._simplex_rows(m)
        self._setup_fixed(state, m, p, k, dtype, scale)
        self._initialise(state, W, H, m, p, k, dtype, scale)
        self._prepare(state)
        self._true = self._truth_for_history(n, p)
        self._run(state, n * p)
        return self._set_fitted(state, scale)

    def _make_state(self, Xi, G) -> FitState:
        """The working state of a fit: chooses the data path (dense or sparse)."""
        p, n = Xi.shape
        self.data_path_ = kernels.choose_path(Xi, self.sparse)
        logger.info(
            "%s: %s path for data of %d pixels x %d channels (%s).",
            type(self).__name__,
            self.data_path_,
            p,
            n,
            "sparse matrix" if sp.issparse(Xi) else "dense array",
        )
        # Converted once per fit (dense data going to the sparse path become CSR,
        # which the initialisation then uses too).
        data = kernels.prepare_data(Xi, self.data_path_)
        if isinstance(data, kernels.SparseData):
            Xi = data.csr
        x_constants = kernels.data_constants(Xi, "l2" if self.l2 else "kl")
        return self._state_type(
            X=Xi,
            W=None,
            A=None,
            G=G,
            floor=float(self.log_shift),
            x_constants=x_constants,
            data=data,
        )

    def _set_fitted(self, state: FitState, scale: float):
        """Fitted attributes from the final state; returns the output of ``fit_transform``."""
        dtype = state.A.dtype
        W_out, A_out = state.W, state.A
        if scale != 1.0:
            if self._scaled_factor == "H":
                A_out = A_out * dtype.type(scale)
            else:
                W_out = W_out * dtype.type(scale)
        self.W_ = W_out
        self.H_ = np.ascontiguousarray(A_out.T)
        self.G_ = state.G
        D = W_out if state.G is None else state.G @ W_out
        self.n_components_ = A_out.shape[1]
        self.components_ = np.ascontiguousarray(D.T) if self.hspy_comp else self.H_
        self._n_features_out = self.n_components_
        data_term = state.extras["final_terms"]["data"] * (scale if not self.l2 else scale**2)
        self.reconstruction_err_ = float(np.sqrt(2 * data_term) if self.l2 else data_term)
        return A_out.copy() if self.hspy_comp else D

    def transform(self, X):
        """Solve for the sample-side factor of new data, the fitted factor fixed.

        With ``hspy_comp=True`` (pixels as rows) this returns the maps
        ``H^T`` of the new pixels with the spectra fixed, pixel by pixel: any
        subset of pixels can be passed (the Laplacian term, which couples
        pixels, is not applied; sparsity and ``simplex_H`` are). With
        ``hspy_comp=False`` (channels as rows) it returns the spectra of new
        channels with the maps fixed, without constraints.

        The solve uses multiplicative updates of the (convex without
        sparsity) problem from a least-squares start; each row stops when the
        relative change of its coefficients falls below ``tol / 100``
        (``max(max_iter, 500)`` iterations at most), so a pixel's result does
        not depend on the other pixels passed with it.

        Parameters
        ----------
        X : array-like or sparse matrix (n_samples, n_features_in_)

        Returns
        -------
        ndarray (n_samples, n_components_)
        """
        X = self._transform_input(X)
        dtype = X.dtype
        scale = self._scale
        basis = self.components_.T.astype(dtype, copy=False)
        solving_maps = self.hspy_comp
        if scale != 1.0:
            X = X * (1.0 / scale) if sp.issparse(X) else X / dtype.type(scale)
            basis_scaled = "H" if solving_maps else "W"
            if self._scaled_factor != basis_scaled:
                basis = basis / dtype.type(scale)
        basis = np.maximum(basis, self.log_shift)
        out = self._solve_coefficients(
            X, basis, simplex=bool(self.simplex_H) and solving_maps, with_penalty=solving_maps
        )
        solved = "H" if solving_maps else "W"
        if scale != 1.0 and self._scaled_factor == solved:
            out *= dtype.type(scale)
        return out

    def inverse_transform(self, X):
        """Model of the data for the factor ``X``: ``X @ components_``."""
        check_is_fitted(self)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_components_:
            raise ValueError(
                f"X must be a 2-D array with {self.n_components_} columns "
                f"(n_components_), got shape {X.shape}."
            )
        return X @ self.components_

    def loss(self, W, H, average=True, X=None) -> float:
        """Objective ``F(W, H)`` (data term plus the estimator's penalties).

        Parameters
        ----------
        W : array-like (m, k)
        H : array-like (k, p)
        average : bool, default=True
            Divide by the number of data entries.
        X : array-like, sparse matrix
            Data in the estimator's orientation. Required: the estimator does
            not keep a reference to the training data.  Evaluated as given
            (with ``normalize=True``, ``losses_`` are those of the rescaled data).
        """
        check_is_fitted(self)
        if X is None:
            raise ValueError(
                "X is required: the estimator keeps no copy of the training data; "
                "pass the data in the orientation given to fit."
            )
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc", "coo"),
            dtype=self._compute_dtype(),
            reset=False,
        )
        Xi = self._internal_data(X)
        W = np.asarray(W, dtype=Xi.dtype)
        A = np.ascontiguousarray(np.asarray(H, dtype=Xi.dtype).T)
        x_constants = kernels.data_constants(Xi, "l2" if self.l2 else "kl")
        state = FitState(
            X=Xi, W=W, A=A, G=self.G_, floor=float(self.log_shift), x_constants=x_constants
        )
        state.free_W_rows = self._simplex_rows(W.shape[0])
        self._prepare(state)
        terms = self._objective_terms(state)
        total = sum(terms.values())
        return total / (Xi.shape[0] * Xi.shape[1]) if average else total

    def get_losses(self) -> np.ndarray:
        """Per-iteration history as a structured array.

        Fields: ``full_loss`` (objective per data entry), ``KL_div_loss`` (or
        ``l2_loss``), one field per penalty (e.g. ``Lapl_reg_loss``,
        ``log_reg_loss``), ``rel_change`` and, when ``true_D`` / ``true_H``
        were given, ``ang_p{i}`` (matched angle in degrees of true phase i)
        and ``mse_p{i}`` (matched map error).
        """
        check_is_fitted(self)
        return self._history

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -------------------------------------------------------------- internals
    #: Whether the data must be non-negative (counts); semi-NMF accepts signed data.
    _non_negative_input: bool = True

    def _transform_input(self, X):
        """``X`` of :meth:`transform`: fitted estimator checked, validated, CSR if sparse."""
        check_is_fitted(self)
        X = self._validate_input(X, reset=False, where="transform (input X)")
        return kernels.canonical_csr(X) if sp.issparse(X) else X

    def _validate_input(self, X, *, reset: bool, where: str):
        """``X`` validated by scikit-learn (dtype, finiteness, sign, feature count)."""
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc", "coo"),
            dtype=self._compute_dtype(),
            reset=reset,
        )
        if self._non_negative_input:
            check_non_negative(X, f"{type(self).__name__} {where}")
        return X

    def _data_scale(self, Xi) -> float:
        """The ``normalize`` divisor: mean counts per pixel (1 when not positive)."""
        total = kernels.data_sum(Xi)
        return total / Xi.shape[0] if total > 0 else 1.0

    def _simplex_rows(self, m: int) -> np.ndarray | None:
        """Rows of ``W`` under ``simplex_W`` when ``G`` labels them (None: all rows)."""
        rows = getattr(self, "_G_simplex_rows", None)
        if rows is None:
            return None
        rows = np.asarray(rows, dtype=bool)
        if rows.shape != (m,):
            raise ValueError(f"G.simplex_rows must have shape ({m},), got {rows.shape}.")
        return None if rows.all() else rows

    def _compute_dtype(self):
        """The ``dtype`` argument of ``validate_data`` for the ``dtype`` parameter."""
        if self.dtype is None:
            return [np.float64, np.float32]
        allowed = (np.dtype(np.float32), np.dtype(np.float64))
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in allowed:
            raise ValueError(
                f"dtype must be None, numpy.float32 or numpy.float64, got {self.dtype!r}."
            )
        return dtype

    def _internal_data(self, X):
        """``X`` in the (p, n) layout: C-contiguous dense, or CSR without duplicates."""
        if sp.issparse(X):
            Xi = X if self.hspy_comp else X.T
            return kernels.canonical_csr(Xi)
        Xi = X if self.hspy_comp else X.T
        return np.ascontiguousarray(Xi)

    def _check_shape_2d(self, n_pixels: int) -> None:
        if self.shape_2d is None:
            return
        shape = np.asarray(self.shape_2d)
        if shape.shape != (2,) or not np.all(shape == np.round(shape)) or np.any(shape < 1):
            raise ValueError(
                f"shape_2d must be a pair of positive integers (ny, nx), got {self.shape_2d!r}."
            )
        if int(shape[0]) * int(shape[1]) != n_pixels:
            raise ValueError(
                f"shape_2d={tuple(int(s) for s in shape)} has {int(shape[0]) * int(shape[1])} "
                f"pixels but X has {n_pixels} pixels "
                f"({'rows' if self.hspy_comp else 'columns'} of X)."
            )

    def _shape_2d_tuple(self) -> tuple[int, int]:
        return (int(self.shape_2d[0]), int(self.shape_2d[1]))

    def _resolve_G(self, X, n_channels: int, dtype) -> np.ndarray | None:
        """``G`` as an array (None: identity); remembers the simplex rows of a labelled G."""
        self._G_simplex_rows = None
        if self.G is None:
            return None
        G = self.G(X) if callable(self.G) else self.G
        if hasattr(G, "simplex_rows"):  # a labelled G (espm_lite.models.LabelledG)
            self._G_simplex_rows = G.simplex_rows
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
        return G

    def _fixed_mask(self, value, name: str, shape: tuple[int, int], dtype):
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

    def _setup_fixed(self, state: FitState, m: int, p: int, k: int, dtype, scale: float) -> None:
        mask_W, val_W = self._fixed_mask(self.fixed_W, "fixed_W", (m, k), dtype)
        mask_H, val_H = self._fixed_mask(self.fixed_H, "fixed_H", (k, p), dtype)
        if val_W is not None:
            if self._scaled_factor == "W":
                val_W = val_W / dtype.type(scale)
            state.fixed_W, state.fixed_W_values = mask_W, np.maximum(val_W, self.log_shift)
        if val_H is not None:
            if self._scaled_factor == "H":
                val_H = val_H / dtype.type(scale)
            state.fixed_A = np.ascontiguousarray(mask_H.T)
            state.fixed_A_values = np.ascontiguousarray(np.maximum(val_H, self.log_shift).T)
        simplex_W = self._effective_simplex_W()
        if simplex_W and mask_W is not None and mask_W.any():
            warnings.warn(
                "simplex_W with fixed_W entries: the fixed entries are excluded from the "
                "column sums (the free entries of each column sum to 1).",
                UserWarning,
                stacklevel=3,
            )
        if self.simplex_H and mask_H is not None and mask_H.any():
            warnings.warn(
                "simplex_H with fixed_H entries: the fixed entries are excluded from the "
                "pixel sums (the free entries of each pixel sum to 1).",
                UserWarning,
                stacklevel=3,
            )

    def _rng(self) -> np.random.Generator:
        """A Generator seeded from ``random_state`` (int, RandomState or None)."""
        rs = self.random_state
        if not isinstance(rs, np.random.RandomState):
            rs = np.random.RandomState(rs)
        return np.random.default_rng(rs.randint(np.iinfo(np.int32).max))

    def _initialise(self, state: FitState, W0, H0, m, p, k, dtype, scale) -> None:
        rng = self._rng()
        X = state.X
        A = D = None
        if W0 is None or H0 is None:
            A, Dt = initial_factors(X, k, self.init, rng)
            D = Dt.T
        if H0 is not None:
            H0 = np.asarray(H0, dtype=dtype)
            if H0.shape != (k, p):
                raise ValueError(f"H must have shape (n_components, p) = {(k, p)}, got {H0.shape}.")
            if not np.all(np.isfinite(H0)) or np.any(H0 < 0):
                raise ValueError("H must be finite and non-negative.")
            A = np.array(H0.T) / (dtype.type(scale) if self._scaled_factor == "H" else 1)
        if W0 is not None:
            W0 = np.asarray(W0, dtype=dtype)
            if W0.shape != (m, k):
                raise ValueError(f"W must have shape (m, n_components) = {(m, k)}, got {W0.shape}.")
            if not np.all(np.isfinite(W0)) or np.any(W0 < 0):
                raise ValueError("W must be finite and non-negative.")
            W = np.array(W0) / (dtype.type(scale) if self._scaled_factor == "W" else 1)
        elif state.G is None:
            W = np.ascontiguousarray(D)
        else:
            W = project_on_G(state.G, D)
        floor = self.log_shift
        W = np.maximum(W, floor).astype(dtype, copy=False)
        A = np.ascontiguousarray(np.maximum(A, floor).astype(dtype, copy=False))
        _apply_fixed(W, state.fixed_W, state.fixed_W_values)
        _apply_fixed(A, state.fixed_A, state.fixed_A_values)
        # Start feasible: simplex constraints hold from the first iterate.
        if self._effective_simplex_W():
            free = np.ones_like(W, dtype=bool) if state.fixed_W is None else ~state.fixed_W
            if state.free_W_rows is not None:
                free &= state.free_W_rows[:, None]
            sums = (W * free).sum(axis=0)
            sums[sums <= 0] = 1
            W = np.where(free, W / sums, W)
            if self._scaled_factor == "H" and state.fixed_A is None:
                A = A * sums  # keep the product G W H unchanged
        if self.simplex_H:
            free = np.ones_like(A, dtype=bool) if state.fixed_A is None else ~state.fixed_A
            sums = (A * free).sum(axis=1, keepdims=True)
            sums[sums <= 0] = 1
            A = np.where(free, A / sums, A)
        state.W = np.ascontiguousarray(np.maximum(W, floor).astype(dtype, copy=False))
        state.A = np.ascontiguousarray(np.maximum(A, floor).astype(dtype, copy=False))

    def _truth_for_history(self, n: int, p: int):
        true_D = None if self.true_D is None else np.asarray(self.true_D, dtype=np.float64)
        true_H = None if self.true_H is None else np.asarray(self.true_H, dtype=np.float64)
        if true_D is not None and (true_D.ndim != 2 or true_D.shape[0] != n):
            raise ValueError(
                f"true_D must have shape (n_channels, k) = ({n}, k), got {true_D.shape}."
            )
        if true_H is not None:
            if true_H.ndim == 2 and true_H.shape[0] == p and true_H.shape[1] != p:
                true_H = true_H.T
            if true_H.ndim != 2 or true_H.shape[1] != p:
                raise ValueError(
                    f"true_H must have shape (k, n_pixels) = (k, {p}), got {true_H.shape}."
                )
        return true_D, true_H

    def _objective_terms(self, state: FitState) -> dict[str, float]:
        result = kernels.data_pass(
            state.data,
            state.A,
            state.D,
            loss="l2" if self.l2 else "kl",
            need_w_terms=False,
            x_constants=state.x_constants,
        )
        return {"data": result.data_loss, **self._penalty_terms(state, state.A)}

    def _truth_measures(self, state: FitState) -> dict[str, float]:
        true_D, true_H = self._true
        out = {}
        if true_D is None and true_H is None:
            return out
        D = state.D.astype(np.float64)
        if true_D is not None:
            for i, angle in enumerate(matched_angles(true_D, D)):
                out[f"ang_p{i}"] = float(angle)
        if true_H is not None:
            errors = matched_map_errors(
                true_H, state.A.T.astype(np.float64), true_D, D if true_D is not None else None
            )
            for i, err in enumerate(errors):
                out[f"mse_p{i}"] = float(err)
        return out

    def _run(self, state: FitState, n_entries: int) -> None:
        """The iteration loop, the stopping rule and the history.

        ``_iterate`` turns ``Z_{t-1}`` into ``Z_t`` and returns the objective
        terms of ``Z_{t-1}`` (computed during the same pass over the data), so
        the objective of an iterate is known one iteration later.  Two
        snapshots of the (small) factors are kept so that an increase of the
        objective can be undone.
        """
        tiny = np.finfo(np.float64).tiny
        history: list[dict[str, float]] = []
        snaps = [(*state.snapshot(), self._truth_measures(state))]
        f_older = terms_older = None  # objective of Z_{t-2}
        converged = stopped = False
        n_iter = 0
        bar = tqdm(
            total=self.max_iter, disable=not self.verbose, desc=type(self).__name__, leave=False
        )
        try:
            for it in range(1, self.max_iter + 1):
                terms = self._iterate(state)
                n_iter = it
                if self.debug:
                    self._check_finite(state, it)
                bar.update(1)
                f = sum(terms.values())  # F(Z_{it-1})
                if f_older is not None and f > f_older * (1 + 1e-12) and not self.no_stop_criterion:
                    logger.info(
                        "%s: objective increased at iteration %d (%.10g -> %.10g); "
                        "reverting to the previous iterate.",
                        type(self).__name__,
                        it - 1,
                        f_older / n_entries,
                        f / n_entries,
                    )
                    state.restore(snaps[-2][:2])
                    if self._on_increase(state):
                        snaps = [snaps[-2]]
                        f_older = terms_older = None
                        continue
                    stopped = True
                    break
                if f_older is not None:
                    rel = abs(f_older - f) / max(abs(f), tiny)
                    history.append(self._history_row(terms, rel, snaps[-1][2], n_entries))
                    converged = rel < self.tol and not self.no_stop_criterion
                    if it % self.eval_print == 0:
                        bar.set_postfix(loss=f"{f / n_entries:.6g}")
                        logger.debug(
                            "%s iteration %d: objective %.10g",
                            type(self).__name__,
                            it - 1,
                            f / n_entries,
                        )
                f_older, terms_older = f, terms
                snaps = [snaps[-1], (*state.snapshot(), self._truth_measures(state))]
                if converged:
                    break
        finally:
            bar.close()
        if stopped:
            final = terms_older
        else:
            final = self._objective_terms(state)
            f = sum(final.values())
            if f_older is not None and f > f_older * (1 + 1e-12) and not self.no_stop_criterion:
                state.restore(snaps[-2][:2])
                final = terms_older
            else:
                rel = np.nan if f_older is None else abs(f_older - f) / max(abs(f), tiny)
                history.append(self._history_row(final, rel, snaps[-1][2], n_entries))
                converged = converged or rel < self.tol
        state.extras["final_terms"] = final
        if not (converged or stopped or self.no_stop_criterion):
            warnings.warn(
                f"{type(self).__name__} reached max_iter={self.max_iter} before the relative "
                f"objective change fell below tol={self.tol}; increase max_iter.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.n_iter_ = n_iter
        self._history = self._history_array(history)
        self.losses_ = self._history["full_loss"].copy()

    def _history_row(self, terms, rel, measures, n_entries) -> dict[str, float]:
        row = {"full_loss": sum(terms.values()) / n_entries}
        row["l2_loss" if self.l2 else "KL_div_loss"] = terms["data"] / n_entries
        for name in self._penalty_names:
            row[name] = terms.get(name, 0.0) / n_entries
        row["rel_change"] = rel
        row.update(measures)
        return row

    def _history_array(self, history: list[dict[str, float]]) -> np.ndarray:
        names = ["full_loss", "l2_loss" if self.l2 else "KL_div_loss", *self._penalty_names]
        names.append("rel_change")
        if history:
            names += [key for key in history[0] if key not in names]
        out = np.zeros(len(history), dtype=[(name, np.float64) for name in names])
        for i, row in enumerate(history):
            for name in names:
                out[name][i] = row.get(name, np.nan)
        return out

    def _update_W(
        self, state: FitState, w_negative: np.ndarray, map_colsum: np.ndarray | None = None
    ) -> None:
        """Multiplicative update of ``W`` (all estimators with a ``G W H`` model).

        KL: ``W <- W (G^T R H^T) / (G^T 1 1^T H^T + nu)``; Frobenius:
        ``W <- W (G^T X H^T) / (G^T G W H H^T + nu)``; ``nu`` makes the free
        entries of each column sum to one when ``simplex_W``.  ``map_colsum``
        replaces ``H 1`` in the KL denominator (PNMF: the posterior mean maps).
        """
        G, W, A = state.G, state.W, state.A
        negative = w_negative if G is None else G.T @ w_negative
        if self.l2:
            gram_A = A.T @ A
            GtG_W = W if G is None else state.extras.setdefault("GtG", G.T @ G) @ W
            positive = GtG_W @ gram_A
        else:
            g_sum = 1.0 if G is None else state.extras.setdefault("G_colsum", G.sum(axis=0))
            colsum = A.sum(axis=0) if map_colsum is None else map_colsum.astype(W.dtype)
            positive = np.broadcast_to(g_sum, (W.shape[0],))[:, None] * colsum[None, :]
        free = None
        simplex = self._effective_simplex_W()
        if simplex and (state.fixed_W is not None or state.free_W_rows is not None):
            free = np.ones_like(W, dtype=bool) if state.fixed_W is None else ~state.fixed_W
            if state.free_W_rows is not None:
                free &= state.free_W_rows[:, None]
            free = free.T
        new = kernels.mu_update(
            W.T,
            negative.T,
            positive.T,
            floor=float(self.log_shift),
            simplex=simplex,
            free=free,
            tol=self._simplex_tol(),
        ).T
        if state.fixed_W is not None:
            new = np.where(state.fixed_W, state.fixed_W_values, new)
        W[...] = new

    def _check_finite(self, state: FitState, it: int) -> None:
        if not (np.all(np.isfinite(state.W)) and np.all(np.isfinite(state.A))):
            raise FloatingPointError(f"Non-finite factor at iteration {it}.")

    def _solve_coefficients(self, X, basis: np.ndarray, *, simplex: bool, with_penalty: bool):
        """Non-negative ``C`` with ``X ~ C basis^T`` (KL or Frobenius), basis fixed."""
        floor = float(self.log_shift)
        dtype = basis.dtype
        gram = basis.T @ basis
        # Least-squares start, clipped and lifted off zero.
        rhs = np.asarray(X @ basis)
        try:
            C = np.linalg.solve(gram + 1e-10 * np.trace(gram) * np.eye(gram.shape[0]), rhs.T).T
        except np.linalg.LinAlgError:
            C = np.linalg.lstsq(gram, rhs.T, rcond=None)[0].T
        row_scale = np.asarray(X.sum(axis=1)).ravel() / max(float(basis.sum()), floor)
        C = np.maximum(C, 0.1 * row_scale[:, None] + floor).astype(dtype)
        if simplex:
            C = C / C.sum(axis=1, keepdims=True)
        C = np.ascontiguousarray(C)
        data = kernels.prepare_data(X, kernels.choose_path(X, self.sparse))

        active = np.ones(C.shape[0], dtype=bool)
        change_tol = 1e-2 * self.tol
        tiny = np.finfo(dtype).tiny

        def rule(rows, negative, positive, curvature):
            Cb = C[rows]
            den = positive + (self._transform_denominator(Cb) if with_penalty else 0.0)
            new = kernels.mu_update(
                Cb, negative, den, floor=floor, simplex=simplex, tol=self._simplex_tol()
            )
            # Each row stops on its own: the result of a pixel never depends on the others.
            was_active = active[rows]
            change = np.abs(new - Cb).max(axis=1) / np.maximum(new.max(axis=1), tiny)
            active[rows] = was_active & (change >= change_tol)
            return np.where(was_active[:, None], new, Cb)

        for _ in range(max(self.max_iter, 500)):
            kernels.data_pass(
                data,
                C,
                basis,
                loss="l2" if self.l2 else "kl",
                map_rule=rule,
                need_w_terms=False,
                need_loss=False,
            )
            if not active.any():
                break
        return C

    def _simplex_tol(self) -> float:
        return 1e-5

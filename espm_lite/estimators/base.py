"""The abstract :class:`NMFEstimator`: scikit-learn plumbing shared by the family.

It holds the shared parameters, the one fitting path (prepare -> start ->
loop -> set fitted), ``transform``, ``loss`` and the fitted attributes. The
maths lives in :mod:`espm_lite.solvers`, the problem set-up in
:mod:`espm_lite._problem`, the loop in :mod:`espm_lite._loop`.
"""

from __future__ import annotations

import numbers
from abc import ABCMeta, abstractmethod

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import kernels
from .._diagnostics import warn_empty_phases
from .._fixed import exact_fixed
from .._initialization import INIT_METHODS, generator
from .._input import transform_input
from .._loop import History, run
from .._monitor import truth_monitor
from .._problem import Problem, divide, evaluation_problem, prepare
from ..kernels.rows import ROW_CHANGE_TOL, ROW_MAX_PASSES, coefficient_rows
from ..solvers import FitState, Solver
from ..solvers._base import RowSolve


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
    tol : float, default=3e-7
        Stop when the relative change of the factors (spectra and maps,
        Frobenius norms) stays below ``tol`` for 50 consecutive iterations, or
        their net change over 50 iterations is below ``tol``
        (:mod:`espm_lite._loop`; measured in ``benchmarks/bench_stopping.py``:
        the default reaches the converged answer, see ``docs/maths.md``).
    max_iter : int, default=10000
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
    accelerate : bool, default=True
        Extrapolate the iterates between updates (Ang & Gillis, 2019), with a
        restart whenever the objective would rise, so the fit stays monotone
        (:mod:`espm_lite._extrapolation`); ``False`` runs the plain updates
        (espm's iterates).
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
        below :data:`espm_lite.kernels.SPARSE_DENSITY_THRESHOLD` (0.27 in
        float64, 0.14 in float32; 0.18 and 0.09 with the NumPy engine), where
        the sparse path is the faster one (it is then converted to CSR once
        per fit, ``O(nnz)`` memory). A float replaces that threshold.
        ``True`` forces the sparse path; ``False`` the dense one (sparse input
        is then densified block by block at each iteration: for comparisons).
    max_memory : int, str or None, default=None
        Budget (bytes or ``"2GB"``; None: half the available memory) for a dask ``X``: kept
        in memory (CSR when sparse) within it, else read at every pass (:mod:`espm_lite._lazy`).
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

    Notes
    -----
    Every estimator fits through the same path: :func:`espm_lite._problem.prepare`
    describes the fit, the estimator's solver (:mod:`espm_lite.solvers`) starts
    and steps it, :func:`espm_lite._loop.run` iterates with the stopping rule,
    and :meth:`_set_fitted` sets the fitted attributes. A concrete estimator
    holds parameters, their validation (:meth:`_check_settings`) and builds its
    solver (:meth:`_solver`).
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
        "accelerate": ["boolean"],
        "simplex_H": ["boolean"],
        "simplex_W": ["boolean"],
        "sparse": [
            "boolean",
            StrOptions({"auto"}),
            Interval(numbers.Real, 0, 1, closed="right"),
        ],
        "max_memory": [Interval(numbers.Real, 0, None, closed="neither"), str, None],
        "dtype": "no_validation",
    }

    def __init__(
        self,
        n_components=2,
        *,
        init=None,
        tol=3e-7,
        max_iter=10000,
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
        accelerate=True,
        simplex_H=False,
        simplex_W=True,
        sparse="auto",
        max_memory=None,
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
        self.accelerate = accelerate
        self.simplex_H = simplex_H
        self.simplex_W = simplex_W
        self.sparse = sparse
        self.max_memory = max_memory
        self.dtype = dtype

    # ------------------------------------------------------------------ hooks
    #: Whether the data must be non-negative (counts); semi-NMF accepts signed data.
    _non_negative_input: bool = True
    #: Whether the fit runs passes over the data on their own threads (BLAS: one thread).
    _uses_data_pass: bool = True
    #: Whether a start ``W`` may be negative (semi-NMF).
    _signed_W: bool = False
    #: Whether ``fit(X, mask=...)`` is supported (missing entries).
    _supports_mask: bool = False

    @abstractmethod
    def _solver(self, problem: Problem) -> Solver:
        """The solver of this estimator's model for ``problem``."""

    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        """Cross-parameter checks of the concrete estimator (raise ValueError)."""

    def _effective_simplex_W(self) -> bool:
        return bool(self.simplex_W)

    def _intensity_factor(self) -> str:
        """The factor carrying the data scale: ``"W"`` with ``simplex_H``, else ``"H"``."""
        return "W" if self.simplex_H else "H"

    def _choose_data_path(self, Xi) -> str:
        return kernels.choose_path(Xi, self.sparse)

    def _sparsity(self, dtype) -> tuple[np.ndarray, float] | None:
        """``(mu, epsilon)`` of a log sparsity term on the maps (None: no such term)."""
        return None

    def _row_solve(self) -> RowSolve:
        """The row-by-row solve of :meth:`transform` (also the last step of a fit)."""
        side = "H" if self.hspy_comp else "W"
        return RowSolve(side, ROW_MAX_PASSES, ROW_CHANGE_TOL, self.sparse)

    def _simplex_tol(self) -> float:
        return 1e-5  # SmoothNMF: dicotomy_tol

    # ------------------------------------------------------------- public API
    def fit(self, X, y=None, **params):
        """Fit the model to ``X``; see :meth:`fit_transform`."""
        self.fit_transform(X, y, **params)
        return self

    @kernels.one_blas_thread_if("_uses_data_pass")  # from validation to the end
    def fit_transform(self, X, y=None, W=None, H=None, mask=None):
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
        mask : array-like of bool of the shape of X, or sparse matrix, optional
            Missing entries (True / stored entries; any value, NaN included):
            left out of the data term, ``sum_{observed} X log(X/Y) - X + Y``
            (dead channels, saturated pixels, held-out entries). SmoothNMF
            only (:mod:`espm_lite.kernels.missing`); others raise ``ValueError``.

        Returns
        -------
        ndarray
            ``G W`` ``(n, k)`` when ``hspy_comp=False``; ``H^T`` ``(p, k)`` when ``True``.
        """
        self._validate_params()
        problem = prepare(self, X, W, H, mask)
        self.data_path_ = problem.data_path
        solver = self._solver(problem)
        state = solver.start(problem)
        history = run(
            solver,
            problem,
            state,
            tol=self.tol,
            max_iter=self.max_iter,
            no_stop=self.no_stop_criterion,
            extrapolate=self.accelerate,
            monitor=truth_monitor(self.true_D, self.true_H, problem.n_channels, problem.n_pixels),
            verbose=self.verbose,
            eval_print=self.eval_print,
            debug=self.debug,
            name=type(self).__name__,
        )
        final = solver.polish(problem, state)
        if final is not None:
            history.replace_final(final, problem.n_entries, solver.names)
        return self._set_fitted(problem, solver, state, history)

    def _set_fitted(self, problem: Problem, solver: Solver, state, history: History):
        """Fitted attributes from the final state; returns the output of ``fit_transform``."""
        result = solver.result(problem, state, history.final_terms)
        scale = problem.scale
        W_out, A_out = result.W, result.A
        if scale != 1.0:
            W_out = W_out * W_out.dtype.type(problem.scale_of("W"))
            A_out = A_out * A_out.dtype.type(problem.scale_of("H"))
        self.W_ = W_out = exact_fixed(W_out, self.fixed_W)
        self.H_ = exact_fixed(np.ascontiguousarray(A_out.T.astype(problem.dtype)), self.fixed_H)
        self.G_ = problem.G
        self._G_simplex_rows = problem.simplex_W_rows
        self._scale, self._intensity = scale, problem.intensity
        D = problem.spectra(W_out)
        warn_empty_phases(type(self).__name__, D, self.H_.T)
        self.n_components_ = self.H_.shape[0]
        self.components_ = np.ascontiguousarray(D.T) if self.hspy_comp else self.H_
        self._n_features_out = self.n_components_
        data = history.final_terms["data"]  # of the data divided by scale
        with np.errstate(over="ignore"):  # inf only for data near the float range
            error = np.sqrt(2 * data) * scale if problem.loss == "l2" else data * scale
        self.reconstruction_err_ = float(error)
        for name, value in result.fitted.items():
            setattr(self, name, value)
        self.n_iter_ = history.n_iter
        self._penalty_units = problem.penalty_units()
        history.report_units(solver, problem)
        self._history = history.as_array(("full_loss", *solver.names, "rel_change"))
        self.losses_ = self._history["full_loss"].copy()
        return self.H_.T.copy() if self.hspy_comp else D

    def _transform_scales(self, solved: str) -> tuple[float, float]:
        """``(basis divisor, output multiplier)`` of a transform solving ``solved``."""
        return (1.0, self._scale) if self._intensity == solved else (self._scale, 1.0)

    def transform(self, X):
        """Solve for the sample-side factor of new data, the fitted factor fixed.

        With ``hspy_comp=True`` (pixels as rows) this returns the maps
        ``H^T`` of the new pixels with the spectra fixed, pixel by pixel: any
        subset of pixels can be passed (the Laplacian term, which couples
        pixels, is not applied; sparsity and ``simplex_H`` are). With
        ``hspy_comp=False`` (channels as rows) it returns the spectra of new
        channels with the maps fixed, without constraints.

        Each row is solved on its own (:func:`espm_lite.kernels.rows.coefficient_rows`):
        exactly by projected Newton steps for the KL problem without simplex
        (the result does not depend on the start), otherwise by multiplicative
        updates from a least-squares start until the relative change of each
        row falls below ``ROW_CHANGE_TOL`` (1e-8, ``ROW_MAX_PASSES`` passes at
        most). A fit ends with the same solve where the problem is the same
        (the solver's ``polish``), so ``fit(X).transform(X)`` reproduces
        ``fit_transform(X)`` there.

        Parameters
        ----------
        X : array-like or sparse matrix (n_samples, n_features_in_)

        Returns
        -------
        ndarray (n_samples, n_components_)
        """
        X = self._transform_input(X)
        dtype = X.dtype
        solve = self._row_solve()
        basis_divisor, out_multiplier = self._transform_scales(solve.side)
        X = divide(X, self._scale)
        basis = self.components_.T.astype(dtype, copy=False) / dtype.type(basis_divisor)
        maps = solve.side == "H"
        out = coefficient_rows(
            X,
            np.maximum(basis, self.log_shift),
            floor=float(self.log_shift),
            loss="l2" if self.l2 else "kl",
            simplex=bool(self.simplex_H) and maps,
            sparsity=self._sparsity(dtype) if maps else None,
            sparse=solve.sparse,
            max_passes=solve.max_passes,
            change_tol=solve.change_tol,
            simplex_tol=self._simplex_tol(),
        )
        return out * dtype.type(out_multiplier) if out_multiplier != 1.0 else out

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

    def loss(self, W, H, average=True, X=None, mask=None) -> float:
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
        mask : array-like of bool or sparse matrix, optional
            Missing entries of ``X``, left out of the data term (and of the
            average), as in :meth:`fit_transform`.
        """
        check_is_fitted(self)
        if X is None:
            raise ValueError(
                "X is required: the estimator keeps no copy of the training data; "
                "pass the data in the orientation given to fit."
            )
        problem = evaluation_problem(self, X, mask)
        W = np.asarray(W, dtype=problem.dtype)
        H = np.asarray(H, dtype=problem.dtype)
        for name, value, shape in (("W", W, self.W_.shape), ("H", H, self.H_.shape)):
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape} (as {name}_), got {value.shape}.")
        A = np.ascontiguousarray(H.T)
        terms = self._solver(problem).loss_terms(problem, FitState(W, A))
        total = sum(terms.values())
        return total / problem.n_entries if average else total

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
        tags.input_tags.positive_only = self._non_negative_input
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -------------------------------------------------------------- internals
    def _rng(self) -> np.random.Generator:
        return generator(self.random_state)

    def _transform_input(self, X):
        """``X`` of :meth:`transform`: fitted estimator checked, validated, CSR if sparse."""
        check_is_fitted(self)
        return transform_input(self, X)

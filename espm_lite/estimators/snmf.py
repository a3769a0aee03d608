"""SNMF: semi-non-negative matrix factorisation (signed spectra, non-negative maps)."""

from __future__ import annotations

import numpy as np

from .. import _least_squares as lsq
from ._frobenius import MAP_SWEEPS, SPARSITY_CONSTRAINT, FrobeniusNMF, split, sqrt_update
from .base import FitState

#: Proximal-gradient steps of the spectra update when ``sparsity > 0``.
PROX_STEPS = 5


class SNMF(FrobeniusNMF):
    r"""Semi-NMF (Ding, Li & Jordan 2008): signed spectra, non-negative maps.

    For signed data (background-subtracted EELS, centred data), minimises

    .. math::

        F(W, H) = \tfrac12 \|X - G W H\|_F^2
                  + \lambda \sum_r \|(G W)_{:r}\|_2 \sum_j H_{rj},
        \qquad H \ge 0,\ W \text{ unconstrained},

    with ``lambda = sparsity``. The L1 term is weighted by the norm of each
    spectrum, which makes it invariant to the rescaling ``(d_r c, h_r / c)``:
    an L1 term on ``H`` alone could be driven to zero by shrinking ``H`` and
    growing the spectra. The spectra are rescaled to unit norm after every
    iteration (the objective does not change), so the term is ``lambda sum H``.

    Each iteration, with ``D = G W`` (``n x k``), ``P = X^T D`` and the Gram
    matrix ``M = D^T D`` split into its positive and negative parts
    ``M = M^+ - M^-`` (entrywise; splitting the product ``H^T M`` instead loses
    the monotonicity),

    .. math::

        H^T \leftarrow H^T \odot \sqrt{\frac{P^+ + H^T M^-}{P^- + H^T M^+ + \lambda}},

    a majorisation-minimisation step (the objective never increases), repeated
    ``MAP_SWEEPS`` (10) times per iteration (the sweeps reuse ``P`` and ``M``:
    ``O(p k^2)`` each, no pass over the data), then
    the spectra: with ``sparsity=0`` the exact least-squares solution
    ``W = (G^T G)^{-1} G^T X H^T (H H^T)^{-1}`` by Cholesky solves (no
    explicit inverse); with ``sparsity > 0`` (``G=None`` only) five
    proximal-gradient steps with step ``1 / lambda_max(H H^T)`` and group
    soft-thresholding, each a descent step. After the last iteration the
    sample-side factor is solved exactly (the maps by non-negative least
    squares with ``hspy_comp=True``, the spectra by least squares with
    ``False``), so ``fit_transform(X)`` equals ``fit(X).transform(X)``.

    Parameters
    ----------
    n_components : int, default=2
    sparsity : float, default=0
        ``lambda`` above (L1 weight of the maps of unit-norm spectra).
        ``sparsity > 0`` with a ``G`` raises (no closed-form proximal step).
    init : {"kmeans", "random"} or None, default=None
        ``None`` / ``"kmeans"``: k-means of the pixels; the maps start at the
        cluster indicators plus 0.2, the spectra at the centroids (Ding et
        al.). ``W`` / ``H`` passed to :meth:`fit_transform` take precedence.
    tol, max_iter, random_state, verbose, debug, eval_print, true_D, true_H, \
hspy_comp, no_stop_criterion, dtype
        See :class:`NMFEstimator`.
    G : array-like (n, m), callable or None
        Known matrix; ``W`` is signed, so ``G W`` may be any combination of
        the columns of ``G``.
    shape_2d : (int, int) or None
        Accepted (HyperSpy fills it in) and checked, not used: semi-NMF has
        no spatial regularisation.
    normalize : bool, default=False
        Fit ``X / s``, ``s`` the mean absolute value summed per pixel; the
        maps carry ``s`` back.
    log_shift : float, default=1e-14
        Floor of the maps.

    The Poisson-model parameters of :class:`NMFEstimator` (``l2``,
    ``simplex_H``, ``simplex_W``, ``fixed_W``, ``fixed_H``, ``sparse``) are not
    parameters of SNMF: the loss is always the Frobenius norm, sparse data
    are used as they are.

    Attributes
    ----------
    W_ : ndarray (m, k)
        Signed; ``G_ W_`` are the spectra (unit norm).
    H_ : ndarray (k, p)
        Maps, ``>= 0``.
    components_, n_components_, n_iter_, losses_, reconstruction_err_, \
n_features_in_, data_path_, G_
        As in :class:`NMFEstimator` (``reconstruction_err_`` is ``||X - G W H||_F``).

    Examples
    --------
    >>> import numpy as np
    >>> from espm_lite import SNMF
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 3)) @ rng.random((3, 40))  # signed spectra
    >>> est = SNMF(n_components=3, verbose=0, random_state=0).fit(X)
    >>> bool(np.all(est.H_ >= 0)), est.W_.shape
    (True, (50, 3))
    """

    _parameter_constraints: dict = {
        **FrobeniusNMF._parameter_constraints,
        "sparsity": SPARSITY_CONSTRAINT,
    }

    _non_negative_input = False

    def __init__(
        self,
        n_components=2,
        *,
        sparsity=0.0,
        init=None,
        tol=1e-4,
        max_iter=200,
        random_state=None,
        verbose=1,
        debug=False,
        G=None,
        shape_2d=None,
        normalize=False,
        log_shift=1e-14,
        eval_print=10,
        true_D=None,
        true_H=None,
        hspy_comp=False,
        no_stop_criterion=False,
        dtype=None,
    ):
        self.n_components = n_components
        self.sparsity = sparsity
        self.init = init
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.verbose = verbose
        self.debug = debug
        self.G = G
        self.shape_2d = shape_2d
        self.normalize = normalize
        self.log_shift = log_shift
        self.eval_print = eval_print
        self.true_D = true_D
        self.true_H = true_H
        self.hspy_comp = hspy_comp
        self.no_stop_criterion = no_stop_criterion
        self.dtype = dtype

    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        if self.sparsity > 0 and self.G is not None:
            raise ValueError(
                "sparsity > 0 with a G is not supported by SNMF (the proximal step of "
                "the spectrum-norm-weighted L1 term has no closed form through G); "
                "use sparsity=0 or G=None."
            )

    def _make_state(self, Xi, G) -> FitState:
        state = super()._make_state(Xi, G)
        state.signed = True
        return state

    def _initialise(self, state: FitState, W0, H0, m, p, k, dtype, scale) -> None:
        A, D = self._start(state.X, k)
        if H0 is not None:
            H0 = np.asarray(H0, dtype=np.float64)
            if H0.shape != (k, p) or not np.all(np.isfinite(H0)) or np.any(H0 < 0):
                raise ValueError(f"H must be finite, non-negative, of shape {(k, p)}.")
            A = H0.T / scale
        if W0 is not None:
            W = np.asarray(W0, dtype=np.float64)
            if W.shape != (m, k) or not np.all(np.isfinite(W)):
                raise ValueError(f"W must be finite, of shape {(m, k)}.")
        elif state.G is None:
            W = D
        else:
            G = state.G.astype(np.float64)
            W = lsq.solve_gram(G.T @ G, G.T @ D)
        state.W = np.ascontiguousarray(W, dtype=dtype)
        state.A = np.ascontiguousarray(np.maximum(A, state.floor), dtype=dtype)
        self._normalise_spectra(state)

    def _map_l1(self, state: FitState) -> np.ndarray | float:
        if self.sparsity == 0:
            return 0.0
        return self.sparsity * np.linalg.norm(state.D, axis=0)

    def _normalise_spectra(self, state: FitState) -> None:
        """Unit-norm spectra, the maps rescaled: ``G W H`` and the objective unchanged."""
        norms = np.linalg.norm(state.D, axis=0)
        norms[norms == 0] = 1
        state.W /= norms
        state.A *= norms

    def _iterate(self, state: FitState) -> dict[str, float]:
        X, A, floor = state.X, state.A, state.floor
        D = state.D
        XD = np.asarray(X @ D)
        gram = D.T @ D
        terms = self._terms(state, XD, gram)  # objective of the iterate before the update
        XD_pos, XD_neg = split(XD)
        gram_pos, gram_neg = split(gram)
        l1 = self._map_l1(state)
        for _ in range(MAP_SWEEPS):  # no pass over the data: O(p k^2) each
            A[...] = sqrt_update(A, XD_pos + A @ gram_neg, XD_neg + A @ gram_pos + l1, floor)

        XtA = np.asarray(X.T @ A)  # (n, k)
        gram_A = A.T @ A
        if self.sparsity == 0:
            spectra = lsq.solve_gram(gram_A, XtA.T).T  # X^T A (A^T A)^{-1}
            if state.G is not None:
                G = state.G
                spectra = lsq.solve_gram(state.extras.setdefault("GtG", G.T @ G), G.T @ spectra)
            state.W[...] = spectra
        else:
            self._prox_spectra(state, XtA, gram_A)
        self._normalise_spectra(state)
        return terms

    def _prox_spectra(self, state: FitState, XtA: np.ndarray, gram_A: np.ndarray) -> None:
        """Proximal-gradient steps on ``D``: ``1/2||X - A D^T||^2 + lambda sum_r a_r ||d_r||``."""
        D = state.W  # G is None here
        lipschitz = float(np.linalg.eigvalsh(gram_A)[-1])
        weights = self.sparsity * state.A.sum(axis=0) / lipschitz
        for _ in range(PROX_STEPS):
            Z = D - (D @ gram_A - XtA) / lipschitz
            norms = np.linalg.norm(Z, axis=0)
            shrink = np.maximum(1 - weights / np.maximum(norms, np.finfo(Z.dtype).tiny), 0)
            if np.any(shrink == 0):
                break  # a spectrum would vanish: keep the previous (descent) iterate
            D[...] = Z * shrink

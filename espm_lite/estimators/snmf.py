"""SNMF: semi-non-negative matrix factorisation (signed spectra, non-negative maps)."""

from __future__ import annotations

from .._problem import Problem
from ..solvers.frobenius import SemiNMF
from ._frobenius import SPARSITY_CONSTRAINT, FrobeniusNMF


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
hspy_comp, no_stop_criterion, accelerate, max_memory, dtype
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
    _signed_W = True

    def __init__(
        self,
        n_components=2,
        *,
        sparsity=0.0,
        init=None,
        tol=3e-7,
        max_iter=10000,
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
        accelerate=True,
        max_memory=None,
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
        self.accelerate = accelerate
        self.max_memory = max_memory
        self.dtype = dtype

    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        if self.sparsity > 0 and self.G is not None:
            raise ValueError(
                "sparsity > 0 with a G is not supported by SNMF (the proximal step of "
                "the spectrum-norm-weighted L1 term has no closed form through G); "
                "use sparsity=0 or G=None."
            )

    def _solver(self, problem: Problem) -> SemiNMF:
        return SemiNMF(problem, sparsity=self.sparsity, **self._solver_options())

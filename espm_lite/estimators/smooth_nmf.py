"""SmoothNMF: KL-NMF with Laplacian-smoothed, log-sparse, simplex-constrained maps."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from .. import kernels
from .base import FitState, NMFEstimator

#: Strength of the proximal term of the Laplacian surrogates (>= the norm bound 8).
SIGMA_L = kernels.LAPLACIAN_NORM_BOUND

ALGORITHMS = ("log_surrogate", "l2_surrogate", "projected_gradient")


class SmoothNMF(NMFEstimator):
    r"""NMF with smooth, sparse, simplex-constrained abundance maps.

    Minimises, over ``W >= 0`` and ``H >= 0``,

    .. math::

        F(W, H) = D_{KL}(X \| G W H)
                  + \frac{\lambda_L}{2} \operatorname{tr}(H \Delta H^T)
                  + \sum_{r} \mu_r \sum_j \log(H_{rj} + \epsilon_{reg})

    with ``Delta`` the graph Laplacian of the 4-neighbour pixel grid of
    ``shape_2d``, optionally subject to ``sum_r H_rj = 1`` (``simplex_H``) or
    ``sum_i W_ir = 1`` (``simplex_W``), and every entry ``>= log_shift``.

    Each iteration updates ``H`` then ``W`` by majorisation-minimisation
    (see ``DESIGN.md`` section 2); with ``R = X / (G W H)`` and ``D = G W``:

    * ``"log_surrogate"``: ``H <- H (D^T R + c) / (D^T 1 + c + lambda_L H Delta
      + mu / (H + epsilon_reg) + nu)`` with ``c = lambda_L sigma_L max_j H_rj``,
      ``sigma_L = 8``;
    * ``"l2_surrogate"``: the positive root of ``a h^2 + b h - H (D^T R) = 0``,
      ``a = lambda_L sigma_L``, ``b = D^T 1 + lambda_L (H Delta) - lambda_L
      sigma_L H + mu / (H + epsilon_reg) + nu`` (a true majoriser: the
      objective never increases);
    * ``"projected_gradient"``: a gradient step on ``F`` in ``H`` with step
      ``gamma`` (default: per pixel, the inverse of ``L_j = lambda_max(D^T
      diag(X_j / Y_j^2) D) + 8 lambda_L``, the curvature at the current
      iterate, refreshed every iteration, halved whenever the objective
      increases), projected on ``H >= log_shift`` (and the simplex);

    and ``W <- W (G^T R H^T) / (G^T 1 1^T H^T + nu)`` for all algorithms.
    ``nu`` is the simplex multiplier, found by bisection to ``dicotomy_tol``.

    Parameters
    ----------
    n_components, init, tol, max_iter, random_state, verbose, debug, l2, G, \
shape_2d, normalize, log_shift, eval_print, true_D, true_H, fixed_H, fixed_W, \
hspy_comp, no_stop_criterion, simplex_H, simplex_W, sparse, dtype
        See :class:`NMFEstimator`.
    lambda_L : float, default=0.0
        Strength of the Laplacian smoothing of the maps (needs ``shape_2d``).
    linesearch : bool, default=False
        ``projected_gradient`` only: adapt the step without bound, growing it
        by 10 % after each iteration and, when the objective increases,
        reverting the iterate and halving it. Without it, the default step
        backtracks the same way but never grows beyond the curvature step.
    mu : float or array-like of shape (n_components,), default=0
        Strength of the log sparsity of the maps, per phase if an array.
    epsilon_reg : float, default=1
        Offset of the log in the sparsity term.
    algo : {"log_surrogate", "l2_surrogate", "projected_gradient"}
    force_simplex : bool or None, default=None
        espm's name for ``simplex_W``. ``None`` follows ``simplex_W``; a
        boolean replaces it, and ``force_simplex=True`` with
        ``simplex_W=False`` is a contradiction (``ValueError``).
    dicotomy_tol : float, default=1e-5
        Tolerance of the simplex sums (bisection).
    gamma : float or None, default=None
        Fixed step of ``projected_gradient``.

    Examples
    --------
    >>> from espm_lite import SmoothNMF
    >>> from espm_lite.datasets import make_spectrum_image
    >>> data = make_spectrum_image(shape_2d=(20, 20), n_channels=200, seed=0)
    >>> est = SmoothNMF(n_components=3, shape_2d=(20, 20), lambda_L=1.0, verbose=0)
    >>> spectra = est.fit_transform(data.X)
    >>> spectra.shape, est.H_.shape
    ((200, 3), (3, 400))
    """

    _parameter_constraints: dict = {
        **NMFEstimator._parameter_constraints,
        "lambda_L": [Interval(numbers.Real, 0, None, closed="left")],
        "linesearch": ["boolean"],
        "mu": [Interval(numbers.Real, 0, None, closed="left"), "array-like"],
        "epsilon_reg": [Interval(numbers.Real, 0, None, closed="neither")],
        "algo": [StrOptions(set(ALGORITHMS))],
        "force_simplex": ["boolean", None],
        "dicotomy_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "gamma": [Interval(numbers.Real, 0, None, closed="neither"), None],
    }

    _penalty_names = ("Lapl_reg_loss", "log_reg_loss")

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
        lambda_L=0.0,
        linesearch=False,
        mu=0,
        epsilon_reg=1,
        algo="log_surrogate",
        force_simplex=None,
        dicotomy_tol=1e-5,
        gamma=None,
        sparse="auto",
        dtype=None,
    ):
        super().__init__(
            n_components=n_components,
            init=init,
            tol=tol,
            max_iter=max_iter,
            random_state=random_state,
            verbose=verbose,
            debug=debug,
            l2=l2,
            G=G,
            shape_2d=shape_2d,
            normalize=normalize,
            log_shift=log_shift,
            eval_print=eval_print,
            true_D=true_D,
            true_H=true_H,
            fixed_H=fixed_H,
            fixed_W=fixed_W,
            hspy_comp=hspy_comp,
            no_stop_criterion=no_stop_criterion,
            simplex_H=simplex_H,
            simplex_W=simplex_W,
            sparse=sparse,
            dtype=dtype,
        )
        self.lambda_L = lambda_L
        self.linesearch = linesearch
        self.mu = mu
        self.epsilon_reg = epsilon_reg
        self.algo = algo
        self.force_simplex = force_simplex
        self.dicotomy_tol = dicotomy_tol
        self.gamma = gamma

    # ------------------------------------------------------------ settings
    def _effective_simplex_W(self) -> bool:
        if self.force_simplex is None:
            return bool(self.simplex_W)
        return bool(self.force_simplex)

    def _mu_vector(self, dtype=np.float64) -> np.ndarray:
        mu = np.asarray(self.mu, dtype=np.float64)
        k = self.n_components
        if mu.ndim == 0:
            mu = np.full(k, float(mu))
        if mu.shape != (k,):
            raise ValueError(
                f"mu must be a scalar or an array of shape (n_components,) = ({k},), "
                f"got shape {mu.shape}."
            )
        if not np.all(np.isfinite(mu)) or np.any(mu < 0):
            raise ValueError(f"mu must be finite and non-negative, got {self.mu!r}.")
        return mu.astype(dtype)

    def _check_settings(self, n_channels: int, n_pixels: int) -> None:
        self._mu_vector()
        if self.lambda_L > 0 and self.shape_2d is None:
            raise ValueError(
                f"lambda_L={self.lambda_L} > 0 needs shape_2d=(ny, nx), the scan shape of the "
                "maps, to build the Laplacian."
            )
        if self.force_simplex is not None and bool(self.force_simplex) and not self.simplex_W:
            raise ValueError(
                "force_simplex=True contradicts simplex_W=False (force_simplex is espm's name "
                "for simplex_W); pass only simplex_W."
            )
        if self.simplex_H and self._effective_simplex_W():
            raise ValueError(
                "simplex_H=True and simplex_W=True together fix the scale of both factors and "
                "cannot fit the data intensity; set simplex_W=False (and force_simplex=None "
                "or False) to use simplex_H."
            )
        if self.l2 and self.algo == "l2_surrogate":
            raise ValueError(
                "algo='l2_surrogate' is derived for the KL loss; with l2=True use "
                "algo='log_surrogate' or 'projected_gradient'."
            )
        if self.linesearch and self.algo != "projected_gradient":
            warnings.warn(
                f"linesearch=True only applies to algo='projected_gradient' (algo={self.algo!r}).",
                UserWarning,
                stacklevel=4,
            )

    def _prepare(self, state: FitState) -> None:
        dtype = state.A.dtype
        state.extras["mu"] = self._mu_vector(dtype)
        if self.lambda_L > 0:
            state.extras["laplacian"] = kernels.grid_laplacian(self._shape_2d_tuple(), dtype)
        state.extras.setdefault("step_scale", 1.0)
        if state.G is not None:
            state.extras["G_colsum"] = state.G.sum(axis=0)
            if self.l2:
                state.extras["GtG"] = state.G.T @ state.G

    def _simplex_tol(self) -> float:
        return float(self.dicotomy_tol)

    # ---------------------------------------------------------- objective
    def _penalty_terms(self, state: FitState, A: np.ndarray, lap_A=None) -> dict[str, float]:
        terms = {"Lapl_reg_loss": 0.0, "log_reg_loss": 0.0}
        if self.lambda_L > 0:
            if lap_A is None:
                lap_A = state.extras["laplacian"] @ A
            terms["Lapl_reg_loss"] = 0.5 * self.lambda_L * float(np.vdot(A, lap_A))
        mu = state.extras["mu"]
        if np.any(mu > 0):
            log_sums = np.log(A + A.dtype.type(self.epsilon_reg)).sum(axis=0, dtype=np.float64)
            terms["log_reg_loss"] = float(mu.astype(np.float64) @ log_sums)
        return terms

    def _transform_denominator(self, A: np.ndarray):
        mu = self._mu_vector(A.dtype)
        if not np.any(mu > 0):
            return 0.0
        return mu / (A + A.dtype.type(self.epsilon_reg))

    # ------------------------------------------------------------ updates
    def _iterate(self, state: FitState) -> dict[str, float]:
        A = state.A
        dtype = A.dtype
        lam = dtype.type(self.lambda_L)
        mu = state.extras["mu"]
        eps_reg = dtype.type(self.epsilon_reg)
        floor = float(self.log_shift)
        tol = float(self.dicotomy_tol)
        lap_A = state.extras["laplacian"] @ A if lam > 0 else None
        penalties = self._penalty_terms(state, A, lap_A)
        free = None if state.fixed_A is None else ~state.fixed_A
        simplex = bool(self.simplex_H)
        algo = self.algo
        prox = lam * dtype.type(SIGMA_L)
        prox_max = prox * A.max(axis=0) if lam > 0 else None
        use_mu = bool(np.any(mu > 0))
        step_scale = state.extras["step_scale"]

        def rule(rows, negative, positive, curvature):
            Ab = A[rows]
            extra = np.zeros_like(Ab)
            if lam > 0:
                extra += lam * lap_A[rows]
            if use_mu:
                extra += mu / (Ab + eps_reg)
            sub_free = None if free is None else free[rows]
            if algo == "log_surrogate":
                num, den = negative, positive + extra
                if lam > 0:
                    num = negative + prox_max
                    den = den + prox_max
                new = kernels.mu_update(
                    Ab, num, den, floor=floor, simplex=simplex, free=sub_free, tol=tol
                )
            elif algo == "l2_surrogate":
                b = positive + extra - prox * Ab if lam > 0 else positive + extra
                new = kernels.quadratic_root_update(
                    Ab,
                    float(prox),
                    b,
                    Ab * negative,
                    floor=floor,
                    simplex=simplex,
                    free=sub_free,
                    tol=tol,
                )
            else:
                gradient = positive - negative + extra
                if self.gamma is not None:
                    step = dtype.type(self.gamma * step_scale)
                else:
                    bound = curvature + lam * dtype.type(kernels.LAPLACIAN_NORM_BOUND)
                    step = (step_scale / np.maximum(bound, np.finfo(dtype).tiny))[:, None]
                    step = step.astype(dtype, copy=False)
                new = kernels.projected_step(
                    Ab, gradient, step, floor=floor, simplex=simplex, free=sub_free, tol=tol
                )
            if state.fixed_A is not None:
                new = np.where(state.fixed_A[rows], state.fixed_A_values[rows], new)
            return new

        result = kernels.data_pass(
            state.data,
            A,
            state.D,
            loss="l2" if self.l2 else "kl",
            map_rule=rule,
            need_curvature=(algo == "projected_gradient" and self.gamma is None),
            x_constants=state.x_constants,
        )
        self._update_W(state, result.w_negative)
        if algo == "projected_gradient" and (self.linesearch or self.gamma is None):
            # Regrow the step after backtracking: up to the curvature step by default,
            # without bound with linesearch=True.
            grown = step_scale * 1.1
            state.extras["step_scale"] = grown if self.linesearch else min(grown, 1.0)
        return {"data": result.data_loss, **penalties}

    def _on_increase(self, state: FitState) -> bool:
        # The default step (curvature bound at the current iterate) backtracks too.
        if self.algo == "projected_gradient" and (self.linesearch or self.gamma is None):
            state.extras["step_scale"] *= 0.5
            return state.extras["step_scale"] > 1e-12
        return False

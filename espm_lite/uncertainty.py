r"""Uncertainties of element fractions that include the unmixing error.

Counting statistics (:func:`espm_lite.quantification.concentration_table`,
``uncertainty="counting"``) treat the counts a fit attributes to each element
as exact Poisson draws: they leave out the error of the unmixing itself, which
on EDX phantoms is 3 to 10 times larger (a lower bound, not an error bar).
``uncertainty="bootstrap"`` adds the two parts of the unmixing error.

**Bias.**  A non-negative factorisation pushes each phase towards the edge of
the cone of the data: the abundances cannot go below zero, so where a phase is
pure the noise leaves a positive apparent share of the other phases, and the
fitted phase spectrum loses what that share carries (minor elements of a
phase often come out at zero).  The purest pixels of each phase measure it.
With ``C_{rj} = H_{rj} \sum_i (G W)_{ir}`` the counts of phase ``r`` in pixel
``j``, ``N_j = \sum_r C_{rj}`` and the count share ``s_{rj} = C_{rj} / N_j``,
the pixels where phase ``r`` is pure within one counting standard deviation,

.. math:: P_r = \{ j : 1 - s_{rj} \le 1 / \sqrt{N_j} \}

are taken, on a scan grid (the estimator's ``shape_2d``), with ``C`` and ``N``
summed over the 3 x 3 neighbourhood of ``j`` (the pixels of the grid around
and including it): a pixel counts as pure when its neighbourhood is.  Alone,
at low counts, the tolerance admits the truly mixed pixels at the edge of a
pure region (``1/\sqrt{20} = 0.22`` at 20 counts per pixel), whose mixture is
then taken for apparent impurity and the bias overstated; summed over nine
pixels the tolerance is three times tighter and an edge pixel's neighbourhood
holds the other phase.  Without a grid, or with fewer than
:data:`MIN_PURE_PIXELS` such pixels, the test is made pixel by pixel (and
the :data:`MIN_PURE_PIXELS` purest pixels are taken when fewer pass).  The
pixels ``P_r`` give the apparent impurities
``E_{sr} = \sum_{j \in P_r} H_{sj} / \sum_{j \in P_r} H_{rj}`` (``s != r``).
Moving them back into phase ``r`` (the rotation
``W' = W (I + E)``, ``H' = (I + E)^{-1} H`` of the same product ``G W H``)
makes the purest pixels pure: the fractions ``\tilde c`` of ``W'`` estimate
the truth under the pure-pixel assumption, and ``b = \tilde c - \hat c`` the
bias of the fitted fractions ``\hat c``.

**Variance.**  A parametric bootstrap: ``B`` data sets
``X^{(b)} \sim \mathrm{Poisson}(G W H)`` (the fitted model, in counts) are
refitted by a clone of the fitted estimator started from the fit, the phases
matched to the fit by spectral angle; ``s_{fit}`` is the standard deviation
of ``\hat c^{(b)}`` over the replicates and ``s_b`` that of their bias
estimates ``b^{(b)} = \tilde c^{(b)} - \hat c^{(b)}`` (the noise of ``b``;
``\tilde c`` and ``\hat c`` move together, so this is smaller than the two
spreads added in quadrature).

**Reported uncertainty** (a half-width meant to cover the truth like one
standard deviation, about 68 %):

.. math:: U = |b| + \max\Big(\sqrt{s_{fit}^2 + s_b^2 + (\kappa b)^2},\ \sigma_{counting}\Big),

at most ``max(c^, 1 - c^)`` (the largest error a fraction in ``[0, 1]`` can have):
the bias left in the reported value plus the spread of the fit and of its
bias estimate (counting statistics are a floor: a bootstrap standard deviation
below them is sampling noise of ``B`` replicates).  ``b`` is added linearly,
not in quadrature, because it is a signed error the value keeps.  The
correction is itself uncertain beyond its bootstrap spread: the pure-pixel
model (a rotation, pixels pure within the noise) removes 20 to 70 % of the
bias on EDX phantoms, not all of it, and what it leaves is systematic (the
same sign for every noise draw), so the refits cannot see it.  It enters as
``kappa |b|`` with ``kappa =`` :data:`BIAS_RELATIVE_UNCERTAINTY` (0.45): the
size of what the correction leaves, ``|c~ - c_true|``, relative to ``|b|``,
measured on EDX phantoms at 2000 counts per pixel, where counting noise is
negligible (0.44 on disc maps with pure regions, 0.47 on gradient maps
without; 6 seeds each; the neighbourhood test does not change it, since at 2000
counts the tolerance already excludes the mixed pixels).  Coverage on EDX
phantoms (disc maps with pure regions, and gradient maps without) is measured
by ``benchmarks/bench_edx_uncertainty.py``: on disc maps 60-76 % at 20, 200
and 2000 counts per pixel; on gradient maps, which have no pure pixel, the
purest pixels are mixed and ``|b|`` overstates the error, so the intervals
there cover more (conservative).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from scipy import ndimage
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from .measures import match_components

UNCERTAINTY_KINDS = ("counting", "bootstrap")
#: Default number of bootstrap refits.
DEFAULT_N_BOOTSTRAP = 20
#: Fewest pixels the apparent impurity of a phase is measured on.
MIN_PURE_PIXELS = 3
#: Standard uncertainty of the bias correction, relative to its size (``kappa``).
BIAS_RELATIVE_UNCERTAINTY = 0.45


def check_uncertainty_args(uncertainty, n_bootstrap, random_state, progress) -> None:
    """Raise ``ValueError`` naming the first bad argument."""
    if uncertainty not in UNCERTAINTY_KINDS:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_KINDS}, got {uncertainty!r}.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral):
        raise ValueError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}.")
    if n_bootstrap < 2:
        raise ValueError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}.")
    valid_seed = isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool)
    if not (random_state is None or isinstance(random_state, np.random.Generator)) and not (
        valid_seed and random_state >= 0
    ):
        raise ValueError(
            "random_state must be None, a non-negative int or a numpy Generator, "
            f"got {random_state!r}."
        )
    if not isinstance(progress, (bool, np.bool_)):
        raise ValueError(f"progress must be True or False, got {progress!r}.")


def phase_fractions(W: np.ndarray, rows: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Fractions ``(k, n_elements)`` of the element rows of ``W`` (rows sum to 1).

    ``masses`` is 1 for atomic fractions, the atomic weights for weight fractions.
    """
    amounts = W[rows].T * masses[None, :]
    totals = amounts.sum(axis=1, keepdims=True)
    return amounts / np.where(totals > 0, totals, 1.0)


def neighbourhood_sums(values: np.ndarray, shape_2d: tuple[int, int] | None) -> np.ndarray:
    """Sums of each row of ``values (k, p)`` over the 3 x 3 neighbourhood of every pixel.

    ``p`` pixels in the row-major order of the scan grid ``shape_2d = (ny, nx)``;
    pixels outside the grid add nothing (a border pixel sums fewer neighbours).
    Without a grid that matches ``p`` (``None``, or a navigation mask removed
    pixels) each pixel is its own neighbourhood: ``values`` is returned.
    """
    if shape_2d is None:
        return values
    shape = tuple(int(v) for v in shape_2d)
    if len(shape) != 2 or shape[0] * shape[1] != values.shape[1]:
        return values
    grid = values.reshape((values.shape[0], *shape))
    footprint = np.ones((1, 3, 3))
    return ndimage.convolve(grid, footprint, mode="constant", cval=0.0).reshape(values.shape)


def _pure_pixels(share: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``1 - share <= 1 / sqrt(counts)`` per phase, ``(k, p)`` bool (see the module docstring)."""
    return 1.0 - share <= 1.0 / np.sqrt(np.maximum(counts, 1.0))


def _shares(phase_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    totals = phase_counts.sum(axis=0)
    return phase_counts / np.where(totals > 0, totals, 1.0), totals


def purity_corrected_W(
    W: np.ndarray, H: np.ndarray, G: np.ndarray, shape_2d: tuple[int, int] | None = None
) -> np.ndarray:
    """``W (I + E)``: each phase with the apparent impurity of its purest pixels moved back.

    Parameters
    ----------
    W : ndarray (m, k)
    H : ndarray (k, p)
    G : ndarray (n, m)
    shape_2d : (ny, nx) or None
        Scan grid of the ``p`` pixels (row-major). With it a pixel is pure when
        its 3 x 3 neighbourhood is, which leaves out the mixed pixels at the
        edges of pure regions; without it, each pixel alone.

    Returns
    -------
    ndarray (m, k)
        See the module docstring (``E``, the pure pixels ``P_r``).
    """
    k = W.shape[1]
    phase_counts = H * (G @ W).sum(axis=0)[:, None]  # C_rj
    share, pixel_counts = _shares(phase_counts)
    pure_alone = _pure_pixels(share, pixel_counts)
    pure_around = _pure_pixels(*_shares(neighbourhood_sums(phase_counts, shape_2d)))
    E = np.zeros((k, k))
    for r in range(k):
        pure = np.flatnonzero(pure_around[r])
        if pure.size < MIN_PURE_PIXELS:
            pure = np.flatnonzero(pure_alone[r])
        if pure.size < MIN_PURE_PIXELS:
            pure = np.argsort(share[r])[-MIN_PURE_PIXELS:]
        own = H[r, pure].sum()
        if own > 0:
            E[:, r] = H[:, pure].sum(axis=1) / own
        E[r, r] = 0.0
    return W @ (np.eye(k) + E)


def _replicate(estimator, Y: np.ndarray, W: np.ndarray, H: np.ndarray, rng) -> tuple:
    """One parametric refit: ``(W*, H*, ConvergenceWarning raised)``."""
    Xb = rng.poisson(Y).astype(np.float64)
    refit = clone(estimator).set_params(verbose=0, true_D=None, true_H=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        refit.fit_transform(Xb.T if refit.hspy_comp else Xb, W=W, H=H)
    not_converged = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return np.asarray(refit.W_, dtype=np.float64), np.asarray(refit.H_, np.float64), not_converged


def bootstrap_uncertainty(
    estimator,
    W: np.ndarray,
    H: np.ndarray,
    G: np.ndarray,
    rows: np.ndarray,
    masses: np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    random_state=None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Bias estimate ``b`` and bootstrap spread ``sqrt(s_fit^2 + s_b^2)``, both ``(k, E)``.

    Parameters
    ----------
    estimator : NMFEstimator
        The estimator that fitted ``W`` and ``H`` (cloned, never modified).
    W : ndarray (m, k)
    H : ndarray (k, p)
    G : ndarray (n, m)
    rows : ndarray of bool (m,)
        Element rows of ``W``.
    masses : ndarray (n_elements,)
        1 (atomic fractions) or the atomic weights (weight fractions).
    n_bootstrap : int
    random_state : None, int or numpy Generator
    progress : bool
        tqdm progress bar over the refits.

    Returns
    -------
    bias, spread : ndarray (k, n_elements)
        See the module docstring. A ``ConvergenceWarning`` tells how many
        refits reached ``max_iter``.
    """
    rng = np.random.default_rng(random_state)
    grid = estimator.shape_2d
    D = G @ W
    Y = D @ H
    fit = np.empty((n_bootstrap, W.shape[1], int(rows.sum())))
    corrected = np.empty_like(fit)
    not_converged = 0
    for b in tqdm(range(n_bootstrap), disable=not progress, desc="bootstrap refits", leave=False):
        Wb, Hb, stalled = _replicate(estimator, Y, W, H, rng)
        not_converged += stalled
        order = match_components(D, G @ Wb)
        Wb, Hb = Wb[:, order], Hb[order]
        fit[b] = phase_fractions(Wb, rows, masses)
        corrected[b] = phase_fractions(purity_corrected_W(Wb, Hb, G, grid), rows, masses)
    if not_converged:
        warnings.warn(
            f"{not_converged} of {n_bootstrap} bootstrap refits reached max_iter; the "
            "uncertainties may be underestimated (raise the estimator's max_iter).",
            ConvergenceWarning,
            stacklevel=3,
        )
    values = phase_fractions(W, rows, masses)
    bias = phase_fractions(purity_corrected_W(W, H, G, grid), rows, masses) - values
    spread = np.hypot(fit.std(axis=0, ddof=1), (corrected - fit).std(axis=0, ddof=1))
    return bias, spread


def half_width(
    bias: np.ndarray, spread: np.ndarray, counting_sd: np.ndarray, values: np.ndarray
) -> np.ndarray:
    """The reported uncertainty ``U`` of the module docstring.

    Parameters
    ----------
    bias, spread : ndarray (k, n_elements)
        From :func:`bootstrap_uncertainty`.
    counting_sd : ndarray (k, n_elements)
        Counting-statistics standard deviation (the floor of the spread).
    values : ndarray (k, n_elements)
        The fitted fractions ``c^``.

    Returns
    -------
    ndarray (k, n_elements)
        ``|b| + max(sqrt(spread^2 + (kappa b)^2), counting_sd)``, at most
        ``max(c^, 1 - c^)``: a fraction lies in ``[0, 1]``, so its error cannot
        be larger (at a few counts per pixel refits that split the phases
        otherwise can give more, which says no more than "undetermined").
    """
    spread = np.hypot(spread, BIAS_RELATIVE_UNCERTAINTY * bias)
    U = np.abs(bias) + np.maximum(spread, counting_sd)
    return np.minimum(U, np.maximum(values, 1.0 - values))

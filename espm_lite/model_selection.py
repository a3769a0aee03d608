r"""Choosing the number of phases by held-out Poisson deviance.

:func:`select_n_components` scores each candidate number of phases ``k`` by
how well a fit that did not see some entries of the data predicts them:

1. The entries of the spectrum image are split at random into groups of a
   fraction ``fraction`` of the entries each (a speckled pattern: single
   entries, not whole pixels or channels, so that every pixel and every
   channel keeps most of its data; the pixels follow one of 64 random
   channel patterns, :func:`speckle_folds`, which makes the masked fits
   fast). ``n_folds`` of the groups are the folds.
2. For each fold and each ``k``, the estimator is fitted with the fold's
   entries masked (``fit(X, mask=...)``: they are left out of the data term,
   exactly, see :mod:`espm_lite.kernels.missing`).
3. The fit predicts the held-out entries, ``Y_{ij} = (G W H)_{ij}``, and is
   scored by the mean Poisson deviance per held-out entry,

   .. math:: d = \frac{2}{|\Omega|} \sum_{(i,j) \in \Omega}
             \Big( X_{ij} \log\frac{X_{ij}}{Y_{ij}} - X_{ij} + Y_{ij} \Big),

   the Poisson likelihood ratio of the prediction against the saturated
   model (``0 log 0 = 0``).
4. With too few phases the model misses structure and the held-out
   deviance is high; with too many the extra phases fit the noise of the
   entries they saw, which does not predict the held-out ones, and the
   deviance rises again (slowly: the flat part of the curve is where ``k``
   is large enough). The chosen ``k`` is the smallest candidate whose mean
   deviance is within one standard error of the best mean (the "one
   standard error rule"); the standard error is that of the per-fold
   difference to the best candidate (paired: the folds are the same for
   every ``k``, which removes the fold-to-fold variation they share).

The scoring fits are :class:`espm_lite.SmoothNMF` by default (NNDSVDa
start, ``simplex_W=True``; with ``shape_2d`` given, Laplacian smoothing of the
maps, ``normalize=True`` and ``lambda_L = 3`` up to 30 counts per pixel, ``90 /
counts`` above (:func:`default_lambda_L`): low-count data need it, without it the
maps of extra phases fit the noise; high-count data need less), each capped at
``max_iter`` iterations with tolerance ``tol`` (well short of convergence: the cap
also regularises, see ``docs/maths.md``); pass an estimator to score another
model (it is cloned, its ``n_components`` set to each candidate, its
orientation handled here).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from ._problem import internal_layout
from .kernels import canonical_csr, choose_path
from .kernels.compiled import poisson_deviance_at, use_compiled
from .kernels.sparse_data import model_at

logger = logging.getLogger(__name__)

#: Default iteration cap and tolerance of the scoring fits.
SCORING_MAX_ITER = 60
SCORING_TOL = 1e-4
#: Laplacian smoothing of the default scoring fits when the scan shape is known
#: (``normalize=True`` units), up to :data:`SCORING_REFERENCE_COUNTS` counts per pixel,
#: then falling as ``1 / counts``. Measured on phantoms (``benchmarks/bench_n_components.py``):
#: without it, at 20 counts/pixel, extra phases fit the noise of the maps so fast that
#: ``k = 1`` always scores best; at high counts a strength of 1 to 3 blurs the edges of
#: the maps enough that extra phases improve the held-out deviance (1000 counts/pixel on
#: 40x40 pixels, 300 on 20x20), while 0 to 0.3 do not.
SCORING_LAMBDA_L = 3.0
SCORING_REFERENCE_COUNTS = 30.0


@dataclass(frozen=True)
class NComponentsScores:
    """Held-out deviance of each candidate number of phases.

    Attributes
    ----------
    candidates : ndarray of int (c,)
    scores : ndarray (c, n_folds)
        Mean Poisson deviance per held-out entry, per candidate and fold.
    n_components : int
        The chosen number of phases (one-standard-error rule).
    best : int
        The candidate with the lowest mean deviance.
    fraction : float
        Fraction of the entries held out in each fold.
    """

    candidates: np.ndarray
    scores: np.ndarray
    n_components: int
    best: int
    fraction: float

    @property
    def n_folds(self) -> int:
        return self.scores.shape[1]

    @property
    def mean(self) -> np.ndarray:
        """Mean held-out deviance per candidate (c,)."""
        return self.scores.mean(axis=1)

    @property
    def std(self) -> np.ndarray:
        """Standard deviation over the folds per candidate (c,)."""
        return self.scores.std(axis=1, ddof=1) if self.n_folds > 1 else np.zeros(len(self.mean))

    @property
    def sem(self) -> np.ndarray:
        """Standard error of each candidate's difference to the best one (paired over folds)."""
        return paired_sem(self.scores, int(np.argmin(self.mean)))

    def plot(self, ax=None):
        """Held-out deviance (mean and standard error) against ``k``, the chosen ``k`` marked.

        Returns the matplotlib axes.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        ax.errorbar(self.candidates, self.mean, yerr=self.sem, marker="o", capsize=3)
        ax.axvline(self.n_components, color="C3", ls="--", label=f"chosen k = {self.n_components}")
        ax.set_xlabel("number of phases k")
        ax.set_ylabel("held-out Poisson deviance / entry")
        ax.set_xticks(self.candidates)
        ax.legend()
        return ax


def paired_sem(scores: np.ndarray, reference: int) -> np.ndarray:
    """Standard error over the folds of ``scores[c] - scores[reference]`` (c,)."""
    n_folds = scores.shape[1]
    if n_folds < 2:
        return np.zeros(scores.shape[0])
    diff = scores - scores[reference]
    return diff.std(axis=1, ddof=1) / np.sqrt(n_folds)


def one_standard_error(candidates: np.ndarray, scores: np.ndarray) -> tuple[int, int]:
    """``(chosen, best)``: the smallest candidate within one (paired) standard error of the best."""
    mean = scores.mean(axis=1)
    best = int(np.argmin(mean))
    threshold = mean[best] + paired_sem(scores, best)
    order = np.argsort(candidates)
    chosen = next(int(candidates[i]) for i in order if mean[i] <= threshold[i])
    return chosen, int(candidates[best])


def _check_arguments(candidates, n_folds, fraction):
    values = np.asarray(list(candidates) if isinstance(candidates, Iterable) else [candidates])
    if values.size == 0 or values.ndim != 1:
        raise ValueError("candidates must be a non-empty sequence of positive integers.")
    if not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values.tolist()
    ):
        raise ValueError(f"candidates must be positive integers, got {values.tolist()}.")
    if np.any(values < 1) or len(set(values.tolist())) != values.size:
        raise ValueError(f"candidates must be distinct positive integers, got {values.tolist()}.")
    if not isinstance(fraction, numbers.Real) or not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be in (0, 0.5], got {fraction!r}.")
    groups = int(round(1 / fraction))
    if isinstance(n_folds, bool) or not isinstance(n_folds, numbers.Integral) or n_folds < 1:
        raise ValueError(f"n_folds must be a positive integer, got {n_folds!r}.")
    if n_folds > groups:
        raise ValueError(
            f"n_folds={n_folds} disjoint folds of fraction={fraction} do not fit in the data: "
            f"at most {groups}."
        )
    return np.sort(values.astype(int)), groups


#: Rows of :func:`speckle_folds` follow one of this many random column patterns.
FOLD_PATTERNS = 64


def speckle_folds(
    shape: tuple[int, int], n_folds: int, groups: int, rng, patterns: int = FOLD_PATTERNS
) -> list[sp.csr_matrix]:
    """Disjoint random sets of entries of a ``shape`` matrix, as CSR indicators.

    Each of ``patterns`` random patterns assigns every column to one of
    ``groups`` groups, and each row (pixel) follows one of the patterns, drawn
    at random: the entry ``(i, j)`` is in the group that the pattern of row
    ``i`` gives column ``j``. For each column the patterns' groups are balanced
    (every group given to ``patterns // groups`` or one more patterns, in a
    random order), so every channel loses about ``1 / groups`` of its pixels in
    every fold. The first ``n_folds`` groups are returned, each about
    ``1 / groups`` of the entries and of every row. Every entry is in a
    group with probability ``1 / groups``, independently of the other entries
    of its row, as in a speckle of single entries; rows that share a pattern
    share their held-out columns, so the masked fits correct the data term
    once per pattern (:class:`espm_lite.kernels.missing.MissingEntries`)
    instead of once per held-out entry: on an 80x80x1980 map at 100
    counts/pixel the held-out entries were 2.4 times as many as the stored
    counts, and their correction took as long as the rest of each iteration.
    """
    p, n = shape
    dtype = np.uint16 if groups > 255 else np.uint8
    row_pattern = rng.integers(patterns, size=p)
    offsets = rng.integers(groups, size=n)
    balanced = (np.arange(patterns)[:, None] + offsets[None, :]) % groups
    assignment = rng.permuted(balanced.astype(dtype), axis=0)
    folds = []
    for f in range(n_folds):
        table = sp.csr_matrix(assignment == f)
        fold = table[row_pattern]
        fold.indices = fold.indices.astype(np.int32, copy=False)
        fold.sort_indices()
        folds.append(fold)
    return folds


def _values_at(X, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Entries ``X[rows, cols]`` of a dense or CSR matrix as a float64 vector."""
    if sp.issparse(X):
        return np.asarray(X[rows, cols], dtype=np.float64).ravel()
    return np.asarray(X[rows, cols], dtype=np.float64)


def heldout_deviance(X, fold: sp.csr_matrix, estimator, x: np.ndarray | None = None) -> float:
    """Mean Poisson deviance per entry of the fitted ``estimator`` at the entries of ``fold``.

    ``X`` and ``fold`` are ``(p, n)``; ``estimator`` was fitted with
    ``hspy_comp=True`` (maps ``H_`` ``(k, p)``, spectra ``components_`` ``(k, n)``);
    ``x``, the data at the entries of ``fold`` in ``fold.tocoo()`` order, when known.
    """
    maps = np.asarray(estimator.H_, dtype=np.float64)
    spectra = np.asarray(estimator.components_, dtype=np.float64)
    compiled = use_compiled() and sp.issparse(fold) and fold.format == "csr"
    coo = fold.tocoo() if x is None or not compiled else None
    x = _values_at(X, coo.row, coo.col) if x is None else x
    if compiled:  # one loop over the held-out entries, in storage order (that of ``x``)
        entries = sp.csr_matrix((x, fold.indices, fold.indptr), shape=fold.shape)
        return float(2 * poisson_deviance_at(entries, maps.T, spectra.T) / max(x.size, 1))
    # The model at the entries by 1-D gathers per component (3-10x faster than an
    # einsum over (k, entries) gathers on 80x80x1980 maps).
    y = model_at(maps.T, coo.row, [np.take(spectrum, coo.col) for spectrum in spectra])
    y = np.maximum(y, np.finfo(np.float64).tiny)
    positive = x > 0
    terms = y - x
    terms[positive] += x[positive] * np.log(x[positive] / y[positive])
    return float(2 * terms.sum() / max(x.size, 1))


def _internal_data(X, estimator):
    """``X`` in the ``(p, n)`` layout; CSR when the fits would take the sparse path.

    Converted once, so that each scoring fit starts from data in the form it
    uses (no per-fit conversion of a dense array).
    """
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}.")
    Xi = internal_layout(X, estimator.hspy_comp)
    if not sp.issparse(Xi) and choose_path(Xi, estimator.sparse) == "sparse":
        Xi = canonical_csr(Xi)
    return Xi


def default_lambda_L(Xi) -> float:
    """Smoothing of the default scoring fits for data ``Xi`` (pixels as rows).

    ``SCORING_LAMBDA_L * min(1, SCORING_REFERENCE_COUNTS / c)`` with ``c`` the mean
    counts per pixel (``normalize=True`` units, in which a fixed strength smooths as much
    at any dose, while the information in the counts grows with ``c``).
    """
    counts = float(Xi.sum(dtype=np.float64)) / max(Xi.shape[0], 1)
    return SCORING_LAMBDA_L * min(1.0, SCORING_REFERENCE_COUNTS / max(counts, 1e-300))


class _DefaultLayout:
    """Orientation and path choice of the default scoring estimator (SmoothNMF's defaults)."""

    hspy_comp = False
    sparse = "auto"


def _scoring_estimator(estimator, max_iter, tol, shape_2d=None, Xi=None):
    from .estimators.smooth_nmf import SmoothNMF

    if estimator is None:
        smoothing = {}
        if shape_2d is not None:
            smoothing = {"lambda_L": default_lambda_L(Xi), "normalize": True}
        estimator = SmoothNMF(shape_2d=shape_2d, **smoothing)
    elif shape_2d is not None:
        estimator = clone(estimator).set_params(shape_2d=shape_2d)
    if not getattr(estimator, "_supports_mask", False):
        raise ValueError(
            f"{type(estimator).__name__} does not fit masked data, which the held-out "
            "scoring needs; use SmoothNMF (the default)."
        )
    params = {"hspy_comp": True, "verbose": 0}
    if max_iter is not None:
        params["max_iter"] = max_iter
    if tol is not None:
        params["tol"] = tol
    return estimator, clone(estimator).set_params(**params)


def select_n_components(
    X,
    candidates: Iterable[int] = range(1, 9),
    estimator=None,
    *,
    shape_2d: tuple[int, int] | None = None,
    n_folds: int = 3,
    fraction: float = 0.1,
    max_iter: int | None = SCORING_MAX_ITER,
    tol: float | None = SCORING_TOL,
    random_state=None,
    progress: bool = True,
) -> NComponentsScores:
    r"""Choose the number of phases by the Poisson deviance of held-out entries.

    See the module docstring (:mod:`espm_lite.model_selection`) for the
    procedure; in short, for each fold of randomly held-out entries and each
    candidate ``k``, a fit on the other entries predicts the held-out ones,
    scored by the mean Poisson deviance per held-out entry
    ``2 sum (x log(x / y) - x + y) / |held out|``. The chosen ``k`` is the
    smallest candidate within one paired standard error of the best mean.

    Parameters
    ----------
    X : array-like or sparse matrix
        Counts, in the orientation of ``estimator`` (``hspy_comp``): with the
        default estimator ``(n_channels, n_pixels)``, else as the estimator takes it.
    candidates : iterable of int, default=range(1, 9)
        Numbers of phases to score.
    estimator : NMFEstimator or None, default=None
        The model to score, cloned for every fit with ``n_components`` set to
        the candidate; it must accept a ``mask`` (:class:`SmoothNMF`). None:
        ``SmoothNMF()``, no regularisation. Its ``shape_2d`` and ``lambda_L``
        are honoured (the held-out entries are single entries, so every pixel
        keeps its place in the grid).
    shape_2d : (int, int) or None, default=None
        The scan shape ``(ny, nx)`` (pixels row-major). With the default
        estimator it switches on the Laplacian smoothing of the maps
        (:func:`default_lambda_L`, ``normalize=True``; recommended, needed at
        low counts); with an estimator it replaces the estimator's ``shape_2d``.
    n_folds : int, default=3
        Number of disjoint folds (the mean and its standard error are over
        the folds).
    fraction : float, default=0.1
        Fraction of the entries held out in each fold (``n_folds * fraction
        <= 1``).
    max_iter, tol : int and float, or None
        Iteration cap and tolerance of the scoring fits (defaults 60 and
        1e-4); None keeps the estimator's own. The scoring fits do not warn
        when they reach ``max_iter``.
    random_state : int, Generator or None
        Seed of the folds and of the fits.
    progress : bool, default=True
        Show a progress bar over the candidates and folds.

    Returns
    -------
    NComponentsScores
        ``n_components`` (the chosen ``k``), ``scores`` (candidates x folds),
        ``mean``, ``std``, ``sem`` and ``plot()``.

    Examples
    --------
    >>> from espm_lite.datasets import make_spectrum_image
    >>> from espm_lite.model_selection import select_n_components
    >>> data = make_spectrum_image(shape_2d=(16, 16), n_channels=200, n_phases=3, seed=0)
    >>> result = select_n_components(data.X, range(1, 6), random_state=0, progress=False)
    >>> result.n_components
    3
    """
    values, groups = _check_arguments(candidates, n_folds, fraction)
    Xi = _internal_data(X, estimator if estimator is not None else _DefaultLayout)
    _, scorer = _scoring_estimator(estimator, max_iter, tol, shape_2d, Xi)
    rng = np.random.default_rng(random_state)
    seed = int(rng.integers(np.iinfo(np.int32).max))
    folds = speckle_folds(Xi.shape, n_folds, groups, rng)
    scores = _score(Xi, folds, values, scorer, seed, progress)
    chosen, best = one_standard_error(values, scores)
    logger.info("select_n_components: k=%d chosen (lowest mean deviance at k=%d).", chosen, best)
    return NComponentsScores(values, scores, chosen, best, float(fraction))


def _score(Xi, folds, values, scorer, seed: int, progress: bool) -> np.ndarray:
    """Held-out deviance (candidates x folds) of ``scorer`` fitted with each fold masked."""
    n_folds = len(folds)
    scores = np.empty((values.size, n_folds))
    # The passes over the data run on espm_lite's own threads; BLAS threads on
    # the small products only contend with them.
    with (
        tqdm(total=values.size * n_folds, disable=not progress, desc="n_components") as bar,
        threadpool_limits(limits=1, user_api="blas"),
    ):
        for f, fold in enumerate(folds):
            coo = fold.tocoo()
            heldout = _values_at(Xi, coo.row, coo.col)
            for c, k in enumerate(values):
                est = clone(scorer).set_params(n_components=int(k), random_state=seed)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    est.fit(Xi, mask=fold)
                scores[c, f] = heldout_deviance(Xi, fold, est, heldout)
                logger.debug("fold %d, k=%d: held-out deviance %.6g", f, k, scores[c, f])
                bar.update()
    return scores

"""Initial factors for the NMF estimators.

NNDSVD (Boutsidis & Gallopoulos, 2008): each rank-one term of a truncated SVD
is replaced by the dominant one of its positive and negative parts, which gives
a non-negative pair close to the SVD term.  Variants ``"nndsvda"`` and
``"nndsvdar"`` fill the (otherwise stuck) zeros with the mean of their component
or small random values, which multiplicative updates need. NNDSVD and NNDSVDa
are equivariant: rescaling the data, or repeating its columns, rescales the
factors and repeats their rows. Also here: the k-means start of the
least-squares estimators and the projection of a start on ``G``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import nnls
from sklearn.utils.extmath import randomized_svd

from .kernels.chunked import ChunkedData

INIT_METHODS = ("nndsvd", "nndsvda", "nndsvdar", "random")


def generator(random_state) -> np.random.Generator:
    """A Generator seeded from ``random_state`` (int, RandomState or None), as
    scikit-learn's ``check_random_state`` would draw from it."""
    if not isinstance(random_state, np.random.RandomState):
        random_state = np.random.RandomState(random_state)
    return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))


def _positive_part_pair(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit vectors and weight of the dominant sign pattern of ``u v^T``."""
    u_pos, u_neg = np.maximum(u, 0), np.maximum(-u, 0)
    v_pos, v_neg = np.maximum(v, 0), np.maximum(-v, 0)
    nu_pos, nv_pos = np.linalg.norm(u_pos), np.linalg.norm(v_pos)
    nu_neg, nv_neg = np.linalg.norm(u_neg), np.linalg.norm(v_neg)
    if nu_pos * nv_pos >= nu_neg * nv_neg:
        if nu_pos == 0 or nv_pos == 0:
            return u_pos, v_pos, 0.0
        return u_pos / nu_pos, v_pos / nv_pos, nu_pos * nv_pos
    return u_neg / nu_neg, v_neg / nv_neg, nu_neg * nv_neg


def initial_factors(
    X, n_components: int, method: str | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative ``(left, right)`` with ``X ~ left @ right``.

    Parameters
    ----------
    X : ndarray or sparse matrix of shape (r, c), non-negative
    n_components : int
    method : {"nndsvd", "nndsvda", "nndsvdar", "random"} or None
        ``None`` gives ``"nndsvda"`` when ``n_components <= min(r, c)``,
        otherwise ``"random"``.
    rng : numpy Generator

    Returns
    -------
    left : ndarray (r, k)
    right : ndarray (k, c)
    """
    r, c = X.shape
    k = n_components
    dtype = X.dtype
    mean = float(X.sum(dtype=np.float64)) / (r * c) if r * c else 0.0
    if mean <= 0:
        mean = 1.0
    if method is None:
        method = "nndsvda" if k <= min(r, c) else "random"
    if method != "random" and k > min(r, c):
        method = "random"
    if method == "random":
        scale = np.sqrt(mean / k)
        left = scale * np.abs(rng.standard_normal((r, k)))
        right = scale * np.abs(rng.standard_normal((k, c)))
        return left.astype(dtype), right.astype(dtype)

    seed = int(rng.integers(np.iinfo(np.int32).max))
    if isinstance(X, ChunkedData):  # on disk: a randomized SVD band by band, a few passes
        U, S, Vt = X.randomized_svd(k, seed)
    else:
        Xs = X if sp.issparse(X) else np.asarray(X)
        U, S, Vt = randomized_svd(Xs, k, random_state=seed)
    left = np.zeros((r, k))
    right = np.zeros((k, c))
    left[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    right[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for j in range(1, k):
        u, v, weight = _positive_part_pair(U[:, j], Vt[j])
        factor = np.sqrt(S[j] * weight)
        left[:, j] = factor * u
        right[j] = factor * v
    left[left < 1e-12 * left.max()] = 0  # relative: equivariant to the data scale
    right[right < 1e-12 * right.max()] = 0
    if method == "nndsvda":
        # Zeros filled with the mean of their own component: the start stays
        # equivariant to rescaling the data or repeating channels.
        left = np.where(left == 0, _component_means(left, axis=0), left)
        right = np.where(right == 0, _component_means(right, axis=1), right)
    elif method == "nndsvdar":
        left[left == 0] = (mean / 100) * rng.random(np.count_nonzero(left == 0))
        right[right == 0] = (mean / 100) * rng.random(np.count_nonzero(right == 0))
    return left.astype(dtype), right.astype(dtype)


def _component_means(factor: np.ndarray, axis: int) -> np.ndarray:
    """Mean of each component of ``factor`` (positive: the factor's mean for an all-zero one)."""
    means = factor.mean(axis=axis, keepdims=True)
    overall = factor.mean()
    return np.where(means > 0, means, overall if overall > 0 else 1.0)


def project_on_G(G: np.ndarray, spectra: np.ndarray) -> np.ndarray:
    """Non-negative least-squares ``W`` with ``G W ~ spectra``, column by column.

    Entries that come out zero are lifted to 1 % of the mean entry so that the
    multiplicative updates can move them.
    """
    G64 = np.asarray(G, dtype=np.float64)
    W = np.column_stack([nnls(G64, col.astype(np.float64))[0] for col in spectra.T])
    fill = 0.01 * W.mean() if W.mean() > 0 else 1.0
    return np.maximum(W, fill).astype(spectra.dtype)


def kmeans_factors(X, n_components: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Semi-NMF start (Ding, Li & Jordan 2008): k-means of the rows of ``X``.

    Returns the cluster indicators plus 0.2 ``(r, k)`` (so that multiplicative
    updates can move every entry) and the cluster centroids ``(k, c)``.  With
    fewer distinct rows than clusters the surplus centroids are random rows.
    """
    from sklearn.cluster import KMeans

    r = X.shape[0]
    k = n_components
    seed = int(rng.integers(np.iinfo(np.int32).max))
    if k >= r:
        labels = np.arange(r) % k
        centroids = np.asarray(
            X[rng.integers(0, r, size=k)].todense()
            if sp.issparse(X)
            else X[rng.integers(0, r, size=k)],
            dtype=np.float64,
        )
    else:
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(X)
        labels = km.labels_
        centroids = km.cluster_centers_
    indicators = np.full((r, k), 0.2)
    indicators[np.arange(r), labels] += 1.0
    return indicators, np.asarray(centroids, dtype=np.float64)

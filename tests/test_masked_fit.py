"""Masked fitting: ``fit(X, mask=...)`` leaves the masked entries out of the data term."""

import numpy as np
import pytest
import scipy.sparse as sp

from espm_lite import PNMF, SNMF, ConvexNMF, SmoothNMF, config_context
from espm_lite.kernels.compiled import indicator_times, indicator_transpose_times
from espm_lite.kernels.missing import MissingEntries, as_missing_indicator, zero_missing
from espm_lite.measures import matched_angles

pytestmark = pytest.mark.usefixtures("quiet_convergence")


def _reference_mu(X, missing, W, H, n_iter):
    """Masked Lee-Seung KL updates written out densely (maps first, then spectra)."""
    observed = (~missing).astype(float)
    X = np.where(missing, 0, X)
    for _ in range(n_iter):
        den = W.T @ observed
        H = np.where(den > 0, H * (W.T @ (X / (W @ H))) / np.where(den > 0, den, 1), H)
        den = observed @ H.T
        W = np.where(den > 0, W * ((X / (W @ H)) @ H.T) / np.where(den > 0, den, 1), W)
    return W, H


@pytest.fixture
def masked_problem(small_problem):
    rng = np.random.default_rng(1)
    missing = rng.random(small_problem.shape) < 0.2
    missing[4, :] = True  # a dead channel
    missing[:, 7] = True  # a dead pixel
    n, p = small_problem.shape
    return small_problem, missing, rng.random((n, 3)) + 0.1, rng.random((3, p)) + 0.1


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("hspy_comp", [False, True])
def test_masked_updates_are_the_weighted_kl_updates(masked_problem, sparse, hspy_comp):
    X, missing, W0, H0 = masked_problem
    est = SmoothNMF(
        3,
        simplex_W=False,
        max_iter=6,
        no_stop_criterion=True,
        accelerate=False,  # the plain update rules are under test
        verbose=0,
        sparse=sparse,
        hspy_comp=hspy_comp,
    )
    garbage = np.where(missing, 1e6, X)  # masked values must not matter
    if hspy_comp:
        est.fit_transform(garbage.T, W=W0, H=H0, mask=missing.T)
    else:
        est.fit_transform(garbage, W=W0, H=H0, mask=missing)
    W_ref, H_ref = _reference_mu(X, missing, W0, H0, 6)
    np.testing.assert_allclose(est.W_, W_ref, rtol=1e-10)
    np.testing.assert_allclose(est.H_, H_ref, rtol=1e-10)
    # No data for the dead channel / pixel: they keep their start values.
    np.testing.assert_allclose(est.W_[4], W0[4], rtol=1e-12)
    np.testing.assert_allclose(est.H_[:, 7], H0[:, 7], rtol=1e-12)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
@pytest.mark.parametrize("sparse", [False, True])
def test_rows_that_share_their_missing_channels_are_corrected_per_pattern(
    small_problem, sparse, engine
):
    """Pixels in few missing-channel patterns (held-out folds, dead channels) take the
    per-pattern corrections; the updates are still the weighted KL updates."""

    X = small_problem
    rng = np.random.default_rng(2)
    patterns = rng.random((3, X.shape[0])) < 0.3  # 3 channel patterns over 48 pixels
    missing = patterns[rng.integers(3, size=X.shape[1])].T
    missing[:, 5] = True  # a dead pixel: a fourth pattern
    entries = MissingEntries(sp.csr_matrix(missing.T), np.float64)
    assert entries.patterns is not None and entries.patterns.shape[0] == 4
    np.testing.assert_array_equal(entries.patterns[entries.row_pattern].toarray(), missing.T)
    W0, H0 = rng.random((X.shape[0], 3)) + 0.1, rng.random((3, X.shape[1])) + 0.1
    est = SmoothNMF(
        3,
        simplex_W=False,
        max_iter=6,
        no_stop_criterion=True,
        accelerate=False,
        verbose=0,
        sparse=sparse,
    )
    with config_context(engine=engine):
        est.fit_transform(np.where(missing, 1e6, X), W=W0, H=H0, mask=missing)
    W_ref, H_ref = _reference_mu(X, missing, W0, H0, 6)
    np.testing.assert_allclose(est.W_, W_ref, rtol=1e-10)
    np.testing.assert_allclose(est.H_, H_ref, rtol=1e-10)
    np.testing.assert_allclose(est.H_[:, 5], H0[:, 5], rtol=1e-12)  # no data: kept


def test_speckled_rows_are_not_grouped_and_compiled_products_match_scipy():

    rng = np.random.default_rng(3)
    indicator = sp.random(200, 90, density=0.1, format="csr", random_state=4)
    indicator.data[:] = 1.0
    assert MissingEntries(indicator, np.float64).patterns is None  # every row its own
    for k in (2, 9):  # unrolled and generic kernels
        D, A = rng.random((90, k)), rng.random((200, k))
        np.testing.assert_array_equal(indicator_times(indicator, D), indicator @ D)
        np.testing.assert_allclose(
            indicator_transpose_times(indicator, A), indicator.T @ A, rtol=1e-13
        )


def test_empty_mask_is_no_mask(small_problem):
    kw = dict(max_iter=20, no_stop_criterion=True, verbose=0, random_state=0)
    a = SmoothNMF(3, **kw).fit(small_problem)
    b = SmoothNMF(3, **kw).fit(small_problem, mask=np.zeros(small_problem.shape, bool))
    np.testing.assert_allclose(b.W_, a.W_, rtol=1e-12)
    np.testing.assert_allclose(b.H_, a.H_, rtol=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        dict(algo="log_surrogate", lambda_L=1.0, mu=0.1),
        dict(algo="l2_surrogate", lambda_L=1.0),
        dict(algo="projected_gradient", lambda_L=0.5),
        dict(algo="log_surrogate", l2=True),
        dict(algo="log_surrogate", simplex_H=True, simplex_W=False),
    ],
)
@pytest.mark.parametrize("sparse", [False, True])
def test_masked_objective_never_increases_and_ignores_masked_values(masked_problem, params, sparse):
    X, missing, _, _ = masked_problem
    kw = dict(max_iter=40, no_stop_criterion=True, verbose=0, random_state=0, shape_2d=(6, 8))
    est = SmoothNMF(3, sparse=sparse, **params, **kw).fit(X, mask=missing)
    losses = est.losses_
    if params["algo"] != "projected_gradient":
        assert np.all(np.diff(losses) <= 1e-10 * np.abs(losses[1:]))
    assert losses[-1] < losses[0]
    garbage = np.where(missing, np.nan, X)
    other = SmoothNMF(3, sparse=sparse, **params, **kw).fit(garbage, mask=missing)
    np.testing.assert_allclose(other.W_, est.W_, rtol=1e-10)
    # loss() with the mask: the data term over the observed entries (per observed entry).
    Y = est.W_ @ est.H_
    obs = ~missing
    if params.get("l2"):
        expected = 0.5 * np.sum((X - Y)[obs] ** 2)
    else:
        x, y = X[obs], Y[obs]
        expected = np.sum(np.where(x > 0, x * np.log(np.where(x > 0, x, 1) / y), 0) - x + y)
    penalty = dict(simplex_H=None, l2=None)  # no penalty terms to add in these two rows
    if set(params) - {"algo"} <= set(penalty):
        got = est.loss(est.W_, est.H_, X=X, mask=missing)
        assert got == pytest.approx(expected / obs.sum(), rel=1e-8)
    if not params.get("l2"):  # (l2: losses_ are not in the data's units, a separate issue)
        fitted = est.loss(est.W_, est.H_, X=X, mask=missing)
        assert fitted == pytest.approx(losses[-1], rel=1e-8)


def test_masked_fit_with_G_and_sparse_mask(masked_problem):
    X, missing, _, _ = masked_problem
    G = np.abs(np.random.default_rng(2).random((X.shape[0], 5)))
    kw = dict(G=G, max_iter=30, no_stop_criterion=True, verbose=0, random_state=0)
    dense = SmoothNMF(3, **kw).fit(X, mask=missing)
    sparse_mask = SmoothNMF(3, **kw).fit(sp.csr_matrix(X), mask=sp.coo_matrix(missing))
    np.testing.assert_allclose(sparse_mask.W_, dense.W_, rtol=1e-9)
    assert np.all(np.diff(dense.losses_) <= 1e-10 * np.abs(dense.losses_[1:]))


@pytest.mark.parametrize("perturbed", [False, True])
def test_masked_fit_recovers_the_phantom_with_missing_entries(phantom_500, perturbed):
    """10 % of the entries and three channels hold garbage; masked, the fit recovers the
    spectra, also on data whose spectra are not the generator's (a channel response)."""
    rng = np.random.default_rng(0)
    truth, X = phantom_500.spectra, phantom_500.X
    if perturbed:
        response = np.exp(0.4 * np.sin(np.linspace(0, 3, X.shape[0])))[:, None]
        truth = truth * response / (truth * response).sum(axis=0)
        X = rng.poisson(500 * truth @ phantom_500.maps).astype(float)
    missing = rng.random(X.shape) < 0.1
    missing[100:103] = True  # dead channels
    corrupted = np.where(missing, 1e5, X)  # saturated / hot entries
    est = SmoothNMF(3, verbose=0, random_state=0, max_iter=150).fit(corrupted, mask=missing)
    assert np.all(matched_angles(truth, est.W_) < 5.0)


def test_mask_validation(small_problem):
    X = small_problem
    est = SmoothNMF(3, verbose=0, max_iter=5)
    with pytest.raises(ValueError, match="mask must have the shape of X"):
        est.fit(X, mask=np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="mask must be a boolean array"):
        est.fit(X, mask=np.zeros(X.shape))
    with pytest.raises(ValueError, match="mask masks every entry"):
        est.fit(X, mask=np.ones(X.shape, bool))
    for cls in (PNMF, SNMF, ConvexNMF):
        with pytest.raises(ValueError, match=f"{cls.__name__} does not fit masked data"):
            cls(2, verbose=0, max_iter=5).fit(X, mask=np.zeros(X.shape, bool))


def test_mask_leaves_the_callers_arrays_alone(small_problem):
    X = small_problem.copy()
    X[0, 0] = np.nan
    missing = np.zeros(X.shape, bool)
    missing[0, 0] = True
    before, mask_before = X.copy(), missing.copy()
    SmoothNMF(3, verbose=0, max_iter=5).fit(X, mask=missing)
    np.testing.assert_array_equal(X, before)
    np.testing.assert_array_equal(missing, mask_before)


def test_zero_missing_of_sparse_data_drops_exactly_the_masked_entries():

    rng = np.random.default_rng(5)
    counts = rng.poisson(0.5, (40, 30)).astype(float)
    missing = rng.random(counts.shape) < 0.2
    missing[0, 0] = False
    stored = np.where(missing & (counts > 0), np.nan, counts)  # masked entries: anything
    coo = sp.coo_matrix(np.where(np.isnan(stored), 1.0, stored))
    coo.data[np.isnan(stored[coo.row, coo.col])] = np.nan
    # A CSR matrix with the columns of each row in reverse order and a duplicate of
    # (0, 0) (summed, as SciPy does): not canonical.
    csr = coo.tocsr()
    indices = np.concatenate(
        [[0]] + [csr.indices[a:b][::-1] for a, b in zip(csr.indptr, csr.indptr[1:])]
    )
    data = np.concatenate(
        [[1.0]] + [csr.data[a:b][::-1] for a, b in zip(csr.indptr, csr.indptr[1:])]
    )
    indptr = np.r_[0, csr.indptr[1:] + 1]
    X = sp.csr_matrix((data, indices, indptr), shape=counts.shape)
    assert not X.has_canonical_format
    expected = np.where(missing, 0.0, counts)
    expected[0, 0] += 1.0
    before = X.copy()
    out = zero_missing(X, as_missing_indicator(missing, counts.shape))
    assert out.has_canonical_format and not np.isnan(out.data).any()
    np.testing.assert_array_equal(out.toarray(), expected)
    np.testing.assert_array_equal(X.data, before.data)  # the input is untouched

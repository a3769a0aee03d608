"""PNMF: Poisson factorisation with log-normal maps, fitted by variational inference."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import gammaln
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from espm_lite.datasets import make_spectrum_image
from espm_lite.estimators.pnmf import PNMF

SHAPE = (40, 40)
N_CHANNELS = 300


def _phantom(counts_per_pixel):
    return make_spectrum_image(
        shape_2d=SHAPE,
        n_channels=N_CHANNELS,
        n_phases=3,
        counts_per_pixel=counts_per_pixel,
        seed=3,
    )


@pytest.fixture(scope="module")
def phantoms():
    return {c: _phantom(c) for c in (20, 200, 500)}


def _fit(X, **params):
    kwargs = dict(n_components=3, random_state=0, verbose=0)
    kwargs.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = PNMF(**kwargs)
        out = est.fit_transform(X)
    return est, out


@pytest.fixture(scope="module")
def fitted_200(phantoms):
    """Converged fit at 200 counts/pixel, hspy orientation (pixels as rows)."""
    return _fit(phantoms[200].X.T, hspy_comp=True, max_iter=600)


def _elbo_bound(est, X_np, D):
    """The Jensen ELBO recomputed from the fitted attributes (dense, float64)."""
    X = np.asarray(X_np, dtype=np.float64)  # (p, n)
    mu, var = est.F_mean_.T, est.F_var_.T  # (p, k)
    m, s2 = est.prior_mean_, est.prior_var_
    Y = np.exp(mu) @ D.T
    expected_rate = np.exp(mu + var / 2) @ D.T
    kl = 0.5 * np.sum(np.log(s2 / var) + (var + (mu - m) ** 2) / s2 - 1)
    return float(np.sum(X * np.log(Y)) - expected_rate.sum() - gammaln(X + 1).sum() - kl)


# ------------------------------------------------------------------ accuracy
@pytest.mark.parametrize("counts", [200, 500])
def test_recovers_phantom_spectra(phantoms, counts):
    data = phantoms[counts]
    est, D = _fit(data.X, max_iter=400)
    angles = data.angles(D)
    assert np.all(angles < 5.0), angles
    assert D.shape == (N_CHANNELS, 3)
    np.testing.assert_allclose(est.W_.sum(axis=0), 1.0, rtol=1e-4)  # simplex_W


def test_elbo_increases_and_equals_recomputed_bound(phantoms):
    data = phantoms[200]
    est, D = _fit(data.X, max_iter=80, tol=0, no_stop_criterion=True)
    losses = est.losses_
    assert losses.shape == (est.n_iter_,)
    # -ELBO never increases (up to rounding).
    assert np.all(np.diff(losses) <= 1e-12 * np.abs(losses[1:]))
    assert losses[0] - losses[-1] > 1e-3 * abs(losses[-1])
    assert np.isfinite(est.elbo_) and est.elbo_ < 0
    n, p = data.X.shape
    np.testing.assert_allclose(-est.elbo_ / (n * p), losses[-1], rtol=1e-12)
    np.testing.assert_allclose(est.elbo_, _elbo_bound(est, data.X.T, D), rtol=1e-9)
    history = est.get_losses()
    np.testing.assert_allclose(
        history["expected_nll_loss"] + history["KL_prior_loss"], history["full_loss"]
    )


def test_posterior_std_shrinks_with_counts(phantoms):
    relative = {}
    for counts in (20, 500):
        est, _ = _fit(phantoms[counts].X, max_iter=300)
        assert np.all(est.H_std_ > 0)
        np.testing.assert_allclose(est.H_std_, est.H_ * np.sqrt(np.expm1(est.F_var_)), rtol=1e-10)
        np.testing.assert_allclose(est.H_, np.exp(est.F_mean_ + est.F_var_ / 2), rtol=1e-10)
        dominant = est.H_ >= est.H_.max(axis=0, keepdims=True)  # each pixel's main phase
        relative[counts] = float(np.mean((est.H_std_ / est.H_)[dominant]))
    # About 1/sqrt(counts) for the dominant phases (the absent ones stay uncertain).
    assert relative[500] < 0.5 * relative[20], relative


# ----------------------------------------------------------------- transform
def test_transform_pixels_independent_and_matches_fit(phantoms, fitted_200):
    est, maps = fitted_200
    X = phantoms[200].X.T
    np.testing.assert_allclose(maps, est.H_.T)
    full = est.transform(X)
    rows = np.array([1599, 3, 17, 900, 5])
    np.testing.assert_allclose(est.transform(X[rows]), full[rows], rtol=1e-6)
    # On the training pixels the per-pixel solve lands on the fitted posterior.
    assert np.abs(full - est.H_.T).max() < 2e-3 * est.H_.max()
    std = est.transform_std(X)
    assert std.shape == full.shape
    assert np.abs(std - est.H_std_.T).max() < 5e-3 * est.H_std_.max()
    np.testing.assert_allclose(est.inverse_transform(full), full @ est.components_)


def test_transform_channels_orientation(phantoms):
    data = phantoms[200]
    est, D = _fit(data.X, max_iter=400)
    spectra = est.transform(data.X)
    assert spectra.shape == D.shape
    assert np.abs(spectra - D).max() < 2e-2 * D.max()
    with pytest.raises(ValueError, match="hspy_comp=True"):
        est.transform_std(data.X)


# ------------------------------------------------------------- conventions
@pytest.mark.parametrize("hspy_comp", [False, True])
def test_shapes_in_both_orientations(phantoms, hspy_comp):
    data = phantoms[200]
    n, p = data.X.shape
    X = data.X.T if hspy_comp else data.X
    est, out = _fit(X, hspy_comp=hspy_comp, max_iter=5)
    assert est.W_.shape == (n, 3) and est.G_ is None
    for name in ("H_", "H_std_", "F_mean_", "F_var_"):
        assert getattr(est, name).shape == (3, p), name
    assert est.prior_mean_.shape == est.prior_var_.shape == (3,)
    if hspy_comp:
        assert out.shape == (p, 3)
        assert est.components_.shape == (3, n)
        np.testing.assert_allclose(est.components_, est.W_.T)
    else:
        assert out.shape == (n, 3)
        assert est.components_ is est.H_
    assert est.inverse_transform(out).shape == X.shape
    assert est.n_features_in_ == X.shape[1] and est.n_components_ == 3


def test_sparse_input_gives_dense_result(phantoms):
    data = phantoms[200]
    dense, D1 = _fit(data.X, max_iter=20, tol=0, no_stop_criterion=True)
    sparse, D2 = _fit(sp.csr_matrix(data.X), max_iter=20, tol=0, no_stop_criterion=True)
    assert sparse.data_path_ == "sparse"
    # The fit ends with the exact (Newton) solve of the spectra, whose nearly flat
    # directions turn rounding differences into ~1e-9 absolute on entries ~1e-2.
    np.testing.assert_allclose(D2, D1, rtol=1e-8, atol=1e-7 * D1.max())
    np.testing.assert_allclose(sparse.H_, dense.H_, rtol=1e-8)
    np.testing.assert_allclose(sparse.elbo_, dense.elbo_, rtol=1e-12)


def test_normalize_is_an_exact_reparametrisation(phantoms):
    data = phantoms[200]
    plain, D1 = _fit(data.X, max_iter=30, tol=0, no_stop_criterion=True)
    scaled, D2 = _fit(data.X, normalize=True, max_iter=30, tol=0, no_stop_criterion=True)
    np.testing.assert_allclose(D2, D1, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(scaled.H_, plain.H_, rtol=1e-6)
    np.testing.assert_allclose(scaled.elbo_, plain.elbo_, rtol=1e-10)
    np.testing.assert_allclose(scaled.losses_, plain.losses_, rtol=1e-10)


def test_float32_stays_float32(phantoms):
    X = phantoms[200].X.T.astype(np.float32)
    est, maps = _fit(X, hspy_comp=True, max_iter=10)
    assert maps.dtype == np.float32
    for name in ("W_", "H_", "H_std_", "components_"):
        assert getattr(est, name).dtype == np.float32, name
    assert est.transform(X[:50]).dtype == np.float32
    assert est.transform_std(X[:50]).dtype == np.float32
    assert np.isfinite(est.elbo_)


def test_input_not_modified(phantoms):
    X = phantoms[200].X.copy()
    _fit(X, max_iter=3, normalize=True)
    np.testing.assert_array_equal(X, phantoms[200].X)
    Xs = sp.csr_matrix(X)
    data = Xs.data.copy()
    est, _ = _fit(Xs, max_iter=3, normalize=True)
    est.transform(Xs[:20])
    np.testing.assert_array_equal(Xs.data, data)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"bound": "foo"}, "bound"),
        ({"n_mc": 0}, "n_mc"),
        ({"shape_2d": (4, 4)}, "shape_2d"),
        ({"simplex_H": True}, "simplex_H"),
        ({"l2": True}, "l2"),
        ({"fixed_H": np.ones((3, 1600))}, "fixed_H"),
        ({"prior_var": 0.0}, "prior_var"),
        ({"prior_mean": [0.0, 1.0]}, "prior_mean"),
        ({"prior_var": [1.0, -1.0, 1.0]}, "prior_var"),
    ],
)
def test_bad_parameters_raise(phantoms, params, name):
    with pytest.raises(ValueError, match=name):
        PNMF(n_components=3, verbose=0, **params).fit(phantoms[200].X)


def test_fixed_prior_is_kept(phantoms):
    est, _ = _fit(phantoms[200].X, prior_mean=4.0, prior_var=[1.0, 2.0, 0.5], max_iter=20)
    np.testing.assert_array_equal(est.prior_mean_, [4.0, 4.0, 4.0])
    np.testing.assert_array_equal(est.prior_var_, [1.0, 2.0, 0.5])


def test_loss_of_w_h_is_not_defined(phantoms):
    est, _ = _fit(phantoms[200].X, max_iter=2)
    with pytest.raises(NotImplementedError, match="ELBO"):
        est.loss(est.W_, est.H_, X=phantoms[200].X)


def test_known_G(phantoms):
    data = phantoms[500]
    G = np.hstack([data.spectra, np.linspace(1, 0, N_CHANNELS)[:, None] / 150])
    est, D = _fit(data.X, G=G, max_iter=100)
    assert est.W_.shape == (4, 3) and est.G_.shape == (N_CHANNELS, 4)
    np.testing.assert_allclose(D, G @ est.W_)
    assert np.all(data.angles(D) < 2.0)


def test_monte_carlo_bound(phantoms):
    X = phantoms[200].X
    kwargs = dict(bound="mc", n_mc=4, max_iter=15, tol=0, no_stop_criterion=True)
    first, D1 = _fit(X, **kwargs)
    again, D2 = _fit(X, **kwargs)
    np.testing.assert_array_equal(D1, D2)  # fixed draws: reproducible
    losses = first.losses_
    assert np.all(np.diff(losses) <= 1e-12 * np.abs(losses[1:]))
    jensen, _ = _fit(X, max_iter=15, tol=0, no_stop_criterion=True)
    # E log sum_l D e^F >= log sum_l D e^mu: the sample-average objective is higher.
    assert first.elbo_ > jensen.elbo_
    other, D3 = _fit(X, random_state=1, **kwargs)
    assert not np.array_equal(D1, D3)


# ------------------------------------------------------- scikit-learn checks
# With max_iter=200 (a short fit) in both orientations, no check expected to fail:
# on the checks' rank-one data the dead phase's spectrum stays at the floor, so
# transform gives back fit_transform (see tests/test_sklearn_compat_pnmf.py).
@parametrize_with_checks(
    [PNMF(max_iter=200, verbose=0), PNMF(max_iter=200, verbose=0, hspy_comp=True)],
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)

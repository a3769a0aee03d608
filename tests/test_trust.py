"""espm's contract and bad input: fixed entries, normalize invariance, given factors,
transform consistency, scale invariance, and clear errors."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from espm_lite import PNMF, SNMF, ConvexNMF, SmoothNMF
from espm_lite.datasets import make_edx_spectrum_image, make_spectrum_image

ESTIMATORS = [SmoothNMF, PNMF, SNMF, ConvexNMF]


@pytest.fixture(scope="module")
def phantom():
    return make_spectrum_image(
        shape_2d=(10, 12), n_channels=80, n_phases=2, counts_per_pixel=100, seed=0
    )


def _close(a, b):
    """espm's measure: relative L1 difference."""
    return np.sum(np.abs(a - b)) / np.sum(np.abs(a))


# ----------------------------------------------------------------- espm's contract
def test_fixed_entries_are_returned_exactly_as_given():
    rng = np.random.default_rng(0)
    X = rng.poisson(50 * rng.random((30, 3)) @ rng.random((3, 200))).astype(float)
    fixed_W = -np.ones((30, 2))
    fixed_W[0, 0] = fixed_W[1, 0] = 0.0
    fixed_H = -np.ones((2, 200))
    fixed_H[0, :20], fixed_H[1, :20] = 1.0, 0.0
    common = dict(n_components=2, max_iter=200, simplex_W=False, simplex_H=True, verbose=0)
    est = SmoothNMF(fixed_W=fixed_W, **common).fit(X)
    np.testing.assert_array_equal(est.W_[fixed_W >= 0], fixed_W[fixed_W >= 0])
    est = SmoothNMF(fixed_H=fixed_H, **common).fit(X)
    np.testing.assert_array_equal(est.H_[fixed_H >= 0], fixed_H[fixed_H >= 0])


@pytest.mark.parametrize("init", ["nndsvd", None])
def test_normalize_is_invariant_to_repeated_and_rescaled_channels(init):
    """espm's test: fitting X and [X/f; X/f] gives the same maps, spectra up to f."""
    rng = np.random.RandomState(0)
    X = rng.rand(10, 32) * 100
    factor = rng.rand() * 50 + 0.1
    X_plus = np.concatenate([X / factor, X / factor], axis=0)
    est = SmoothNMF(
        n_components=5,
        lambda_L=1.0,
        max_iter=10,
        init=init,
        normalize=True,
        shape_2d=[8, 4],
        random_state=0,
        simplex_W=False,
        simplex_H=True,
        verbose=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spectra, maps = est.fit_transform(X), est.H_
        spectra_plus, maps_plus = est.fit_transform(X_plus), est.H_
    assert _close(spectra_plus * factor, np.concatenate([spectra, spectra])) < 1e-4
    assert _close(maps_plus, maps) < 1e-4


@pytest.mark.parametrize("use_G", [False, True])
def test_one_factor_given_recovers_the_other(use_G):
    """espm's way to recover one factor from the other: start from the true one."""
    data = make_edx_spectrum_image(
        ["Fe", "Pt", "Ca", "Si", "O"],
        [[0.5, 0.4, 0.0, 0.05, 0.05], [0.0, 0.0, 0.5, 0.3, 0.2]],
        shape_2d=(10, 20),
        n_channels=2000,
        seed=42,
    )
    maps = np.asarray(data.maps).reshape(2, -1)
    expected = data.spectra @ maps  # the noiseless counts (per unit dose)
    common = dict(n_components=2, max_iter=200, simplex_W=False, simplex_H=True, verbose=0)
    G = data.G if use_G else None
    spectra = SmoothNMF(G=G, **common).fit_transform(expected, H=maps)
    assert np.abs(spectra - data.spectra).max() < 0.03 * data.spectra.max()
    est = SmoothNMF(G=G, **common)
    spectra = est.fit_transform(expected, W=data.W if use_G else data.spectra)
    assert np.abs(spectra - data.spectra).max() < 0.03 * data.spectra.max()
    assert np.abs(est.H_ - maps).max() < 0.03


@pytest.mark.parametrize(
    "cls, hspy_comp", [(SmoothNMF, False), (SmoothNMF, True), (PNMF, True)]
)  # PNMF with hspy_comp=False: see tests/test_sklearn_compat_pnmf.py (flat valleys)
def test_transform_of_the_training_data_reproduces_fit_transform(cls, hspy_comp, phantom):
    X = phantom.X.T.copy() if hspy_comp else phantom.X
    est = cls(n_components=2, hspy_comp=hspy_comp, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = est.fit_transform(X)
    np.testing.assert_allclose(est.transform(X), fitted, rtol=1e-4, atol=1e-4 * fitted.max())


def test_lambda_L_without_shape_2d_smooths_a_line_scan(phantom):
    X = phantom.X
    with pytest.warns(UserWarning, match="shape_2d"):
        est = SmoothNMF(n_components=2, lambda_L=5.0, verbose=0, random_state=0).fit(X)
    line = SmoothNMF(
        n_components=2, lambda_L=5.0, shape_2d=(1, X.shape[1]), verbose=0, random_state=0
    ).fit(X)
    np.testing.assert_allclose(est.H_, line.H_)


# ------------------------------------------------------------------ extreme data
@pytest.mark.parametrize("cls", [SmoothNMF, SNMF, ConvexNMF])
def test_fits_are_invariant_to_the_data_units(cls, phantom):
    """No regulariser: the same factors, up to the scale, for data x1e-12 ... x1e12.

    (Not PNMF: a Poisson likelihood with a prior is not scale-free, counts x1e12
    carry far more evidence.)
    """
    X = phantom.X
    kwargs = dict(n_components=2, random_state=0, verbose=0, max_iter=30, tol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = cls(**kwargs).fit(X)
        for factor in (1e-12, 1e12):
            est = cls(**kwargs).fit(X * factor)
            spectra = est.components_ if est.hspy_comp else est.W_
            scale = np.abs(spectra).sum() / np.abs(ref.W_).sum()
            np.testing.assert_allclose(spectra / scale, ref.W_, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(est.H_ * scale, ref.H_ * factor, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_data_near_the_float_range_give_finite_factors(cls, phantom):
    X = phantom.X / phantom.X.max() * 1e300
    original = X.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = cls(n_components=2, random_state=0, verbose=0, max_iter=20).fit(X)
    assert np.all(np.isfinite(est.W_)) and np.all(np.isfinite(est.H_))
    np.testing.assert_array_equal(X, original)


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_data_whose_pixel_sums_overflow_are_refused(cls):
    X = np.full((20, 30), np.finfo(np.float64).max)
    with pytest.raises(ValueError, match="X is too large"):
        cls(n_components=2, verbose=0).fit(X)


@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("sparse", [False, True])
def test_all_zero_data_are_refused(cls, sparse):
    X = sp.csr_matrix((20, 30)) if sparse else np.zeros((20, 30))
    with pytest.raises(ValueError, match="X is all zero"):
        cls(n_components=2, verbose=0).fit(X)


# ------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("name", ["n_components", "max_iter"])
def test_bool_integer_parameters_are_refused(cls, name, phantom):
    with pytest.raises(TypeError, match=f"{name} must be an integer"):
        cls(verbose=0, **{name: True}).fit(phantom.X)


def test_loss_checks_the_factor_shapes(phantom):
    est = SmoothNMF(n_components=2, verbose=0, max_iter=5).fit(phantom.X)
    with pytest.raises(ValueError, match="W must have shape"):
        est.loss(est.W_[:5], est.H_, X=phantom.X)
    with pytest.raises(ValueError, match="H must have shape"):
        est.loss(est.W_, est.H_[:, :5], X=phantom.X)


@pytest.mark.parametrize("sparse", [False, True])
def test_a_callable_G_cannot_change_the_data(sparse, phantom):
    G = np.random.default_rng(0).random((phantom.X.shape[0], 4)) + 0.1

    def writes(X):
        (X.data if sp.issparse(X) else X)[0] = 123.0
        return G

    X = sp.csr_matrix(phantom.X) if sparse else phantom.X.copy()
    original = X.copy()
    with pytest.raises(ValueError, match="read-only"):
        SmoothNMF(n_components=2, G=writes, verbose=0, max_iter=3).fit(X)
    np.testing.assert_array_equal(
        X.toarray() if sparse else X, original.toarray() if sparse else original
    )


def test_a_non_finite_objective_stops_the_fit_with_a_clear_error(phantom):
    from espm_lite import _loop
    from espm_lite._problem import prepare

    est = SmoothNMF(n_components=2, verbose=0)
    problem = prepare(est, phantom.X)
    solver = est._solver(problem)
    state = solver.start(problem)

    class Overflowing:
        names = solver.names

        def step(self, problem, state):
            return {"data": np.inf, "Lapl_reg_loss": 0.0, "log_reg_loss": 0.0}

        def __getattr__(self, name):
            return getattr(solver, name)

    with pytest.raises(FloatingPointError, match="objective is not finite.*data=inf"):
        _loop.run(Overflowing(), problem, state, tol=1e-6, max_iter=5, verbose=0, name="X")

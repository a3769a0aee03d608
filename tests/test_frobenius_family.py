"""SNMF (semi-NMF) and ConvexNMF: recovery on phantoms, monotonicity, transform, errors."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from espm_lite import SNMF, ConvexNMF
from espm_lite.datasets import make_spectrum_image
from espm_lite.measures import matched_angles


def _monotone(losses: np.ndarray) -> bool:
    return bool(np.all(np.diff(losses) <= 1e-12 * np.abs(losses[:-1])))


@pytest.fixture(scope="module")
def centred_phantom():
    """Each pixel's spectrum centred over channels: signed spectra, the same maps."""
    data = make_spectrum_image(
        shape_2d=(40, 40), n_channels=300, n_phases=3, counts_per_pixel=2000, seed=3
    )
    X = data.X - data.X.mean(axis=0, keepdims=True)
    spectra = data.spectra - data.spectra.mean(axis=0, keepdims=True)
    return X, spectra, data


@pytest.fixture(scope="module")
def phantom():
    return make_spectrum_image(
        shape_2d=(40, 40), n_channels=300, n_phases=3, counts_per_pixel=500, seed=3
    )


# ------------------------------------------------------------------- SNMF
def test_snmf_recovers_signed_spectra_monotonically(centred_phantom):
    X, true_spectra, _ = centred_phantom
    assert (true_spectra < 0).any() and (true_spectra > 0).any()
    est = SNMF(n_components=3, max_iter=8000, random_state=0, verbose=0)
    D = est.fit_transform(X)
    assert D.shape == (300, 3) and est.H_.shape == (3, 1600)
    assert np.all(est.H_ >= 0)
    assert (D < 0).any()
    assert np.all(matched_angles(true_spectra, D) < 5.0)
    assert _monotone(est.losses_)
    assert est.losses_[-1] < est.losses_[0]
    # The reported error is the Frobenius norm of the residual.
    residual = np.linalg.norm(X - est.W_ @ est.H_)
    assert est.reconstruction_err_ == pytest.approx(residual, rel=1e-6)


def test_snmf_objective_is_monotone_on_random_signed_data():
    rng = np.random.default_rng(1)
    for trial in range(5):
        X = rng.standard_normal((60, 4)) @ rng.random((4, 50)) + 0.1 * rng.standard_normal((60, 50))
        est = SNMF(
            n_components=3,
            sparsity=0.5 * trial,
            no_stop_criterion=True,
            max_iter=150,
            random_state=trial,
            verbose=0,
        )
        est.fit(X)
        assert _monotone(est.losses_), trial


def test_snmf_two_components_give_two(centred_phantom):
    X, _, _ = centred_phantom
    est = SNMF(n_components=2, random_state=0, verbose=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        D = est.fit_transform(X)
    assert D.shape == (300, 2) and est.components_.shape == (2, 1600)


def test_snmf_sparsity_is_not_degenerate(centred_phantom):
    """The L1 term does not shrink the maps to zero by growing the spectra."""
    X, _, _ = centred_phantom
    kwargs = dict(n_components=3, random_state=0, verbose=0, max_iter=2000)
    plain = SNMF(**kwargs).fit(X)
    sparse = SNMF(sparsity=5.0, **kwargs).fit(X)
    for est in (plain, sparse):
        np.testing.assert_allclose(np.linalg.norm(est.W_, axis=0), 1.0, rtol=1e-10)
    # same scale of maps, and more of them at the floor
    assert 0.5 < sparse.H_.sum() / plain.H_.sum() < 1.0
    assert (sparse.H_ < 1e-8).mean() > (plain.H_ < 1e-8).mean()


def test_snmf_transform_is_nnls(centred_phantom):
    from scipy.optimize import nnls

    X, _, _ = centred_phantom
    est = SNMF(n_components=3, random_state=0, verbose=0, hspy_comp=True, max_iter=300)
    maps = est.fit_transform(X.T)
    np.testing.assert_allclose(est.transform(X.T), maps, atol=1e-8 * np.abs(maps).max())
    rows = [3, 500, 1599]
    part = est.transform(X.T[rows])
    basis = est.components_.T
    for i, row in enumerate(rows):
        np.testing.assert_allclose(part[i], nnls(basis, X.T[row])[0], atol=1e-8)
    # pinv-and-clip would differ wherever the unconstrained solution has a negative entry
    assert np.all(part >= 0)


def test_snmf_with_G_gives_spectra_in_its_span():
    rng = np.random.default_rng(0)
    G = np.abs(rng.standard_normal((80, 6)))
    W = rng.standard_normal((6, 2))
    H = rng.random((2, 100))
    X = G @ W @ H
    est = SNMF(n_components=2, G=G, random_state=0, verbose=0, tol=1e-10, max_iter=3000)
    est.fit(X)
    assert est.W_.shape == (6, 2)
    residual = np.linalg.norm(est.G_ @ est.W_ @ est.H_ - X) / np.linalg.norm(X)
    assert residual < 0.02
    with pytest.raises(ValueError, match="sparsity"):
        SNMF(G=G, sparsity=1.0, verbose=0).fit(X)


# -------------------------------------------------------------- ConvexNMF
@pytest.mark.parametrize("solver", ["mu", "pgd"])
def test_convex_spectra_are_convex_combinations_of_pixels(phantom, solver):
    est = ConvexNMF(n_components=3, solver=solver, max_iter=300, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        D = est.fit_transform(phantom.X)
    B = est.convex_weights_
    assert B.shape == (3, 1600)
    assert np.all(B >= 0)
    np.testing.assert_allclose(B.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(D, phantom.X @ B.T, rtol=1e-10)
    assert _monotone(est.losses_)


@pytest.mark.parametrize("solver", ["mu", "pgd"])
def test_convex_recovers_pure_spectra(phantom, solver):
    """Every phase is (nearly) pure in some pixels: the spectra are recovered."""
    assert np.all(phantom.maps.max(axis=1) > 0.99)
    est = ConvexNMF(n_components=3, solver=solver, max_iter=1500, random_state=0)
    est.set_params(verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        D = est.fit_transform(phantom.X)
    assert np.all(phantom.angles(D) < 5.0)


def test_convex_mu_and_pgd_reach_similar_objectives(phantom):
    kwargs = dict(n_components=3, max_iter=800, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mu = ConvexNMF(solver="mu", **kwargs).fit(phantom.X)
        pgd = ConvexNMF(solver="pgd", **kwargs).fit(phantom.X)
    assert pgd.reconstruction_err_ == pytest.approx(mu.reconstruction_err_, rel=0.01)


def test_convex_l1_penalty_sparsifies_maps(phantom):
    kwargs = dict(n_components=3, max_iter=400, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = ConvexNMF(**kwargs).fit(phantom.X)
        sparse = ConvexNMF(l1_penalty=20.0, **kwargs).fit(phantom.X)
    assert sparse.H_.sum() < plain.H_.sum()
    assert (sparse.H_ < 1e-6).mean() > (plain.H_ < 1e-6).mean()


def test_convex_transform_accepts_any_number_of_pixels(phantom):
    est = ConvexNMF(n_components=3, hspy_comp=True, max_iter=100, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        maps = est.fit_transform(phantom.X.T)
    np.testing.assert_allclose(est.transform(phantom.X.T), maps, atol=1e-8 * maps.max())
    for rows in ([7], list(range(0, 1600, 7)), list(range(1600)) * 2):
        np.testing.assert_allclose(est.transform(phantom.X.T[rows]), maps[rows], atol=1e-8)


def test_convex_never_forms_the_pixel_kernel(phantom, monkeypatch):
    """A p x p product would need X X^T; the fit only multiplies X by thin matrices."""
    X = sp.csr_matrix(phantom.X)
    seen = []
    original = sp.csr_matrix.__matmul__

    def spy(self, other):
        result = original(self, other)
        seen.append(result.shape)
        return result

    monkeypatch.setattr(sp.csr_matrix, "__matmul__", spy)
    est = ConvexNMF(n_components=3, max_iter=5, no_stop_criterion=True, verbose=0)
    est.fit(X)
    assert seen and all(min(shape) <= 3 for shape in seen)


def test_convex_normalize_keeps_spectra_as_pixel_combinations(phantom):
    kwargs = dict(n_components=3, max_iter=200, random_state=0, verbose=0, hspy_comp=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = ConvexNMF(normalize=True, **kwargs)
        maps = est.fit_transform(phantom.X.T)
    D = est.components_.T
    np.testing.assert_allclose(D, phantom.X @ est.convex_weights_.T, rtol=1e-10)
    np.testing.assert_allclose(maps @ est.components_, phantom.expected.T, rtol=0.5, atol=5)
    np.testing.assert_allclose(est.transform(phantom.X.T), maps, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------ both of them
@pytest.mark.parametrize("cls", [SNMF, ConvexNMF])
def test_sparse_input_gives_dense_result(cls, phantom):
    kwargs = dict(n_components=3, max_iter=40, no_stop_criterion=True, random_state=0, verbose=0)
    dense = cls(**kwargs).fit(phantom.X)
    sparse = cls(**kwargs).fit(sp.csr_matrix(phantom.X))
    np.testing.assert_allclose(sparse.W_, dense.W_, rtol=1e-8, atol=1e-10)
    assert sparse.data_path_ == "sparse"


@pytest.mark.parametrize("cls", [SNMF, ConvexNMF])
def test_input_untouched_and_float32_kept(cls, phantom):
    X = phantom.X.astype(np.float32)
    before = X.copy()
    est = cls(n_components=3, max_iter=20, random_state=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = est.fit_transform(X)
    np.testing.assert_array_equal(X, before)
    assert out.dtype == np.float32 and est.transform(X).dtype == np.float32


@pytest.mark.parametrize(
    "cls, params, match",
    [
        (SNMF, {"sparsity": -1.0}, "sparsity"),
        (SNMF, {"init": "nndsvd"}, "init"),
        (ConvexNMF, {"solver": "adam"}, "solver"),
        (ConvexNMF, {"l1_penalty": -0.1}, "l1_penalty"),
        (ConvexNMF, {"shape_2d": (3, 3)}, "shape_2d"),
    ],
)
def test_bad_parameters_raise(cls, params, match, phantom):
    with pytest.raises(ValueError, match=match):
        cls(verbose=0, **params).fit(phantom.X)


def test_convex_refuses_negative_data_and_initial_W(phantom):
    with pytest.raises(ValueError, match="Negative values"):
        ConvexNMF(verbose=0).fit(phantom.X - 1)
    with pytest.raises(ValueError, match="initial W"):
        ConvexNMF(n_components=3, verbose=0).fit_transform(phantom.X, W=np.ones((300, 3)))

"""SmoothNMF: recovery of known truth, regularisers, constraints, orientation."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

from espm_lite import SmoothNMF
from espm_lite.measures import matched_angles


def fit(X, **params):
    params.setdefault("verbose", 0)
    params.setdefault("random_state", 0)
    est = SmoothNMF(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        D = est.fit_transform(X)
    return est, D


def hoyer_sparsity(H):
    """Mean Hoyer sparsity of the pixel abundance vectors (0 dense, 1 one-hot)."""
    k = H.shape[0]
    l1 = np.abs(H).sum(axis=0)
    l2 = np.sqrt((H**2).sum(axis=0))
    return float(np.mean((np.sqrt(k) - l1 / l2) / (np.sqrt(k) - 1)))


# --------------------------------------------------------------- recovery
def test_plain_recovers_spectra_within_5_degrees(phantom_500):
    data = phantom_500
    est, D = fit(data.X, n_components=3, max_iter=1000)
    angles = matched_angles(data.spectra, D)
    assert np.all(angles < 5.0), angles
    # The maps follow: mean squared error of the abundances is small.
    errors = data.map_errors(D, est.H_)
    assert np.all(errors < 0.01), errors
    # The product is much closer to the noise-free image than the data are.
    model = D @ est.H_
    model_error = np.linalg.norm(model - data.expected)
    noise = np.linalg.norm(data.X - data.expected)
    assert model_error < 0.2 * noise, (model_error, noise)


@pytest.mark.parametrize("algo", ["log_surrogate", "l2_surrogate", "projected_gradient"])
def test_laplacian_smoothing_lowers_map_error_at_low_counts(phantom_20, algo):
    data = phantom_20
    common = dict(n_components=3, max_iter=600, normalize=True, algo=algo)
    est0, D0 = fit(data.X, **common)
    est1, D1 = fit(data.X, shape_2d=data.shape_2d, lambda_L=2.0, **common)
    err0 = data.map_errors(D0, est0.H_).mean()
    err1 = data.map_errors(D1, est1.H_).mean()
    assert err1 < 0.5 * err0, (err0, err1)


def test_mu_makes_maps_sparser(phantom_20):
    data = phantom_20
    common = dict(n_components=3, max_iter=400, normalize=True)
    est0, _ = fit(data.X, **common)
    est1, _ = fit(data.X, mu=0.5, **common)
    s0 = hoyer_sparsity(est0.H_)
    s1 = hoyer_sparsity(est1.H_)
    assert s1 > s0 + 0.02, (s0, s1)
    assert est1.get_losses()["log_reg_loss"][-1] != 0


def test_mu_per_phase_acts_on_its_phase_only(phantom_20):
    data = phantom_20
    common = dict(n_components=3, max_iter=400, normalize=True)
    est0, _ = fit(data.X, **common)
    est1, _ = fit(data.X, mu=[0.5, 0.0, 0.0], **common)

    # Component 0 (same start, same seed) gets sparser; the penalty counts it only.
    def row_sparsity(row):
        return hoyer_sparsity(row[:, None])  # Hoyer sparsity of the map across pixels

    s0 = [row_sparsity(est0.H_[r]) for r in range(3)]
    s1 = [row_sparsity(est1.H_[r]) for r in range(3)]
    assert s1[0] > s0[0] + 0.02, (s0, s1)
    expected = 0.5 * np.log(est1.H_[0] / est1._scale + 1).sum() / data.X.size
    np.testing.assert_allclose(est1.get_losses()["log_reg_loss"][-1], expected, rtol=1e-6)


# -------------------------------------------------------------- constraints
@pytest.mark.parametrize("algo", ["log_surrogate", "l2_surrogate", "projected_gradient"])
def test_simplex_H_holds_to_dicotomy_tol(phantom_20, algo):
    tol = 1e-6
    est, _ = fit(
        phantom_20.X,
        n_components=3,
        simplex_H=True,
        simplex_W=False,
        algo=algo,
        dicotomy_tol=tol,
        max_iter=50,
        shape_2d=phantom_20.shape_2d,
        lambda_L=1.0,
    )
    assert np.all(np.abs(est.H_.sum(axis=0) - 1) <= tol * 1.0001)
    assert np.all(est.H_ >= 0)


def test_simplex_W_holds_to_dicotomy_tol(small_problem):
    tol = 1e-7
    est, _ = fit(small_problem, n_components=3, dicotomy_tol=tol, max_iter=30)
    assert np.all(np.abs(est.W_.sum(axis=0) - 1) <= tol * 1.0001)


def test_force_simplex_alias(small_problem):
    est, _ = fit(small_problem, n_components=2, force_simplex=False, max_iter=30)
    assert not np.allclose(est.W_.sum(axis=0), 1)
    with pytest.raises(ValueError, match="force_simplex"):
        fit(small_problem, n_components=2, force_simplex=True, simplex_W=False)


def test_simplex_H_and_W_together_rejected(small_problem):
    with pytest.raises(ValueError, match="simplex_W"):
        fit(small_problem, n_components=2, simplex_H=True)


# ---------------------------------------------------------- monotonicity
def random_problem(seed):
    rng = np.random.default_rng(seed)
    ny, nx = rng.integers(3, 9, size=2)
    n = int(rng.integers(5, 40))
    k = int(rng.integers(1, 5))
    p = int(ny * nx)
    D = rng.random((n, k)) ** 2
    H = rng.random((k, p)) ** 2
    X = rng.poisson(rng.uniform(1, 100) * D @ H).astype(float)
    if seed % 3 == 0:
        X[:, rng.integers(p)] = 0  # an empty pixel
        X[rng.integers(n)] = 0  # an empty channel
    options = dict(
        shape_2d=(int(ny), int(nx)),
        lambda_L=float(rng.choice([0.0, 0.1, 1.0, 10.0])),
        mu=float(rng.choice([0.0, 0.05, 1.0])),
        n_components=k,
    )
    if seed % 2:
        options.update(simplex_H=True, simplex_W=False)
    return X, options


@pytest.mark.parametrize("algo", ["log_surrogate", "l2_surrogate"])
@pytest.mark.parametrize("seed", range(12))
def test_mm_algorithms_never_increase_objective(algo, seed):
    X, options = random_problem(seed)
    est, _ = fit(
        X,
        algo=algo,
        max_iter=60,
        no_stop_criterion=True,
        random_state=seed,
        accelerate=False,
        **options,
    )  # the updates themselves (the accelerated loop: test_stopping.py)
    losses = est.losses_
    assert len(losses) == 60
    increases = np.diff(losses)
    assert np.all(increases <= 1e-9 * np.abs(losses[1:]) + 1e-12), increases.max()


def test_projected_gradient_default_step_makes_progress(small_problem):
    est0, _ = fit(small_problem, n_components=3, algo="log_surrogate", max_iter=1)
    est, _ = fit(small_problem, n_components=3, algo="projected_gradient", max_iter=300)
    assert est.losses_[-1] < est.losses_[0]
    # Close to what the multiplicative algorithm reaches.
    ref, _ = fit(small_problem, n_components=3, max_iter=2000, tol=1e-7)
    assert est.losses_[-1] < est0.losses_[0]
    assert est.losses_[-1] <= ref.losses_[-1] * 1.05


def test_projected_gradient_linesearch_monotone(small_problem):
    est, _ = fit(
        small_problem,
        n_components=3,
        algo="projected_gradient",
        linesearch=True,
        gamma=10.0,
        max_iter=100,
    )
    assert np.all(np.diff(est.losses_) <= 1e-12)


def test_convergence_warning_when_max_iter_hit(small_problem):
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        SmoothNMF(n_components=3, max_iter=3, tol=1e-12, verbose=0).fit(small_problem)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        SmoothNMF(n_components=3, max_iter=3, no_stop_criterion=True, verbose=0).fit(small_problem)


# ----------------------------------------------------------- orientation
def test_hspy_comp_gives_transposed_identical_factorisation(phantom_20):
    X = phantom_20.X
    params = dict(n_components=3, max_iter=50, shape_2d=phantom_20.shape_2d, lambda_L=1.0, mu=0.1)
    est_a, D = fit(X, **params)
    est_b, Ht = fit(X.T, hspy_comp=True, **params)
    # The iterations are the same; only the last step, the exact solve of the
    # sample-side factor, depends on the orientation (the spectra with
    # hspy_comp=False; none with hspy_comp=True and lambda_L > 0).
    assert est_a.n_iter_ == est_b.n_iter_
    np.testing.assert_allclose(est_a.losses_[:-1], est_b.losses_[:-1], rtol=1e-10)
    # Each last step can only lower the objective of the last iterate.
    history = est_b.get_losses()
    assert est_a.losses_[-1] <= history["full_loss"][-1] * (1 + 1e-12)
    np.testing.assert_allclose(Ht, est_b.H_.T)
    np.testing.assert_allclose(est_b.components_, est_b.W_.T)
    np.testing.assert_allclose(D, est_a.W_)
    np.testing.assert_allclose(est_a.components_, est_a.H_)
    # inverse_transform reproduces the model in both orientations
    np.testing.assert_allclose(est_a.inverse_transform(D), D @ est_a.H_)
    np.testing.assert_allclose(est_b.inverse_transform(Ht), (est_b.W_ @ est_b.H_).T)


def test_transform_reproduces_fitted_maps(phantom_500):
    X = phantom_500.X.T  # pixels x channels
    est, Ht = fit(X, n_components=3, hspy_comp=True, max_iter=2000)
    maps = est.transform(X)
    rel = np.linalg.norm(maps - Ht) / np.linalg.norm(Ht)
    assert rel < 0.01, rel
    # Any subset of pixels, independently.
    subset = est.transform(X[100:130])
    np.testing.assert_allclose(subset, maps[100:130], rtol=1e-6, atol=1e-8)


def test_exact_row_solve_reaches_the_closed_form_at_the_boundary():
    # Pixels whose counts lie on the channels of phase 0 only: the optimum holds
    # phase 1 at the floor and c_0 = sum(x) / sum(A_0). Newton steps near it must
    # not oscillate (a doubled step lands on the mirror point, equal up to rounding).
    from espm_lite.kernels.newton_rows import newton_rows

    rng = np.random.default_rng(0)
    basis = np.array([[1.0, 0.01], [1.0, 0.01], [0.01, 1.0]])
    X = np.zeros((2000, 3))
    X[:, :2] = rng.integers(1, 60, size=(2000, 2))
    C = newton_rows(X, basis, np.ones((2000, 2)), floor=1e-14)
    exact = X.sum(axis=1) / basis[:, 0].sum()
    np.testing.assert_allclose(C[:, 0], exact, rtol=1e-12)
    np.testing.assert_array_equal(C[:, 1], 1e-14)


# ---------------------------------------------------------- other inputs
def test_float32_is_kept(small_problem):
    est, D = fit(small_problem.astype(np.float32), n_components=2, max_iter=20)
    assert D.dtype == np.float32
    assert est.W_.dtype == np.float32 and est.H_.dtype == np.float32
    assert est.transform(small_problem.astype(np.float32)).dtype == np.float32


def test_integer_and_sparse_input_match_dense(small_problem):
    est_d, D_d = fit(small_problem, n_components=3, max_iter=40, no_stop_criterion=True)
    est_i, D_i = fit(
        small_problem.astype(np.int64), n_components=3, max_iter=40, no_stop_criterion=True
    )
    est_s, D_s = fit(
        sp.csr_matrix(small_problem), n_components=3, max_iter=40, no_stop_criterion=True
    )
    np.testing.assert_allclose(D_i, D_d)
    np.testing.assert_allclose(D_s, D_d, rtol=1e-7)
    np.testing.assert_allclose(est_s.H_, est_d.H_, rtol=1e-7)


def test_all_zero_rows_and_columns_are_valid(small_problem):
    X = small_problem.copy()
    X[:, 5] = 0
    X[3] = 0
    for algo in ["log_surrogate", "l2_surrogate", "projected_gradient"]:
        est, D = fit(X, n_components=3, max_iter=50, algo=algo, simplex_H=True, simplex_W=False)
        assert np.all(np.isfinite(D)) and np.all(np.isfinite(est.H_))
        assert np.all(np.isfinite(est.losses_))


def test_caller_arrays_are_never_modified(small_problem):
    X = small_problem.copy()
    G = np.abs(np.random.default_rng(0).random((X.shape[0], 4)))
    fixed_W = -np.ones((4, 2))
    fixed_W[0, 0] = 0.3
    copies = [a.copy() for a in (X, G, fixed_W)]
    Xs = sp.csr_matrix(X)
    data_copy = Xs.data.copy()
    est, _ = fit(
        X, n_components=2, G=G, fixed_W=fixed_W, simplex_W=False, normalize=True, max_iter=20
    )
    est.transform(X)
    fit(Xs, n_components=2, max_iter=5)
    for a, b in zip((X, G, fixed_W), copies):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(Xs.data, data_copy)
    assert est.G is G  # parameters stored unchanged


def test_known_G_recovers_W():
    rng = np.random.default_rng(3)
    n, m, k, p = 120, 6, 2, 400
    energy = np.linspace(0, 1, n)
    G = np.stack([np.exp(-((energy - c) ** 2) / 0.002) for c in np.linspace(0.1, 0.9, m)], 1)
    W = rng.random((m, k)) ** 2
    W /= W.sum(axis=0)
    H = rng.dirichlet(np.ones(k), size=p).T * 2000
    X = rng.poisson(G @ W @ H).astype(float)
    est, D = fit(X, n_components=k, G=G, max_iter=2000)
    assert est.W_.shape == (m, k)
    cos = (est.W_ / np.linalg.norm(est.W_, axis=0)).T @ (W / np.linalg.norm(W, axis=0))
    assert np.all(np.max(cos, axis=0) > 0.995), cos
    np.testing.assert_allclose(D, G @ est.W_)
    # A callable G gets the data and gives the same fit.
    est_c, D_c = fit(X, n_components=k, G=lambda data: G, max_iter=2000)
    np.testing.assert_allclose(D_c, D)


def test_fixed_entries_are_held(small_problem):
    k = 3
    fixed_H = -np.ones((k, small_problem.shape[1]))
    fixed_H[0, :10] = 0.0
    fixed_W = -np.ones((small_problem.shape[0], k))
    fixed_W[:5, 2] = 0.01
    est, _ = fit(
        small_problem,
        n_components=k,
        fixed_H=fixed_H,
        fixed_W=fixed_W,
        simplex_W=False,
        max_iter=50,
    )
    np.testing.assert_array_equal(est.H_[0, :10], 0.0)  # returned exactly as given
    np.testing.assert_allclose(est.W_[:5, 2], 0.01)


def test_normalize_gives_same_model_scale(phantom_20):
    X = phantom_20.X
    est0, D0 = fit(X, n_components=3, max_iter=300)
    est1, D1 = fit(X, n_components=3, max_iter=300, normalize=True)
    m0 = D0 @ est0.H_
    m1 = D1 @ est1.H_
    assert abs(m1.sum() / X.sum() - 1) < 0.01
    assert np.linalg.norm(m1 - m0) / np.linalg.norm(m0) < 0.05
    np.testing.assert_allclose(est1.W_.sum(axis=0), 1, atol=1e-4)


def test_get_losses_tracks_truth(phantom_500):
    data = phantom_500
    est, _ = fit(data.X, n_components=3, max_iter=100, true_D=data.spectra, true_H=data.maps)
    losses = est.get_losses()
    # one row per accepted iterate (refused extrapolations cost an iteration, no row)
    assert len(losses) == len(est.losses_) <= est.n_iter_
    for name in [
        "full_loss",
        "KL_div_loss",
        "Lapl_reg_loss",
        "log_reg_loss",
        "ang_p0",
        "ang_p2",
        "mse_p0",
    ]:
        assert name in losses.dtype.names
    assert losses["ang_p0"][-1] < losses["ang_p0"][0] or losses["ang_p0"][0] < 5
    np.testing.assert_allclose(losses["full_loss"], est.losses_)
    # loss() recomputes the last objective from the factors.
    np.testing.assert_allclose(est.loss(est.W_, est.H_, X=data.X), est.losses_[-1], rtol=1e-8)


def test_l2_loss_decreases(small_problem):
    est, D = fit(small_problem, n_components=3, l2=True, max_iter=200, simplex_W=False)
    assert "l2_loss" in est.get_losses().dtype.names
    assert np.all(np.diff(est.losses_) <= 1e-12)
    resid = np.linalg.norm(small_problem - D @ est.H_)
    np.testing.assert_allclose(est.reconstruction_err_, resid, rtol=1e-6)


# ---------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "params, X_change, match",
    [
        (dict(), lambda X: -X, "Negative values"),
        (dict(), lambda X: np.where(X > 5, np.nan, X), "NaN"),
        (dict(), lambda X: np.where(X > 5, np.inf, X), "infinity"),
        (dict(G=np.ones((7, 2))), None, "G must have shape"),
        (dict(G=-np.ones((30, 2))), None, "G must be non-negative"),
        (dict(shape_2d=(5, 5)), None, "shape_2d"),
        (dict(n_components=0), None, "n_components"),
        (dict(algo="newton"), None, "algo"),
        (dict(fixed_W=np.zeros((3, 3))), None, "fixed_W must have shape"),
        (dict(fixed_H=np.zeros((2, 3))), None, "fixed_H must have shape"),
        (dict(lambda_L=1.0, shape_2d=(2, 3)), None, "shape_2d"),
        (dict(mu=[1.0, 2.0, 3.0, 4.0]), None, "mu must be"),
        (dict(mu=-1.0), None, "mu"),
        (dict(l2=True, algo="l2_surrogate"), None, "l2_surrogate"),
    ],
)
def test_bad_input_raises_clear_error(small_problem, params, X_change, match):
    X = small_problem if X_change is None else X_change(small_problem)
    params = {"n_components": 2, "verbose": 0, **params}
    with pytest.raises(ValueError, match=match):
        SmoothNMF(**params).fit(X)


def test_progress_bar_off_when_verbose_0(small_problem, capsys):
    SmoothNMF(n_components=2, max_iter=5, verbose=0).fit(small_problem)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    SmoothNMF(n_components=2, max_iter=5, verbose=1).fit(small_problem)
    assert "SmoothNMF" in capsys.readouterr().err

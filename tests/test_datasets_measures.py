"""Tests of the synthetic spectrum images and of the truth measures."""

import numpy as np
import pytest

from espm_lite.datasets import (
    SyntheticSpectrumImage,
    make_maps,
    make_spectra,
    make_spectrum_image,
)
from espm_lite.measures import (
    kl_divergence,
    match_components,
    matched_angles,
    matched_map_errors,
    spectral_angles,
)


@pytest.fixture(scope="module")
def small():
    return make_spectrum_image(
        shape_2d=(20, 30), n_channels=300, n_phases=3, counts_per_pixel=400.0, seed=7
    )


# --------------------------------------------------------------------------- datasets


def test_shapes_and_types(small):
    assert isinstance(small, SyntheticSpectrumImage)
    assert small.X.shape == (300, 600)
    assert small.spectra.shape == (300, 3)
    assert small.maps.shape == (3, 600)
    assert small.energy.shape == (300,)
    assert small.shape_2d == (20, 30)
    assert small.X.dtype == np.float64
    np.testing.assert_allclose(small.energy[:2], [0.2, 0.21])


def test_spectra_and_maps_are_normalised(small):
    assert (small.spectra >= 0).all()
    np.testing.assert_allclose(small.spectra.sum(axis=0), 1.0, rtol=1e-12)
    assert (small.maps >= 0).all()
    np.testing.assert_allclose(small.maps.sum(axis=0), 1.0, rtol=1e-12)


def test_counts_are_poisson_integers_with_the_asked_mean(small):
    assert (small.X >= 0).all()
    np.testing.assert_array_equal(small.X, np.round(small.X))
    assert small.X.sum(axis=0).mean() == pytest.approx(400.0, rel=0.02)
    np.testing.assert_allclose(small.expected, 400.0 * small.spectra @ small.maps)
    # Poisson noise: the residual variance is close to the expected counts.
    resid = small.X - small.expected
    assert np.mean(resid**2) == pytest.approx(small.expected.mean(), rel=0.05)


def test_seed_reproducibility():
    kw = dict(shape_2d=(6, 7), n_channels=200, n_phases=2, counts_per_pixel=50.0)
    a = make_spectrum_image(seed=3, **kw)
    b = make_spectrum_image(seed=3, **kw)
    c = make_spectrum_image(seed=4, **kw)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.spectra, b.spectra)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert not np.array_equal(a.X, c.X)


def test_float32_dtype():
    data = make_spectrum_image(shape_2d=(5, 6), n_channels=200, seed=0, dtype=np.float32)
    assert data.X.dtype == np.float32
    np.testing.assert_array_equal(data.X, np.round(data.X))


@pytest.mark.parametrize("n_phases", [2, 3, 5])
def test_true_spectra_are_more_than_20_degrees_apart(n_phases):
    data = make_spectrum_image(shape_2d=(4, 5), n_channels=400, n_phases=n_phases, seed=1)
    angles = spectral_angles(data.spectra, data.spectra)
    off_diagonal = angles[~np.eye(n_phases, dtype=bool)]
    assert off_diagonal.min() > 20.0


def test_spectra_have_peaks_over_a_background(small):
    # Peaked: the maximum is well above the mean of each spectrum.
    assert (small.spectra.max(axis=0) > 3 * small.spectra.mean(axis=0)).all()
    # A background: no channel above the start of the axis is empty.
    assert (small.spectra[5:] > 0).all()


@pytest.mark.parametrize("kind", ["discs", "gradients"])
@pytest.mark.parametrize("shape_2d", [(4, 5), (1, 7), (17, 9), (40, 40)])
@pytest.mark.parametrize("n_phases", [1, 2, 3, 4])
def test_maps_any_shape_and_phases(kind, shape_2d, n_phases):
    maps = make_maps(shape_2d, n_phases, kind, np.random.default_rng(0))
    assert maps.shape == (n_phases, shape_2d[0] * shape_2d[1])
    assert (maps >= 0).all()
    np.testing.assert_allclose(maps.sum(axis=0), 1.0, rtol=1e-12)
    if kind == "discs":
        # every phase dominates somewhere (less clearly when discs crowd a tiny scan)
        assert (maps.max(axis=1) > (0.8 if min(shape_2d) >= 8 or n_phases < 4 else 0.75)).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_phases", [3, 6])
def test_disc_maps_every_phase_dominates_and_mixes(seed, n_phases):
    maps = make_maps((40, 40), n_phases, "discs", np.random.default_rng(seed))
    assert (maps.max(axis=1) > 0.8).all()
    # soft edges: some pixels are genuine mixtures
    assert ((maps.max(axis=0) > 0.2) & (maps.max(axis=0) < 0.8)).any()


@pytest.mark.parametrize("kind", ["discs", "gradients"])
def test_maps_are_smooth(kind):
    """Neighbouring pixels differ far less than random pixels do."""
    ny, nx = 40, 40
    maps = make_maps((ny, nx), 3, kind, np.random.default_rng(2)).reshape(3, ny, nx)
    neighbour = np.mean(np.abs(np.diff(maps, axis=2))) + np.mean(np.abs(np.diff(maps, axis=1)))
    shuffled = np.random.default_rng(0).permutation(maps.reshape(3, -1), axis=1)
    random_pairs = 2 * np.mean(np.abs(np.diff(shuffled, axis=1)))
    assert neighbour < 0.2 * random_pairs


def test_to_hspy_layout_is_a_new_array(small):
    cube = small.to_hspy_layout()
    assert cube.shape == (20, 30, 300)
    ny, nx = 3, 11
    np.testing.assert_array_equal(cube[ny, nx], small.X[:, ny * 30 + nx])
    cube[0, 0, 0] += 1.0
    assert not np.shares_memory(cube, small.X)


def test_make_spectra_direct():
    energy = 0.2 + 0.01 * np.arange(500)
    spectra = make_spectra(500, 4, energy, np.random.default_rng(0))
    assert spectra.shape == (500, 4)
    np.testing.assert_allclose(spectra.sum(axis=0), 1.0)
    with pytest.raises(ValueError, match="energy"):
        make_spectra(500, 4, energy[:-1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_channels must be at least 2.*got 1"):
        make_spectra(1, 1, energy[:1], np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(shape_2d=(0, 5)), "shape_2d"),
        (dict(shape_2d=(4, 5, 6)), "shape_2d"),
        (dict(shape_2d=5), "shape_2d"),
        (dict(shape_2d=(4.5, 5)), "shape_2d"),
        (dict(n_channels=0), "n_channels"),
        (dict(n_channels=1), "n_channels must be at least 2"),
        (dict(n_channels=3, n_phases=3), "n_channels=3.*n_phases"),
        (dict(n_channels=10.0), "n_channels"),
        (dict(n_phases=0), "n_phases"),
        (dict(n_phases=True), "n_phases"),
        (dict(counts_per_pixel=0.0), "counts_per_pixel"),
        (dict(counts_per_pixel=-3), "counts_per_pixel"),
        (dict(counts_per_pixel=np.inf), "counts_per_pixel"),
        (dict(energy_scale=0.0), "energy_scale"),
        (dict(map_kind="squares"), "map_kind"),
        (dict(dtype=np.int64), "dtype"),
    ],
)
def test_bad_parameters_raise(kwargs, name):
    base = dict(shape_2d=(4, 5), n_channels=200, seed=0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=name):
        make_spectrum_image(**base)


def test_make_maps_bad_kind():
    with pytest.raises(ValueError, match="map_kind"):
        make_maps((4, 5), 2, "stripes", np.random.default_rng(0))


# --------------------------------------------------------------------------- measures


def test_orthogonal_and_parallel_angles():
    A = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    angles = spectral_angles(A, A)
    np.testing.assert_allclose(angles, [[0.0, 90.0], [90.0, 0.0]], atol=1e-6)
    B = np.array([[1.0], [1.0], [0.0]])
    np.testing.assert_allclose(spectral_angles(A, B), [[45.0], [45.0]])


def test_zero_column_is_at_90_degrees():
    A = np.array([[1.0, 0.0], [2.0, 0.0]])
    angles = spectral_angles(A, A)
    assert np.isfinite(angles).all()
    np.testing.assert_allclose(angles[:, 1], 90.0)
    np.testing.assert_allclose(angles[1, :], 90.0)


def test_matching_a_permuted_scaled_copy(small):
    perm = np.array([2, 0, 1])
    est = small.spectra[:, perm] * np.array([3.0, 0.5, 10.0])
    est_before = est.copy()
    order = match_components(small.spectra, est)
    # est column order[r] holds true column r
    np.testing.assert_array_equal(perm[order], np.arange(3))
    np.testing.assert_allclose(matched_angles(small.spectra, est), 0.0, atol=1e-5)
    np.testing.assert_array_equal(est, est_before)


def test_matching_with_extra_estimated_components(small):
    extra = np.column_stack([np.ones(300), small.spectra[:, ::-1], np.linspace(0, 1, 300)])
    order = match_components(small.spectra, extra)
    np.testing.assert_array_equal(order, [3, 2, 1])
    assert matched_angles(small.spectra, extra).shape == (3,)


def test_fewer_estimates_than_truth_raises(small):
    with pytest.raises(ValueError, match="est_spectra"):
        match_components(small.spectra, small.spectra[:, :2])


@pytest.mark.parametrize(
    ("a", "b", "name"),
    [
        (np.ones(5), np.ones((5, 2)), "true_spectra"),
        (np.ones((5, 2)), np.ones((5, 2, 1)), "est_spectra"),
        (np.ones((5, 2)), np.ones((4, 2)), "rows"),
    ],
)
def test_angles_bad_inputs(a, b, name):
    with pytest.raises(ValueError, match=name):
        spectral_angles(a, b)


def test_matched_map_errors_with_spectra(small):
    perm = np.array([1, 2, 0])
    scale = np.array([2.0, 5.0, 0.25])
    est_spectra = small.spectra[:, perm] * scale
    est_maps = small.maps[perm] / scale[:, None]
    maps_before = est_maps.copy()
    errors = matched_map_errors(small.maps, est_maps, small.spectra, est_spectra)
    np.testing.assert_allclose(errors, 0.0, atol=1e-20)
    np.testing.assert_array_equal(est_maps, maps_before)
    # without normalisation the scales show up as errors
    raw = matched_map_errors(small.maps, est_maps, small.spectra, est_spectra, normalize=False)
    assert (raw > 1e-4).all()


def test_matched_map_errors_by_correlation(small):
    perm = np.array([2, 0, 1])
    noisy = small.maps[perm] + 0.01 * np.random.default_rng(0).standard_normal((3, 600))
    errors = matched_map_errors(small.maps, noisy)
    np.testing.assert_allclose(errors, 1e-4, rtol=0.2)


def test_matched_map_errors_bad_inputs(small):
    with pytest.raises(ValueError, match="pixels"):
        matched_map_errors(small.maps, small.maps[:, :-1])
    with pytest.raises(ValueError, match="both"):
        matched_map_errors(small.maps, small.maps, true_spectra=small.spectra)
    with pytest.raises(ValueError, match="est_maps"):
        matched_map_errors(small.maps, small.maps[:2])


def test_kl_divergence():
    rng = np.random.default_rng(0)
    X = rng.poisson(5.0, size=(30, 40)).astype(float)
    X[0, :5] = 0.0  # 0 log 0 = 0
    assert kl_divergence(X, X) == 0.0
    Y = X + 0.5
    assert kl_divergence(X, Y) > 0
    assert kl_divergence(X, rng.random(X.shape) + 0.1) > 0
    # 0 log 0 = 0: only the "+ Y" term remains where X is zero
    assert kl_divergence(np.zeros(3), np.full(3, 2.0)) == pytest.approx(6.0)
    # known value: x log(x/y) - x + y
    assert kl_divergence([2.0], [1.0]) == pytest.approx(2 * np.log(2) - 1)
    with pytest.raises(ValueError, match="shape"):
        kl_divergence(X, X[:, :-1])
    with pytest.raises(ValueError, match="non-negative"):
        kl_divergence(-X - 1, X)

"""Uncertainties of the concentration table: counting statistics and the bootstrap."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from espm_lite import SmoothNMF, uncertainty
from espm_lite.datasets import make_edx_spectrum_image
from espm_lite.quantification import concentration_table
from espm_lite.uncertainty import (
    bootstrap_uncertainty,
    half_width,
    phase_fractions,
    purity_corrected_W,
)

SHAPE = (12, 12)


# ConvergenceWarnings of the short fits here are not what these tests are about
pytestmark = pytest.mark.usefixtures("quiet_convergence")


@pytest.fixture(scope="module")
def phantom():
    return make_edx_spectrum_image(
        shape_2d=SHAPE, energy_scale=0.04, n_channels=250, counts_per_pixel=200, seed=3
    )


@pytest.fixture(scope="module")
def fitted(phantom):
    est = SmoothNMF(3, G=phantom.G, normalize=True, shape_2d=SHAPE, verbose=0, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit_transform(phantom.X)
    return est


def _table(est, G, **kwargs):
    kwargs = {"n_bootstrap": 3, "random_state": 0, "progress": False, **kwargs}
    return concentration_table(est.W_, est.H_, G, uncertainty="bootstrap", estimator=est, **kwargs)


@pytest.fixture(scope="module")
def boot(phantom, fitted):
    return _table(fitted, phantom.G)


def test_bootstrap_table_shapes_and_fields(phantom, fitted, boot):
    shape = (3, len(phantom.elements))
    for name in ("values", "uncertainties", "counting", "bias", "counts"):
        assert getattr(boot, name).shape == shape, name
    assert boot.uncertainty == "bootstrap" and boot.n_bootstrap == 3
    counting = concentration_table(fitted.W_, fitted.H_, phantom.G)
    assert counting.uncertainty == "counting" and counting.bias is None
    np.testing.assert_array_equal(boot.values, counting.values)
    np.testing.assert_array_equal(boot.counting, counting.uncertainties)
    np.testing.assert_array_equal(counting.counting, counting.uncertainties)


def test_headers_say_which_uncertainty(phantom, fitted, boot):
    counting = str(concentration_table(fitted.W_, fitted.H_, phantom.G))
    title = counting.splitlines()[0]
    assert "counting statistics only" in title and "lower bound" in title
    boot_title, boot_header = str(boot).splitlines()[:2]
    assert "bootstrap" in boot_title and "3 Poisson refits" in boot_title
    assert boot_header.count("counting (lower bound)") == 3
    assert "±" in str(boot).splitlines()[2]


def test_bootstrap_exceeds_counting_statistics(boot):
    assert np.all(boot.uncertainties >= boot.counting)
    # the unmixing error is several times the counting error on this phantom
    assert boot.uncertainties.mean() > 3 * boot.counting.mean()
    np.testing.assert_array_less(np.abs(boot.bias), boot.uncertainties + 1e-15)


def test_random_state_reproduces_the_table(phantom, fitted, boot):
    again = _table(fitted, phantom.G)
    np.testing.assert_array_equal(again.uncertainties, boot.uncertainties)
    other = _table(fitted, phantom.G, random_state=1)
    assert not np.array_equal(other.uncertainties, boot.uncertainties)
    rng_a = _table(fitted, phantom.G, random_state=np.random.default_rng(5))
    rng_b = _table(fitted, phantom.G, random_state=np.random.default_rng(5))
    np.testing.assert_array_equal(rng_a.uncertainties, rng_b.uncertainties)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"uncertainty": "poisson"}, "uncertainty"),
        ({"uncertainty": "bootstrap", "n_bootstrap": 1}, "n_bootstrap"),
        ({"uncertainty": "bootstrap", "n_bootstrap": 2.5}, "n_bootstrap"),
        ({"uncertainty": "bootstrap", "n_bootstrap": True}, "n_bootstrap"),
        ({"uncertainty": "bootstrap", "random_state": "seed"}, "random_state"),
        ({"uncertainty": "bootstrap", "random_state": -1}, "random_state"),
        ({"uncertainty": "bootstrap", "progress": "yes"}, "progress"),
        ({"uncertainty": "bootstrap"}, "estimator"),
    ],
)
def test_bad_arguments_are_named(phantom, fitted, kwargs, name):
    with pytest.raises(ValueError, match=name):
        concentration_table(fitted.W_, fitted.H_, phantom.G, **kwargs)


def test_estimator_of_another_fit_is_refused(phantom, fitted):
    other = SmoothNMF(2, G=phantom.G, verbose=0, max_iter=5).fit(phantom.X)
    with pytest.raises(ValueError, match="estimator"):
        concentration_table(
            fitted.W_, fitted.H_, phantom.G, uncertainty="bootstrap", estimator=other
        )


def test_inputs_and_estimator_are_not_modified(phantom, fitted):
    W, H = fitted.W_.copy(), fitted.H_.copy()
    params = fitted.get_params()
    W_in, H_in = fitted.W_.copy(), fitted.H_.copy()
    concentration_table(
        W_in, H_in, phantom.G, uncertainty="bootstrap", estimator=fitted,
        n_bootstrap=2, random_state=0, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(W_in, W)
    np.testing.assert_array_equal(H_in, H)
    np.testing.assert_array_equal(fitted.W_, W)
    np.testing.assert_array_equal(fitted.H_, H)
    assert fitted.get_params().keys() == params.keys()
    assert fitted.get_params()["verbose"] == params["verbose"]


def test_purity_correction_undoes_a_rotation(phantom):
    """A fit pushed outward (phase 0 minus 5 % of phase 1) is rotated back exactly."""
    G = phantom.G.values
    rows = np.asarray(phantom.G.simplex_rows)
    W0 = phantom.W
    rng = np.random.default_rng(0)
    H0 = rng.uniform(0.2, 1.0, (3, 60))
    H0[:, :30] = 0.0
    for r in range(3):  # ten pure pixels per phase
        H0[r, 10 * r : 10 * r + 10] = 1.0
    H0 *= 1e5  # counts: the apparent impurity is far above counting noise
    F = np.zeros((3, 3))
    F[1, 0] = 0.9 * np.min(W0[:, 0] / W0[:, 1])  # as far out as W1 >= 0 allows
    W1 = W0 @ (np.eye(3) - F)
    H1 = (np.eye(3) + F) @ H0  # (I - F)^-1 = I + F as F^2 = 0
    np.testing.assert_allclose(G @ W1 @ H1, G @ W0 @ H0, rtol=1e-12)
    masses = np.ones(int(rows.sum()))
    corrected = phase_fractions(purity_corrected_W(W1, H1, G), rows, masses)
    np.testing.assert_allclose(corrected, phantom.fractions, atol=1e-12)
    assert np.abs(phase_fractions(W1, rows, masses) - phantom.fractions).max() > 1e-3


def test_half_width_is_at_most_the_largest_error_a_fraction_can_have(boot):
    values = np.array([[1.0, 0.0, 0.3], [0.6, 0.05, 0.95]])
    bias = np.array([[-0.2, 0.0, 0.1], [0.9, 0.01, -0.5]])
    spread = np.array([[0.9, 0.02, 0.05], [0.3, 0.01, 0.2]])
    U = half_width(bias, spread, np.zeros_like(values), values)
    uncapped = np.abs(bias) + np.hypot(spread, uncertainty.BIAS_RELATIVE_UNCERTAINTY * bias)
    np.testing.assert_allclose(U, np.minimum(uncapped, np.maximum(values, 1 - values)))
    assert U[0, 0] == 1.0 and U[1, 0] == 0.6 and U[0, 1] < 0.1  # capped where it exceeds
    assert np.all(boot.uncertainties <= np.maximum(boot.values, 1 - boot.values))


def test_pure_pixels_are_judged_by_their_neighbourhood_on_a_grid():
    """At low counts the one-pixel test takes the mixed edge of a pure region as pure.

    Phase 0 fills the left half of a 20 x 20 scan with an apparent impurity of 4 %
    of phase 1; a two-pixel band at its edge is a true 85 / 15 mix; phase 1 fills
    the rest. At 20 counts per pixel the one-pixel tolerance, ``1/sqrt(20) = 0.22``,
    admits the band, and the impurity is overestimated; on the grid the band's
    neighbourhoods include the other phase, so only the interior is taken and the
    impurity moved back is the 4 % exactly.
    """
    shape = (20, 20)
    G = np.eye(4)
    W = np.array([[0.7, 0.1], [0.1, 0.6], [0.1, 0.2], [0.1, 0.1]])
    H = np.zeros((2, *shape))
    H[0, :, :8], H[1, :, :8] = 1.0, 0.04  # phase 0 with its apparent impurity
    H[0, :, 8:10], H[1, :, 8:10] = 0.85, 0.15  # the mixed band
    H[1, :, 10:] = 1.0
    H = 20.0 * H.reshape(2, -1)  # 20 counts per pixel (the columns of G W sum to 1)
    assert np.all(1 - 0.85 / 1.0 <= 1 / np.sqrt(20.0))  # the band passes alone
    expected = W @ np.array([[1.0, 0.0], [0.04, 1.0]])
    np.testing.assert_allclose(purity_corrected_W(W, H, G, shape)[:, 0], expected[:, 0], rtol=1e-12)
    impurity_alone = (purity_corrected_W(W, H, G)[:, 0] - W[:, 0]) / W[:, 1]
    np.testing.assert_allclose(impurity_alone, (8 * 0.04 + 2 * 0.15) / (8 + 2 * 0.85))
    # without a grid that matches the pixels, each pixel alone
    alone = purity_corrected_W(W, H, G)
    np.testing.assert_array_equal(purity_corrected_W(W, H, G, (10, 10)), alone)


def test_a_correction_that_moves_with_the_fit_adds_no_spread(phantom, fitted, monkeypatch):
    """The spread is that of the fit and of the bias estimate ``c~ - c^``, not of ``c~``.

    Refits that only rescale the element rows (same maps) change the fractions
    and the corrected fractions nearly together: the bias estimate barely moves,
    so the spread is the fit's own, not the two spreads added in quadrature.
    """
    W, H, G = fitted.W_, fitted.H_, phantom.G.values
    rows = np.asarray(phantom.G.simplex_rows)
    rng = np.random.default_rng(0)

    def rescaled(estimator, Y, W, H, rng_):
        return W * rng.uniform(0.97, 1.03, W.shape), H, False

    monkeypatch.setattr(uncertainty, "_replicate", rescaled)
    masses = np.ones(int(rows.sum()))
    _, spread = bootstrap_uncertainty(fitted, W, H, G, rows, masses, n_bootstrap=40, progress=False)
    rng = np.random.default_rng(0)  # the same replicates again
    fit, corrected = [], []
    for _ in range(40):
        Wb, Hb, _ = rescaled(None, None, W, H, None)
        fit.append(phase_fractions(Wb, rows, masses))
        corrected.append(phase_fractions(purity_corrected_W(Wb, Hb, G, SHAPE), rows, masses))
    fit, corrected = np.array(fit), np.array(corrected)
    s_fit, s_corr = fit.std(axis=0, ddof=1), corrected.std(axis=0, ddof=1)
    s_bias = (corrected - fit).std(axis=0, ddof=1)
    np.testing.assert_allclose(spread, np.hypot(s_fit, s_bias), rtol=1e-12)
    assert s_bias.sum() < 0.2 * s_fit.sum()
    assert spread.sum() < 0.8 * np.hypot(s_fit, s_corr).sum()


def test_hyperspy_method_passes_the_estimator(phantom):
    pytest.importorskip("hyperspy.api")
    s = phantom.to_signal()
    s.decomposition(
        algorithm="SmoothNMF", G="edx", output_dimension=3, print_info=False, verbose=0,
        max_iter=200,
    )  # fmt: skip
    table = s.concentration_table(uncertainty="bootstrap", n_bootstrap=2, progress=False)
    assert table.uncertainty == "bootstrap"
    assert np.all(table.uncertainties >= table.counting)
    with pytest.raises(ValueError, match="n_bootstrap"):
        s.concentration_table(uncertainty="bootstrap", n_bootstrap=0)
    s._espm_estimator = None  # as after hs.load: the estimator is not saved
    assert s.concentration_table().uncertainty == "counting"
    with pytest.raises(ValueError, match="decomposition"):
        s.concentration_table(uncertainty="bootstrap")

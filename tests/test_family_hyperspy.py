"""Every registered estimator through ``s.decomposition(algorithm=...)``, on both signal types."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

hs = pytest.importorskip("hyperspy.api")

from espm_lite.datasets import make_spectrum_image  # noqa: E402
from espm_lite.hyperspy.decomposition import ALGORITHMS  # noqa: E402

SETTINGS = {
    "SmoothNMF": dict(max_iter=1000),
    "SNMF": dict(max_iter=3000),
    "ConvexNMF": dict(max_iter=1000),
    "PNMF": dict(max_iter=1000),
}


@pytest.fixture(scope="module")
def phantom():
    return make_spectrum_image(
        shape_2d=(40, 40), n_channels=300, n_phases=3, counts_per_pixel=500, seed=3
    )


def test_every_estimator_is_registered():
    assert set(SETTINGS) == set(ALGORITHMS)


@pytest.mark.parametrize("signal_type", ["EDS_espm_lite", "spectrum_image"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_decomposition_by_name(phantom, name, signal_type):
    s = phantom.to_signal(signal_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.decomposition(
            algorithm=name, output_dimension=3, random_state=0, verbose=0, **SETTINGS[name]
        )
    assert s.learning_results.decomposition_algorithm == name
    estimator = s.espm_estimator
    assert type(estimator).__name__ == name and estimator.hspy_comp
    factors = s.get_decomposition_factors().data.T  # (n, k)
    loadings = s.get_decomposition_loadings().data.reshape(3, -1)  # (k, p)
    assert factors.shape == (300, 3) and loadings.shape == (3, 1600)
    if name != "SNMF":  # semi-NMF spectra are signed and rotate on non-negative data
        # 6 degrees: SmoothNMF's converged answer on this phantom is 5.7 degrees from the
        # truth in one phase (the optimum of the objective, not the truth; a fit cut at
        # 1000 plain iterations happened to sit at 4.75).
        assert np.all(phantom.angles(factors) < 6.0)
    model = s.get_decomposition_model()
    residual = np.linalg.norm(model.data - phantom.to_hspy_layout()) / np.linalg.norm(
        phantom.to_hspy_layout()
    )
    noise = np.linalg.norm(phantom.X - phantom.expected) / np.linalg.norm(phantom.X)
    assert residual < 1.2 * noise


def test_snmf_decomposition_of_signed_signal(phantom):
    """Background-subtracted (centred) spectra: signed data, through HyperSpy."""
    X = phantom.X - phantom.X.mean(axis=0, keepdims=True)
    s = hs.signals.Signal1D(X.T.reshape(40, 40, 300))
    s.set_signal_type("spectrum_image")
    s.decomposition(algorithm="SNMF", output_dimension=3, random_state=0, verbose=0, max_iter=300)
    factors = s.get_decomposition_factors().data.T
    assert (factors < 0).any()
    assert np.all(s.get_decomposition_loadings().data >= 0)


@pytest.mark.parametrize("signal_type", ["EDS_espm_lite", "spectrum_image"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_lazy_signals_give_the_eager_result(phantom, name, signal_type):
    eager = phantom.to_signal(signal_type)
    lazy = eager.as_lazy()
    assert lazy._lazy and lazy.metadata.Signal.signal_type == signal_type
    params = dict(output_dimension=3, random_state=0, verbose=0, max_iter=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        eager.decomposition(algorithm=name, **params)
        lazy.decomposition(algorithm=name, **params)
    np.testing.assert_allclose(
        np.asarray(lazy.learning_results.factors), eager.learning_results.factors, rtol=1e-10
    )

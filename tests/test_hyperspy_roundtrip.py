"""An espm_lite fit saved with its signal: what a file keeps, and what replaces the fit.

A saved ``G="edx"`` fit is quantified after ``hs.load`` as before saving; any
later non-espm decomposition or blind source separation forgets the espm fit
(so that it is neither used nor saved with the new results).
"""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

hs = pytest.importorskip("hyperspy.api")

from espm_lite.datasets import make_edx_spectrum_image  # noqa: E402
from espm_lite.hyperspy.decomposition import NOT_SAVED  # noqa: E402

FIT = dict(output_dimension=3, G="edx", random_state=0, verbose=0, max_iter=200, tol=1e-5)


# ConvergenceWarnings of the short fits here are not what these tests are about
pytestmark = pytest.mark.usefixtures("quiet_convergence")


@pytest.fixture(scope="module")
def phantom():
    return make_edx_spectrum_image(shape_2d=(12, 12), seed=0)


def edx_fit(phantom, **params):
    s = phantom.to_signal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.decomposition(algorithm="SmoothNMF", **{**FIT, **params})
    return s


def save_and_load(s, tmp_path, lazy=False):
    path = tmp_path / "fit.hspy"
    s.save(path, overwrite=True)
    return hs.load(path, lazy=lazy)


@pytest.mark.parametrize("lazy", [False, True])
def test_saved_edx_fit_gives_the_same_concentration_table(phantom, tmp_path, lazy):
    s = edx_fit(phantom)
    before = s.concentration_table()
    weight_before = s.concentration_table(kind="weight")
    loaded = save_and_load(s, tmp_path, lazy=lazy)
    assert loaded.espm_estimator is None  # the estimator object itself is not in the file
    after = loaded.concentration_table()
    assert after.elements == before.elements == tuple(phantom.elements)
    assert after.phases == before.phases
    np.testing.assert_allclose(after.values, before.values, rtol=1e-12)
    np.testing.assert_allclose(after.uncertainties, before.uncertainties, rtol=1e-12)
    np.testing.assert_allclose(after.counts, before.counts, rtol=1e-12)
    np.testing.assert_allclose(
        loaded.concentration_table(kind="weight").values, weight_before.values, rtol=1e-12
    )


def test_saved_fit_with_signal_mask_is_quantified(phantom, tmp_path):
    mask = np.zeros(phantom.X.shape[0], dtype=bool)
    mask[:30] = True
    s = edx_fit(phantom, signal_mask=mask)
    before = s.concentration_table()
    loaded = save_and_load(s, tmp_path)
    np.testing.assert_allclose(loaded.concentration_table().values, before.values, rtol=1e-12)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = loaded.plot_element_contributions(phases=[1])
    assert len(fig.axes) == 1
    plt.close(fig)


def test_parameters_are_saved_as_values(phantom, tmp_path):
    mu = np.array([0.0, 0.5, 1.0])
    s = edx_fit(phantom, mu=mu, dtype=np.float64)
    G = s.espm_estimator.get_params()["G"]
    params = save_and_load(s, tmp_path).learning_results.espm_parameters
    np.testing.assert_array_equal(np.asarray(params["mu"]), mu)
    assert params["dtype"] == "float64"
    assert int(params["n_components"]) == 3 and int(params["random_state"]) == 0
    assert list(params["shape_2d"]) == [12, 12]
    np.testing.assert_array_equal(np.asarray(params["G"]["values"]), G.values)
    assert list(params["G"]["labels"]) == list(G.labels)
    np.testing.assert_array_equal(np.asarray(params["G"]["simplex_rows"]), G.simplex_rows)
    # no repr of an object (with its memory address) anywhere
    assert not any(isinstance(v, str) and " at 0x" in v for v in params.values())


def test_what_cannot_be_saved_is_marked_and_warned(phantom, tmp_path):
    s = phantom.to_signal()
    G = s.build_G().values
    with pytest.warns(UserWarning, match=r"G \(callable\).*random_state \(RandomState\)"):
        s.decomposition(
            algorithm="SmoothNMF",
            output_dimension=3,
            G=lambda X: G,
            random_state=np.random.RandomState(0),
            verbose=0,
            max_iter=5,
        )
    params = save_and_load(s, tmp_path).learning_results.espm_parameters
    assert params["G"] == NOT_SAVED.format("callable") == "<not saved: callable>"
    assert params["random_state"] == "<not saved: RandomState>"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to warn about
        edx_fit(phantom, max_iter=5)


def _assert_no_espm_fit(s):
    assert s.espm_estimator is None
    assert not [key for key in vars(s.learning_results) if key.startswith("espm_")]
    with pytest.raises(ValueError, match="No EDX fit"):
        s.concentration_table()


def test_svd_after_espm_fit_clears_it(phantom, tmp_path):
    s = edx_fit(phantom)
    s.change_dtype("float64")  # HyperSpy's SVD needs floats
    s.decomposition(algorithm="SVD", output_dimension=3, print_info=False)
    assert s.learning_results.decomposition_algorithm == "SVD"
    _assert_no_espm_fit(s)
    loaded = save_and_load(s, tmp_path)
    assert loaded.learning_results.decomposition_algorithm == "SVD"
    _assert_no_espm_fit(loaded)


def test_bss_after_espm_fit_clears_it(phantom, tmp_path):
    s = edx_fit(phantom)
    s.blind_source_separation(3, print_info=False)
    assert s.learning_results.bss_factors is not None
    _assert_no_espm_fit(s)
    _assert_no_espm_fit(save_and_load(s, tmp_path))


def test_espm_fit_after_bss_clears_the_bss_results(phantom):
    s = edx_fit(phantom)
    s.blind_source_separation(3, print_info=False)
    s.decomposition(algorithm="SmoothNMF", **{**FIT, "max_iter": 5})
    assert s.learning_results.bss_factors is None
    assert s.learning_results.unmixing_matrix is None
    assert s.concentration_table().values.shape == (3, len(phantom.elements))


def test_changed_decomposition_is_not_quantified(phantom):
    s = edx_fit(phantom)
    s.learning_results.crop_decomposition_dimension(2)
    with pytest.raises(ValueError, match="not the current decomposition"):
        s.concentration_table()
    s = edx_fit(phantom)
    s.learning_results.factors = s.learning_results.factors * 2.0
    with pytest.raises(ValueError, match="not the current decomposition"):
        s.concentration_table()


def test_signed_fit_is_not_quantified(phantom, tmp_path):
    s = phantom.to_signal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.decomposition(algorithm="SNMF", **{**FIT, "max_iter": 50})
    W = s.learning_results.espm_W
    assert (W < 0).any()  # a semi-NMF W on the EDX G is signed
    with pytest.raises(ValueError, match="negative entries in W"):
        s.concentration_table()
    with pytest.raises(ValueError, match="negative entries in W"):  # also once saved
        save_and_load(s, tmp_path).concentration_table()

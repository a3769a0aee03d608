"""The EDX model on spectra it did not generate: calibration and missing elements.

Real spectra: exspy's FePt nanoparticles (TEM, 200 kV, metadata Fe Pt; the Cu
grid and a carbon film are not in the metadata) and ``tests/data/test_TEM.bcf``
(RosettaSciIO test data, see ``tests/data/README.md``; metadata Cu O Pd Ti, the
largest peak is Si Kα). Synthetic spectra for the calibration are drawn from a
model whose axis and resolution differ from the one fitted.
"""

import pathlib
import warnings

import numpy as np
import pytest

exspy = pytest.importorskip("exspy")

import hyperspy.api as hs  # noqa: E402

from espm_lite.hyperspy._edx_setup import MissingElementsWarning  # noqa: E402
from espm_lite.models import EDXModel  # noqa: E402
from espm_lite.models.element_search import find_missing_elements  # noqa: E402
from espm_lite.models.spectrum_fit import calibrate, fit_spectrum, fitted_channels  # noqa: E402

TEST_TEM = pathlib.Path(__file__).parent / "data" / "test_TEM.bcf"
AXIS = dict(energy_offset=0.2, energy_scale=0.01, n_channels=1500)


@pytest.fixture(scope="module")
def fept():
    s = exspy.data.EDS_TEM_FePt_nanoparticles()
    s.set_signal_type("EDS_espm_lite")
    return s


@pytest.fixture(scope="module")
def test_tem():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = hs.load(TEST_TEM)
    s = [x for x in loaded if x.axes_manager.signal_dimension == 1][0]
    s.set_signal_type("EDS_espm_lite")
    return s


def _spectrum(model, weights, scale, seed=0):
    G = np.asarray(model.build_G())
    return np.random.default_rng(seed).poisson(scale * G @ weights).astype(np.float64)


def test_fit_spectrum_of_poisson_counts_has_deviance_near_one():
    model = EDXModel(["Fe", "O", "Si"], 200.0, **AXIS)
    weights = np.array([0.3, 0.5, 0.2, 0.4, 0.2, 0.3])  # elements, Fe_L, 2 bremsstrahlung
    counts = _spectrum(model, weights, 2e5)
    fit = fit_spectrum(counts, model.build_G())
    assert 0.85 < fit.deviance < 1.2
    np.testing.assert_allclose(fit.coefficients / 2e5, weights, rtol=0.05)


def test_calibration_recovers_a_shifted_axis_and_a_wider_resolution():
    true = EDXModel(
        ["Fe", "O", "Si", "Cu"],
        200.0,
        energy_offset=0.2 - 3.3 * 0.01,
        energy_scale=0.01 * 1.001,
        n_channels=1500,
        fwhm_mn_ka=0.142,
    )
    counts = _spectrum(true, np.array([0.3, 0.4, 0.2, 0.1, 0.3, 0.1, 0.4, 0.2]), 3e5)
    start = EDXModel(["Fe", "O", "Si", "Cu"], 200.0, **AXIS)  # nominal axis, 130 eV
    refined, record = calibrate(counts, start)
    assert record.deviance_after < 1.2 < record.deviance_before
    assert abs(refined.energy_offset - true.energy_offset) < 0.3 * 0.01
    assert refined.energy_scale == pytest.approx(true.energy_scale, rel=2e-4)
    assert refined.fwhm_mn_ka == pytest.approx(0.142, abs=0.003)
    assert start.energy_offset == 0.2 and start.fwhm_mn_ka == 0.130  # not modified


def test_calibration_keeps_a_model_that_fits():
    model = EDXModel(["Fe", "O", "Si"], 200.0, **AXIS)
    counts = _spectrum(model, np.array([0.3, 0.5, 0.2, 0.4, 0.2, 0.3]), 1e5)
    refined, record = calibrate(counts, model)
    assert (refined.energy_offset, refined.energy_scale, refined.fwhm_mn_ka) == (0.2, 0.01, 0.130)
    assert record.deviance_after == record.deviance_before
    assert refined.calibration_ is record and model.calibration_ is None


def test_fept_names_the_copper_grid_first(fept):
    data = fept.data.copy()
    found = fept.find_missing_elements()
    names = [c.element for c in found]
    assert names[0] == "Cu"
    assert {"C", "Si"} <= set(names)
    assert ("Ka", pytest.approx(8.048, abs=1e-3)) in found[0].lines
    assert found[0].significance > 10 and found[0].counts > 1e4
    np.testing.assert_array_equal(fept.data, data)
    with pytest.warns(MissingElementsWarning, match=r"\['Fe', 'Pt'\] do not explain.*Cu"):
        fept.build_G()
    assert "calibration" in fept.metadata.espm_lite


def test_fept_with_the_elements_found_fits_far_better(fept):
    counts = np.asarray(fept.data, dtype=np.float64)
    channels = fitted_channels(fept.axes_manager.signal_axes[0].axis)
    given = fit_spectrum(counts, fept.build_G(calibrate=False, check_missing=False), channels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingElementsWarning)  # nothing left to warn about
        G = fept.build_G(add_missing=True)
    assert {"Cu", "C", "Si"} <= set(G.element_labels)
    full = fit_spectrum(counts, G, channels)
    # 155 -> about 5 per channel (exspy's EDSTEMModel: see benchmarks/bench_edx_fidelity.py)
    assert given.deviance > 100 and full.deviance < 8


@pytest.mark.skipif(not TEST_TEM.exists(), reason="tests/data/test_TEM.bcf is missing")
def test_test_tem_names_silicon_first_and_fits_to_near_noise(test_tem):
    assert list(test_tem.metadata.Sample.elements) == ["Cu", "O", "Pd", "Ti"]
    found = test_tem.find_missing_elements()
    assert found[0].element == "Si"
    assert found[0].lines[0][0] == "Ka"
    G = test_tem.build_G(add_missing=True)
    counts = np.asarray(test_tem.data, dtype=np.float64).reshape(-1, G.shape[0]).sum(axis=0)
    fit = fit_spectrum(counts, G, fitted_channels(test_tem.axes_manager.signal_axes[0].axis))
    assert fit.deviance <= 1.5  # issue #12's target (29 with the metadata's elements alone)


@pytest.mark.skipif(not TEST_TEM.exists(), reason="tests/data/test_TEM.bcf is missing")
def test_without_elements_the_peaks_propose_them(test_tem):
    s = test_tem.deepcopy()
    del s.metadata.Sample.elements
    with pytest.warns(MissingElementsWarning, match="No elements in the metadata"):
        G = s.build_G()
    assert {"Si", "Ti", "O"} <= set(G.element_labels)
    assert not s.metadata.has_item("Sample.elements")  # proposed, not written


def test_bad_arguments_are_named(fept):
    with pytest.raises(ValueError, match="calibrate"):
        fept.build_G(calibrate="yes")
    with pytest.raises(TypeError, match="add_missing"):
        fept.build_G(add_missing="no")


def test_fits_with_G_leave_the_zero_peak_out():
    from espm_lite.datasets import make_edx_spectrum_image

    data = make_edx_spectrum_image(
        ("Fe", "O", "Si"),
        [[0.2, 0.6, 0.2], [0.5, 0.5, 0.0]],
        shape_2d=(6, 6),
        energy_offset=-0.1,
        n_channels=400,
        counts_per_pixel=100,
    )
    s = data.to_signal()
    s.data[..., :5] += 50  # a zero peak the model does not have
    energy = s.axes_manager.signal_axes[0].axis
    user_mask = energy > 3.5
    s.decomposition(
        algorithm="SmoothNMF",
        output_dimension=2,
        G="edx",
        signal_mask=user_mask,
        max_iter=50,
        verbose=0,
    )
    factors = np.asarray(s.learning_results.factors)
    left_out = (energy < 0.2) | user_mask
    assert np.all(np.isnan(factors[left_out])) and np.all(np.isfinite(factors[~left_out]))
    # without G every channel is fitted (the zero peak is data like any other)
    s.decomposition(algorithm="SmoothNMF", output_dimension=2, max_iter=5, verbose=0)
    assert np.all(np.isfinite(np.asarray(s.learning_results.factors)))


def test_a_broad_misfit_of_the_continuum_is_not_taken_for_lines():
    """A smooth hump over the continuum that the model lacks (as a thin-film
    bremsstrahlung fitted to a bulk SEM spectrum) raises the residual over
    keV, not over one FWHM: no element is proposed for it, while a real line
    on top of it is still found."""
    model = EDXModel(["Fe", "O"], 200.0, **AXIS)
    G = np.asarray(model.build_G())
    weights = np.r_[0.6, 0.4, np.full(G.shape[1] - 2, 0.3)]
    hump = np.exp(-0.5 * ((model.energy - 4.0) / 0.8) ** 2)  # doubles the continuum at 4 keV
    expected = 2e5 * (G @ weights + hump * (G[:, -2:] @ weights[-2:]))
    counts = np.random.default_rng(0).poisson(expected).astype(np.float64)
    fit = fit_spectrum(counts, G, fitted_channels(model.energy))
    window = np.abs(model.energy - 4.0) < 0.8
    excess = (counts - fit.model)[window].sum() / np.sqrt(fit.model[window].sum())
    assert excess > 20 and fit.deviance > 2  # the misfit is far above the noise
    assert find_missing_elements(counts, model) == []  # was Te, I, Rh by the FWHM window alone
    copper = EDXModel(["Cu"], 200.0, **AXIS).element_column("Cu")
    with_line = counts + np.random.default_rng(1).poisson(2e5 * 0.05 * copper)
    found = find_missing_elements(with_line, model)
    assert [c.element for c in found] == ["Cu"]


def test_search_arguments_are_checked():
    model = EDXModel(["Fe"], 200.0, **AXIS)
    counts = np.ones(1500)
    with pytest.raises(ValueError, match="counts"):
        find_missing_elements(np.ones(10), model)
    with pytest.raises(ValueError, match="counts"):
        find_missing_elements(-counts, model)
    with pytest.raises(ValueError, match="significance"):
        find_missing_elements(counts, model, significance=0)
    with pytest.raises(ValueError, match="max_elements"):
        find_missing_elements(counts, model, max_elements=0)

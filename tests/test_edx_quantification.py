"""EDX quantification: G from the signal, element fractions per phase, uncertainties."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

hs = pytest.importorskip("hyperspy.api")

from espm_lite import SmoothNMF  # noqa: E402
from espm_lite.datasets import make_edx_spectrum_image  # noqa: E402
from espm_lite.measures import match_components  # noqa: E402
from espm_lite.quantification import concentration_table  # noqa: E402

FIT = dict(output_dimension=3, random_state=0, verbose=0, max_iter=3000)


# ConvergenceWarnings of the short fits here are not what these tests are about
pytestmark = pytest.mark.usefixtures("quiet_convergence")


@pytest.fixture(scope="module")
def phantom():
    """The acceptance phantom: 80x80, 1980 channels of 10 eV from 0.2 keV, 200 keV, ~200 counts."""
    return make_edx_spectrum_image(
        shape_2d=(80, 80),
        beam_energy=200.0,
        energy_offset=0.2,
        energy_scale=0.01,
        n_channels=1980,
        counts_per_pixel=200,
        seed=0,
    )


@pytest.fixture(scope="module")
def fitted(phantom):
    s = phantom.to_signal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.decomposition(algorithm="SmoothNMF", G="edx", **FIT)
    return s


def _matched(phantom, s):
    """Fitted phase order matching the true phases, by spectral angle."""
    D = s.get_decomposition_factors().data.T
    return match_components(phantom.spectra, D), D


def test_phantom_has_the_acceptance_shape(phantom):
    assert phantom.X.shape == (1980, 6400)
    assert 6 <= len(phantom.elements) <= 9
    assert phantom.fractions.shape == (3, len(phantom.elements))
    assert abs(phantom.X.sum(axis=0).mean() - 200) < 10


def test_element_fractions_and_spectra_are_recovered(phantom, fitted):
    order, D = _matched(phantom, fitted)
    angles = phantom.angles(D)
    assert np.all(angles < 5.0), angles
    table = fitted.concentration_table()
    assert table.elements == tuple(phantom.elements)
    assert table.kind == "atomic"
    estimated = table.values[order]  # row r: fitted phase matched to true phase r
    np.testing.assert_allclose(estimated.sum(axis=1), 1.0, rtol=1e-6)
    major = phantom.fractions > 0.10
    errors = np.abs(estimated - phantom.fractions)[major]
    assert errors.max() <= 0.03, errors


def test_uncertainties_are_counting_statistics(phantom, fitted):
    table = fitted.concentration_table()
    assert np.all(table.uncertainties >= 0)
    # 1/sqrt(counts) scaling: a major element with N counts has sd ~ c sqrt(1/N) order
    big = table.values > 0.1
    relative = table.uncertainties[big] / table.values[big]
    assert np.all(relative < 0.1) and np.all(relative > 0)
    # More counts, smaller uncertainties (same fit scaled: counts x 4 -> sd / 2)
    est = fitted.espm_estimator
    G = est.get_params()["G"]
    four = concentration_table(est.W_, 4 * est.H_, G)
    np.testing.assert_allclose(four.values, table.values, rtol=1e-12)
    np.testing.assert_allclose(four.uncertainties, table.uncertainties / 2, rtol=1e-9)
    text = str(table)
    assert "atomic fraction" in text and phantom.elements[0] in text and "±" in text


def test_uncertainty_matches_a_monte_carlo_of_the_counts():
    rng = np.random.default_rng(0)
    factors = np.array([1.0, 2.5, 0.7])
    counts = np.array([[4000.0, 900.0, 300.0]])
    _, sd = _fractions_and_sd_public(counts, factors)
    draws = rng.poisson(counts, size=(20000, 3)) / factors
    fractions = draws / draws.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(sd[0], fractions.std(axis=0), rtol=0.05)


def _fractions_and_sd_public(counts, factors):
    from espm_lite.quantification import _fractions_and_sd

    return _fractions_and_sd(counts, factors)


def test_weight_fractions(fitted):
    from espm_lite.models.edx import atomic_weights

    atomic = fitted.concentration_table()
    weight = fitted.concentration_table(kind="weight")
    assert weight.kind == "weight"
    masses = atomic.values * atomic_weights(atomic.elements)
    np.testing.assert_allclose(weight.values, masses / masses.sum(axis=1, keepdims=True))


def test_plot_element_contributions(fitted):
    import matplotlib

    matplotlib.use("Agg")
    fig = fitted.plot_element_contributions()
    assert len(fig.axes) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_simplex_applies_to_element_rows_only(fitted):
    est = fitted.espm_estimator
    G = est.get_params()["G"]
    rows = np.asarray(G.simplex_rows)
    np.testing.assert_allclose(est.W_[rows].sum(axis=0), 1.0, rtol=1e-4)
    assert not np.allclose(est.W_[~rows].sum(axis=0), 1.0)


def test_build_G_reads_the_metadata(phantom):
    s = phantom.to_signal()
    G = s.build_G()  # separate line families: an element's other families are free columns
    assert G.values.shape == (1980, len(phantom.elements) + np.count_nonzero(~G.simplex_rows))
    assert list(G.element_labels) == list(phantom.elements)
    assert {"Fe_L", "Ti_L", "Ca_L"} <= set(G.labels)
    # same as the phantom's own model (joint families, the exact axis)
    joint = s.build_G(line_families="joint", calibrate=False)
    np.testing.assert_allclose(joint.values, phantom.G.values, rtol=1e-10)
    sub = s.build_G(elements=["Fe", "O"])
    assert list(sub.element_labels) == ["Fe", "O"]


def test_missing_metadata_is_named(phantom):
    # bremsstrahlung alone (no X-ray line): no element to propose, so the error names the fix
    from espm_lite.models import EDXModel

    background = phantom.to_signal().deepcopy()
    axis = background.axes_manager.signal_axes[0]
    brems = EDXModel(
        [], 200.0, energy_offset=axis.offset, energy_scale=axis.scale, n_channels=axis.size
    ).build_G()
    expected = np.asarray(brems) @ np.array([70.0, 30.0])
    background.data[:] = np.random.default_rng(0).poisson(expected, background.data.shape)
    del background.metadata.Sample.elements
    with pytest.raises(ValueError, match=r"s\.add_elements"):
        background.build_G()
    s = phantom.to_signal()
    s.metadata.Acquisition_instrument.TEM.__delattr__("beam_energy")
    with pytest.raises(ValueError, match=r"Acquisition_instrument\.TEM\.beam_energy"):
        s.build_G()
    s = phantom.to_signal()
    s.axes_manager.signal_axes[0].units = "eV"
    with pytest.raises(ValueError, match="keV"):
        s.build_G()


def test_G_edx_needs_an_edx_signal(phantom):
    s = phantom.to_signal().deepcopy()
    s.set_signal_type("spectrum_image")
    with pytest.raises(ValueError, match="EDS_espm_lite"):
        s.decomposition(algorithm="SmoothNMF", G="edx", output_dimension=3, max_iter=2)
    with pytest.raises(ValueError, match="No EDX fit"):
        phantom.to_signal().concentration_table()


def test_G_edx_with_an_estimator_object_and_a_signal_mask(phantom):
    s = phantom.to_signal()
    mask = np.zeros(1980, dtype=bool)
    mask[:20] = True  # the lowest channels, often unreliable
    est = SmoothNMF(n_components=3, G="edx", verbose=0, max_iter=30, random_state=0)
    s.decomposition(algorithm=est, signal_mask=mask)
    fitted = s.espm_estimator
    assert fitted.get_params()["G"].values.shape[0] == 1980 - 20
    assert est.G == "edx"  # the caller's object is untouched
    table = s.concentration_table()
    assert table.values.shape == (3, len(phantom.elements))


@pytest.fixture(scope="module")
def small_fit():
    data = make_edx_spectrum_image(shape_2d=(12, 12), seed=0)
    s = data.to_signal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.decomposition(algorithm="SmoothNMF", G="edx", **{**FIT, "max_iter": 100})
    return data, s


@pytest.mark.parametrize("phases", [[5], [3], [-1], [0, 0], [], [1.0], [True], "0"])
def test_plot_element_contributions_bad_phases(small_fit, phases):
    _, s = small_fit
    with pytest.raises(ValueError, match=r"phases must be distinct phase indices in 0\.\.2"):
        s.plot_element_contributions(phases=phases)


def test_plot_element_contributions_chosen_phases(small_fit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, s = small_fit
    fig = s.plot_element_contributions(phases=[2, 0])
    assert [ax.get_title() for ax in fig.axes] == ["phase 2", "phase 0"]
    plt.close(fig)


@pytest.mark.parametrize("beam_energy", [200000.0, 0.2, 401.0])
def test_beam_energy_must_be_in_kev(small_fit, beam_energy):
    from espm_lite.models import EDXModel

    data, s = small_fit
    axis = dict(energy_offset=0.2, energy_scale=0.01, n_channels=1980)
    with pytest.raises(ValueError, match=r"beam_energy is in keV.*1 and 400 keV"):
        EDXModel(["Fe", "O"], beam_energy, **axis)
    with pytest.raises(ValueError, match=r"beam_energy is in keV"):
        s.build_G(beam_energy=beam_energy)
    with pytest.raises(ValueError, match=r"beam_energy is in keV"):
        make_edx_spectrum_image(shape_2d=(4, 4), beam_energy=beam_energy)
    other = data.to_signal()
    with pytest.raises(ValueError, match=r"beam_energy is in keV"):
        other.set_microscope_parameters(beam_energy=beam_energy)
    assert other.metadata.Acquisition_instrument.TEM.beam_energy == 200.0  # unchanged
    # a value written to the metadata directly is caught when G is built
    other.metadata.Acquisition_instrument.TEM.beam_energy = beam_energy
    with pytest.raises(ValueError, match=r"Acquisition_instrument\.TEM\.beam_energy.*keV"):
        other.build_G()
    with pytest.raises(ValueError, match=r"Acquisition_instrument\.TEM\.beam_energy"):
        other.decomposition(algorithm="SmoothNMF", G="edx", output_dimension=3, max_iter=2)


def test_set_microscope_parameters_still_sets_the_beam_energy(small_fit):
    data, _ = small_fit
    s = data.to_signal()
    s.set_microscope_parameters(beam_energy=120.0, live_time=2.0)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 120.0
    assert s.metadata.Acquisition_instrument.TEM.Detector.EDS.live_time == 2.0


def test_concentration_table_refuses_a_signed_W(small_fit):
    data, _ = small_fit
    W = data.W.copy()
    H = data.maps
    table = concentration_table(W, H, data.G)
    np.testing.assert_allclose(table.values, data.fractions, rtol=1e-10)
    W[0, 1] = -0.01
    with pytest.raises(ValueError, match="non-negative"):
        concentration_table(W, H, data.G)

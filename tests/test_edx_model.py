"""The EDX physics matrix G, the labelled G and the EDX phantom."""

import logging

import numpy as np
import pytest

pytest.importorskip("exspy")

from espm_lite import SmoothNMF  # noqa: E402
from espm_lite.edx_phantom import make_edx_spectrum_image  # noqa: E402
from espm_lite.models import (  # noqa: E402
    EDXModel,
    LabelledG,
    atomic_to_weight_fractions,
    weight_to_atomic_fractions,
)
from espm_lite.models.edx import fwhm_at  # noqa: E402

AXIS = dict(energy_offset=0.2, energy_scale=0.01, n_channels=1980)


def model(elements=("Fe", "O", "Si"), **kwargs):
    return EDXModel(list(elements), 200.0, **{**AXIS, **kwargs})


def test_columns_are_non_negative_and_integrate_to_their_factor():
    m = model()
    G = m.build_G()
    assert G.shape == (1980, 5)
    assert G.labels == ("Fe", "O", "Si", "bremsstrahlung_0", "bremsstrahlung_1")
    assert np.all(np.isfinite(G.values)) and np.all(G.values >= 0)
    sums = G.values.sum(axis=0)
    np.testing.assert_allclose(sums[:3], [m.element_factors_[e] for e in m.elements], rtol=1e-10)
    np.testing.assert_allclose(sums[3:], 1.0, rtol=1e-10)
    np.testing.assert_array_equal(G.simplex_rows, [True, True, True, False, False])
    assert m.factor_source == "default thin-film model"
    assert np.mean(list(m.element_factors_.values())) == pytest.approx(1.0)


def test_peaks_sit_at_the_line_energies():
    m = model()
    G = m.build_G()
    energy = m.energy
    fe = G.values[:, 0]
    assert abs(energy[np.argmax(fe)] - 6.4039) <= 0.01  # Fe Ka
    o = G.values[:, 1]
    assert abs(energy[np.argmax(o)] - 0.5249) <= 0.01  # O Ka


def _fwhm_of_peak(column, energy, centre):
    window = np.abs(energy - centre) < 0.4
    values, e = column[window], energy[window]
    above = e[values >= values.max() / 2]
    return above.max() - above.min()


def test_resolution_grows_with_energy():
    m = model(("Si", "Cu"), n_background=0, element_factors="equal", min_line_weight=0.5)
    G = m.build_G()
    si = _fwhm_of_peak(G.values[:, 0], m.energy, 1.74)
    cu = _fwhm_of_peak(G.values[:, 1], m.energy, 8.048)
    assert si < cu
    assert cu == pytest.approx(fwhm_at(8.048), abs=0.02)
    assert fwhm_at(5.8987) == pytest.approx(0.130)


def test_lines_out_of_range_are_dropped_with_a_debug_log(caplog):
    with caplog.at_level(logging.DEBUG, logger="espm_lite.models.edx"):
        m = EDXModel(["Fe"], 200.0, energy_offset=0.2, energy_scale=0.01, n_channels=300)
    # 0.2 .. 3.2 keV: the Fe K lines (6.4, 7.06 keV) are out, the L lines stay
    kept = [name for name, _, _ in m.lines_["Fe"]]
    assert "Ka" not in kept and "La" in kept
    assert any("Fe Ka" in r.getMessage() and "outside" in r.getMessage() for r in caplog.records)


def test_element_without_lines_in_range_and_unknown_elements_raise():
    with pytest.raises(ValueError, match="no X-ray line"):
        EDXModel(["O"], 200.0, energy_offset=2.0, energy_scale=0.01, n_channels=100)
    with pytest.raises(ValueError, match="Xx"):
        model(("Fe", "Xx"))
    with pytest.raises(ValueError, match="beam_energy"):
        EDXModel(["Fe"], -1.0, **AXIS)
    with pytest.raises(ValueError, match="element_factors"):
        model(element_factors={"Fe": 1.0})


def test_user_and_equal_factors():
    m = model(element_factors={"Fe": 2.0, "O": 0.5, "Si": 1.0})
    assert m.factor_source == "user"
    np.testing.assert_allclose(m.build_G().values.sum(axis=0)[:3], [2.0, 0.5, 1.0])
    equal = model(element_factors="equal")
    assert equal.factor_source == "equal"
    np.testing.assert_allclose(equal.build_G().values.sum(axis=0)[:3], 1.0)
    # only the scale of a column changes with its factor, not its shape
    a, b = m.build_G().values[:, 0], equal.build_G().values[:, 0]
    np.testing.assert_allclose(a / a.sum(), b / b.sum(), rtol=1e-12)


def test_default_factors_follow_the_physics():
    """Fluorescence yield grows with Z (K lines at 200 keV): Fe > Si > O."""
    m = model()
    f = m.element_factors_
    assert f["Fe"] > f["Si"] > f["O"]


def test_detector_efficiency_options():
    flat = model(detector_efficiency=False)
    curved = model()
    assert flat.efficiency(0.3) == 1.0 and curved.efficiency(0.3) < 0.6 < curved.efficiency(2.0)
    custom = model(detector_efficiency=lambda e: np.full_like(e, 0.5))
    np.testing.assert_allclose(custom.efficiency(np.array([1.0, 5.0])), 0.5)
    with pytest.raises(TypeError, match="detector_efficiency"):
        model(detector_efficiency="yes")


def test_fraction_conversions_round_trip():
    atomic = np.array([[0.6, 0.25, 0.15], [0.2, 0.3, 0.5]])
    weight = atomic_to_weight_fractions(atomic, ["O", "Si", "Fe"])
    np.testing.assert_allclose(weight.sum(axis=1), 1.0)
    assert weight[0, 2] > atomic[0, 2]  # Fe is heavy
    np.testing.assert_allclose(weight_to_atomic_fractions(weight, ["O", "Si", "Fe"]), atomic)


def test_labelled_G_validates_and_is_read_only():
    G = LabelledG(np.ones((5, 2)), ("a", "b"), [True, False])
    assert G.element_labels == ("a",)
    assert np.asarray(G).shape == (5, 2)
    with pytest.raises(ValueError):
        G.values[0, 0] = 2.0
    with pytest.raises(ValueError, match="labels"):
        LabelledG(np.ones((5, 2)), ("a", "a"), [True, False])
    with pytest.raises(ValueError, match="non-negative"):
        LabelledG(-np.ones((5, 2)), ("a", "b"), [True, False])
    with pytest.raises(ValueError, match="simplex_rows"):
        LabelledG(np.ones((5, 2)), ("a", "b"), [True])


def test_simplex_w_acts_on_element_rows_only():
    """A labelled G passed to an estimator: element rows sum to 1, background rows free."""
    data = make_edx_spectrum_image(shape_2d=(20, 20), n_channels=600, counts_per_pixel=300, seed=1)
    est = SmoothNMF(n_components=3, G=data.G, max_iter=100, random_state=0, verbose=0)
    est.fit(data.X)
    rows = data.G.simplex_rows
    np.testing.assert_allclose(est.W_[rows].sum(axis=0), 1.0, rtol=1e-4)
    assert est.W_[~rows].sum() > 0.05 * est.W_[rows].sum()  # the background is fitted


def test_phantom_truth_is_consistent():
    data = make_edx_spectrum_image(shape_2d=(30, 20), counts_per_pixel=100, seed=2)
    k, n_el = data.fractions.shape
    assert data.elements == tuple(sorted(data.elements))
    np.testing.assert_allclose(data.fractions.sum(axis=1), 1.0)
    np.testing.assert_allclose(data.W[:n_el].T, data.fractions)
    D = data.G.values @ data.W
    np.testing.assert_allclose(data.spectra, D / D.sum(axis=0))
    background = data.G.values[:, n_el:] @ data.W[n_el:]
    np.testing.assert_allclose(background.sum(axis=0) / D.sum(axis=0), 0.2, rtol=1e-10)
    assert np.all(data.X == np.rint(data.X)) and np.all(data.X >= 0)
    assert data.X.sum(axis=0).mean() == pytest.approx(100, rel=0.02)


def test_phantom_signal_carries_the_metadata():
    data = make_edx_spectrum_image(shape_2d=(10, 12), counts_per_pixel=50, seed=0)
    s = data.to_signal()
    assert s.metadata.Signal.signal_type == "EDS_espm_lite"
    assert list(s.metadata.Sample.elements) == list(data.elements)
    assert s.metadata.Acquisition_instrument.TEM.beam_energy == 200.0
    axis = s.axes_manager.signal_axes[0]
    assert axis.units == "keV" and axis.offset == pytest.approx(0.2)
    assert s.data.shape == (10, 12, 1980)


def test_phantom_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fractions"):
        make_edx_spectrum_image(elements=("Fe", "O"))
    with pytest.raises(ValueError, match="background_fraction"):
        make_edx_spectrum_image(background_fraction=1.0)
    with pytest.raises(ValueError, match="shape"):
        make_edx_spectrum_image(elements=("Fe", "O"), fractions=[[0.5, 0.3, 0.2]])

"""The EDX physics matrix G, the labelled G and the EDX phantom."""

import logging

import numpy as np
import pytest

pytest.importorskip("exspy")

from espm_lite import SmoothNMF  # noqa: E402
from espm_lite.datasets import make_edx_spectrum_image  # noqa: E402
from espm_lite.models import (  # noqa: E402
    EDXModel,
    LabelledG,
    atomic_to_weight_fractions,
    weight_to_atomic_fractions,
)
from espm_lite.models.edx import fwhm_at  # noqa: E402

AXIS = dict(energy_offset=0.2, energy_scale=0.01, n_channels=1980)


def model(elements=("Fe", "O", "Si"), **kwargs):
    return EDXModel(list(elements), 200.0, **{**AXIS, "line_families": "joint", **kwargs})


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
    with caplog.at_level(logging.DEBUG, logger="espm_lite.models"):
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


def test_resolution_formula_is_exspys():
    utils = pytest.importorskip("exspy._misc.eds.utils")
    for energy in (0.5, 1.74, 5.8987, 8.048, 15.0):
        assert fwhm_at(energy, 0.130) == pytest.approx(utils.get_FWHM_at_Energy(130.0, energy))


def test_weak_and_unexcited_lines_are_dropped_with_a_debug_log(caplog):
    with caplog.at_level(logging.DEBUG, logger="espm_lite.models"):
        weak = model(("Fe",), min_line_weight=0.2)
        # 4.8 keV beam: Ti Ka (4.51 keV) is below it, but the K shell (~4.97 keV) is not ionised
        ti = EDXModel(["Ti"], 4.8, **AXIS)
    assert [name for name, _, _ in weak.lines_["Fe"]] == ["Ka", "La", "Ll"]
    assert any("Fe Lb3" in r.getMessage() and "weight" in r.getMessage() for r in caplog.records)
    kept = [name for name, _, _ in ti.lines_["Ti"]]
    assert "Ka" not in kept and "La" in kept
    assert any(
        "Ti Ka" in r.getMessage() and "not ionised" in r.getMessage() for r in caplog.records
    )
    G = ti.build_G()
    assert np.all(np.isfinite(G.values)) and np.all(G.values >= 0)


def test_constructor_rejects_bad_types_and_values():
    with pytest.raises(TypeError, match="elements"):
        EDXModel("Fe", 200.0, **AXIS)
    with pytest.raises(TypeError, match="elements"):
        EDXModel(["Fe", 26], 200.0, **AXIS)
    with pytest.raises(ValueError, match="elements"):
        EDXModel(["Fe", "Fe"], 200.0, **AXIS)
    with pytest.raises(ValueError, match="elements or n_background"):
        EDXModel([], 200.0, n_background=0, **AXIS)
    with pytest.raises(ValueError, match="n_channels"):
        EDXModel(["Fe"], 200.0, energy_offset=0.2, energy_scale=0.01, n_channels=True)
    with pytest.raises(ValueError, match="energy_scale"):
        EDXModel(["Fe"], 200.0, energy_offset=0.2, energy_scale=0.0, n_channels=100)
    with pytest.raises(ValueError, match="n_background"):
        model(n_background=-1)
    with pytest.raises(ValueError, match="min_line_weight"):
        model(min_line_weight=1.5)
    with pytest.raises(ValueError, match="element_factors"):
        model(element_factors={"Fe": 1.0, "O": 0.0, "Si": 1.0})
    with pytest.raises(ValueError, match="element_factors"):
        model(element_factors="unit")
    with pytest.raises(ValueError, match="detector_efficiency"):
        model(detector_efficiency=lambda e: -np.ones_like(e))


def test_background_only_at_positive_energies():
    m = EDXModel(
        ["Si"], 30.0, energy_offset=-0.5, energy_scale=0.02, n_channels=500, n_background=3
    )
    G = m.build_G()
    background = G.values[:, 1:]
    assert G.labels[1:] == ("bremsstrahlung_0", "bremsstrahlung_1", "bremsstrahlung_2")
    assert np.all(background[m.energy <= 0] == 0)
    np.testing.assert_allclose(background.sum(axis=0), 1.0, rtol=1e-10)
    # steeper shapes put more of their weight at low energy
    centroid = (m.energy[:, None] * background).sum(axis=0)
    assert centroid[0] > centroid[1] > centroid[2]
    assert model(n_background=0).build_G().shape == (1980, 3)


def test_labelled_G_array_protocol():
    G = LabelledG(np.arange(6.0).reshape(3, 2), ("a", "b"), np.array([1, 0]))
    assert G.simplex_rows.dtype == bool and G.n_channels == 3
    assert np.asarray(G) is G.values
    as32 = np.asarray(G, dtype=np.float32)
    assert as32.dtype == np.float32 and as32.flags.writeable
    assert np.array(G, copy=True).flags.writeable
    with pytest.raises(ValueError):
        np.array(G, dtype=np.float32, copy=False)
    with pytest.raises(ValueError, match="simplex_rows"):
        LabelledG(np.ones((3, 2)), ("a", "b"), [0.5, 1.0])
    with pytest.raises(ValueError, match="values"):
        LabelledG(np.ones(3), ("a",), [True])
    with pytest.raises(ValueError, match="non-negative"):
        LabelledG(np.array([[np.nan, 1.0]]), ("a", "b"), [True, False])


def test_phantom_shapes_default_seed_and_background_columns():
    a = make_edx_spectrum_image(shape_2d=(8, 10), n_channels=400)
    b = make_edx_spectrum_image(shape_2d=(8, 10), n_channels=400)
    np.testing.assert_array_equal(a.X, b.X)  # seed 0 by default
    n_el, k = len(a.elements), a.fractions.shape[0]
    assert 6 <= n_el <= 9 and k == 3
    assert a.X.shape == (400, 80) and a.maps.shape == (k, 80) and a.spectra.shape == (400, k)
    assert a.W.shape == (n_el + 2, k) and a.G.shape == (400, n_el + 2)
    np.testing.assert_allclose(a.maps.sum(axis=0), 1.0)
    np.testing.assert_allclose(a.spectra.sum(axis=0), 1.0)
    assert np.all(a.W >= 0)
    assert np.all((a.fractions > 0.10).sum(axis=1) >= 2)
    for n_background in (1, 3):
        data = make_edx_spectrum_image(
            shape_2d=(4, 4), n_channels=400, model_kwargs={"n_background": n_background}
        )
        D = data.G.values @ data.W
        share = (data.G.values[:, n_el:] @ data.W[n_el:]).sum(axis=0) / D.sum(axis=0)
        np.testing.assert_allclose(share, 0.2, rtol=1e-10)
    no_bg = make_edx_spectrum_image(
        shape_2d=(4, 4), background_fraction=0.0, model_kwargs={"n_background": 0}
    )
    assert no_bg.W.shape[0] == n_el
    with pytest.raises(ValueError, match="n_background"):
        make_edx_spectrum_image(shape_2d=(4, 4), model_kwargs={"n_background": 0})
    with pytest.raises(ValueError, match="beam_energy"):
        make_edx_spectrum_image(shape_2d=(4, 4), model_kwargs={"beam_energy": 100.0})
    with pytest.raises(ValueError, match="fractions"):
        make_edx_spectrum_image(elements=("Fe", "O"), fractions=[[0.5, np.nan]])
    with pytest.raises(ValueError, match="background_fraction"):
        make_edx_spectrum_image(background_fraction="0.2")


def test_phantom_signal_is_integer_and_rebuilds_G():
    data = make_edx_spectrum_image(shape_2d=(4, 5), n_channels=500, counts_per_pixel=50)
    s = data.to_signal()
    assert np.issubdtype(s.data.dtype, np.integer)
    np.testing.assert_array_equal(s.data.reshape(-1, 500).T, data.X)
    assert "EDX" in s.metadata.General.title
    if hasattr(s, "build_G"):
        G = s.build_G(line_families="joint")
        np.testing.assert_allclose(G.values, data.G.values, rtol=1e-8, atol=1e-14)


def test_a_callable_returning_a_labelled_G_keeps_its_simplex_rows():
    data = make_edx_spectrum_image(shape_2d=(10, 10), n_channels=600, counts_per_pixel=300, seed=1)
    est = SmoothNMF(n_components=3, G=lambda X: data.G, max_iter=30, random_state=0, verbose=0)
    est.fit(data.X)
    rows = data.G.simplex_rows
    np.testing.assert_allclose(est.W_[rows].sum(axis=0), 1.0, rtol=1e-4)
    assert not np.allclose(est.W_[~rows].sum(axis=0), 1.0)


# ----------------------------------------------------------------- line families
def test_separate_families_give_each_family_a_column():
    m = EDXModel(["Fe", "O", "Pt"], 200.0, **AXIS)  # the default: separate
    G = m.build_G()
    # Fe: K quantified, L free; O: K; Pt: K above the range, so L quantified, M free
    assert m.quant_families_ == {"Fe": "K", "O": "K", "Pt": "L"}
    assert G.labels == ("Fe", "O", "Pt", "Fe_L", "Pt_M", "bremsstrahlung_0", "bremsstrahlung_1")
    assert G.simplex_rows.tolist() == [True, True, True, False, False, False, False]
    values = G.values
    fe_k, fe_l = values[:, 0], values[:, 3]
    energy = m.energy
    assert fe_k[energy < 3].sum() < 1e-6 * fe_k.sum()  # only K lines (6.4, 7.06 keV)
    assert fe_l[energy > 3].sum() < 1e-6 * fe_l.sum()  # only L lines (0.7 keV)
    # the quantified column sums to the factor; a free family to its share at the model's ratios
    assert fe_k.sum() == pytest.approx(m.element_factors_["Fe"])
    joint = EDXModel(["Fe", "O", "Pt"], 200.0, line_families="joint", **AXIS)
    raw_joint = joint.element_factors_["Fe"] / joint.element_factors_["O"]
    assert (fe_k.sum() + fe_l.sum()) / values[:, 1].sum() == pytest.approx(raw_joint, rel=1e-9)
    # the two families together are the joint column, up to its normalisation
    both = fe_k + fe_l
    np.testing.assert_allclose(
        both / both.sum(),
        joint.build_G().values[:, 0] / joint.build_G().values[:, 0].sum(),
        rtol=1e-9,
        atol=1e-15,
    )


def test_quant_families_override_and_errors():
    m = EDXModel(["Fe", "O"], 200.0, quant_families={"Fe": "L"}, **AXIS)
    assert m.quant_families_["Fe"] == "L"
    assert m.build_G().labels[:3] == ("Fe", "O", "Fe_K")
    with pytest.raises(ValueError, match="quant_families.*families"):
        EDXModel(["Fe"], 200.0, quant_families={"Fe": "M"}, **AXIS)
    with pytest.raises(ValueError, match="quant_families names elements"):
        EDXModel(["Fe"], 200.0, quant_families={"Cu": "K"}, **AXIS)
    with pytest.raises(ValueError, match="needs line_families='separate'"):
        EDXModel(["Fe"], 200.0, line_families="joint", quant_families={"Fe": "K"}, **AXIS)
    with pytest.raises(ValueError, match="line_families"):
        EDXModel(["Fe"], 200.0, line_families="split", **AXIS)
    with pytest.raises(TypeError, match="quant_families"):
        EDXModel(["Fe"], 200.0, quant_families="K", **AXIS)


def test_replace_and_recalibrated():
    m = EDXModel(["Fe", "O"], 200.0, **AXIS)
    wider = m.replace(fwhm_mn_ka=0.2, elements=["Fe", "O", "Cu"])
    assert wider.elements == ("Fe", "O", "Cu") and wider.fwhm_mn_ka == 0.2
    assert m.elements == ("Fe", "O") and m.fwhm_mn_ka == 0.130  # unchanged
    with pytest.raises(TypeError, match="no parameters"):
        m.replace(colour="red")
    shifted = m.recalibrated(0.25, 0.01, 0.130)
    # same lines and factors, the peaks move by the offset change (5 channels)
    assert shifted.lines_ == m.lines_ and shifted.element_factors_ == m.element_factors_
    a, b = m.build_G().values[:, 0], shifted.build_G().values[:, 0]
    assert np.argmax(a) - np.argmax(b) == 5


def test_empty_elements_give_the_bremsstrahlung_alone():
    G = EDXModel([], 200.0, **AXIS).build_G()
    assert G.labels == ("bremsstrahlung_0", "bremsstrahlung_1")
    assert not G.simplex_rows.any()

"""The HyperSpy plugin: registered signal types and decomposition with espm_lite."""

import logging

import numpy as np
import pytest

hs = pytest.importorskip("hyperspy.api")

from espm_lite import SmoothNMF  # noqa: E402
from espm_lite.datasets import make_spectrum_image  # noqa: E402
from espm_lite.hyperspy import (  # noqa: E402
    EDSespmSpectrum,
    EspmSpectrumImage,
    LazyEDSespmSpectrum,
    LazyEspmSpectrumImage,
)

SHAPE = (80, 80)


@pytest.fixture(scope="module")
def phantom():
    return make_spectrum_image(
        shape_2d=SHAPE, n_channels=400, n_phases=3, counts_per_pixel=500, seed=3
    )


def as_signal(data, signal_type=None, dtype=np.int64):
    s = hs.signals.Signal1D(data.to_hspy_layout().astype(dtype))
    axis = s.axes_manager.signal_axes[0]
    axis.units, axis.offset, axis.scale = "keV", float(data.energy[0]), 0.01
    if signal_type:
        s.set_signal_type(signal_type)
    return s


# ConvergenceWarnings of the short fits here are not what these tests are about
pytestmark = pytest.mark.usefixtures("quiet_convergence")


def angles_of(s, data):
    factors = s.get_decomposition_factors().data.T
    return data.angles(factors)


def test_signal_types_are_registered(capsys):
    from hyperspy.extensions import ALL_EXTENSIONS

    registered = ALL_EXTENSIONS["signals"]
    for name in [
        "EDSespmSpectrum",
        "LazyEDSespmSpectrum",
        "EspmSpectrumImage",
        "LazyEspmSpectrumImage",
    ]:
        assert registered[name]["module"] == "espm_lite.hyperspy.signals"
    hs.print_known_signal_types()
    printed = capsys.readouterr().out
    assert "EDS_espm_lite" in printed and "spectrum_image" in printed


@pytest.mark.parametrize(
    "signal_type, eager, lazy",
    [
        ("EDS_espm_lite", EDSespmSpectrum, LazyEDSespmSpectrum),
        ("spectrum_image", EspmSpectrumImage, LazyEspmSpectrumImage),
    ],
)
def test_set_signal_type_gives_the_classes(phantom, signal_type, eager, lazy):
    s = as_signal(phantom, signal_type)
    assert type(s) is eager
    assert s.metadata.Signal.signal_type == signal_type
    assert type(s.as_lazy()) is lazy


def test_eds_class_keeps_exspy_features(phantom):
    s = as_signal(phantom, "EDS_espm_lite")
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200.0)
    s.add_elements(["Fe", "Cu"])
    s.add_lines()
    assert "Fe_La" in s.metadata.Sample.xray_lines  # 0.2-3.2 keV: the L lines
    assert 0 < s.get_take_off_angle() < 90
    assert s.metadata.Signal.signal_type == "EDS_espm_lite"


@pytest.mark.parametrize("signal_type", ["EDS_espm_lite", "spectrum_image"])
def test_decomposition_recovers_spectra(phantom, signal_type):
    s = as_signal(phantom, signal_type)  # integer counts
    before = s.data.copy()
    user_est = SmoothNMF(n_components=3, max_iter=2000, random_state=0, verbose=0)
    params_before = user_est.get_params()
    fitted = s.decomposition(algorithm=user_est, return_info=True)
    assert np.all(angles_of(s, phantom) < 5)
    # The user's estimator and data are untouched; the fitted clone is returned.
    assert fitted is not user_est and not hasattr(user_est, "components_")
    assert user_est.get_params() == params_before
    assert fitted.hspy_comp and fitted.shape_2d == SHAPE
    np.testing.assert_array_equal(s.data, before)
    loadings = s.get_decomposition_loadings()
    assert loadings.data.shape == (3, *SHAPE)
    model = s.get_decomposition_model()
    expected = phantom.expected.T.reshape(*SHAPE, -1)
    # Much closer to the noise-free image than the counts are.
    assert np.linalg.norm(model.data - expected) < 0.2 * np.linalg.norm(s.data - expected)
    assert s.learning_results.decomposition_algorithm == "SmoothNMF"
    assert s.espm_estimator is fitted


def test_plain_signal_explicit_form_gives_same_answer(phantom):
    plain = as_signal(phantom, dtype=np.float64)
    ours = as_signal(phantom, "spectrum_image")
    params = dict(n_components=3, random_state=0, verbose=0, max_iter=2000)
    plain.decomposition(
        algorithm=SmoothNMF(
            hspy_comp=True, shape_2d=plain.axes_manager.navigation_shape[::-1], **params
        ),
        print_info=False,
    )
    ours.decomposition(algorithm=SmoothNMF(**params))
    np.testing.assert_allclose(
        ours.learning_results.factors, plain.learning_results.factors, rtol=1e-10
    )
    np.testing.assert_allclose(
        ours.learning_results.loadings, plain.learning_results.loadings, rtol=1e-10
    )
    assert np.all(angles_of(plain, phantom) < 5)


def test_algorithm_name_builds_estimator(phantom):
    s = as_signal(phantom, "EDS_espm_lite")
    est = s.decomposition(
        algorithm="SmoothNMF",
        output_dimension=3,
        lambda_L=2.0,
        random_state=0,
        verbose=0,
        return_info=True,
    )
    assert isinstance(est, SmoothNMF)
    assert est.n_components == 3 and est.lambda_L == 2.0 and est.normalize
    assert est.shape_2d == SHAPE
    with pytest.raises(TypeError, match="SmoothNMF"):
        s.decomposition(algorithm="SmoothNMF", output_dimension=3, no_such_parameter=1)


def test_poissonian_normalisation_refused_with_warning(phantom):
    s = as_signal(phantom, "EDS_espm_lite")
    with pytest.warns(UserWarning, match="normalize_poissonian_noise"):
        s.decomposition(
            normalize_poissonian_noise=True,
            algorithm="SmoothNMF",
            output_dimension=3,
            verbose=0,
            max_iter=20,
        )
    assert s.learning_results.poissonian_noise_normalized is False


def test_other_algorithms_go_to_hyperspy(phantom):
    s = as_signal(phantom, "spectrum_image", dtype=np.float64)
    s.decomposition(algorithm="SVD", output_dimension=3, print_info=False)
    assert s.learning_results.decomposition_algorithm == "SVD"
    assert s.learning_results.explained_variance is not None


def test_navigation_mask(phantom):
    s = as_signal(phantom, "EDS_espm_lite")
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:4] = True  # the first 4 rows of the scan are excluded
    s.decomposition(
        algorithm="SmoothNMF",
        output_dimension=3,
        navigation_mask=mask,
        verbose=0,
        random_state=0,
        max_iter=2000,
    )
    loadings = s.get_decomposition_loadings().data
    assert np.all(np.isnan(loadings[:, :4])) and np.all(np.isfinite(loadings[:, 4:]))
    assert np.all(angles_of(s, phantom) < 5)
    with pytest.raises(ValueError, match="navigation_mask with Laplacian"):
        s.decomposition(
            algorithm="SmoothNMF", output_dimension=3, navigation_mask=mask, lambda_L=1.0
        )
    with pytest.raises(ValueError, match="navigation_mask has"):
        s.decomposition(
            algorithm="SmoothNMF", output_dimension=3, navigation_mask=np.zeros(5, dtype=bool)
        )


def test_signal_mask(phantom):
    s = as_signal(phantom, "spectrum_image")
    mask = np.zeros(400, dtype=bool)
    mask[:10] = True
    s.decomposition(
        algorithm="SmoothNMF", output_dimension=3, signal_mask=mask, verbose=0, max_iter=50
    )
    factors = s.learning_results.factors
    assert np.all(np.isnan(factors[:10])) and np.all(np.isfinite(factors[10:]))


@pytest.mark.parametrize("signal_type", ["EDS_espm_lite", "spectrum_image"])
def test_save_and_reload_keeps_type_and_results(phantom, tmp_path, signal_type):
    s = as_signal(phantom, signal_type)
    s.decomposition(algorithm="SmoothNMF", output_dimension=3, verbose=0, max_iter=30)
    path = tmp_path / "decomposed.hspy"
    s.save(path)
    loaded = hs.load(path)
    assert type(loaded) is type(s)
    assert loaded.learning_results.decomposition_algorithm == "SmoothNMF"
    assert int(loaded.learning_results.espm_parameters["n_components"]) == 3
    np.testing.assert_allclose(loaded.learning_results.factors, s.learning_results.factors)
    lazy = hs.load(path, lazy=True)
    assert lazy._lazy and lazy.metadata.Signal.signal_type == signal_type


def test_factors_keep_eds_metadata(phantom):
    s = as_signal(phantom, "EDS_espm_lite")
    s.metadata.set_item("Acquisition_instrument.TEM.beam_energy", 200.0)
    s.add_elements(["Fe", "Pt"])
    s.decomposition(algorithm="SmoothNMF", output_dimension=3, verbose=0, max_iter=30)
    factors = s.get_decomposition_factors()
    assert isinstance(factors, EDSespmSpectrum)
    assert list(factors.metadata.Sample.elements) == ["Fe", "Pt"]
    assert factors.metadata.Acquisition_instrument.TEM.beam_energy == 200.0
    s.plot_decomposition_results()


def test_lazy_signal_is_read_then_fitted(phantom, caplog):
    s = as_signal(phantom, "EDS_espm_lite").as_lazy()
    with caplog.at_level(logging.INFO, logger="espm_lite"):
        s.decomposition(
            algorithm="SmoothNMF",
            output_dimension=3,
            verbose=0,
            random_state=0,
            max_iter=2000,
        )
    assert "dask array" in caplog.text  # read chunk by chunk, not computed by HyperSpy
    assert np.all(angles_of(s, phantom) < 5)
    with pytest.raises(NotImplementedError, match="not supported for lazy"):
        s.decomposition(algorithm="MLPCA", output_dimension=3)


def test_low_count_signal_takes_the_sparse_path(caplog):
    data = make_spectrum_image(shape_2d=(40, 40), n_channels=1000, counts_per_pixel=15, seed=0)
    s = data.to_signal("EDS_espm_lite")
    with caplog.at_level(logging.INFO, logger="espm_lite"):
        est = s.decomposition(
            algorithm="SmoothNMF",
            output_dimension=3,
            verbose=0,
            max_iter=20,
            random_state=0,
            return_info=True,
        )
    assert est.data_path_ == "sparse"
    assert "sparse path" in caplog.text
    dense = s.decomposition(
        algorithm="SmoothNMF",
        output_dimension=3,
        verbose=0,
        max_iter=20,
        random_state=0,
        sparse=False,
        return_info=True,
    )
    assert dense.data_path_ == "dense"
    np.testing.assert_allclose(dense.components_, est.components_, rtol=1e-8, atol=1e-12)


@pytest.fixture(scope="module")
def small():
    return make_spectrum_image(
        shape_2d=(10, 12), n_channels=120, n_phases=2, counts_per_pixel=200, seed=1
    )


@pytest.mark.parametrize("name", ["smoothnmf", "SMOOTHNMF", "SmoothNmf"])
def test_algorithm_names_are_case_insensitive_on_integer_counts(small, name):
    s = small.to_signal("spectrum_image")
    assert s.data.dtype.kind == "i"
    before = s.data.copy()
    est = s.decomposition(
        algorithm=name, output_dimension=2, verbose=0, max_iter=5, return_info=True
    )
    assert isinstance(est, SmoothNMF)
    assert s.learning_results.decomposition_algorithm == "SmoothNMF"
    assert s.data.dtype == before.dtype  # neither converted nor modified
    np.testing.assert_array_equal(s.data, before)


def test_unknown_algorithm_name_lists_the_valid_ones(small):
    s = small.to_signal("spectrum_image")
    with pytest.raises(ValueError, match="Unknown decomposition algorithm 'SmothNMF'") as info:
        s.decomposition(algorithm="SmothNMF", output_dimension=2)
    message = str(info.value)
    for name in ["SmoothNMF", "SNMF", "ConvexNMF", "PNMF", "SVD", "passed through to HyperSpy"]:
        assert name in message
    assert s.learning_results.factors is None


def test_hyperspy_names_are_case_insensitive_too(small):
    s = small.to_signal("spectrum_image")
    s.change_dtype("float64")
    s.decomposition(algorithm="svd", output_dimension=2, print_info=False)
    assert s.learning_results.decomposition_algorithm == "SVD"


def test_output_dimension_is_required_with_a_name(small, caplog):
    s = small.to_signal("spectrum_image")
    with pytest.raises(ValueError, match="output_dimension=.*number of phases"):
        s.decomposition(algorithm="SmoothNMF", verbose=0)
    assert s.learning_results.factors is None
    with caplog.at_level(logging.INFO, logger="espm_lite"):
        est = s.decomposition(
            algorithm=SmoothNMF(n_components=4, verbose=0, max_iter=3), return_info=True
        )
    assert est.n_components_ == 4 and s.learning_results.factors.shape[1] == 4
    assert "n_components=4" in caplog.text


@pytest.mark.parametrize(
    "keyword, value",
    [
        ("centre", "navigation"),
        ("centre", "signal"),
        ("reproject", "both"),
        ("svd_solver", "full"),
        ("var_array", np.ones(3)),
        ("var_func", [1.0, 0.0]),
        ("num_chunks", 4),
        ("get", "threads"),  # a dask scheduler, on a signal in memory
    ],
)
def test_hyperspy_keywords_that_do_not_apply_are_refused(small, keyword, value):
    s = small.to_signal("spectrum_image")
    with pytest.raises(ValueError, match=rf"^{keyword}=.*"):
        s.decomposition(algorithm="SmoothNMF", output_dimension=2, **{keyword: value})
    assert s.learning_results.factors is None


def test_hyperspy_keywords_that_apply_are_honoured(small, caplog):
    s = small.to_signal("spectrum_image")
    before = s.data.copy()
    params = dict(output_dimension=2, verbose=0, max_iter=5, random_state=0)
    with caplog.at_level(logging.DEBUG, logger="espm_lite"):
        s.decomposition(
            algorithm="SmoothNMF",
            copy=True,
            auto_transpose=False,
            centre=None,
            reproject=None,
            print_info=False,
            **params,
        )
    ours = [r for r in caplog.records if r.name.startswith("espm_lite.hyperspy")]
    assert ours and not [r for r in ours if r.levelno >= logging.INFO]
    np.testing.assert_array_equal(s.data, before)
    reference = s.learning_results.factors.copy()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="espm_lite"):
        s.decomposition(algorithm="SmoothNMF", print_info=True, **params)
    assert "espm_lite decomposition" in caplog.text
    np.testing.assert_allclose(s.learning_results.factors, reference)
    lazy = small.to_signal("spectrum_image").as_lazy()
    lazy.decomposition(algorithm="SmoothNMF", get="synchronous", **params)
    np.testing.assert_allclose(lazy.learning_results.factors, reference)


def test_signal_without_navigation_is_refused(small):
    single = small.to_signal("spectrum_image").inav[0, 0]
    assert single.axes_manager.navigation_dimension == 0
    with pytest.raises(ValueError, match="navigation size of 2 or more"):
        single.decomposition(algorithm="SmoothNMF", output_dimension=2, verbose=0)
    assert single.learning_results.factors is None


def test_navigation_mask_of_the_wrong_shape_is_refused(small):
    s = small.to_signal("spectrum_image")  # navigation (ny, nx) = (10, 12)
    with pytest.raises(ValueError, match=r"navigation_mask has shape \(4, 30\).*\(10, 12\)"):
        s.decomposition(
            algorithm="SmoothNMF", output_dimension=2, navigation_mask=np.zeros((4, 30), bool)
        )
    # right shapes: array order, HyperSpy's order, flat
    for mask in (np.zeros((10, 12), bool), np.zeros((12, 10), bool), np.zeros(120, bool)):
        mask = mask.copy()
        mask.flat[0] = True
        s.decomposition(
            algorithm="SmoothNMF", output_dimension=2, navigation_mask=mask, verbose=0, max_iter=2
        )
        assert np.isnan(s.learning_results.loadings[0]).all()

"""SEM EDX data (a bulk specimen): the SEM metadata are kept, decompositions and maps
work, ``G="edx"`` warns that it is an approximate spectral basis, and thin-film
quantification is refused, also after a save and load."""

import pathlib
import warnings

import numpy as np
import pytest

hs = pytest.importorskip("hyperspy.api")
exspy = pytest.importorskip("exspy")

from espm_lite.hyperspy import (  # noqa: E402
    EDSespmSEMSpectrum,
    EDSespmSpectrum,
    LazyEDSespmSEMSpectrum,
)
from espm_lite.hyperspy.signals import BULK_SPECIMEN_REASON  # noqa: E402

BCF = pathlib.Path(__file__).parent / "data" / "bcf_v2_50x50px.bcf"  # see data/README.md
HITACHI = pathlib.Path(__file__).parent / "data" / "Hitachi_TM3030Plus.bcf"
FIT = dict(output_dimension=2, random_state=0, verbose=0, max_iter=20)
BASIS_WARNING = r"thin-film EDX model is used as an approximate spectral basis"
REFUSAL = r"No thin-film quantification.*bulk specimen.*\(ZAF\).*would be wrong"


# ConvergenceWarnings of the short fits here are not what these tests are about
pytestmark = pytest.mark.usefixtures("quiet_convergence")


def sem_spectrum_image(signal_type="EDS_espm_lite", shape=(4, 4), seed=0):
    """A small SEM spectrum image: Poisson draws of exspy's EDS_SEM_TM002 spectrum
    (10 kV, Al C Cu Mn Zr), about 2000 counts per pixel, with its SEM metadata."""
    ref = exspy.data.EDS_SEM_TM002()
    spectrum = ref.data.astype(np.float64) / ref.data.sum() * 2000
    data = np.random.default_rng(seed).poisson(np.broadcast_to(spectrum, (*shape, spectrum.size)))
    s = hs.signals.Signal1D(data, metadata=ref.metadata.as_dictionary())
    s.axes_manager.signal_axes[0].update_from(
        ref.axes_manager.signal_axes[0], ("offset", "scale", "units", "name")
    )
    if signal_type:
        s.set_signal_type(signal_type)
    return s


@pytest.fixture(scope="module")
def edx_fit():
    s = sem_spectrum_image()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        s.decomposition(algorithm="SmoothNMF", G="edx", **FIT)
    return s


def assert_sem(s, beam_energy=10.0):
    assert isinstance(s, EDSespmSEMSpectrum)
    assert s.metadata.Signal.signal_type == "EDS_espm_lite_SEM"
    instrument = s.metadata.Acquisition_instrument
    assert "SEM" in instrument and "TEM" not in instrument
    assert instrument.SEM.beam_energy == beam_energy


def test_set_signal_type_keeps_the_sem_metadata():
    s = exspy.data.EDS_SEM_TM002()
    s.set_signal_type("EDS_espm_lite")
    assert_sem(s)
    assert s.metadata.Acquisition_instrument.SEM.microscope == "Nvision40 Carl Zeiss"
    assert s.get_take_off_angle() == pytest.approx(37.0)  # elevation 37°, no tilt
    assert s.edx_model().beam_energy == 10.0  # read from .SEM
    s.set_microscope_parameters(beam_energy=15.0)
    assert s.metadata.Acquisition_instrument.SEM.beam_energy == 15.0
    assert s.edx_model().beam_energy == 15.0
    with pytest.raises(ValueError, match=r"beam_energy is in keV"):
        s.set_microscope_parameters(beam_energy=15000.0)
    del s.metadata.Acquisition_instrument.SEM.beam_energy
    with pytest.raises(ValueError, match=r"Acquisition_instrument\.SEM\.beam_energy"):
        s.edx_model()


def test_every_way_in_gives_the_sem_class():
    s = sem_spectrum_image(signal_type=None)
    metadata = s.metadata.as_dictionary()
    assert_sem(EDSespmSpectrum(s.data, metadata=metadata))  # the constructor
    assert_sem(sem_spectrum_image("EDS_espm_lite_SEM"))  # the SEM type by name
    lazy = s.as_lazy()
    lazy.set_signal_type("EDS_espm_lite")
    assert isinstance(lazy, LazyEDSespmSEMSpectrum)
    assert_sem(lazy)
    # a TEM signal, or one without an instrument, stays an EDS_espm_lite signal
    del metadata["Acquisition_instrument"]
    assert type(EDSespmSpectrum(s.data, metadata=metadata)) is EDSespmSpectrum


def test_the_sem_types_are_registered():
    from hyperspy.extensions import ALL_EXTENSIONS

    registered = ALL_EXTENSIONS["signals"]
    for name, lazy in [("EDSespmSEMSpectrum", False), ("LazyEDSespmSEMSpectrum", True)]:
        assert registered[name]["signal_type"] == "EDS_espm_lite_SEM"
        assert registered[name]["lazy"] is lazy


def test_plain_decomposition_and_maps_without_a_warning():
    s = sem_spectrum_image()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s.decomposition(algorithm="SmoothNMF", **FIT)
    assert not [w for w in caught if "thin-film" in str(w.message)]
    assert s.get_decomposition_loadings().data.shape == (2, 4, 4)
    assert isinstance(s.get_decomposition_factors(), EDSespmSEMSpectrum)


def test_build_G_warns_that_it_is_an_approximate_basis():
    s = sem_spectrum_image()
    with pytest.warns(UserWarning, match=BASIS_WARNING) as caught:
        G = s.build_G()
    message = str(caught[0].message)
    assert "SEM (bulk)" in message and "(ZAF)" in message
    assert "quantification (concentration_table) is refused" in message
    assert G.element_labels == ("Al", "C", "Cu", "Mn", "Zr")


def test_G_edx_decomposition_warns_fits_and_refuses_quantification():
    s = sem_spectrum_image()
    with pytest.warns(UserWarning, match=BASIS_WARNING):
        s.decomposition(algorithm="SmoothNMF", G="edx", **FIT)
    loadings = s.get_decomposition_loadings().data
    assert loadings.shape == (2, 4, 4) and np.all(np.isfinite(loadings))
    assert s.learning_results.espm_W.shape[1] == 2  # the fit is recorded
    with pytest.raises(ValueError, match=REFUSAL):
        s.concentration_table()
    with pytest.raises(ValueError, match=REFUSAL):
        s.concentration_table(kind="weight")


@pytest.mark.parametrize("lazy", [False, True])
def test_saved_sem_fit_stays_sem_and_refused(edx_fit, tmp_path, lazy):
    path = tmp_path / "sem_fit.hspy"
    edx_fit.save(path, overwrite=True)
    loaded = hs.load(path, lazy=lazy)
    assert isinstance(loaded, LazyEDSespmSEMSpectrum if lazy else EDSespmSEMSpectrum)
    assert_sem(loaded)
    np.testing.assert_array_equal(loaded.learning_results.espm_W, edx_fit.learning_results.espm_W)
    with pytest.raises(ValueError, match=REFUSAL):
        loaded.concentration_table()
    loaded.set_signal_type("EDS_espm_lite")  # asking for the TEM type does not lift it
    assert_sem(loaded)
    with pytest.raises(ValueError, match=REFUSAL):
        loaded.concentration_table()


def test_the_reason_is_stated():
    assert "bulk specimen" in BULK_SPECIMEN_REASON and "(ZAF)" in BULK_SPECIMEN_REASON


def test_real_bruker_sem_map():
    signals = hs.load(BCF)
    s = next(x for x in signals if x.axes_manager.signal_dimension == 1).inav[:4, :4]
    s.set_signal_type("EDS_espm_lite")
    assert_sem(s, beam_energy=20.0)
    s.decomposition(algorithm="SmoothNMF", **FIT)
    assert s.get_decomposition_loadings().data.shape == (2, 4, 4)
    with pytest.warns(UserWarning, match=BASIS_WARNING):
        G = s.build_G()
    assert G.element_labels == ("Ag", "Al", "C", "Cu", "O")
    with pytest.raises(ValueError, match=REFUSAL):
        s.concentration_table()


def test_the_missing_element_search_does_not_read_a_bulk_continuum_as_lines():
    """Real SEM spectra under the thin-film model: the continuum is misfit over keV.

    On the Hitachi map (Al and Cu) the FWHM-window test alone proposed I, Sb, Ni,
    Rh, Fe, Zn, Cr and Tl, none of which has a line in the spectrum; on exspy's
    TM002 reference material (certified Al C Cu Mn Zr) it proposed Ar, Te, Ru, Ba
    and Sn. Only Ar is left there (2.96 keV: the Al Kα pile-up peak, 2 x 1.49 keV,
    which the model does not have), and without elements in the metadata the
    search proposes the elements of each specimen.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = hs.load(HITACHI, lazy=True)
    hitachi = next(x for x in loaded if x.axes_manager.signal_dimension == 1)
    hitachi.set_signal_type("EDS_espm_lite")
    assert list(hitachi.metadata.Sample.elements) == ["Al", "Cu"]
    assert hitachi.find_missing_elements() == []
    assert {c.element for c in hitachi.find_missing_elements(elements=[])} == {"Al", "Cu"}
    tm002 = exspy.data.EDS_SEM_TM002()
    tm002.set_signal_type("EDS_espm_lite")
    assert [c.element for c in tm002.find_missing_elements()] in ([], ["Ar"])
    proposed = [c.element for c in tm002.find_missing_elements(elements=[])]
    assert set(proposed[:5]) == {"Al", "C", "Cu", "Mn", "Zr"} and len(proposed) <= 6

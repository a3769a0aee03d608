"""SmoothNMF.partial_fit: passes over batches approach the batch fit; what it refuses."""

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

from espm_lite import SmoothNMF
from espm_lite.datasets import make_spectrum_image
from espm_lite.measures import matched_angles

N_BATCHES = 16


@pytest.fixture(scope="module")
def phantom():
    """40x40x300 at 50 counts/pixel, pixels as rows, and its batch fit."""
    data = make_spectrum_image(shape_2d=(40, 40), n_channels=300, counts_per_pixel=50, seed=0)
    X = np.ascontiguousarray(data.X.T)
    batch = SmoothNMF(n_components=3, hspy_comp=True, verbose=0).fit(X)
    return data, X, batch


def _stream(est, X, passes):
    """``passes`` passes over a lazy signal's 16 chunks; the spectra after each pass."""
    lazy = da.from_array(X, chunks=(X.shape[0] // N_BATCHES, -1))
    assert lazy.numblocks[0] == N_BATCHES
    spectra = []
    for _ in range(passes):
        for block in lazy.blocks:
            est.partial_fit(block.compute())
        spectra.append(est.W_.copy())
    return spectra


def test_passes_over_the_batches_come_within_2_degrees_of_the_batch_fit(phantom):
    data, X, batch = phantom
    X_before = X.copy()
    # The limit depends on the start (the first batch's fit): from random_state=2 the
    # spectra settle 2.2 degrees from the batch fit (docs/maths.md section 11).
    est = SmoothNMF(n_components=3, hspy_comp=True, verbose=0, partial_fit_rounds=3, random_state=0)
    spectra = _stream(est, X, passes=12)
    first, last = (matched_angles(batch.W_, W).max() for W in (spectra[0], spectra[-1]))
    assert last < 2.0 < first
    assert est.n_steps_ == 12 * N_BATCHES
    assert np.array_equal(X, X_before)
    np.testing.assert_allclose(est.W_.sum(axis=0), 1.0, rtol=1e-10)  # simplex_W
    # As close to the truth as the batch fit, and maps of every pixel by transform.
    truth = matched_angles(data.spectra, est.W_)
    assert np.all(truth < matched_angles(data.spectra, batch.W_) + 1.0)
    maps = est.transform(X)
    assert maps.shape == (1600, 3) and np.all(maps >= 0)
    order = np.argmax(np.abs(np.corrcoef(batch.W_.T, est.W_.T)[:3, 3:]), axis=1)
    err = np.linalg.norm(maps[:, order] - batch.H_.T) / np.linalg.norm(batch.H_)
    assert err < 0.05


def test_a_batch_passed_again_replaces_its_model(phantom):
    _, X, _ = phantom
    est = SmoothNMF(n_components=3, hspy_comp=True, verbose=0, partial_fit_rounds=1)
    _stream(est, X, passes=2)
    assert len(est._online_models.models) == N_BATCHES


def test_the_batch_optimum_is_a_fixed_point(phantom):
    """Started from a converged fit, updates on all the data stay there."""
    _, X, batch = phantom
    est = SmoothNMF(n_components=3, hspy_comp=True, verbose=0, partial_fit_rounds=3, tol=1e-9)
    est.fit(X)
    start = est.W_.copy()
    for _ in range(3):
        est.partial_fit(X)
    assert matched_angles(start, est.W_).max() < 0.05


def test_sparse_batches_give_the_dense_result(phantom):
    _, X, _ = phantom
    batches = np.array_split(np.arange(X.shape[0]), 4)
    # The same start (a fit of CSR data starts from another NNDSVD than dense data).
    options = dict(n_components=3, hspy_comp=True, verbose=0, partial_fit_rounds=2, random_state=0)
    dense = SmoothNMF(**options)
    sparse = SmoothNMF(**options)
    dense.fit(X[batches[0]])
    sparse.fit(X[batches[0]])
    for rows in batches:
        dense.partial_fit(X[rows])
        sparse.partial_fit(sp.csr_matrix(X[rows]))
    np.testing.assert_allclose(sparse.W_, dense.W_, rtol=1e-6, atol=1e-12)


def test_not_offered_by_default():
    assert not hasattr(SmoothNMF(), "partial_fit")
    assert hasattr(SmoothNMF(partial_fit_rounds=2), "partial_fit")


@pytest.mark.parametrize(
    "setting",
    [
        {"hspy_comp": False},
        {"G": np.eye(30)},
        {"lambda_L": 1.0},
        {"mu": 0.5},
        {"simplex_H": True, "simplex_W": False},
        {"l2": True},
        {"fixed_W": np.full((30, 2), np.nan)},
    ],
)
def test_settings_it_cannot_stream_are_refused_by_name(setting):
    X = np.random.default_rng(0).poisson(3.0, size=(40, 30)).astype(float)
    options = dict(n_components=2, hspy_comp=True, verbose=0, partial_fit_rounds=2)
    est = SmoothNMF(**{**options, **setting})
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"partial_fit does not support {name}="):
        est.partial_fit(X)


def test_bad_batches_raise():
    X = np.random.default_rng(0).poisson(3.0, size=(40, 30)).astype(float)
    est = SmoothNMF(n_components=2, hspy_comp=True, verbose=0, partial_fit_rounds=2)
    with pytest.raises(ValueError, match="Negative values in data passed to SmoothNMF partial_fit"):
        est.partial_fit(-X)
    est.partial_fit(X)
    with pytest.raises(ValueError, match="features"):
        est.partial_fit(X[:, :20])
    with pytest.raises(ValueError, match="partial_fit_rounds"):
        SmoothNMF(partial_fit_rounds=0).partial_fit(X)


def test_hyperspy_lazy_decomposition_streams_through_partial_fit(phantom):
    """HyperSpy's lazy path calls partial_fit once per chunk, then transform per chunk."""
    hs = pytest.importorskip("hyperspy.api")
    _, X, _ = phantom
    s = hs.signals.Signal1D(X.reshape(40, 40, 300)).as_lazy()
    s.data = s.data.rechunk((10, 40, 300))
    est = SmoothNMF(n_components=3, hspy_comp=True, verbose=0, partial_fit_rounds=2)
    s.decomposition(algorithm=est, output_dimension=3, print_info=False)
    assert est.n_steps_ == 4  # one pass: a rough answer (see partial_fit)
    np.testing.assert_allclose(s.learning_results.factors, est.components_.T)
    np.testing.assert_allclose(s.learning_results.loadings, est.transform(X), rtol=1e-8)

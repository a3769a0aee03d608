"""Dask arrays and lazy signals: read chunk by chunk, fitted as the same data in memory."""

import pathlib
import warnings

import dask
import dask.array as da
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from espm_lite import PNMF, SNMF, SmoothNMF
from espm_lite._lazy import _banded, in_memory, memory_budget
from espm_lite.datasets import make_spectrum_image
from espm_lite.kernels.chunked import ChunkedData

SHAPE = (40, 40)


@pytest.fixture(scope="module")
def low_counts():
    """40x40x300 at 20 counts/pixel (density ~6 %: the sparse path)."""
    return make_spectrum_image(
        shape_2d=SHAPE, n_channels=300, n_phases=3, counts_per_pixel=20, seed=3
    )


def _params(hspy_comp, **extra):
    params = dict(
        n_components=3,
        lambda_L=1.0,
        shape_2d=SHAPE,
        max_iter=40,
        no_stop_criterion=True,
        random_state=0,
        verbose=0,
        hspy_comp=hspy_comp,
    )
    return {**params, **extra}


def _chunked(X, hspy_comp, n_chunks=16):
    """``X`` as a dask array whose pixels are split into ``n_chunks`` chunks."""
    p = X.shape[0] if hspy_comp else X.shape[1]
    size = -(-p // n_chunks)
    return da.from_array(X, chunks=(size, -1) if hspy_comp else (-1, size))


def _assert_same_fit(lazy, eager, rtol=1e-8):
    for name in ("W_", "H_"):
        a, b = getattr(lazy, name), getattr(eager, name)
        assert np.abs(a - b).max() <= rtol * np.abs(b).max(), name
    np.testing.assert_allclose(lazy.losses_, eager.losses_, rtol=rtol)


@pytest.mark.parametrize("hspy_comp", [True, False])
def test_dask_array_gives_the_in_memory_fit(low_counts, hspy_comp):
    X = low_counts.X.T if hspy_comp else low_counts.X
    X_before = X.copy()
    eager = SmoothNMF(**_params(hspy_comp)).fit(X)
    lazy = SmoothNMF(**_params(hspy_comp)).fit(_chunked(X, hspy_comp))
    assert lazy.data_path_ == eager.data_path_ == "sparse"
    # Laplacian across the 16 chunk borders, the same iterates.
    _assert_same_fit(lazy, eager)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_allclose(
        lazy.transform(_chunked(X, hspy_comp)), eager.transform(X), rtol=1e-6, atol=1e-9
    )


def test_masked_fit_of_a_dask_array_is_the_masked_fit_in_memory(low_counts):
    X = low_counts.X.T
    mask = np.zeros(X.shape, dtype=bool)
    mask[::7, 40:60] = True  # dead channels in some pixels
    eager = SmoothNMF(**_params(True)).fit(X, mask=mask)
    lazy = SmoothNMF(**_params(True)).fit(_chunked(X, True), mask=mask)
    _assert_same_fit(lazy, eager)


def test_sparse_dask_data_are_kept_compressed(low_counts):
    X = _chunked(low_counts.X.T, True)
    kept = in_memory(SmoothNMF(hspy_comp=True), X)
    assert sp.issparse(kept) and kept.format == "csr" and kept.has_canonical_format
    np.testing.assert_array_equal(kept.toarray(), low_counts.X.T)
    transposed = in_memory(SmoothNMF(hspy_comp=False), X.T)
    assert sp.issparse(transposed) and transposed.shape == low_counts.X.shape
    np.testing.assert_array_equal(transposed.toarray(), low_counts.X)


def test_chunks_are_made_bands_within_the_budget(low_counts):
    # Chunks that split the channels and hold every pixel: rechunked into bands of
    # whole spectra, each within an eighth of the budget.
    X = da.from_array(low_counts.X.T, chunks=(1600, 100))
    banded = _banded(X, 8, 2_000_000)
    assert banded.numblocks[1] == 1 and max(banded.chunks[0]) * 300 * 8 <= 250_000
    kept = in_memory(SmoothNMF(hspy_comp=True, max_memory="2MB"), X)
    np.testing.assert_array_equal(kept.toarray(), low_counts.X.T)


def test_dense_dask_data_take_the_dense_path():
    data = make_spectrum_image(shape_2d=(20, 20), n_channels=200, counts_per_pixel=5000, seed=1)
    X = data.X.T
    params = _params(True, shape_2d=(20, 20), lambda_L=0.0)
    eager = SmoothNMF(**params).fit(X)
    lazy = SmoothNMF(**params).fit(da.from_array(X, chunks=(50, 100)))
    assert lazy.data_path_ == eager.data_path_ == "dense"
    _assert_same_fit(lazy, eager)


@pytest.mark.parametrize("cls", [PNMF, SNMF])
def test_every_estimator_takes_dask_arrays(low_counts, cls):
    X = low_counts.X.T
    params = dict(n_components=3, max_iter=15, no_stop_criterion=True, random_state=0, verbose=0)
    eager = cls(hspy_comp=True, **params).fit(X)
    lazy = cls(hspy_comp=True, **params).fit(_chunked(X, True))
    _assert_same_fit(lazy, eager, rtol=1e-7)


def test_a_budget_too_small_is_refused_by_name_where_chunks_cannot_be_read(low_counts):
    X = _chunked(low_counts.X.T, True)
    with pytest.raises(MemoryError, match="max_memory"):
        PNMF(hspy_comp=True, max_memory=1000, verbose=0).fit(X)
    # Enough for the compressed data (~1.2 MB as CSR) but not for the dense array (3.8 MB).
    params = dict(hspy_comp=True, max_iter=5, no_stop_criterion=True, verbose=0)
    est = SmoothNMF(max_memory="3MB", **params).fit(X)
    assert est.data_path_ == "sparse"
    assert isinstance(in_memory(est, X), sp.csr_matrix)
    assert isinstance(in_memory(SmoothNMF(max_memory=1000, **params), X), ChunkedData)


@pytest.fixture(scope="module")
def high_counts():
    """40x40x300 at 2000 counts/pixel (dense)."""
    return make_spectrum_image(
        shape_2d=SHAPE, n_channels=300, n_phases=3, counts_per_pixel=2000, seed=3
    )


def _start(n_channels=300, n_pixels=1600):
    rng = np.random.default_rng(0)
    W = rng.uniform(0.5, 1.5, (n_channels, 3))
    return W / W.sum(axis=0), rng.uniform(0.5, 1.5, (3, n_pixels)) * 600


def test_data_left_on_disk_give_the_in_memory_fit(high_counts):
    # max_memory below both forms: SmoothNMF reads the 16 chunks at every pass.
    X = high_counts.X.T
    W0, H0 = _start()
    eager = SmoothNMF(**_params(True), sparse=False).fit(X, W=W0, H=H0)
    on_disk = _chunked(X, True)
    lazy = SmoothNMF(**_params(True), max_memory="2MB").fit(on_disk, W=W0, H=H0)
    assert lazy.data_path_ == "dense"
    _assert_same_fit(lazy, eager)  # Laplacian across chunk borders, exact row solve by bands
    np.testing.assert_allclose(lazy.transform(on_disk), eager.transform(X), rtol=1e-8)
    # The default start: scikit-learn's randomized SVD computed band by band, so the
    # same start and the same fit.
    params = _params(True, max_iter=200, sparse=False)
    default = SmoothNMF(**params, max_memory="2MB").fit(on_disk)
    reference = SmoothNMF(**params).fit(X)
    _assert_same_fit(default, reference, rtol=1e-8)


@pytest.mark.parametrize("hspy_comp", [True, False])
def test_low_count_data_left_on_disk_take_the_sparse_path(low_counts, hspy_comp):
    # Too large for the budget even compressed: each band is compressed to CSR as it is
    # read, and the fit is the in-memory sparse fit (same start, and the default start).
    # 64 bands of 25 pixels (60 kB dense, within 1/8 of the budget); ~350 kB as CSR,
    # more than half the budget.
    X = low_counts.X.T if hspy_comp else low_counts.X
    W0, H0 = _start()
    on_disk = _chunked(X, hspy_comp, n_chunks=64)
    budget = "500kB"
    eager = SmoothNMF(**_params(hspy_comp)).fit(X, W=W0, H=H0)
    lazy = SmoothNMF(**_params(hspy_comp), max_memory=budget).fit(on_disk, W=W0, H=H0)
    assert isinstance(in_memory(lazy, on_disk), ChunkedData)
    assert len(in_memory(lazy, on_disk).bands) == 64
    assert lazy.data_path_ == eager.data_path_ == "sparse"
    params = _params(hspy_comp)
    default = SmoothNMF(**params, max_memory=budget).fit(on_disk)
    reference = SmoothNMF(**params).fit(X)
    if hspy_comp:
        _assert_same_fit(lazy, eager)
        np.testing.assert_allclose(lazy.transform(on_disk), eager.transform(X), rtol=1e-8)
        _assert_same_fit(default, reference)
    else:  # the same iterations; the final exact solve of the spectra needs every pixel
        np.testing.assert_allclose(lazy.losses_[:-1], eager.losses_[:-1], rtol=1e-8)
        np.testing.assert_allclose(default.losses_[:-1], reference.losses_[:-1], rtol=1e-8)
    # sparse=False keeps the dense bands.
    dense = SmoothNMF(**_params(hspy_comp, max_iter=5), sparse=False, max_memory=budget)
    assert dense.fit(on_disk, W=W0, H=H0).data_path_ == "dense"


def test_integer_counts_on_disk_are_banded_by_their_stored_size(low_counts):
    # uint16 counts: 25-pixel bands are 15 kB as stored (60 kB as floats), within 1/8 of
    # 150 kB: read whole, then compressed (or cast block by block) in the passes.
    X = low_counts.X.T
    counts = _chunked(X.astype(np.uint16), True, n_chunks=64)
    W0, H0 = _start()
    for sparse in ("auto", False):
        est = SmoothNMF(**_params(True), sparse=sparse, max_memory="150kB")
        assert len(in_memory(est, counts).bands) == 64
        eager = SmoothNMF(**_params(True), sparse=sparse).fit(X, W=W0, H=H0)
        _assert_same_fit(est.fit(counts, W=W0, H=H0), eager)


def test_what_data_left_on_disk_refuse(high_counts):
    X = _chunked(high_counts.X.T, True)
    est = SmoothNMF(hspy_comp=True, max_memory="2MB", verbose=0)
    with pytest.raises(ValueError, match="mask"):
        est.fit(X, mask=np.zeros(X.shape, dtype=bool))
    channels_as_rows = SmoothNMF(max_memory="2MB", max_iter=5, verbose=0).fit(X.T)
    with pytest.raises(ValueError, match="hspy_comp=False"):
        channels_as_rows.transform(X.T)
    with pytest.raises(ValueError, match="callable G"):
        est.set_params(G=lambda data: np.eye(300)[:, :10]).fit(X)
    bad = high_counts.X.T.copy()
    bad[1599, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        SmoothNMF(hspy_comp=True, max_memory="2MB", verbose=0).fit(_chunked(bad, True))


@pytest.mark.parametrize(
    "value, error, match",
    [("two GB", ValueError, "max_memory"), (True, TypeError, "max_memory")],
)
def test_bad_budgets_are_refused(value, error, match):
    with pytest.raises(error, match=match):
        memory_budget(value)
    assert memory_budget("2GB") == 2_000_000_000
    assert memory_budget(None) > 0


@pytest.mark.parametrize("bad, match", [(np.nan, "NaN or infinity"), (-1.0, "non-negative")])
def test_bad_chunks_are_refused(low_counts, bad, match):
    X = low_counts.X.T.copy()
    X[1500, 7] = bad  # in the last chunk
    with pytest.raises(ValueError, match=match):
        SmoothNMF(hspy_comp=True, verbose=0).fit(_chunked(X, True))


def test_lazy_signal_with_navigation_mask_gives_the_eager_fit(low_counts):
    eager_signal = low_counts.to_signal("spectrum_image")
    lazy_signal = eager_signal.as_lazy()
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:5] = True
    params = dict(output_dimension=3, max_iter=30, no_stop_criterion=True, random_state=0)
    for s in (eager_signal, lazy_signal):
        s.decomposition(algorithm="SmoothNMF", navigation_mask=mask, verbose=0, **params)
    lazy_loadings = np.asarray(lazy_signal.learning_results.loadings)
    eager_loadings = eager_signal.learning_results.loadings
    np.testing.assert_allclose(lazy_loadings, eager_loadings, rtol=1e-8, equal_nan=True)


def test_distributed_cluster_reads_from_disk_and_gives_the_same_fit(low_counts, tmp_path):
    distributed = pytest.importorskip("distributed")
    X = low_counts.X.T
    path = tmp_path / "counts.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("counts", data=X, chunks=(100, 300))
    params = _params(True)
    eager = SmoothNMF(**params).fit(X)
    W0, H0 = _start()
    read_each_pass = SmoothNMF(**_params(True, max_iter=10), sparse=False).fit(X, W=W0, H=H0)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        h5py.File(path, "r") as f,
    ):
        on_disk = da.from_array(f["counts"], chunks=(100, 300))
        lazy = SmoothNMF(**params).fit(on_disk)  # compressed by the workers
        chunked = SmoothNMF(**_params(True, max_iter=10), max_memory="2MB")
        chunked.fit(on_disk, W=W0, H=H0)  # the workers read the chunks at every pass
    _assert_same_fit(lazy, eager)
    _assert_same_fit(chunked, read_each_pass)
    assert dask.config.get("scheduler", None) is None  # the client is gone


@pytest.mark.parametrize("shape", [(1600, 300), (300, 1600)])
def test_randomized_svd_by_bands_is_scikit_learns(shape):
    from sklearn.utils.extmath import randomized_svd

    rng = np.random.default_rng(0)
    X = rng.poisson(5.0, size=shape) + 20 * np.outer(rng.random(shape[0]), rng.random(shape[1]))
    chunked = ChunkedData(
        da.from_array(X, chunks=(100, -1)), np.float64, n_features=shape[1], where="X"
    )
    for k in (3, 40):  # 7 and 4 power iterations
        for ours, theirs in zip(
            chunked.randomized_svd(k, 123), randomized_svd(X, k, random_state=123)
        ):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * np.abs(theirs).max())


REAL_MAP = pathlib.Path(__file__).parent / "data" / "test_TEM.bcf"


@pytest.mark.skipif(not REAL_MAP.exists(), reason="tests/data/test_TEM.bcf is missing")
def test_a_real_map_loaded_lazily_gives_the_eager_decomposition():
    # A Bruker map (64x64x2048, ~6 counts/pixel), not made by this project: read once
    # (compressed) and read at every pass, against the same fit in memory.
    import hyperspy.api as hs

    params = dict(output_dimension=3, lambda_L=2.0, random_state=0, verbose=0)
    params.update(max_iter=30, no_stop_criterion=True)
    factors = {}
    for name, lazy, options in [
        ("eager", False, {}),
        ("read once", True, {}),
        ("eager dense", False, {"sparse": False}),
        ("every pass", True, {"sparse": False, "max_memory": "20MB"}),
    ]:
        s = hs.load(REAL_MAP, lazy=lazy, select_type="spectrum_image")
        s.set_signal_type("EDS_espm_lite")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the elements G="edx" would miss
            est = s.decomposition(algorithm="SmoothNMF", return_info=True, **params, **options)
        factors[name] = (np.asarray(s.learning_results.factors), est.data_path_)
    assert [path for _, path in factors.values()] == ["sparse", "sparse", "dense", "dense"]
    for ours, reference in [("read once", "eager"), ("every pass", "eager dense")]:
        a, b = factors[ours][0], factors[reference][0]
        assert np.abs(a - b).max() <= 1e-8 * np.abs(b).max(), ours

"""The sparse path of the data passes: same iterates as the dense path, input handling."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from espm_lite import SmoothNMF, kernels

SHAPE = (6, 8)
N_CHANNELS = 60
K = 3


@pytest.fixture(scope="module")
def counts(low_counts):
    """Low-count Poisson data (n, p) = (N_CHANNELS, SHAPE pixels), about 15 % non-zero."""
    return low_counts


def _fit(X, sparse, max_iter=12, **params):
    est = SmoothNMF(
        n_components=K,
        max_iter=max_iter,
        no_stop_criterion=True,
        random_state=0,
        verbose=0,
        sparse=sparse,
        **params,
    )
    D = est.fit_transform(X)
    return est, D


def _fixed_W():
    fixed = -np.ones((N_CHANNELS, K))
    fixed[:5, 0] = 0.01
    return fixed


def _fixed_H():
    fixed = -np.ones((K, SHAPE[0] * SHAPE[1]))
    fixed[1, :4] = 2.0
    return fixed


def _G():
    rng = np.random.default_rng(0)
    return np.abs(rng.standard_normal((N_CHANNELS, 5))) + 0.1


REGULARISERS = {
    "plain": {},
    "laplacian": {"lambda_L": 2.0, "shape_2d": SHAPE},
    "mu": {"mu": [0.5, 0.0, 1.0]},
    "simplex_H": {"simplex_H": True, "simplex_W": False},
    "no_simplex": {"simplex_W": False},
    "fixed": {"fixed_W": _fixed_W(), "fixed_H": _fixed_H()},
    "G": {"G": _G()},
    "all": {"lambda_L": 1.0, "shape_2d": SHAPE, "mu": 0.3, "G": _G()},
}


@pytest.mark.parametrize("algo", ["log_surrogate", "l2_surrogate", "projected_gradient"])
@pytest.mark.parametrize("name", sorted(REGULARISERS))
def test_sparse_and_dense_paths_give_the_same_iterates(counts, algo, name):
    params = {"algo": algo, **REGULARISERS[name]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dense, D_dense = _fit(counts, False, **params)
        sparse, D_sparse = _fit(sp.csr_matrix(counts), "auto", **params)
    assert dense.data_path_ == "dense"
    assert sparse.data_path_ == "sparse"
    # The fit ends with the exact solve of the sample-side factor (the spectra here):
    # its optimum moves by the conditioning of the problem (~1e7 for nearly collinear
    # maps) times the rounding differences of the two paths, hence 1e-7, not 1e-8.
    np.testing.assert_allclose(D_sparse, D_dense, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(sparse.H_, dense.H_, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(sparse.losses_, dense.losses_, rtol=1e-10)
    assert sparse.n_iter_ == dense.n_iter_
    np.testing.assert_allclose(sparse.reconstruction_err_, dense.reconstruction_err_, rtol=1e-10)


@pytest.mark.parametrize("algo", ["log_surrogate", "projected_gradient"])
def test_frobenius_loss_same_on_both_paths(counts, algo):
    dense, D_dense = _fit(counts, False, l2=True, algo=algo)
    sparse, D_sparse = _fit(counts, True, l2=True, algo=algo)
    assert (dense.data_path_, sparse.data_path_) == ("dense", "sparse")
    np.testing.assert_allclose(D_sparse, D_dense, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sparse.H_, dense.H_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sparse.losses_, dense.losses_, rtol=1e-10)


def test_hspy_orientation_and_normalize_same_on_both_paths(counts):
    XT = np.ascontiguousarray(counts.T)
    dense, maps_dense = _fit(XT, False, hspy_comp=True, normalize=True, mu=0.2)
    sparse, maps_sparse = _fit(sp.csr_matrix(XT), "auto", hspy_comp=True, normalize=True, mu=0.2)
    np.testing.assert_allclose(maps_sparse, maps_dense, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-8, atol=1e-12)


def test_float32_kept_on_the_sparse_path(counts):
    X32 = sp.csr_matrix(counts.astype(np.float32))
    est, D = _fit(X32, "auto")
    assert est.data_path_ == "sparse"
    assert D.dtype == np.float32 and est.H_.dtype == np.float32
    ref, D_ref = _fit(counts.astype(np.float32), False)
    np.testing.assert_allclose(D, D_ref, rtol=1e-3, atol=1e-6)


def test_dtype_parameter_forces_float32(counts):
    est, D = _fit(sp.csr_matrix(counts), "auto", dtype=np.float32)
    assert D.dtype == np.float32 and est.W_.dtype == np.float32
    est64, D64 = _fit(counts.astype(np.float32), "auto", dtype=np.float64)
    assert D64.dtype == np.float64
    with pytest.raises(ValueError, match="dtype"):
        _fit(counts, "auto", dtype=np.int32)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("int_counts", [False, True])
def test_sparse_formats_and_integer_counts(counts, fmt, int_counts):
    values = counts.astype(np.int64) if int_counts else counts
    X = sp.csr_matrix(values).asformat(fmt)
    before = X.copy()
    est, D = _fit(X, "auto")
    assert est.data_path_ == "sparse"
    _, D_ref = _fit(counts, False)
    np.testing.assert_allclose(D, D_ref, rtol=1e-7, atol=1e-12)  # see the test above
    # The caller's matrix is unchanged (values, structure, type).
    assert X.format == fmt and X.dtype == before.dtype
    assert (X != before).nnz == 0


def test_duplicate_entries_are_summed_without_touching_the_input(counts):
    coo = sp.coo_matrix(counts.T)  # (p, n), hspy orientation: used as CSR without copy
    rows = np.concatenate([coo.row, coo.row])
    order = np.argsort(rows, kind="stable")
    cols = np.concatenate([coo.col, coo.col])[order]
    values = np.concatenate([coo.data / 2, coo.data / 2])[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=coo.shape[0]))])
    dup = sp.csr_matrix((values, cols, indptr), shape=coo.shape)
    assert dup.nnz == 2 * coo.nnz
    data_before, indices_before = dup.data.copy(), dup.indices.copy()
    est, maps = _fit(dup, "auto", hspy_comp=True)
    ref, maps_ref = _fit(np.ascontiguousarray(counts.T), False, hspy_comp=True)
    np.testing.assert_allclose(maps, maps_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(est.losses_, ref.losses_, rtol=1e-10)
    np.testing.assert_array_equal(dup.data, data_before)
    np.testing.assert_array_equal(dup.indices, indices_before)
    assert dup.nnz == 2 * coo.nnz


def test_auto_choice_follows_density(counts, caplog):
    sparse_like = counts.copy()
    dense_like = counts + 1.0
    with caplog.at_level(logging.INFO, logger="espm_lite"):
        est, _ = _fit(sparse_like, "auto", max_iter=2)
    assert est.data_path_ == "sparse"
    assert any("sparse path" in record.getMessage() for record in caplog.records)
    est, _ = _fit(dense_like, "auto", max_iter=2)
    assert est.data_path_ == "dense"
    # A float is the density threshold; booleans force the path.
    est, _ = _fit(sparse_like, 0.01, max_iter=2)
    assert est.data_path_ == "dense"
    est, _ = _fit(dense_like, True, max_iter=2)
    assert est.data_path_ == "sparse"
    est, _ = _fit(sp.csr_matrix(sparse_like), False, max_iter=2)
    assert est.data_path_ == "dense"


def test_auto_threshold_is_the_module_constant(counts, monkeypatch):
    density = np.count_nonzero(counts) / counts.size
    monkeypatch.setattr(kernels, "SPARSE_DENSITY_THRESHOLD", density / 2)
    est, _ = _fit(counts, "auto", max_iter=2)
    assert est.data_path_ == "dense"
    monkeypatch.setattr(kernels, "SPARSE_DENSITY_THRESHOLD", density * 2)
    est, _ = _fit(counts, "auto", max_iter=2)
    assert est.data_path_ == "sparse"


@pytest.mark.parametrize("bad", ["yes", 0.0, 1.5, -1])
def test_invalid_sparse_parameter(counts, bad):
    with pytest.raises(ValueError, match="sparse"):
        _fit(counts, bad, max_iter=2)


def test_transform_and_loss_accept_sparse(counts):
    XT = np.ascontiguousarray(counts.T)
    est, _ = _fit(XT, "auto", hspy_comp=True, max_iter=5)
    maps_dense = est.transform(XT[:10])
    maps_sparse = est.transform(sp.csr_matrix(XT[:10]))
    np.testing.assert_allclose(maps_sparse, maps_dense, rtol=1e-7, atol=1e-10)
    loss_dense = est.loss(est.W_, est.H_, X=XT)
    loss_sparse = est.loss(est.W_, est.H_, X=sp.csr_matrix(XT))
    np.testing.assert_allclose(loss_sparse, loss_dense, rtol=1e-10)


def test_sparse_data_blocks_cover_all_entries(counts):
    X = sp.csr_matrix(counts.T)
    data = kernels.SparseData(X, block_nnz=7)
    assert len(data.blocks) > 1
    rows = np.concatenate([np.arange(b.rows.start, b.rows.stop) for b in data.blocks])
    np.testing.assert_array_equal(rows, np.arange(X.shape[0]))
    assert sum(b.matrix.nnz for b in data.blocks) == X.nnz
    stacked = sp.vstack([b.matrix for b in data.blocks]).tocsr()
    assert (stacked != X).nnz == 0


def test_data_pass_sparse_matches_dense_terms(counts):
    X = np.ascontiguousarray(counts.T)
    rng = np.random.default_rng(1)
    D = rng.random((X.shape[1], K)) + 0.1
    A_init = rng.random((X.shape[0], K)) + 0.1
    for loss in ("kl", "l2"):
        consts = kernels.data_constants(X, loss)
        results = {}
        for name, data in (("dense", X), ("sparse", kernels.SparseData(X, block_nnz=50))):
            A = A_init.copy()
            seen = {}

            def rule(rows, negative, positive, curvature, seen=seen, A=A):
                seen[rows.start] = (np.array(negative), np.array(curvature))
                return A[rows] * 0.9 + 0.01

            out = kernels.data_pass(
                data, A, D, loss=loss, map_rule=rule, need_curvature=True, x_constants=consts
            )
            neg = np.concatenate([seen[s][0] for s in sorted(seen)])
            curv = np.concatenate([seen[s][1] for s in sorted(seen)])
            results[name] = (out.data_loss, out.w_negative, neg, curv, A)
        for a, b in zip(results["dense"], results["sparse"], strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-10)


@pytest.mark.parametrize("hspy_comp", [False, True])
@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64])
def test_dense_low_count_input_is_compressed_as_given(counts, hspy_comp, dtype):
    # A dense array bound for the sparse path is compressed in its own type: the same
    # fit as its CSR matrix, in either orientation and memory order, input untouched.
    values = np.ascontiguousarray(counts.T) if hspy_comp else counts
    ref, D_ref = _fit(sp.csr_matrix(values.astype(np.float64)), "auto", hspy_comp=hspy_comp)
    for X in (values.astype(dtype), np.asfortranarray(values.astype(dtype))):
        before = X.copy()
        est, D = _fit(X, "auto", hspy_comp=hspy_comp, dtype=np.float64)
        assert est.data_path_ == "sparse"
        np.testing.assert_allclose(D, D_ref, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(est.losses_, ref.losses_, rtol=1e-12)
        np.testing.assert_array_equal(X, before)
        assert X.dtype == before.dtype
        np.testing.assert_allclose(est.transform(X), ref.transform(values), rtol=1e-9, atol=1e-12)


def test_dense_counts_are_never_copied_to_floats():
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.poisson(0.02, size=(400, 3000)).astype(np.uint8)  # 2 % non-zero
    params = dict(n_components=2, max_iter=2, no_stop_criterion=True, verbose=0, hspy_comp=True)
    SmoothNMF(**params, random_state=0).fit(X)  # compiled kernels loaded outside the trace
    tracemalloc.start()
    try:
        est = SmoothNMF(**params, random_state=0).fit(X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert est.data_path_ == "sparse"
    assert peak < 0.25 * X.size * 8  # a float64 copy would be 9.6 MB (measured: 1.5 MB)


def test_compressed_dense_input_is_validated_as_before(counts):
    for bad, message in ((np.nan, "NaN"), (np.inf, "infinity"), (-1.0, "Negative values")):
        X = counts.copy()
        X[3, 2] = bad
        with pytest.raises(ValueError, match=message):
            _fit(X, "auto")
        with pytest.raises(ValueError, match=message):
            _fit(X, False)


def test_a_callable_G_receives_the_dense_data(counts):
    received = []

    def G(X):
        received.append(type(X))
        return _G()

    est, _ = _fit(counts, "auto", G=G, max_iter=2)
    assert est.data_path_ == "sparse"
    assert received == [np.ndarray]


def test_run_parts_uses_the_calling_thread_and_keeps_the_order():
    import threading

    from espm_lite.kernels.threads import run_parts

    blocks = list(range(7))
    results = run_parts(lambda mine: (threading.get_ident(), mine), blocks, 3)
    assert [mine for _, mine in results] == [[0, 3, 6], [1, 4], [2, 5]]
    assert results[0][0] == threading.get_ident()  # the first part, in the caller


def test_a_sparse_fit_makes_its_blas_calls_on_one_thread(counts, monkeypatch):
    """OpenBLAS threads woken by a threaded call keep spinning for ~0.1 s, taking the
    cores from the passes that follow: a sparse fit keeps BLAS on one thread from its
    validation to its end (its own threads run the passes)."""
    from threadpoolctl import threadpool_info

    import espm_lite.estimators.base as base
    from espm_lite.solvers.smooth_kl import SmoothKL

    def blas_threads():
        return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")

    seen = {}

    def recorded(name, function):
        def call(*args, **kwargs):
            seen[name] = blas_threads()
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(base, "prepare", recorded("prepare", base.prepare))
    monkeypatch.setattr(SmoothKL, "start", recorded("start", SmoothKL.start))
    monkeypatch.setattr(SmoothKL, "polish", recorded("polish", SmoothKL.polish))
    monkeypatch.setattr(
        base.NMFEstimator, "_set_fitted", recorded("end", base.NMFEstimator._set_fitted)
    )
    est = SmoothNMF(n_components=K, max_iter=3, random_state=0, verbose=0, sparse=True)
    est.fit(sp.csr_matrix(counts))
    assert est.data_path_ == "sparse"
    assert seen == {"prepare": 1, "start": 1, "polish": 1, "end": 1}

"""The compiled engine (numba kernels of the sparse KL pass) against the NumPy reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import espm_lite
from espm_lite import PNMF, SmoothNMF, config_context, get_config, set_config
from espm_lite.kernels import GridLaplacian, SparseData, compiled, data_pass, fused, grid_laplacian
from espm_lite.kernels.compiled import COMPRESS_ROWS, compress_rows
from espm_lite.kernels.newton_rows import newton_rows

SHAPE, N_CHANNELS, K = (6, 8), 60, 3  # the conftest fixture low_counts (n, p)


CASES = {
    "plain": {},
    "laplacian": {"lambda_L": 2.0, "shape_2d": SHAPE},
    "mu": {"mu": [0.5, 0.0, 1.0]},
    "simplex_H": {"simplex_H": True, "simplex_W": False},
    "G": {"G": np.random.default_rng(0).random((N_CHANNELS, 5)) + 0.1},
    "hspy_normalize": {"hspy_comp": True, "normalize": True, "lambda_L": 1.0, "shape_2d": SHAPE},
    "l2_surrogate": {"algo": "l2_surrogate", "lambda_L": 1.0, "shape_2d": SHAPE},
}


def _fit(engine, X, estimator):
    with config_context(engine=engine), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = estimator.fit_transform(X)
    return estimator, out


def _smooth(**params):
    return SmoothNMF(
        n_components=K, max_iter=15, no_stop_criterion=True, random_state=0, verbose=0, **params
    )


def _assert_same_fit(a, b, rtol):
    (est_a, out_a), (est_b, out_b) = a, b
    assert est_a.n_iter_ == est_b.n_iter_
    np.testing.assert_allclose(est_a.losses_, est_b.losses_, rtol=rtol)
    np.testing.assert_allclose(out_a, out_b, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(est_a.components_, est_b.components_, rtol=rtol, atol=1e-12)


#: Cases whose map update runs inside the compiled pass (log-surrogate, no simplex).
FUSED = {"plain", "laplacian", "mu", "G", "hspy_normalize"}


def _count_fused_calls(monkeypatch) -> list[str]:
    """Record each call of the fused kernels (sparse and dense blocks) by name."""
    calls = []
    for name in ("kl_fused_map_update", "kl_fused_dense_update"):
        kernel = getattr(fused, name)
        monkeypatch.setattr(
            fused, name, lambda *a, name=name, kernel=kernel: calls.append(name) or kernel(*a)
        )
    return calls


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_both_engines_give_the_same_iterates(low_counts, name, layout, monkeypatch):
    params = CASES[name]
    X = low_counts.T if params.get("hspy_comp") else low_counts
    X = sp.csr_matrix(X) if layout == "sparse" else X
    params = {**params, "sparse": layout == "sparse"}
    numpy_fit = _fit("numpy", X, _smooth(**params))
    calls = _count_fused_calls(monkeypatch)
    numba_fit = _fit("numba", X, _smooth(**params))
    assert numba_fit[0].data_path_ == layout
    expected = {"sparse": "kl_fused_map_update", "dense": "kl_fused_dense_update"}[layout]
    assert set(calls) == ({expected} if name in FUSED else set())
    _assert_same_fit(numba_fit, numpy_fit, rtol=1e-10)


def test_both_engines_agree_in_float32(low_counts):
    X = sp.csr_matrix(low_counts.astype(np.float32))
    numpy_fit = _fit("numpy", X, _smooth(lambda_L=1.0, shape_2d=SHAPE))
    numba_fit = _fit("numba", X, _smooth(lambda_L=1.0, shape_2d=SHAPE))
    assert numba_fit[1].dtype == np.float32
    _assert_same_fit(numba_fit, numpy_fit, rtol=1e-4)


@pytest.mark.parametrize("empty_pixel", [False, True])
@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_both_engines_agree_on_masked_fits(low_counts, layout, empty_pixel, monkeypatch):
    # Masked fits run the fused kernels with the observed entries' positive part, except
    # when a pixel has no observed entry (imputed by the NumPy rule): then the separate path.
    mask = np.random.default_rng(1).random(low_counts.shape) < 0.1
    mask[:, 7] |= empty_pixel
    X = np.where(mask, 0.0, low_counts)

    def masked(engine):
        est = _smooth(sparse=layout == "sparse", lambda_L=1.0, shape_2d=SHAPE)
        with config_context(engine=engine):
            est.fit(X, mask=mask)
        return est

    calls = _count_fused_calls(monkeypatch)
    a = masked("numba")
    assert bool(calls) != empty_pixel
    b = masked("numpy")
    assert a.data_path_ == b.data_path_ == layout
    np.testing.assert_allclose(a.losses_, b.losses_, rtol=1e-10)
    np.testing.assert_allclose(a.components_, b.components_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.H_, b.H_, rtol=1e-10, atol=1e-12)


def test_both_engines_agree_on_pnmf(low_counts):
    def pnmf():
        return PNMF(n_components=K, max_iter=10, random_state=0, verbose=0, sparse=True)

    _assert_same_fit(
        _fit("numba", low_counts, pnmf()), _fit("numpy", low_counts, pnmf()), rtol=1e-10
    )


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_compiled_results_are_deterministic(low_counts, layout, monkeypatch):
    calls = _count_fused_calls(monkeypatch)
    X = sp.csr_matrix(low_counts) if layout == "sparse" else low_counts
    params = {"lambda_L": 1.0, "shape_2d": SHAPE, "sparse": layout == "sparse"}
    first = _fit("numba", X, _smooth(**params))
    second = _fit("numba", X, _smooth(**params))
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[0].losses_, second[0].losses_)
    assert len(calls) >= 30  # the compiled kernels ran, at every pass


@pytest.mark.parametrize(
    "index_dtype, k",
    [(np.int32, 3), (np.int64, 3), (np.int32, compiled.UNROLLED_MAX_K + 1)],
    ids=["int32", "int64", "any-k kernel"],
)
def test_one_pass_of_the_kernels_matches_the_formulas(index_dtype, k):
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(40, 25)).astype(float)
    dense[5] = 0.0  # a row without entries
    csr = sp.csr_matrix(dense)
    csr.indices = csr.indices.astype(index_dtype)
    csr.indptr = csr.indptr.astype(index_dtype)
    A = rng.random((40, k)) + 0.1
    D = rng.random((25, k)) + 0.1
    Y = A @ D.T
    R = np.where(dense > 0, dense / Y, 0.0)
    new_maps = A * (R @ D) / D.sum(axis=0)
    with config_context(engine="numba"):
        updated = A.copy()
        result = data_pass(
            SparseData(csr, block_nnz=50),
            updated,
            D,
            map_rule=lambda rows, neg, pos, curv: updated[rows] * neg / pos,
        )
    np.testing.assert_allclose(updated, new_maps, rtol=1e-12)
    Y_new = new_maps @ D.T
    R_new = np.divide(dense, Y_new, out=np.zeros_like(dense), where=dense > 0)
    np.testing.assert_allclose(result.w_negative, R_new.T @ new_maps, rtol=1e-12)
    kl = np.sum(np.where(dense > 0, dense * np.log(np.where(dense > 0, dense / Y, 1)), 0))
    kl += Y.sum() - dense.sum()
    expected = kl
    with config_context(engine="numba"):
        loss = data_pass(
            SparseData(csr),
            A.copy(),
            D,
            need_w_terms=False,
            x_constants=(float(np.sum(dense[dense > 0] * np.log(dense[dense > 0]))), dense.sum()),
        ).data_loss
    np.testing.assert_allclose(loss, expected, rtol=1e-12)


class _Rule:
    """A map rule with a compiled form: the NumPy update of ``fused.MultiplicativeMapRule``."""

    def __init__(self, A, compiled_form):
        self.A, self.compiled_form = A, compiled_form

    def __call__(self, rows, negative, positive, curvature):
        rule, Ab = self.compiled_form, self.A[rows]
        numerator, denominator = negative + rule.proximal, positive + rule.smoothing[rows]
        denominator = denominator + rule.mu / (Ab + rule.epsilon) + rule.proximal
        return np.maximum(Ab * numerator / denominator, rule.floor)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("k", [2, compiled.UNROLLED_MAX_K + 1])
def test_the_fused_pass_is_the_pass_with_its_rule_and_sums_the_logarithms(k, layout, monkeypatch):
    rng = np.random.default_rng(1)
    dense = rng.poisson(0.4, size=(60, 200)).astype(float)
    dense[:, :80] = np.where(dense[:, :80] > 0, 1.0, 0.0)  # long runs of equal values
    dense[:, 180:] *= 70.3  # values that are not small whole numbers: their own logarithm
    dense[3] = 0.0  # a row without entries
    data = SparseData(sp.csr_matrix(dense), block_nnz=300) if layout == "sparse" else dense
    A = rng.random((60, k)) + 0.1
    D = rng.random((200, k)) + 0.1
    D[150:] *= 1e-125  # model values below fused.FACTOR_RANGE: their own logarithm
    D[100:150] *= 1e-60  # products that leave fused.PRODUCT_RANGE in a few factors
    rule = fused.MultiplicativeMapRule(
        smoothing=rng.random((60, k)) - 0.5,
        proximal=rng.random(k),
        mu=rng.random(k),
        epsilon=np.float64(0.3),
        floor=np.float64(0.05),
    )
    results, calls = {}, _count_fused_calls(monkeypatch)
    for label, with_form in [("fused", True), ("separate", False)]:
        calls.clear()
        maps = A.copy()
        numpy_rule = _Rule(maps, rule)
        with config_context(engine="numba"):
            results[label] = data_pass(
                data,
                maps,
                D,
                map_rule=numpy_rule if with_form else (lambda *terms: numpy_rule(*terms)),
                x_constants=(0.0, 0.0),
            )
        results[label + " maps"] = maps
        assert bool(calls) == with_form
    np.testing.assert_allclose(results["fused maps"], results["separate maps"], rtol=1e-13)
    floored = results["fused maps"] == 0.05
    assert floored.any() and not floored.all()
    np.testing.assert_allclose(
        results["fused"].w_negative, results["separate"].w_negative, rtol=1e-13
    )
    stored = dense > 0
    log_sum = np.sum(dense[stored] * np.log((A @ D.T)[stored]))
    expected = np.sum(A @ D.T) - log_sum  # x_constants are zero
    assert abs(results["fused"].data_loss - expected) <= 1e-12 * abs(log_sum)
    np.testing.assert_allclose(results["fused"].data_loss, results["separate"].data_loss, 1e-13)


def test_engine_setting_is_validated_and_scoped(monkeypatch):
    monkeypatch.delenv("ESPM_LITE_ENGINE", raising=False)
    assert get_config()["engine"] == "auto"
    with config_context(engine="numpy"):
        assert get_config()["engine"] == "numpy"
        assert not compiled.use_compiled()
    assert get_config()["engine"] == "auto"
    with pytest.raises(ValueError, match="engine must be one of"):
        set_config(engine="fortran")
    with pytest.raises(ValueError, match="engine must be one of"):
        with config_context(engine="C"):
            pass
    monkeypatch.setenv("ESPM_LITE_ENGINE", "numpy")
    assert espm_lite.get_config()["engine"] == "numpy"
    monkeypatch.setenv("ESPM_LITE_ENGINE", "gpu")
    with pytest.raises(ValueError, match="engine"):
        get_config()


def test_without_numba_auto_falls_back_and_numba_is_an_error(low_counts, monkeypatch):
    monkeypatch.setattr(compiled, "_numba", lambda: None)
    assert not compiled.use_compiled()
    est, _ = _fit("auto", sp.csr_matrix(low_counts), _smooth())
    assert est.n_iter_ == 15
    with config_context(engine="numba"), pytest.raises(ImportError, match="numba"):
        compiled.use_compiled()


@pytest.mark.parametrize("engine", ["numba", "numpy"])
@pytest.mark.parametrize("raw_dtype", [np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_channels", [5, 16, 70])  # fewer than, a multiple of, FILL_SKIP
@pytest.mark.parametrize("shared", [True, False])  # on the data-pass threads, or the caller's
def test_compressed_rows_are_scipys_csr(engine, raw_dtype, dtype, n_channels, shared):
    rng = np.random.default_rng(0)
    rows = 2 * COMPRESS_ROWS + 50  # parts on both threads
    values = rng.poisson(0.3, size=(rows, n_channels)).astype(raw_dtype)
    values[7] = 0  # an empty row
    before = values.copy()
    with config_context(engine=engine):
        matrix = compress_rows(values, dtype, shared=shared)
    reference = sp.csr_matrix(values.astype(dtype))
    assert matrix.dtype == dtype and matrix.shape == values.shape
    assert matrix.has_canonical_format
    np.testing.assert_array_equal(matrix.indptr, reference.indptr)
    np.testing.assert_array_equal(matrix.indices, reference.indices)
    np.testing.assert_array_equal(matrix.data, reference.data)
    np.testing.assert_array_equal(values, before)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_dense_to_csr_is_a_matrix_scipy_can_work_with(engine):
    # One index type for both index arrays: SciPy's own operations (tocoo, slicing,
    # transposes) refuse the mixed int32/int64 arrays of compress_rows.
    values = np.random.default_rng(1).poisson(0.3, size=(2 * COMPRESS_ROWS + 3, 9))
    with config_context(engine=engine):
        matrix = compiled.dense_to_csr(values.astype(np.uint8), np.float64)
    assert matrix.indices.dtype == matrix.indptr.dtype == np.int32
    reference = sp.csr_matrix(values.astype(np.float64))
    assert (matrix != reference).nnz == 0
    coo = matrix.tocoo()
    np.testing.assert_array_equal(coo.toarray(), values)
    np.testing.assert_array_equal(matrix[5:40].toarray(), values[5:40])
    np.testing.assert_array_equal(matrix.T.tocsr().toarray(), values.T)


@pytest.mark.parametrize("k", [3, 10])
@pytest.mark.parametrize("with_sparsity", [False, True])
def test_exact_row_solves_are_the_same_with_both_engines(k, with_sparsity):
    # The compiled objective, gradient and Hessian of the row problems against NumPy's,
    # with k above UNROLLED_MAX_K as well; rows with no counts included.
    rng = np.random.default_rng(k)
    basis = rng.random((120, k)) + 0.05
    X = rng.poisson(rng.random((60, k)) @ basis.T * 3).astype(float)
    X[5] = 0
    X = sp.csr_matrix(X)
    start = rng.random((60, k)) + 0.1
    sparsity = (np.linspace(0, 1, k), 1.0) if with_sparsity else None
    out = {}
    for engine in ("numba", "numpy"):
        with config_context(engine=engine):
            out[engine] = newton_rows(X, basis, start, floor=1e-12, sparsity=sparsity)
    np.testing.assert_allclose(out["numba"], out["numpy"], rtol=1e-10, atol=1e-12)
    assert compiled.UNROLLED_MAX_K < 10


_CACHE_PROBE = """
import json, numpy as np, scipy.sparse as sp
from espm_lite import SmoothNMF, config_context
from espm_lite.kernels import compiled, fused
X = sp.random(60, 40, density=0.2, random_state=0, format="csr") * 5
with config_context(engine="numba"):
    for smooth in ({"lambda_L": 1.0, "shape_2d": (6, 10)}, {}):  # the fit ends with row solves
        SmoothNMF(n_components=2, max_iter=5, hspy_comp=True, verbose=0, **smooth).fit(X)
    SmoothNMF(n_components=2, max_iter=5, hspy_comp=True, verbose=0, sparse=False).fit(X.toarray())
dispatchers = [fused._compiled(2, False), fused._compiled(2, True), compiled._compiled("rows", 2)]
stats = [d.stats for d in dispatchers]
print(json.dumps([[sum(s.cache_hits.values()), sum(s.cache_misses.values())] for s in stats]))
"""


def test_a_new_process_loads_the_compiled_kernels_from_the_disk_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}

    def probe():
        run = subprocess.run(
            [sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout.strip().splitlines()[-1])

    first, second = probe(), probe()
    assert all(misses >= 1 for _, misses in first)  # compiled, and written to the cache
    assert all(misses == 0 and hits >= 1 for hits, misses in second)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 3, 9])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2), (5, 6), (40, 31)])
def test_the_laplacian_stencil_is_scipys_product(shape, k, dtype):
    A = np.random.default_rng(k).random((shape[0] * shape[1], k)).astype(dtype)
    A[::5] = 0.0
    expected = grid_laplacian(shape, dtype) @ A
    operator = GridLaplacian(shape, dtype)
    with config_context(engine="numba"):
        stencil = operator @ A
        fortran = operator @ np.asfortranarray(A)  # not C-ordered: SciPy's product
    with config_context(engine="numpy"):
        reference = operator @ A
    assert stencil.dtype == dtype and stencil.shape == A.shape
    for result in (stencil, fortran, reference):  # the same sums in the same order
        np.testing.assert_array_equal(result, expected)
    pixel_sums = stencil.astype(np.float64).sum(axis=0)  # 1^T L = 0: sums over pixels vanish
    np.testing.assert_allclose(pixel_sums, 0.0, atol=1e-4 * max(1.0, np.abs(A).sum()))

"""Sparse and dense paths of SmoothNMF against scikit-learn's KL multiplicative updates.

Run ``python benchmarks/bench_sparse.py [--iters 30] [--quick] [--skip-dense-sklearn]
[--only speed|scaling|bandwidth|setup|parts]``.

Tables printed, every row measured in the same run on the same data:

1. For a 100x400x3746 two-phase phantom at 15 counts/pixel (plain, with
   ``lambda_L=1`` and with ``mu=0.1``) and a 256x256x2048 four-phase phantom
   at 50 counts/pixel: time per iteration and peak memory of SmoothNMF on its
   sparse path (CSR input) with the default engine (compiled kernels) and
   with the NumPy engine (``config_context(engine="numpy")``), SmoothNMF on
   its dense path (dense input, ``sparse=False``), scikit-learn
   ``NMF(beta_loss="kullback-leibler", solver="mu")`` on the dense array and
   on the CSR matrix (scikit-learn has no Laplacian or sparsity term: its rows
   are the same plain updates in every case).
2. Scaling: time per iteration against counts per pixel at a fixed size
   (80x80x1980, three phases), for both paths in float64 and float32, the
   sparse path with the NumPy engine and scikit-learn on the CSR matrix; the
   density at which the two paths cross is what
   :data:`espm_lite.kernels.SPARSE_DENSITY_THRESHOLD` is set from.
3. Dense high-count data (80x80x1980 at 5000 counts/pixel): the dense path
   against the memory-bandwidth bound, the time to read the data once
   (``X.nbytes`` over the read bandwidth of NumPy sums spread over the
   data-pass threads, measured in the same run).
4. Set-up (``--only setup``): a fit of a dense map of integer counts as HyperSpy
   loads it (``uint8``, 240x320 pixels x 2048 channels, 2.2 counts/pixel, like the
   real SEM map ``Hitachi_TM3030Plus.bcf`` of RosettaSciIO's test data), against
   the same counts given as a CSR matrix, and a dense high-count map (128x128x2048
   ``float64`` at 4096 counts/pixel, 86 % non-zero: the dense path): the time from
   the call to the first iteration (validation, scaling, compression, data
   constants), a fit of 5 iterations (with the start and the final row solve), and
   its ``tracemalloc`` peak.
5. Parts (``--only parts``): the two steps of an iteration that run outside the
   pass over the data and grow with the number of pixels, the Laplacian
   product ``L A`` of the map smoothing, with the NumPy engine (SciPy's CSR
   product) and the compiled one (a five-point stencil), and the ratio
   extrapolation of the maps (:mod:`espm_lite._extrapolation`, NumPy with
   either engine: its cost is the power), on maps of 100x400, 256x256 and
   512x512 pixels.

Definitions
-----------
ms/it
    ``(t(iters + 1) - t(1)) / iters`` with ``t(m)`` the wall time of a fit of
    ``m`` iterations started from the same given random factors (so
    initialisation is not counted), each ``t`` the best of ``repeats`` runs;
    for SmoothNMF ``t`` is its iteration loop alone (``_loop_timer.py``: the
    final exact row solve, whose cost depends on the iterate, is left out).
    SmoothNMF also evaluates its objective at every iteration; scikit-learn
    is run with ``tol=0`` so it never evaluates its loss.
peak MB
    ``tracemalloc`` peak of the allocations made during one fit of 3
    iterations (NumPy and SciPy report their buffers to tracemalloc; the input
    array, allocated before, and BLAS's internal buffers are not counted).
x data+factors
    Peak divided by the size of the data stored as CSR (``data``, ``indices``,
    ``indptr``) plus the factors ``(p + n) k`` in the same float type.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
import warnings

import numpy as np
import scipy.sparse as sp
from _loop_timer import loop_seconds
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from espm_lite import SmoothNMF, config_context
from espm_lite.datasets import make_spectrum_image


def smooth_nmf(k: int, sparse, dtype=None, engine: str = "auto", **params):
    """A factory ``max_iter -> estimator`` for SmoothNMF in HyperSpy's (p, n) orientation.

    ``engine`` (see :func:`espm_lite.config_context`) is kept as ``make.engine``
    and set around the timed fits.
    """

    def make(max_iter: int):
        return SmoothNMF(
            n_components=k,
            max_iter=max_iter,
            tol=0.0,
            no_stop_criterion=True,
            random_state=0,
            verbose=0,
            hspy_comp=True,
            sparse=sparse,
            dtype=dtype,
            **params,
        )

    make.engine = engine
    return make


def sklearn_mu(k: int):
    def make(max_iter: int):
        return NMF(
            n_components=k,
            beta_loss="kullback-leibler",
            solver="mu",
            init="nndsvda",
            max_iter=max_iter,
            tol=0.0,
            random_state=0,
        )

    return make


def initial_factors(X, k: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Random positive ``(maps (p, k), spectra (n, k))`` at the scale of ``X`` (seed 0).

    Both tools start from them, so that the timed fits skip the (noisy)
    SVD-based initialisation.
    """
    p, n = X.shape
    scale = np.sqrt(float(X.sum()) / (p * n) / k)
    rng = np.random.default_rng(0)
    maps = scale * (0.5 + rng.random((p, k)))
    spectra = scale * (0.5 + rng.random((n, k)))
    return maps.astype(dtype), spectra.astype(dtype)


def _fit_seconds(make, X, n_iter: int) -> float:
    est = make(n_iter)
    maps, spectra = initial_factors(X, est.n_components, X.dtype)
    if isinstance(est, NMF):
        est.set_params(init="custom")
        kwargs = {"W": maps, "H": np.ascontiguousarray(spectra.T)}
    else:
        kwargs = {"W": spectra, "H": np.ascontiguousarray(maps.T)}
    gc.collect()
    with config_context(engine=getattr(make, "engine", "auto")), loop_seconds() as timings:
        start = time.perf_counter()
        est.fit_transform(X, **kwargs)
        seconds = time.perf_counter() - start
    # espm_lite: the loop alone (its final row solve is not an iteration).
    return seconds if isinstance(est, NMF) else timings["seconds"]


def ms_per_iteration(make, X, iters: int, repeats: int = 2) -> float:
    """Milliseconds per iteration, initialisation excluded (best of ``repeats``)."""
    t_long = min(_fit_seconds(make, X, iters + 1) for _ in range(repeats))
    t_short = min(_fit_seconds(make, X, 1) for _ in range(repeats))
    return 1000 * (t_long - t_short) / iters


def peak_mb(make, X, n_iter: int = 3) -> float:
    """``tracemalloc`` peak (MB) of one fit of ``n_iter`` iterations."""
    gc.collect()
    tracemalloc.start()
    try:
        with config_context(engine=getattr(make, "engine", "auto")):
            make(n_iter).fit(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def csr_bytes(X: sp.csr_matrix) -> int:
    return X.data.nbytes + X.indices.nbytes + X.indptr.nbytes


def phantom(shape_2d, n_channels, n_phases, counts, dtype=np.float64):
    """Counts in the (pixels, channels) layout, dense and CSR."""
    data = make_spectrum_image(
        shape_2d=shape_2d,
        n_channels=n_channels,
        n_phases=n_phases,
        counts_per_pixel=counts,
        seed=0,
        dtype=dtype,
    )
    dense = np.ascontiguousarray(data.X.T)
    return dense, sp.csr_matrix(dense)


def speed_memory_table(args) -> None:
    smooth = {"lambda_L": 1.0}
    cases = [
        ((100, 400), 3746, 2, 15.0, {}),
        ((100, 400), 3746, 2, 15.0, smooth),
        ((100, 400), 3746, 2, 15.0, {"mu": 0.1}),
        ((256, 256), 2048, 4, 50.0, {}),
    ]
    if args.quick:
        cases = [((50, 100), 3746, 2, 15.0, {}), ((50, 100), 3746, 2, 15.0, smooth)]
    header = (
        f"{'phantom':>36} {'estimator':>26} {'ms/it':>9} {'/sparse':>9} "
        f"{'peak MB':>9} {'x data+factors':>15}"
    )
    print("\nTable 1: time per iteration and peak memory (float64)")
    print("/sparse: ms/it divided by that of SmoothNMF on its sparse path")
    print(header)
    print("-" * len(header))
    for shape_2d, n_channels, k, counts, params in cases:
        dense, csr = phantom(shape_2d, n_channels, k, counts)
        p, n = dense.shape
        label = f"{shape_2d[0]}x{shape_2d[1]}x{n_channels} @{counts:g} k={k}"
        if params:
            label += " " + ",".join(f"{name}={value:g}" for name, value in params.items())
            params = {**params, "shape_2d": shape_2d} if "lambda_L" in params else params
        reference = csr_bytes(csr) + (p + n) * k * dense.itemsize
        runs = [
            ("SmoothNMF sparse (CSR)", smooth_nmf(k, "auto", **params), csr, args.iters),
            (
                "SmoothNMF sparse, NumPy",
                smooth_nmf(k, "auto", engine="numpy", **params),
                csr,
                args.iters,
            ),
            (
                "SmoothNMF dense path",
                smooth_nmf(k, False, **params),
                dense,
                max(2, args.iters // 3),
            ),
            ("sklearn MU-KL on CSR", sklearn_mu(k), csr, max(2, args.iters // 3)),
        ]
        if not args.skip_dense_sklearn:
            runs.append(("sklearn MU-KL on dense", sklearn_mu(k), dense, args.sklearn_dense_iters))
        rows = []
        for name, make, X, iters in runs:
            repeats = 1 if "dense" in name else 2
            ms = ms_per_iteration(make, X, iters, repeats=repeats)
            mb = peak_mb(make, X)
            rows.append((name, ms, mb))
        sparse_ms = rows[0][1]
        print(
            f"{label:>36} {'density':>26} {csr.nnz / (p * n):9.4f} "
            f"{'':>9} {reference / 2**20:9.1f} {'(data+factors)':>15}"
        )
        for name, ms, mb in rows:
            print(
                f"{label:>36} {name:>26} {ms:9.1f} {ms / sparse_ms:8.1f}x {mb:9.1f} "
                f"{mb * 2**20 / reference:14.1f}x"
            )
        del dense, csr
        gc.collect()


def scaling_table(args) -> None:
    shape_2d, n_channels, k = ((80, 80), 1980, 3) if not args.quick else ((32, 32), 512, 3)
    counts_list = [5, 15, 50, 150, 500, 1500, 5000]
    print(
        f"\nTable 2: ms/iteration against counts per pixel "
        f"({shape_2d[0]}x{shape_2d[1]}x{n_channels}, {k} phases)"
    )
    header = (
        f"{'counts/px':>9} {'density':>8} {'sparse f64':>11} {'dense f64':>10} "
        f"{'sparse f32':>11} {'dense f32':>10} {'sparse NumPy':>13} {'sklearn CSR':>12} "
        f"{'auto picks':>11}"
    )
    print(header)
    print("-" * len(header))
    for counts in counts_list:
        dense, csr = phantom(shape_2d, n_channels, k, counts)
        dense32 = dense.astype(np.float32)
        times = [
            ms_per_iteration(smooth_nmf(k, True), dense, args.iters),
            ms_per_iteration(smooth_nmf(k, False), dense, args.iters),
            ms_per_iteration(smooth_nmf(k, True), dense32, args.iters),
            ms_per_iteration(smooth_nmf(k, False), dense32, args.iters),
            ms_per_iteration(smooth_nmf(k, True, engine="numpy"), dense, args.iters),
            ms_per_iteration(sklearn_mu(k), csr, max(2, args.iters // 2), repeats=1),
        ]
        auto = smooth_nmf(k, "auto")(1).fit(dense).data_path_
        print(
            f"{counts:9g} {csr.nnz / dense.size:8.4f} "
            + " ".join(f"{t:{w}.1f}" for t, w in zip(times, (11, 10, 11, 10, 13, 12), strict=True))
            + f" {auto:>11}"
        )


def read_bandwidth(n_bytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes per second read from memory by NumPy sums over the data-pass threads."""
    from concurrent.futures import ThreadPoolExecutor

    from espm_lite.kernels import num_threads

    threads = num_threads()
    parts = np.array_split(np.ones(n_bytes // 8), threads)
    best = np.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - start)
    return n_bytes / best


def bandwidth_table(args) -> None:
    """Dense high-count data: the dense path against the time to read the data once."""
    shape_2d, n_channels, k = ((80, 80), 1980, 3) if not args.quick else ((32, 32), 512, 3)
    bandwidth = read_bandwidth()
    print(
        f"\nTable 3: dense path against the memory-bandwidth bound "
        f"({shape_2d[0]}x{shape_2d[1]}x{n_channels}, {k} phases; read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s over the data-pass threads)"
    )
    header = (
        f"{'counts/px':>9} {'dtype':>8} {'MB read/it':>11} {'bound ms/it':>12} "
        f"{'dense ms/it':>12} {'x bound':>8} {'sklearn dense':>14}"
    )
    print(header)
    print("-" * len(header))
    for counts in (5000.0,):
        dense, csr = phantom(shape_2d, n_channels, k, counts)
        for dtype in (np.float64, np.float32):
            X = dense.astype(dtype)
            bound = 1000 * X.nbytes / bandwidth  # the data read once per iteration
            ms = ms_per_iteration(smooth_nmf(k, False), X, args.iters)
            sk = ms_per_iteration(sklearn_mu(k), dense, max(2, args.iters // 3), repeats=1)
            print(
                f"{counts:9g} {np.dtype(dtype).name:>8} {X.nbytes / 2**20:11.1f} {bound:12.1f} "
                f"{ms:12.1f} {ms / bound:7.1f}x {sk:14.1f}"
            )


def integer_counts(shape_2d, n_channels: int, counts: float, seed: int = 0) -> np.ndarray:
    """Poisson counts ``(p, n)`` in ``uint8``, made band by band (no wide temporary)."""
    p = shape_2d[0] * shape_2d[1]
    rng = np.random.default_rng(seed)
    out = np.empty((p, n_channels), dtype=np.uint8)
    for start in range(0, p, 4096):
        rows = out[start : start + 4096]
        rows[...] = np.minimum(rng.poisson(counts / n_channels, size=rows.shape), 255)
    return out


def setup_table(args) -> None:
    from espm_lite.estimators import base

    X = integer_counts((240, 320), 2048, 2.2)
    high = np.random.default_rng(0).poisson(2.0, size=(128 * 128, 2048)).astype(np.float64)
    forms = {
        "dense uint8 (as loaded)": X,
        "CSR float64": sp.csr_matrix(X, dtype=np.float64),
        "dense float64, 4096/px": high,
    }
    print(
        f"\nSet-up of a fit: 240x320x2048 counts ({X.nbytes / 1e6:.0f} MB as uint8, "
        f"{np.count_nonzero(X) / X.size:.2%} non-zero), and 128x128x2048 at 4096 "
        f"counts/pixel ({high.nbytes / 1e6:.0f} MB); k = 3, hspy_comp=True"
    )
    print(f"{'input':>24s} {'path':>6s} {'set-up s':>9s} {'5 iterations s':>15s} {'peak MB':>8s}")
    original, times = base.prepare, {}

    def timed(*a, **kw):
        start = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            times["setup"] = time.perf_counter() - start

    for name, data in forms.items():
        est = SmoothNMF(
            n_components=3, max_iter=5, no_stop_criterion=True, random_state=0,
            verbose=0, hspy_comp=True,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flat counts: phases may come out empty
            gc.collect()
            base.prepare = timed
            try:
                start = time.perf_counter()
                est.fit(data)
                total = time.perf_counter() - start
            finally:
                base.prepare = original
            gc.collect()
            tracemalloc.start()
            try:
                est.fit(data)
                peak = tracemalloc.get_traced_memory()[1] / 1e6
            finally:
                tracemalloc.stop()
        print(
            f"{name:>24s} {est.data_path_:>6s} {times['setup']:9.2f} {total:15.2f} {peak:8.0f}",
            flush=True,
        )


def _part_calls(shape_2d, k: int, rng) -> dict:
    """The Laplacian product and the ratio extrapolation of ``(pixels, k)`` maps."""
    from espm_lite._extrapolation import extrapolate
    from espm_lite.kernels import GridLaplacian

    p = shape_2d[0] * shape_2d[1]
    before = rng.random((p, k)) + 0.01
    after = before * (1 + 0.01 * rng.standard_normal((p, k)))  # one step's change
    laplacian = GridLaplacian(shape_2d)
    buffer = after.copy()

    def extrapolated():
        buffer[...] = after
        # a weight as the fits have (0.5 would take NumPy's square root, much faster)
        extrapolate(buffer, before, 0.37, "ratio")

    return {
        "Laplacian product L A": lambda: laplacian @ after,
        "ratio extrapolation of A (+ a copy)": extrapolated,
    }


def parts_table(args) -> None:
    """The per-iteration parts outside the data pass, with both engines (best of repeats)."""
    import timeit

    print("\nTable 5: parts of an iteration outside the data pass (float64, best of 5 x 20 calls)")
    print(f"{'maps':>14s} {'part':>36s} {'NumPy ms':>9s} {'compiled ms':>12s} {'ratio':>6s}")
    rng = np.random.default_rng(0)
    for shape_2d, k in [((100, 400), 2), ((256, 256), 4), ((512, 512), 4)]:
        for part, call in _part_calls(shape_2d, k, rng).items():
            engines = ("numpy", "numba") if part.startswith("Laplacian") else ("numpy",)
            seconds = {}
            for engine in engines:
                with config_context(engine=engine):
                    call()
                    seconds[engine] = min(timeit.repeat(call, number=20, repeat=5)) / 20
            compiled = (  # the extrapolation is NumPy code with either engine
                f"{seconds['numba'] * 1e3:12.3f} {seconds['numpy'] / seconds['numba']:6.1f}"
                if "numba" in seconds
                else f"{'same':>12s} {'':>6s}"
            )
            print(
                f"{shape_2d[0]:>5d}x{shape_2d[1]:<4d} k={k} {part:>36s} "
                f"{seconds['numpy'] * 1e3:9.3f} {compiled}",
                flush=True,
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30, help="iterations timed")
    parser.add_argument(
        "--sklearn-dense-iters", type=int, default=3, help="iterations of sklearn on dense data"
    )
    parser.add_argument("--quick", action="store_true", help="small phantoms only")
    parser.add_argument(
        "--skip-dense-sklearn", action="store_true", help="skip sklearn on the dense array"
    )
    parser.add_argument(
        "--only", choices=("speed", "scaling", "bandwidth", "setup", "parts"), default=None
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", ConvergenceWarning)
    if args.only in (None, "speed"):
        speed_memory_table(args)
    if args.only in (None, "scaling"):
        scaling_table(args)
    if args.only in (None, "bandwidth"):
        bandwidth_table(args)
    if args.only in (None, "setup"):
        setup_table(args)
    if args.only in (None, "parts"):
        parts_table(args)


if __name__ == "__main__":
    main()

"""Speed and accuracy of SmoothNMF against scikit-learn's KL multiplicative updates.

Run ``python benchmarks/bench_smoothnmf.py [--iters 30] [--quick]``.

For each phantom (3 phases, ~500 counts/pixel) it prints, measured in the same
run on the same data:

* SmoothNMF rows use the automatic choice of path (``sparse="auto"``) and the
  default engine (compiled kernels where they exist); the "f64 NumPy" row
  runs the NumPy reference engine (``config_context(engine="numpy")``), the
  "f64 dense" row forces the dense path (``sparse=False``);
* ms/it: time per iteration, from the difference between a run of ``iters + 1``
  iterations and a run of 1 iteration, all from the same given start (so
  initialisation is not counted), best of 3; for SmoothNMF the iteration loop
  alone (``_loop_timer.py``: its final exact row solve is not an iteration);
* it->tol: iterations to convergence at each tool's default ``tol=1e-4``
  (the stopping rules differ: espm_lite compares with the current objective
  every iteration, scikit-learn with the initial error every 10 iterations);
* KL/entry: generalised KL divergence of the converged model per data entry;
* angles: matched spectral angles (degrees) of the converged spectra to the truth.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from _loop_timer import loop_seconds
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from espm_lite import SmoothNMF, config_context
from espm_lite.datasets import make_spectrum_image
from espm_lite.measures import kl_divergence, matched_angles


def _seconds(make, fit_from, X, n_iter, start_factors):
    """Wall time of the fit; for SmoothNMF its iteration loop alone (``_loop_timer.py``)."""
    est = make(n_iter)
    with loop_seconds() as timings:
        start = time.perf_counter()
        fit_from(est, X, *start_factors)
        seconds = time.perf_counter() - start
    return timings["seconds"] if isinstance(est, SmoothNMF) else seconds


def ms_per_iteration(make, fit_from, X, iters: int, start_factors, repeats: int = 3) -> float:
    """Time per iteration from a given start (no initialisation is timed)."""
    best = np.inf
    for _ in range(repeats):
        t_long = _seconds(make, fit_from, X, iters + 1, start_factors)
        t_short = _seconds(make, fit_from, X, 1, start_factors)
        best = min(best, (t_long - t_short) / iters)
    return 1000 * best


def start_factors(data, dtype):
    """The same strictly positive start for every estimator: spectra (n, 3), maps (3, p)."""
    rng = np.random.default_rng(0)
    n, p = data.X.shape
    W = rng.uniform(0.5, 1.5, size=(n, 3))
    W /= W.sum(axis=0)
    H = rng.uniform(0.5, 1.5, size=(3, p)) * data.counts_per_pixel / 3
    return W.astype(dtype), H.astype(dtype)


def espm_runner(dtype, sparse="auto", engine="auto"):
    def make(max_iter, tol=0.0):
        return SmoothNMF(
            n_components=3,
            max_iter=max_iter,
            tol=tol,
            random_state=0,
            verbose=0,
            no_stop_criterion=tol == 0.0,
            sparse=sparse,
        )

    def converged(X):
        est = make(2000, 1e-4)
        with config_context(engine=engine):
            D = est.fit_transform(X)
        return est.n_iter_, D, est.H_

    def fit_from(est, X, W, H):
        with config_context(engine=engine):
            est.fit(X, W=W.copy(), H=H.copy())

    return make, converged, (lambda X: X.astype(dtype)), fit_from, dtype


def sklearn_runner():
    def make(max_iter, tol=0.0):
        return NMF(
            n_components=3,
            beta_loss="kullback-leibler",
            solver="mu",
            init="nndsvda",
            max_iter=max_iter,
            tol=tol,
            random_state=0,
        )

    def converged(XT):
        est = make(2000, 1e-4)
        maps = est.fit_transform(XT)
        return est.n_iter_, est.components_.T, maps.T

    def fit_from(est, XT, W, H):
        est.set_params(init="custom")
        est.fit(XT, W=np.ascontiguousarray(H.T), H=np.ascontiguousarray(W.T))

    return make, converged, (lambda X: np.ascontiguousarray(X.T)), fit_from, np.float64


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="small phantoms only")
    args = parser.parse_args(argv)
    sizes = [((64, 64), 1024), ((80, 80), 1980)]
    if args.quick:
        sizes = [((32, 32), 256)]
    warnings.simplefilter("ignore", ConvergenceWarning)
    header = (
        f"{'phantom':>16} {'estimator':>18} {'ms/it':>8} {'vs sklearn':>10} "
        f"{'it->tol':>8} {'KL/entry':>9}  angles (deg)"
    )
    print(header)
    print("-" * len(header))
    for shape_2d, n_channels in sizes:
        data = make_spectrum_image(
            shape_2d=shape_2d, n_channels=n_channels, n_phases=3, counts_per_pixel=500, seed=0
        )
        label = f"{shape_2d[0]}x{shape_2d[1]}x{n_channels}"
        rows = []
        for name, (make, converged, prepare, fit_from, dtype) in [
            ("SmoothNMF float64", espm_runner(np.float64)),
            ("SmoothNMF f64 NumPy", espm_runner(np.float64, engine="numpy")),
            ("SmoothNMF f64 dense", espm_runner(np.float64, sparse=False)),
            ("SmoothNMF float32", espm_runner(np.float32)),
            ("sklearn MU-KL", sklearn_runner()),
        ]:
            X = prepare(data.X)
            ms = ms_per_iteration(make, fit_from, X, args.iters, start_factors(data, dtype))
            n_iter, D, H = converged(X)
            kl = kl_divergence(data.X, D.astype(np.float64) @ H.astype(np.float64)) / data.X.size
            angles = matched_angles(data.spectra, D.astype(np.float64))
            rows.append((name, ms, n_iter, kl, angles))
        ref = rows[-1][1]
        for name, ms, n_iter, kl, angles in rows:
            print(
                f"{label:>16} {name:>18} {ms:8.1f} {ref / ms:9.2f}x {n_iter:8d} {kl:9.4f}  "
                f"{np.array2string(angles, precision=2)}"
            )


if __name__ == "__main__":
    main()

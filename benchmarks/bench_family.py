"""The estimator family on one phantom: time to convergence and accuracy.

Run ``python benchmarks/bench_family.py [--quick] [--tol 1e-5]``.

Every estimator fits the same phantom (3 phases, 500 counts/pixel, seed 3)
from its own default start, to the same relative tolerance, in the same run.
Reference rows: scikit-learn's ``NMF`` with multiplicative updates (KL and
Frobenius losses). Columns:

* s: wall time of the whole fit (initialisation included), best of 2;
* iters, ms/it: iterations run and the mean time per iteration;
* angles: matched spectral angles (degrees) to the true spectra (for SNMF,
  on the centred data, to the centred spectra);
* rel. err: ``||X - model||_F / ||X||_F``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from _loop_timer import best_of
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from espm_lite import PNMF, SNMF, ConvexNMF, SmoothNMF
from espm_lite.datasets import make_spectrum_image
from espm_lite.measures import matched_angles


def espm_row(est, X):
    """(seconds, iterations, spectra (n, k), model (n, p)) of an espm_lite estimator."""
    seconds, est = best_of(lambda: est.fit(X))
    D = est.W_ if est.G_ is None else est.G_ @ est.W_
    return seconds, est.n_iter_, D, D @ est.H_


def sklearn_row(beta_loss: str, X, tol: float, max_iter: int):
    est = NMF(
        n_components=3,
        beta_loss=beta_loss,
        solver="mu",
        init="nndsvda",
        tol=tol,
        max_iter=max_iter,
        random_state=0,
    )
    seconds, maps = best_of(lambda: est.fit_transform(X.T))
    D = est.components_.T
    return seconds, est.n_iter_, D, D @ maps.T


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small phantom")
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--max-iter", type=int, default=3000)
    args = parser.parse_args(argv)
    shape_2d, n_channels = ((32, 32), 256) if args.quick else ((64, 64), 1024)
    data = make_spectrum_image(
        shape_2d=shape_2d, n_channels=n_channels, n_phases=3, counts_per_pixel=500, seed=3
    )
    X = data.X
    centred = X - X.mean(axis=0, keepdims=True)
    centred_truth = data.spectra - data.spectra.mean(axis=0, keepdims=True)
    common = dict(n_components=3, tol=args.tol, max_iter=args.max_iter, random_state=0, verbose=0)
    rows = [
        ("SmoothNMF (KL)", lambda: espm_row(SmoothNMF(**common), X), X, data.spectra),
        (
            "sklearn NMF MU-KL",
            lambda: sklearn_row("kullback-leibler", X, args.tol, args.max_iter),
            X,
            data.spectra,
        ),
        ("PNMF (VI, Poisson)", lambda: espm_row(PNMF(**common), X), X, data.spectra),
        ("ConvexNMF mu", lambda: espm_row(ConvexNMF(**common), X), X, data.spectra),
        ("ConvexNMF pgd", lambda: espm_row(ConvexNMF(solver="pgd", **common), X), X, data.spectra),
        (
            "sklearn NMF MU-Frob",
            lambda: sklearn_row("frobenius", X, args.tol, args.max_iter),
            X,
            data.spectra,
        ),
        ("SNMF (centred data)", lambda: espm_row(SNMF(**common), centred), centred, centred_truth),
    ]
    warnings.simplefilter("ignore", ConvergenceWarning)
    label = f"{shape_2d[0]}x{shape_2d[1]}x{n_channels} @500, tol={args.tol:g}"
    print(label)
    header = f"{'estimator':>22} {'s':>7} {'iters':>6} {'ms/it':>7} {'rel. err':>9}  angles (deg)"
    print(header)
    print("-" * len(header))
    for name, run, target, truth in rows:
        seconds, n_iter, D, model = run()
        rel = np.linalg.norm(target - model) / np.linalg.norm(target)
        angles = matched_angles(truth, D)
        print(
            f"{name:>22} {seconds:7.2f} {n_iter:6d} {1000 * seconds / max(n_iter, 1):7.2f} "
            f"{rel:9.4f}  {np.array2string(angles, precision=2)}"
        )


if __name__ == "__main__":
    main()

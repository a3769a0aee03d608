"""Is the true number of phases chosen? Held-out deviance against HyperSpy's PCA elbow.

For each phantom (:func:`espm_lite.datasets.make_spectrum_image`, 2 to 6
phases, 20 / 100 / 1000 counts per pixel, several seeds) it prints the true
``k``, the ``k`` chosen by :func:`espm_lite.model_selection.select_n_components`
(default settings with the scan shape given, as the HyperSpy method does:
SmoothNMF scoring fits with Laplacian smoothing, 3 folds of 10 % speckled
held-out entries, one-standard-error rule) and the ``k`` of HyperSpy's scree-plot elbow,
``estimate_elbow_position() + 1`` (HyperSpy's own count of significant
components: the elbow is a zero-based index) after ``s.decomposition()``
(SVD), without and with ``normalize_poissonian_noise=True``.

``--perturbed`` draws the phantoms from a generator that is not the default
one: the ``"gradients"`` maps instead of discs, and every spectrum multiplied
by a smooth random channel response (peak ratios and background shape
changed), so that the check is also made on data the default generator did
not make.

Run::

    python benchmarks/bench_n_components.py            # 40x40 px, 1000 channels, 3 seeds
    python benchmarks/bench_n_components.py --seeds 1 --shape 80 80 --channels 1980
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np

from espm_lite.datasets import make_spectrum_image
from espm_lite.model_selection import select_n_components


def phantom(k: int, counts: float, seed: int, shape, channels: int, perturbed: bool):
    """Counts ``(n, p)`` of a ``k``-phase phantom (perturbed: other maps and spectra)."""
    if not perturbed:
        return make_spectrum_image(
            shape_2d=shape, n_channels=channels, n_phases=k, counts_per_pixel=counts, seed=seed
        ).X
    data = make_spectrum_image(
        shape_2d=shape, n_channels=channels, n_phases=k, map_kind="gradients", seed=seed
    )
    rng = np.random.default_rng(seed + 1000)
    grid = np.linspace(0, 1, channels)
    response = np.exp(
        sum(rng.normal(0, 0.3) * np.cos(np.pi * f * grid)[:, None] for f in range(1, 5))
        + rng.normal(0, 0.2, (1, k))
    )
    spectra = data.spectra * response
    spectra /= spectra.sum(axis=0)
    return rng.poisson(counts * spectra @ data.maps).astype(float)


def pca_elbows(X: np.ndarray, shape) -> tuple[int, int]:
    """HyperSpy's elbow count after SVD, plain and with Poisson normalisation."""
    import hyperspy.api as hs
    from threadpoolctl import threadpool_limits

    out = []
    for poisson in (False, True):
        s = hs.signals.Signal1D(np.ascontiguousarray(X.T).reshape(*shape, -1))
        with threadpool_limits(limits=1, user_api="blas"):  # 2 shared cores: no contention
            s.decomposition(normalize_poissonian_noise=poisson, print_info=False)
        out.append(int(s.estimate_elbow_position()) + 1)
    return out[0], out[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(40, 40))
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--phases", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--counts", type=float, nargs="+", default=[20, 100, 1000])
    parser.add_argument("--candidates", type=int, default=8, help="scores k = 1..candidates")
    parser.add_argument("--perturbed", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("hyperspy").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    shape = tuple(args.shape)
    rows = []
    print(f"{'k':>2} {'counts':>6} {'seed':>4} {'chosen':>6} {'PCA':>4} {'PCA-P':>5} {'s':>5}")
    for counts in args.counts:
        for k in args.phases:
            for seed in range(args.seeds):
                X = phantom(k, counts, seed, shape, args.channels, args.perturbed)
                t = time.perf_counter()
                result = select_n_components(
                    X,
                    range(1, args.candidates + 1),
                    shape_2d=shape,
                    random_state=seed,
                    progress=False,
                )
                elapsed = time.perf_counter() - t
                elbow, elbow_p = pca_elbows(X, shape)
                rows.append((k, counts, seed, result.n_components, elbow, elbow_p))
                print(
                    f"{k:>2} {counts:>6g} {seed:>4} {result.n_components:>6} {elbow:>4} "
                    f"{elbow_p:>5} {elapsed:>5.1f}",
                    flush=True,
                )
    table = np.array(rows)
    print("\nTrue k chosen (fraction of cases):")
    print(
        f"{'counts':>6} {'cases':>5} {'held-out':>8} {'PCA elbow':>9} {'PCA-P elbow':>11} "
        f"{'(index)':>7} {'(P index)':>9}"
    )
    for counts in args.counts:
        sel = table[table[:, 1] == counts]
        truth = sel[:, 0]
        print(
            f"{counts:>6g} {len(sel):>5} {np.mean(sel[:, 3] == truth):>8.0%} "
            f"{np.mean(sel[:, 4] == truth):>9.0%} {np.mean(sel[:, 5] == truth):>11.0%} "
            f"{np.mean(sel[:, 4] - 1 == truth):>7.0%} {np.mean(sel[:, 5] - 1 == truth):>9.0%}"
        )
    print(
        "PCA elbow = estimate_elbow_position() + 1, HyperSpy's own count of significant "
        "components; (index): the elbow index itself read as the count."
    )


if __name__ == "__main__":
    main()

"""Do the concentration table's 1-sigma intervals cover the true fractions? The coverage table.

For each counts level (20, 200, 2000 counts per pixel) and seed, an EDX phantom
(:func:`espm_lite.datasets.make_edx_spectrum_image`: the default three phases
of seven elements, 32 x 32 pixels, 250 channels of 40 eV) is fitted in
HyperSpy with the default settings,
``s.decomposition(algorithm="SmoothNMF", G="edx", output_dimension=3)``; the
fitted phases are matched to the true ones by spectral angle
(:func:`espm_lite.measures.match_components`) and every (element, phase) case
counts as covered when ``|fitted - true| <= uncertainty``.  A calibrated
1-sigma uncertainty covers about 68 % of the cases (the target is 60-76 %).

Columns: ``bootstrap`` (``s.concentration_table(uncertainty="bootstrap")``)
and ``counting`` (``uncertainty="counting"``, counting statistics only), as
coverage; ``|error|`` the mean absolute error of the fractions; ``U boot`` and
``sd count`` the mean uncertainties; ``seeds`` the lowest and highest
coverage of one phantom (21 cases each) with the bootstrap.

Usage::

    python benchmarks/bench_edx_uncertainty.py   # 5 seeds, 20 refits (~27 min on 2 cores)
    python benchmarks/bench_edx_uncertainty.py --seeds 0 1 --n-bootstrap 10   # quicker
    python benchmarks/bench_edx_uncertainty.py --map-kind gradients  # maps with no pure pixels
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from espm_lite.datasets import make_edx_spectrum_image
from espm_lite.measures import match_components

COUNTS = (20, 200, 2000)
SHAPE = (32, 32)
ENERGY_SCALE = 0.04  # keV: 250 channels from 0.2 to 10.2 keV (Fe K at 6.4 keV)
N_CHANNELS = 250


def one_case(counts: float, seed: int, n_bootstrap: int, map_kind: str) -> dict:
    """Errors and both uncertainties of the fitted fractions of one phantom, true phase order."""
    phantom = make_edx_spectrum_image(
        shape_2d=SHAPE,
        energy_scale=ENERGY_SCALE,
        n_channels=N_CHANNELS,
        counts_per_pixel=counts,
        map_kind=map_kind,
        seed=seed,
    )
    s = phantom.to_signal()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        s.decomposition(
            algorithm="SmoothNMF", G="edx", output_dimension=3, print_info=False, verbose=0
        )
        start = time.perf_counter()
        table = s.concentration_table(
            uncertainty="bootstrap", n_bootstrap=n_bootstrap, random_state=seed, progress=False
        )
        seconds = time.perf_counter() - start
    order = match_components(phantom.spectra, s.get_decomposition_factors().data.T)
    error = np.abs(table.values[order] - phantom.fractions)
    return {
        "error": error,
        "bootstrap": table.uncertainties[order],
        "counting": table.counting[order],
        "seconds": seconds,
    }


def summary(label: str, cases: list[dict]) -> str:
    error = np.concatenate([c["error"].ravel() for c in cases])
    boot = np.concatenate([c["bootstrap"].ravel() for c in cases])
    count = np.concatenate([c["counting"].ravel() for c in cases])
    per_seed = [np.mean(c["error"] <= c["bootstrap"]) for c in cases]
    return (
        f"{label:>8} {np.mean(error <= boot):>10.1%} {np.mean(error <= count):>9.1%} "
        f"{error.mean():>9.4f} {boot.mean():>8.4f} {count.mean():>9.4f} "
        f"{min(per_seed):>5.0%}-{max(per_seed):<4.0%} {error.size:>6d} "
        f"{np.mean([c['seconds'] for c in cases]):>7.1f}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--counts", type=float, nargs="+", default=list(COUNTS))
    parser.add_argument("--n-bootstrap", type=int, default=20)
    parser.add_argument("--map-kind", default="discs", choices=["discs", "gradients"])
    args = parser.parse_args(argv)
    logging.getLogger("espm_lite").setLevel(logging.WARNING)
    print(
        f"Coverage of the 1-sigma intervals (target 60-76 %): {SHAPE[0]}x{SHAPE[1]} "
        f"'{args.map_kind}' EDX phantoms, {N_CHANNELS} channels, seeds {args.seeds}, "
        f"n_bootstrap={args.n_bootstrap}"
    )
    print(
        f"{'counts':>8} {'bootstrap':>10} {'counting':>9} {'|error|':>9} {'U boot':>8} "
        f"{'sd count':>9} {'seeds':>10} {'cases':>6} {'s/table':>7}"
    )
    everything = []
    for counts in args.counts:
        cases = [one_case(counts, seed, args.n_bootstrap, args.map_kind) for seed in args.seeds]
        everything += cases
        print(summary(f"{counts:g}", cases), flush=True)
    print(summary("overall", everything))


if __name__ == "__main__":
    main()

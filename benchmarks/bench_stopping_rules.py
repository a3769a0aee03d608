"""Which stopping rule stops at the converged answer? Rules evaluated on recorded trajectories.

For each configuration (row of ``bench_stopping.py``, counts per pixel, ``k``)
a reference fit runs to ``tol=1e-10`` (default settings otherwise, so with
extrapolation), then the same fit runs again without stopping for the
reference's number of iterations, recording at every iterate the relative
change of the factors ``delta_t`` (the stopping measure of
:mod:`espm_lite._loop`) and the worst matched angle and map error to the
reference.  Every candidate rule "``delta_t < tol`` for ``window``
consecutive iterations" is then applied to the recorded ``delta_t``: a rule
*stops good* on a configuration when the iterate it stops at is within 0.5°
and 10 % of the reference, and ``needed`` is the iteration from which every
iterate is (as in ``bench_stopping.py``).

Usage::

    python benchmarks/bench_stopping_rules.py            # 24 configurations (~10 min, 2 cores)
    python benchmarks/bench_stopping_rules.py --rows SmoothNMF --counts 20 500 --k 2
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from bench_stopping import (
    ROWS,
    compare,
    components,
    fit,
    iterates,
    needed_iterations,
    phantom,
)
from sklearn.base import clone

from espm_lite._loop import factor_change

SHAPE = (16, 16)
N_CHANNELS = 128
RULES = [(1e-6, 30), (1e-6, 100), (3e-7, 30), (3e-7, 50), (3e-7, 100), (1e-7, 50)]


def record(row: str, counts: float, k: int, ref_max_iter: int) -> dict:
    """``delta`` (one per iterate) and ``accuracy`` ((iterates, 2): angle, map error)."""
    cls, _, lambda_L, normalize = ROWS[row]
    X = phantom(counts, k, SHAPE, N_CHANNELS, signed=row.endswith("SNMF"))
    params = {"n_components": k, "random_state": 0, "verbose": 0}
    if lambda_L:
        params.update(lambda_L=lambda_L, shape_2d=SHAPE)
    if normalize:
        params["normalize"] = True
    estimator = cls(**params)
    ref_spectra, ref_maps, n_ref = fit(
        clone(estimator).set_params(tol=1e-10, max_iter=ref_max_iter), X
    )
    kept = iterates(estimator, X, n_ref, dtype=np.float64)
    ref = components(ref_spectra, ref_maps)
    factor = np.linalg.norm(ref) / np.linalg.norm(components(*kept[-1]))
    accuracy = np.array([compare(d, m * factor, ref_spectra, ref_maps) for d, m in kept])
    changes = [factor_change(a, b) for a, b in zip(kept, kept[1:], strict=False)]
    delta = np.array([np.nan] + changes)  # Frobenius norms: the maps' orientation is immaterial
    return {"name": f"{row} {counts:g} k={k}", "delta": delta, "accuracy": accuracy}


def stop_of(delta: np.ndarray, tol: float, window: int) -> int:
    """First iterate at which ``delta < tol`` held ``window`` times in a row (else the last)."""
    calm = 0
    for t in range(1, len(delta)):
        calm = calm + 1 if delta[t] < tol else 0
        if calm >= window:
            return t
    return len(delta) - 1


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=None)
    parser.add_argument("--counts", type=float, nargs="+", default=None)
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--ref-max-iter", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.rows is None:
        plan = [("SmoothNMF", c) for c in (args.counts or [5, 20, 500, 5000])]
        others = ("hs:SmoothNMF+L", "PNMF", "ConvexNMF", "SNMF")
        plan += [(row, c) for row in others for c in (args.counts or [20, 500])]
    else:
        plan = [(row, c) for row in args.rows for c in (args.counts or [20, 500])]
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for row, counts in plan:
            for k in args.k:
                cases.append(record(row, counts, k, args.ref_max_iter))
                needed = needed_iterations(cases[-1]["accuracy"])
                print(f"{cases[-1]['name']:28s} needed {needed:5d}", flush=True)
    print(
        f"\n{'window':>6s} {'tol':>6s} {'good':>6s} {'good<=2x':>8s} "
        f"{'stop/needed med/max':>20s} {'iterations med/max':>19s}  not good"
    )
    for tol, window in RULES:
        good, ratios, stops, bad = 0, [], [], []
        for case in cases:
            t = stop_of(case["delta"], tol, window)
            angle, map_err = case["accuracy"][t]
            ok = angle <= 0.5 and map_err <= 0.1
            ratio = t / max(needed_iterations(case["accuracy"]), 1)
            good += ok
            ratios.append(ratio if ok else np.inf)
            stops.append(t)
            bad += [] if ok else [f"{case['name']} ({angle:.2f}°)"]
        finite = [r for r in ratios if np.isfinite(r)]
        print(
            f"{window:6d} {tol:6.0e} {good:3d}/{len(cases):<2d} {sum(r <= 2 for r in ratios):8d} "
            f"{np.median(finite):9.2f} / {max(finite):6.2f} {int(np.median(stops)):9d} / "
            f"{max(stops):6d}  {'; '.join(bad)}"
        )


if __name__ == "__main__":
    main()

"""Does a default fit stop at the converged answer? The stopping-rule table.

For each configuration (estimator, counts per pixel, number of phases ``k``,
``lambda_L``), on a small synthetic phantom
(:func:`espm_lite.datasets.make_spectrum_image`):

1. **default**: the estimator with its *default* parameters (only
   ``n_components``, ``random_state``, ``verbose=0`` and, where the row says
   so, ``shape_2d`` / ``lambda_L`` / ``normalize=True`` are passed), so the
   table reflects whatever defaults the estimators have;
2. **reference**: the same fit with ``tol=1e-9`` (``max_iter`` raised to
   ``--ref-max-iter``);
3. **trajectory**: the same fit again with ``no_stop_criterion=True`` for the
   reference's number of iterations, measuring every iterate against the
   reference (through the estimator's own fitting path, :func:`espm_lite._loop.run`,
   with a monitor): **needed** is the first iteration from which the worst
   spectral angle stays within ``0.5°`` and the worst relative map error within
   ``10 %`` of the reference.

Measures (scale-free, phases matched by spectral angle): the angle between
matched spectra, and for the maps the relative error of each phase's map
weighted by its spectrum's norm, ``||h_i |d_i| - h_i^ref |d_i^ref||| /
||h_i^ref |d_i^ref|||`` (the norm of a rank-one component, insensitive to how
an estimator splits the scale between ``d_i`` and ``h_i``).

A row **passes** when the default fit is within ``0.5°`` and ``10 %`` of the
reference and ran at most twice the needed iterations (``slow``: accurate but
more than twice; ``FAIL``: not accurate).  ``ref!`` marks rows whose
reference reached ``--ref-max-iter`` (the reference itself may not be
converged there); ``max_iter`` rows are those where the default fit ran to
its ``max_iter``, at or past the capped reference (nothing is shown about
convergence).

Rows: ``SmoothNMF``, ``PNMF``, ``ConvexNMF``, ``SNMF`` (on signed data: the
phantom minus half its per-channel mean; not the full mean: the abundances
sum to one, so fully centred data have rank ``k - 1`` and semi-NMF's maps are
then not identifiable, they drift for ever) as estimators, and the
HyperSpy algorithm names, which build the same estimators with
``normalize=True`` (:func:`espm_lite.hyperspy.decomposition.resolve_estimator`).

Usage::

    python benchmarks/bench_stopping.py            # the full table (long on 2 cores)
    python benchmarks/bench_stopping.py --quick    # a subset, a few minutes
    python benchmarks/bench_stopping.py --counts 20 500 --k 2 3 --rows SmoothNMF hs:SmoothNMF+L
    python benchmarks/bench_stopping.py --quick --tol 3e-6 --max-iter 10000   # candidate defaults

``--tol`` / ``--max-iter`` replace the estimators' defaults in the default fits
(to measure candidate defaults before they are set in the estimator classes);
the header says which values were in force.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from espm_lite import PNMF, SNMF, ConvexNMF, SmoothNMF
from espm_lite._loop import run
from espm_lite._problem import prepare
from espm_lite.datasets import make_spectrum_image
from espm_lite.measures import spectral_angles

ANGLE_TOL = 0.5  # degrees
MAP_TOL = 0.10  # relative
RATIO_TOL = 2.0
REF_TOL = 1e-9

#: Row name -> (estimator class, HyperSpy name or "", lambda_L, normalize).
ROWS = {
    "SmoothNMF": (SmoothNMF, "", 0.0, False),
    "SmoothNMF+L": (SmoothNMF, "", 1.0, False),
    "hs:SmoothNMF": (SmoothNMF, "SmoothNMF", 0.0, True),
    "hs:SmoothNMF+L": (SmoothNMF, "SmoothNMF", 1.0, True),
    "PNMF": (PNMF, "", 0.0, False),
    "hs:PNMF": (PNMF, "PNMF", 0.0, True),
    "ConvexNMF": (ConvexNMF, "", 0.0, False),
    "hs:ConvexNMF": (ConvexNMF, "ConvexNMF", 0.0, True),
    "SNMF": (SNMF, "", 0.0, False),
    "hs:SNMF": (SNMF, "SNMF", 0.0, True),
}
QUICK_ROWS = ["SmoothNMF", "hs:SmoothNMF+L", "PNMF", "ConvexNMF", "SNMF"]


def components(spectra: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Each map (rows of ``maps``, ``(k, p)``) times the norm of its spectrum."""
    return maps * np.linalg.norm(spectra, axis=0)[:, None]


def compare(spectra, maps, ref_spectra, ref_maps) -> tuple[float, float]:
    """Worst matched angle (degrees) and worst relative map error to the reference."""
    angles = spectral_angles(ref_spectra, spectra)
    rows, cols = linear_sum_assignment(angles)
    order = np.empty(len(rows), dtype=np.intp)
    order[rows] = cols
    worst_angle = float(angles[np.arange(len(rows)), order].max())
    est = components(spectra[:, order], maps[order])
    ref = components(ref_spectra, ref_maps)
    err = np.linalg.norm(est - ref, axis=1) / np.maximum(
        np.linalg.norm(ref, axis=1), np.finfo(float).tiny
    )
    return worst_angle, float(err.max())


def fit(estimator, X):
    """``(spectra (n, k), maps (k, p), n_iter)`` of a public fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        spectra = estimator.fit_transform(X)
    return np.asarray(spectra, float), np.asarray(estimator.H_, float), estimator.n_iter_


def iterates(estimator, X, n_iter: int, dtype=np.float32) -> list[tuple[np.ndarray, ...]]:
    """``(spectra (n, k), maps (k, p))`` of every iterate of ``n_iter`` iterations.

    The estimator's own fitting path (as in ``fit_transform``, without
    stopping) with a monitor that keeps the internal spectra and maps.
    """
    est = clone(estimator).set_params(no_stop_criterion=True, max_iter=max(n_iter, 1))
    est._validate_params()
    problem = prepare(est, X, None, None)
    solver = est._solver(problem)
    state = solver.start(problem)
    kept = []

    def monitor(problem, solver, state):
        spectra, maps = solver.monitored(problem, state)
        kept.append((np.array(spectra, dtype), np.array(maps, dtype).T))
        return {}

    run(solver, problem, state, tol=0.0, max_iter=est.max_iter, no_stop=True,
        monitor=monitor, verbose=0, name=type(est).__name__)  # fmt: skip
    return kept


def trajectory(estimator, X, n_iter: int, ref_spectra, ref_maps) -> np.ndarray:
    """``(n_iter + 1, 2)``: worst angle and map error of every iterate to the reference.

    The internal maps of :func:`iterates` differ from the fitted ``H_`` by one
    global factor (``normalize``): it is found by matching the last iterate,
    which is the reference's.
    """
    kept = [tuple(a.astype(float) for a in pair) for pair in iterates(estimator, X, n_iter)]
    last = components(*kept[-1])
    ref = components(ref_spectra, ref_maps)
    factor = np.linalg.norm(ref) / max(np.linalg.norm(last), np.finfo(float).tiny)
    return np.array([compare(d, m * factor, ref_spectra, ref_maps) for d, m in kept])


def needed_iterations(traj: np.ndarray) -> int:
    """First iteration from which both measures stay within the targets."""
    ok = (traj[:, 0] <= ANGLE_TOL) & (traj[:, 1] <= MAP_TOL)
    bad = np.flatnonzero(~ok)
    return 0 if bad.size == 0 else int(bad[-1]) + 1


def phantom(counts: float, k: int, shape_2d, n_channels: int, signed: bool):
    """The counts ``(n, p)``; ``signed``: minus half the per-channel mean (still rank k)."""
    ph = make_spectrum_image(
        shape_2d=shape_2d, n_channels=n_channels, n_phases=k, counts_per_pixel=counts, seed=k
    )
    X = ph.X
    if signed:
        X = X - 0.5 * X.mean(axis=1, keepdims=True)
    return X


def bench_row(row: str, counts: float, k: int, args) -> dict:
    cls, hs_name, lambda_L, normalize = ROWS[row]
    shape_2d = (args.size, args.size)
    X = phantom(counts, k, shape_2d, args.channels, signed=cls is SNMF)
    params = {"n_components": k, "random_state": 0, "verbose": 0}
    if lambda_L:
        params.update(lambda_L=lambda_L, shape_2d=shape_2d)
    if normalize:
        params["normalize"] = True
    params.update(args.overrides)
    default = cls(**params)
    t0 = time.perf_counter()
    d_spectra, d_maps, n_default = fit(clone(default), X)
    t_default = time.perf_counter() - t0
    reference = clone(default).set_params(tol=REF_TOL, max_iter=args.ref_max_iter)
    r_spectra, r_maps, n_ref = fit(reference, X)
    angle, map_err = compare(d_spectra, d_maps, r_spectra, r_maps)
    traj = trajectory(default, X, n_ref, r_spectra, r_maps)
    needed = max(needed_iterations(traj), 1)
    ratio = n_default / needed
    accurate = angle <= ANGLE_TOL and map_err <= MAP_TOL
    # A default fit that ran to max_iter, at or past a reference that ran to its cap,
    # proves nothing: both are unconverged iterates of the same run.
    unproven = n_default >= default.max_iter and n_ref >= args.ref_max_iter and n_default >= n_ref
    return {
        "estimator": cls.__name__,
        "hyperspy": hs_name,
        "counts": counts,
        "k": k,
        "lambda_L": lambda_L,
        "n_default": n_default,
        "needed": needed,
        "ratio": ratio,
        "angle": angle,
        "map_err": map_err,
        "n_ref": n_ref,
        "ref_capped": n_ref >= args.ref_max_iter,
        "accurate": accurate,
        "passed": accurate and ratio <= RATIO_TOL and not unproven,
        "unproven": unproven,
        "tol": default.tol,
        "max_iter": default.max_iter,
        "t_default": t_default,
    }


HEADER = (
    f"{'estimator':10s} {'hyperspy':10s} {'counts':>6s} {'k':>2s} {'lamL':>4s} "
    f"{'it@def':>6s} {'needed':>6s} {'ratio':>5s} {'angle°':>7s} {'maperr':>7s} "
    f"{'it@ref':>6s} {'result':8s}"
)


def format_row(r: dict) -> str:
    if r["unproven"]:
        result = "max_iter"
    else:
        result = "pass" if r["passed"] else ("slow" if r["accurate"] else "FAIL")
    if r["ref_capped"]:
        result += " ref!"
    return (
        f"{r['estimator']:10s} {r['hyperspy'] or '-':10s} {r['counts']:6g} {r['k']:2d} "
        f"{r['lambda_L']:4g} {r['n_default']:6d} {r['needed']:6d} {r['ratio']:5.2f} "
        f"{r['angle']:7.3f} {r['map_err']:7.4f} {r['n_ref']:6d} {result:8s}"
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset (a few minutes)")
    parser.add_argument("--counts", type=float, nargs="+", default=None)
    parser.add_argument("--k", type=int, nargs="+", default=None)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=None)
    parser.add_argument("--size", type=int, default=16, help="phantom is size x size pixels")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--ref-max-iter", type=int, default=None)
    parser.add_argument("--tol", type=float, default=None, help="replaces every default tol")
    parser.add_argument("--max-iter", type=int, default=None, help="replaces default max_iter")
    args = parser.parse_args(argv)
    args.overrides = {
        name: value
        for name, value in (("tol", args.tol), ("max_iter", args.max_iter))
        if value is not None
    }
    if args.quick:
        counts, ks, rows = [20, 500], [2, 3], QUICK_ROWS
        args.ref_max_iter = args.ref_max_iter or 5000
    else:
        counts, ks, rows = [5, 20, 100, 500, 5000], [2, 3, 4, 5], list(ROWS)
        args.ref_max_iter = args.ref_max_iter or 20000
    counts = args.counts or counts
    ks = args.k or ks
    rows = args.rows or rows

    print(
        f"phantom {args.size}x{args.size} pixels x {args.channels} channels; reference "
        f"tol={REF_TOL:g}, max_iter={args.ref_max_iter}; targets: angle <= {ANGLE_TOL}°, "
        f"map error <= {MAP_TOL:.0%}, iterations <= {RATIO_TOL:g} x needed"
    )
    defaults = {}
    for row in rows:
        est = ROWS[row][0](**args.overrides)
        defaults[type(est).__name__] = (est.tol, est.max_iter)
    print(
        ("OVERRIDDEN defaults: " if args.overrides else "estimator defaults in force: ")
        + ", ".join(f"{n} tol={t:g} max_iter={m}" for n, (t, m) in defaults.items())
    )
    print(HEADER)
    results = []
    t0 = time.perf_counter()
    for row in rows:
        for k in ks:
            for c in counts:
                r = bench_row(row, c, k, args)
                results.append(r)
                print(format_row(r), flush=True)
    n = len(results)
    passed = sum(r["passed"] for r in results)
    accurate = sum(r["accurate"] for r in results)
    capped = sum(r["ref_capped"] for r in results)
    unproven = sum(r["unproven"] for r in results)
    ratios = np.array([r["ratio"] for r in results])
    print(
        f"summary: {passed}/{n} pass, {accurate}/{n} within {ANGLE_TOL}° and "
        f"{MAP_TOL:.0%} of the reference, iterations/needed median {np.median(ratios):.2f} "
        f"max {ratios.max():.2f}; {capped} references capped at max_iter, {unproven} rows "
        f"with both fits at their caps "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return results


if __name__ == "__main__":
    main()

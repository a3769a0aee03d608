"""Where a default SmoothNMF fit spends its time, and the exact row solve of ``transform``.

Run ``python benchmarks/bench_row_solve.py [--repeats 2]``.

For each phantom (HyperSpy's orientation, pixels as rows, default parameters)
the table gives the wall time of the whole default fit, of its iteration loop,
of its final exact solve of the maps (the solver's ``polish``, projected
Newton on every pixel, :mod:`espm_lite.kernels.newton_rows`), and of
``transform`` on the same data (the same solve from a least-squares start),
each the best of ``repeats`` runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from _loop_timer import call_seconds, loop_seconds

from espm_lite import SmoothNMF
from espm_lite.datasets import make_spectrum_image
from espm_lite.solvers.smooth_kl import SmoothKL

PHANTOMS = [
    (
        "128x128x512, k=4, 50 counts/px",
        dict(shape_2d=(128, 128), n_channels=512, n_phases=4, counts_per_pixel=50),
    ),
    (
        "80x80x1980, k=3, 500 counts/px",
        dict(shape_2d=(80, 80), n_channels=1980, n_phases=3, counts_per_pixel=500),
    ),
]


def measure(params: dict, repeats: int) -> dict:
    X = make_spectrum_image(seed=0, **params).X.T
    best: dict = {}
    for _ in range(repeats):
        est = SmoothNMF(n_components=params["n_phases"], hspy_comp=True, random_state=0, verbose=0)
        with loop_seconds() as loop, call_seconds(SmoothKL, "polish") as polish:
            start = time.perf_counter()
            est.fit(X)
            total = time.perf_counter() - start
        start = time.perf_counter()
        est.transform(X)
        transform = time.perf_counter() - start
        times = {"fit": total, "loop": loop["seconds"], "row solve": polish["seconds"]}
        times["transform"] = transform
        best = {key: min(value, best.get(key, value)) for key, value in times.items()}
        best["iterations"] = est.n_iter_
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.stdout.write(
        "| phantom | iterations | fit s | loop s | final row solve s | transform s |\n"
        "|---|---|---|---|---|---|\n"
    )
    for name, params in PHANTOMS:
        r = measure(params, args.repeats)
        sys.stdout.write(
            f"| {name} | {r['iterations']} | {r['fit']:.2f} | {r['loop']:.2f} "
            f"| {r['row solve']:.2f} | {r['transform']:.2f} |\n"
        )


if __name__ == "__main__":
    main()

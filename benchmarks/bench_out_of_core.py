"""A spectrum image larger than the dense arrays a fit may hold, fitted from disk.

Run ``python benchmarks/bench_out_of_core.py [--size 512] [--channels 2048]
[--counts 50] [--k 4] [--iters 10] [--dir DIR]``.

1. A ``size x size x channels`` phantom (``k`` phases, ``counts`` mean counts
   per pixel, the generator of :func:`espm_lite.datasets.make_spectrum_image`)
   is written to an HDF5 file band by band (16 scan rows a chunk, uint16): it
   is never whole in memory.
2. Each case runs in a fresh process, so that its peak resident memory
   (``ru_maxrss``, imports included) is its own:

   * ``from disk``: ``SmoothNMF(n_components=k)`` fitted to
     ``dask.array.from_array`` over the HDF5 dataset: the estimator reads the
     chunks once and keeps them as CSR (:mod:`espm_lite._lazy`);
   * ``from disk, read at every pass`` (``--every-pass``): the same with
     ``max_memory="280MB"``, less than twice the compressed size (143 MB), so that every
     pass reads the chunks from the file and compresses them as it reads
     (the sparse path of :mod:`espm_lite.kernels.chunked`);
   * ``from disk, read at every pass, dense`` (``--every-pass``): the same on
     the dense path (``sparse=False``) with ``max_memory="1.2GB"``, below the
     dense size;
   * ``in memory (CSR)``: the same data read into a CSR matrix first, then
     fitted (the in-memory sparse path);
   * ``crop in memory``: a 128 x 128 crop as a dense array;
   * ``in memory (dense)`` (``--every-pass``): the whole data as a dense
     float64 array on the dense path, the reference of the case read at every
     pass.

Each case is one fit of ``iters`` iterations (``no_stop_criterion``):
``ms/it`` is the wall time of the iteration loop divided by ``iters``;
``read + start s`` the time before the loop (reading, compressing, validating
and initialising); ``row solve s`` the final exact solve of the maps
(``polish``); ``peak RSS MB`` the process's peak resident memory.
``one read`` is the time to read every chunk of the file once, with h5py into
NumPy (no conversion) and through dask chunk by chunk (what the fit does), the
bound for an exact pass over data that do not fit (the best of
:data:`READ_REPEATS` reads, from the page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from _loop_timer import best_of, call_seconds, loop_seconds

ROWS_PER_CHUNK = 16
#: max_memory of the sparse case read at every pass: less than twice the CSR form of
#: the default phantom (143 MB), so that it is not kept in memory, and 8 times the
#: stored size of one chunk (33.5 MB), so that chunks are read whole.
SPARSE_EVERY_PASS_BUDGET = "280MB"


def write_phantom(path: str, size: int, channels: int, counts: float, k: int) -> None:
    """The phantom written band by band (HDF5, uint16, chunks of 16 scan rows)."""
    import h5py

    from espm_lite.datasets._maps import make_maps
    from espm_lite.datasets._synthetic import make_spectra

    rng = np.random.default_rng(0)
    energy = 0.2 + 0.01 * np.arange(channels)
    spectra = make_spectra(channels, k, energy, rng)
    maps = make_maps((size, size), k, "discs", rng)
    band = ROWS_PER_CHUNK * size
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset(
            "counts", shape=(size * size, channels), dtype=np.uint16, chunks=(band, channels)
        )
        for start in range(0, size * size, band):
            expected = counts * (maps[:, start : start + band].T @ spectra.T)
            dataset[start : start + band] = rng.poisson(expected).astype(np.uint16)


def _estimator(k: int, max_iter: int):
    from espm_lite import SmoothNMF

    return SmoothNMF(
        n_components=k, max_iter=max_iter, no_stop_criterion=True, random_state=0, verbose=0
    )


def _read_csr(dataset):
    import scipy.sparse as sp

    band = dataset.chunks[0]
    parts = [
        sp.csr_matrix(dataset[start : start + band].astype(np.float64))
        for start in range(0, dataset.shape[0], band)
    ]
    return sp.vstack(parts, format="csr")


#: Reads of the whole file timed for "one read" (the best is kept: the first read through
#: dask in a process also pays its one-time set-up, about 0.5 s).
READ_REPEATS = 3


def run_case(case: str, path: str, k: int, iters: int, size: int) -> dict:
    """One case in this process: times and peak memory, as a dict."""
    import dask.array as da
    import h5py

    with h5py.File(path, "r") as f:
        dataset = f["counts"]
        if case == "one read":
            band = dataset.chunks[0]
            tasks = da.from_array(dataset, chunks=dataset.chunks).to_delayed().ravel()
            reads = {
                "one read s": lambda: [
                    np.asarray(dataset[first : first + band])
                    for first in range(0, dataset.shape[0], band)
                ],
                # As the fit reads: one dask task per chunk, computed in turn.
                "one dask read s": lambda: [np.asarray(task.compute()) for task in tasks],
            }
            return {name: best_of(read, READ_REPEATS)[0] for name, read in reads.items()}
        options = {}
        if case.startswith("from disk"):
            if "every pass, dense" in case:  # the dense path, 1.2 GB: read at every pass
                options = {"max_memory": "1.2GB", "sparse": False}
            elif "every pass" in case:  # below twice the CSR size: compressed at every pass
                options = {"max_memory": f"{SPARSE_EVERY_PASS_BUDGET}"}

            def data():
                return da.from_array(dataset, chunks=dataset.chunks)

        elif case == "in memory (CSR)":
            X = _read_csr(dataset)

            def data():
                return X

        elif case == "in memory (dense)":
            X = dataset[...].astype(np.float64)
            options = {"sparse": False}

            def data():
                return X

        else:  # a crop of the scan, dense
            crop = min(128, size // 2)
            rows = (np.arange(crop)[:, None] * size + np.arange(crop)[None, :]).ravel()
            X = dataset[rows[0] : rows[-1] + 1][rows - rows[0]].astype(np.float64)

            def data():
                return X

        from espm_lite.solvers.smooth_kl import SmoothKL

        with loop_seconds() as loop, call_seconds(SmoothKL, "polish") as polish:
            start = time.perf_counter()
            est = _estimator(k, iters).set_params(hspy_comp=True, **options)
            est.fit(data())
            total = time.perf_counter() - start
        timings = {"loop": loop["seconds"], "polish": polish["seconds"]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {
        "ms/it": 1e3 * timings["loop"] / est.n_iter_,
        "read + start s": total - timings["loop"] - timings["polish"],
        "row solve s": timings["polish"],
        "peak RSS MB": peak,
        "path": est.data_path_,
        "pixels": est.H_.shape[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--counts", type=float, default=50.0)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--dir", default=None, help="where to write the file (default: tmp)")
    parser.add_argument(
        "--every-pass",
        action="store_true",
        help="also fit densely with max_memory='1.2GB': the chunks are read at every pass",
    )
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child process
        result = run_case(args.case, args.path, args.k, args.iters, args.size)
        sys.stdout.write(json.dumps(result) + "\n")
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = os.path.join(folder, "phantom.h5")
        start = time.perf_counter()
        write_phantom(path, args.size, args.channels, args.counts, args.k)
        written = time.perf_counter() - start
        size_gb = os.path.getsize(path) / 1e9
        dense_gb = args.size**2 * args.channels * 8 / 1e9
        sys.stdout.write(
            f"{args.size}x{args.size}x{args.channels}, {args.counts:g} counts/pixel, "
            f"k={args.k}: written in {written:.1f} s ({size_gb:.2f} GB on disk as uint16, "
            f"{dense_gb:.1f} GB dense in float64), {os.cpu_count()} cores\n\n"
        )
        results = {}
        cases = ["one read", "from disk", "in memory (CSR)", "crop in memory"]
        if args.every_pass:
            cases += [
                "from disk, read at every pass",
                "from disk, read at every pass, dense",
                "in memory (dense)",
            ]
        for case in cases:
            command = [sys.executable, __file__, "--case", case, "--path", path]
            command += ["--k", str(args.k), "--iters", str(args.iters)]
            command += ["--size", str(args.size)]
            output = subprocess.run(command, capture_output=True, text=True)
            if output.returncode:
                raise RuntimeError(f"case {case!r} failed:\n{output.stderr}")
            results[case] = json.loads(output.stdout.strip().splitlines()[-1])
    reads = results.pop("one read")
    read, dask_read = reads["one read s"], reads["one dask read s"]
    sys.stdout.write(
        "| case | pixels | path | ms/it | read + start s | row solve s | peak RSS MB |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for case, r in results.items():
        sys.stdout.write(
            f"| {case} | {r['pixels']} | {r['path']} | {r['ms/it']:.0f} "
            f"| {r['read + start s']:.1f} | {r['row solve s']:.1f} | {r['peak RSS MB']:.0f} |\n"
        )
    ratio = results["from disk"]["ms/it"] / results["in memory (CSR)"]["ms/it"]
    sys.stdout.write(
        f"\none read of every chunk: {read:.2f} s (h5py), {dask_read:.2f} s (dask, chunk by "
        f"chunk); from disk / in memory per iteration: {ratio:.2f}\n"
    )
    every_pass = results.get("from disk, read at every pass")
    if every_pass:
        sparse, dense = results["in memory (CSR)"]["ms/it"], results["in memory (dense)"]["ms/it"]
        dense_pass = results["from disk, read at every pass, dense"]
        for name, case, memory in (
            ("sparse", every_pass, sparse),
            ("dense", dense_pass, dense),
        ):
            seconds = case["ms/it"] / 1e3
            sys.stdout.write(
                f"read at every pass ({name} path), per iteration / one read: "
                f"{seconds / read:.1f} (h5py), {seconds / dask_read:.1f} (dask); "
                f"/ in memory ({name}): {case['ms/it'] / memory:.2f}\n"
            )


if __name__ == "__main__":
    main()

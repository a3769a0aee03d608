"""The KL update kernels on NumPy (CPU) and, where present, CuPy and PyTorch (GPU).

Run ``python benchmarks/bench_gpu_kernels.py [--size 256 256] [--channels 2048]
[--iters 30]``.

The kernels of :mod:`espm_lite.kernels` are written against the array API;
this script runs the same multiplicative KL iterations (maps and spectra,
simplex on the spectra) with NumPy arrays and, when installed with a GPU,
CuPy and PyTorch CUDA arrays, from the same start on the same phantom. It
prints the time per iteration and checks that every namespace reaches the
NumPy objective (relative difference column). Namespaces that are not
installed, or have no GPU, are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from array_api_compat import array_namespace

from espm_lite import kernels
from espm_lite.datasets import make_spectrum_image


def _namespaces():
    """(name, to_device, synchronise) for each available array library."""
    yield "numpy (CPU)", (lambda a: a), (lambda: None)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            yield "cupy (GPU)", cupy.asarray, cupy.cuda.Device().synchronize
        else:
            print("cupy: no GPU, skipped")
    except Exception as exc:  # noqa: BLE001 - any import or driver failure means "skip"
        print(f"cupy: not available ({type(exc).__name__}), skipped")
    try:
        import torch

        if torch.cuda.is_available():
            yield (
                "torch (GPU)",
                (lambda a: torch.as_tensor(a, device="cuda")),
                torch.cuda.synchronize,
            )
        else:
            print("torch: no CUDA device, skipped")
    except Exception as exc:  # noqa: BLE001
        print(f"torch: not available ({type(exc).__name__}), skipped")


def iterate(X, A, D, n_iter: int, constants) -> float:
    """``n_iter`` KL multiplicative iterations (maps, then spectra on the simplex).

    Returns the objective (per entry) before the last update.
    """
    xp = array_namespace(A, D)

    def rule(rows, negative, positive, curvature):
        return kernels.mu_update(A[rows, :], negative, positive, floor=1e-10)

    loss = float("nan")
    for _ in range(n_iter):
        result = kernels.data_pass(X, A, D, map_rule=rule, x_constants=constants)
        positive = xp.broadcast_to(xp.sum(A, axis=0)[None, :], D.shape)
        D = kernels.mu_update(D.T, result.w_negative.T, positive.T, floor=1e-10, simplex=True).T
        loss = result.data_loss / (X.shape[0] * X.shape[1])
    return loss, D


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", nargs=2, type=int, default=(256, 256))
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--counts", type=float, default=500.0)
    parser.add_argument("--iters", type=int, default=30)
    args = parser.parse_args(argv)
    data = make_spectrum_image(
        shape_2d=tuple(args.size),
        n_channels=args.channels,
        counts_per_pixel=args.counts,
        seed=0,
    )
    rng = np.random.default_rng(0)
    p, n = data.X.shape[1], data.X.shape[0]
    print(
        f"{args.size[0]}x{args.size[1]}x{args.channels} @{args.counts:g} counts, "
        f"dense, {args.iters} iterations from the same start"
    )
    header = f"{'namespace':>14} {'dtype':>8} {'ms/it':>9} {'objective':>12} {'rel. diff':>10}"
    print(header)
    print("-" * len(header))
    namespaces = list(_namespaces())
    for dtype in (np.float64, np.float32):
        X_np = np.ascontiguousarray(data.X.T, dtype=dtype)
        A0 = (rng.uniform(0.5, 1.5, size=(p, 3)) * args.counts / 3).astype(dtype)
        D0 = rng.uniform(0.5, 1.5, size=(n, 3)).astype(dtype)
        D0 /= D0.sum(axis=0)
        constants = kernels.data_constants(X_np, "kl")
        reference = None
        for name, to_device, sync in namespaces:
            X, A, D = to_device(X_np), to_device(A0.copy()), to_device(D0.copy())
            iterate(X, A, D, 1, constants)  # warm-up (kernels compiled, memory pools)
            X, A, D = to_device(X_np), to_device(A0.copy()), to_device(D0.copy())
            sync()
            start = time.perf_counter()
            loss, _ = iterate(X, A, D, args.iters, constants)
            sync()
            ms = 1000 * (time.perf_counter() - start) / args.iters
            reference = loss if reference is None else reference
            diff = abs(loss - reference) / abs(reference)
            print(f"{name:>14} {np.dtype(dtype).name:>8} {ms:9.2f} {loss:12.6f} {diff:10.2e}")


if __name__ == "__main__":
    main()

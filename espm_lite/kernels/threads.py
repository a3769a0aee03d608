"""The threads of :func:`~espm_lite.kernels.data_pass`.

NumPy, SciPy and the compiled kernels release the GIL in their loops, so the
blocks of one pass over the data run on a pool of threads (:func:`run_parts`):
one group of blocks per thread, with one BLAS thread each, results returned
in thread order (so that their sum does not depend on scheduling).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from functools import cache

from threadpoolctl import ThreadpoolController

_EXECUTOR: ThreadPoolExecutor | None = None
_BLAS_CONTROLLER: ThreadpoolController | None = None


@cache
def _cpu_count() -> int:
    return os.cpu_count() or 1  # a system call: read once, not at every pass


def num_threads() -> int:
    """Threads used by :func:`data_pass`: ``ESPM_LITE_NUM_THREADS`` or the CPU count."""
    value = os.environ.get("ESPM_LITE_NUM_THREADS")
    if value:
        return max(1, int(value))
    return max(1, min(_cpu_count(), 16))


def _blas_controller() -> ThreadpoolController:
    """A cached :class:`threadpoolctl.ThreadpoolController` (building one scans libraries)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER


def _executor() -> ThreadPoolExecutor:
    global _EXECUTOR
    if _EXECUTOR is None or _EXECUTOR._max_workers < num_threads():
        _EXECUTOR = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="espm_lite")
    return _EXECUTOR


def one_blas_thread():
    """A context in which BLAS (OpenBLAS, MKL...) runs on one thread.

    The passes over the data run on :func:`run_parts`'s threads, one BLAS
    thread each. Between passes a fit makes only small products ((k, k),
    (n, k)), which gain nothing from BLAS threads; after a threaded call
    OpenBLAS keeps its threads spinning for a while, and on few cores they
    take the CPUs from the next pass (a SmoothNMF iteration on 80x80x1980 took
    1.5x as long on 2 cores). The iteration loop of the solvers whose work is
    in the passes (:attr:`espm_lite.solvers.Solver.threaded_passes`) runs in it.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def run_parts(run: Callable[[list], object], blocks: list, threads: int) -> list:
    """``[run(blocks[i::threads]) for i in range(threads)]``, on ``threads`` threads.

    The calling thread makes the first call and pool threads the others: a
    caller that waited for all of them instead left the pool's threads to be
    woken and placed on the cores, and on 2 cores one of the two often ran both
    calls one after the other (bursts of iterations at 1.8x the time). Each
    call runs with one BLAS thread (the sparse products are too small to wake
    more). On an interrupt (Ctrl-C) the calls not started are cancelled and
    the running ones waited for, so that no thread writes into the caller's
    arrays once this returns.
    """
    with one_blas_thread():
        if threads <= 1:
            return [run(blocks)]
        futures = [_executor().submit(run, blocks[i::threads]) for i in range(1, threads)]
        try:
            first = run(blocks[0::threads])
            return [first, *(future.result() for future in futures)]
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)
            raise

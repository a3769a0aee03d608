"""The threads of :func:`~espm_lite.kernels.data_pass`.

NumPy, SciPy and the compiled kernels release the GIL in their loops, so the
blocks of one pass over the data run on a pool of threads (:func:`run_parts`):
one group of blocks per thread, with one BLAS thread each, results returned
in thread order (so that their sum does not depend on scheduling).
"""

from __future__ import annotations

import contextlib
import functools
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
    1.5x as long on 2 cores). The whole fit of the estimators whose work is in
    the passes runs in it (:func:`one_blas_thread_if`).
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def one_blas_thread_if(flag: str) -> Callable:
    """Decorator of a method that runs in :func:`one_blas_thread` when ``self.<flag>`` is true.

    ``fit_transform`` of the estimators whose passes run on :func:`run_parts`'s
    threads (``_uses_data_pass``) keeps BLAS on one thread from the validation of
    the data to the fitted attributes, not only in the iteration loop: OpenBLAS
    threads woken by one threaded call (a dot product of the data constants, the
    norm of the last factor change) keep spinning for about 0.1 s, and on 2 cores
    the first 20 iterations of a 100x400x3746 sparse fit, or of the fit after it,
    ran at 5.2 instead of 3.0 ms. The start of a dense fit loses BLAS threads for
    its randomized SVD of the data (on 128x128x2048, 0.69-0.70 s instead of
    0.44-0.55 s, once per fit).
    """

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapped(self, *args, **kwargs):
            with one_blas_thread() if getattr(self, flag) else contextlib.nullcontext():
                return method(self, *args, **kwargs)

        return wrapped

    return decorate


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

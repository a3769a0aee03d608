"""Time parts of espm_lite fits, for the benchmarks' ms/iteration.

A fit also validates its input, starts, and ends with an exact solve of the
sample-side factor (the solver's ``polish``), whose cost depends on how far the
iterations got; timing whole fits of ``m + 1`` and ``1`` iterations and taking
the difference would count the difference of two such solves as iterations.
:func:`loop_seconds` times the iteration loop alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from espm_lite.estimators import base


@contextmanager
def call_seconds(owner, name: str) -> Iterator[dict]:
    """In the block, each call of ``owner.name`` adds its wall time to ``timings["seconds"]``."""
    timings = {"seconds": 0.0}
    original = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings["seconds"] += time.perf_counter() - start

    setattr(owner, name, timed)
    try:
        yield timings
    finally:
        setattr(owner, name, original)


def loop_seconds():
    """:func:`call_seconds` of the iteration loop of every espm_lite fit."""
    return call_seconds(base, "run")


def best_of(run, repeats: int = 2) -> tuple[float, object]:
    """``(seconds, result)``: the shortest wall time of ``repeats`` calls of ``run()``,
    and the result of the last call."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result

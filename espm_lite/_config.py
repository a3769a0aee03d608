"""Global settings of espm_lite: which engine runs the compiled loops.

``engine`` chooses how the passes over the data run:

``"auto"`` (default)
    The compiled kernels (:mod:`espm_lite.kernels.compiled`, numba) where one
    exists for the case, the NumPy reference otherwise.
``"numba"``
    The same, but an error if numba cannot be imported.
``"numpy"``
    The NumPy/SciPy reference path everywhere (it also serves every other
    array library).

Both engines compute the same iterates (float64: to rounding, checked to
1e-10 in the tests). The setting is read when a fit chooses its data path and
at every pass over the data; the environment variable ``ESPM_LITE_ENGINE``
gives the default of a process.

Examples
--------
>>> import espm_lite
>>> with espm_lite.config_context(engine="numpy"):
...     pass  # fits here use the NumPy reference path
>>> espm_lite.get_config()["engine"]
'auto'
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ENGINES = ("auto", "numba", "numpy")


def _checked(engine) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}; got {engine!r}.")
    return engine


#: The engine set in this context; None: ``ESPM_LITE_ENGINE`` or ``"auto"``.
_ENGINE: ContextVar[str | None] = ContextVar("espm_lite_engine", default=None)


def get_config() -> dict:
    """The current settings, ``{"engine": ...}``."""
    engine = _ENGINE.get()
    if engine is None:
        engine = _checked(os.environ.get("ESPM_LITE_ENGINE", "auto"))
    return {"engine": engine}


def set_config(*, engine: str | None = None) -> None:
    """Change the settings (``engine``: ``"auto"``, ``"numba"`` or ``"numpy"``)."""
    if engine is not None:
        _ENGINE.set(_checked(engine))


@contextmanager
def config_context(*, engine: str | None = None) -> Iterator[None]:
    """The settings changed inside a ``with`` block only."""
    token = _ENGINE.set(_checked(engine)) if engine is not None else None
    try:
        yield
    finally:
        if token is not None:
            _ENGINE.reset(token)

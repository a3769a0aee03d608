"""espm_lite: fast, tested non-negative factorisations of spectrum images.

Estimators in the scikit-learn style, all built on :class:`NMFEstimator`
(generalised KL / Poisson loss, optional known matrix ``G`` with
``X ~ G W H``), usable directly or through HyperSpy's
``s.decomposition(algorithm=...)``.
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, measures
from ._config import config_context, get_config, set_config
from ._diagnostics import EmptyPhaseWarning
from .estimators import PNMF, SNMF, ConvexNMF, NMFEstimator, SmoothNMF

try:
    __version__ = version("espm_lite")  # single source: pyproject.toml
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "ConvexNMF",
    "EmptyPhaseWarning",
    "NMFEstimator",
    "PNMF",
    "SNMF",
    "SmoothNMF",
    "datasets",
    "measures",
    "config_context",
    "get_config",
    "set_config",
    "__version__",
]

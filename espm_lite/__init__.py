"""espm_lite: fast, tested non-negative factorisations of spectrum images.

Estimators in the scikit-learn style, all built on :class:`NMFEstimator`
(generalised KL / Poisson loss, optional known matrix ``G`` with
``X ~ G W H``), usable directly or through HyperSpy's
``s.decomposition(algorithm=...)``.
"""

from . import datasets, measures
from .estimators import PNMF, SNMF, ConvexNMF, NMFEstimator, SmoothNMF

__version__ = "0.1.0"

__all__ = [
    "ConvexNMF",
    "NMFEstimator",
    "PNMF",
    "SNMF",
    "SmoothNMF",
    "datasets",
    "measures",
    "__version__",
]

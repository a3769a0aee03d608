"""HyperSpy integration: signal classes and ``decomposition`` with espm_lite estimators.

Importing this module imports HyperSpy and exspy; ``import espm_lite`` alone
does not.
"""

from .decomposition import (
    ALGORITHMS,
    HYPERSPY_ALGORITHMS,
    EspmDecompositionMixin,
    canonical_algorithm,
    resolve_estimator,
)
from .signals import (
    EDSespmSpectrum,
    EspmSpectrumImage,
    LazyEDSespmSpectrum,
    LazyEspmSpectrumImage,
)

__all__ = [
    "ALGORITHMS",
    "HYPERSPY_ALGORITHMS",
    "EDSespmSpectrum",
    "EspmDecompositionMixin",
    "EspmSpectrumImage",
    "LazyEDSespmSpectrum",
    "LazyEspmSpectrumImage",
    "canonical_algorithm",
    "resolve_estimator",
]

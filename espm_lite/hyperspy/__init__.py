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
    EDSespmSEMSpectrum,
    EDSespmSpectrum,
    EspmSpectrumImage,
    LazyEDSespmSEMSpectrum,
    LazyEDSespmSpectrum,
    LazyEspmSpectrumImage,
)

__all__ = [
    "ALGORITHMS",
    "HYPERSPY_ALGORITHMS",
    "EDSespmSEMSpectrum",
    "EDSespmSpectrum",
    "EspmDecompositionMixin",
    "EspmSpectrumImage",
    "LazyEDSespmSEMSpectrum",
    "LazyEDSespmSpectrum",
    "LazyEspmSpectrumImage",
    "canonical_algorithm",
    "resolve_estimator",
]

"""The espm_lite estimators, all built on :class:`NMFEstimator`."""

from .base import NMFEstimator
from .convex_nmf import ConvexNMF
from .pnmf import PNMF
from .smooth_nmf import SmoothNMF
from .snmf import SNMF

__all__ = ["ConvexNMF", "NMFEstimator", "PNMF", "SNMF", "SmoothNMF"]

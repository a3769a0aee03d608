"""The espm_lite estimators, all built on :class:`NMFEstimator`."""

from .base import NMFEstimator
from .smooth_nmf import SmoothNMF

__all__ = ["NMFEstimator", "SmoothNMF"]

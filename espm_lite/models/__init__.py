"""Known matrices ``G`` of ``X ~ G W H``: labelled columns and the EDX physics model."""

from .edx import EDXModel
from .known_matrix import LabelledG
from .xray_physics import atomic_to_weight_fractions, atomic_weights, weight_to_atomic_fractions

__all__ = [
    "EDXModel",
    "LabelledG",
    "atomic_to_weight_fractions",
    "atomic_weights",
    "weight_to_atomic_fractions",
]

"""Known matrices ``G`` of ``X ~ G W H``: labelled columns and the EDX physics model."""

from .edx import EDXModel, atomic_to_weight_fractions, atomic_weights, weight_to_atomic_fractions
from .known_matrix import LabelledG

__all__ = [
    "EDXModel",
    "LabelledG",
    "atomic_to_weight_fractions",
    "atomic_weights",
    "weight_to_atomic_fractions",
]

"""Augment layer: batch-wide, on-device augmentations that make the views of SSL methods.

The settings load at once; the ops (torch, numba) and neighbour graphs (sklearn) on first use.
"""

from scssl import lazy_exports
from scssl.augment.config import (
    ORDER, PRESETS, AugmentationConfig, BatchBalancedMixing, CrossOver, Dropout, GaussianNoise, InnerSwap, Masking,
    NegativeBinomialNoise, NeighbourMixing, ViewAugmentations,
)

__getattr__ = lazy_exports(__name__, {
    "neighbours": ["NeighbourGraph", "build_neighbour_graph"],
    "ops": [
        "Augmenter", "crossover", "dropout", "gaussian_noise", "inner_swap", "mix",
        "negative_binomial_noise", "random_mask",
    ],
})

__all__ = [
    "ORDER", "PRESETS", "AugmentationConfig", "Augmenter", "BatchBalancedMixing", "CrossOver", "Dropout",
    "GaussianNoise", "InnerSwap", "Masking", "NegativeBinomialNoise", "NeighbourGraph", "NeighbourMixing",
    "build_neighbour_graph", "crossover", "dropout", "gaussian_noise", "inner_swap", "mix",
    "negative_binomial_noise", "random_mask", "ViewAugmentations",
]

"""Augment layer: batch-wide, on-device augmentations that make the views of SSL methods."""

from scssl.augment.config import (
    ORDER, PRESETS, AugmentationConfig, BatchBalancedMixing, CrossOver, Dropout, GaussianNoise, InnerSwap, Masking,
    NegativeBinomialNoise, NeighbourMixing,
)
from scssl.augment.neighbours import NeighbourGraph, build_neighbour_graph
from scssl.augment.ops import (
    Augmenter, bernoulli_flat, bernoulli_grid, crossover, dropout, gaussian_noise, inner_swap, mix, negative_binomial_noise, random_mask,
)

__all__ = [
    "ORDER", "PRESETS", "AugmentationConfig", "Augmenter", "BatchBalancedMixing", "bernoulli_flat", "bernoulli_grid", "CrossOver", "Dropout",
    "GaussianNoise", "InnerSwap", "Masking", "NegativeBinomialNoise", "NeighbourGraph", "NeighbourMixing",
    "build_neighbour_graph", "crossover", "dropout", "gaussian_noise", "inner_swap", "mix",
    "negative_binomial_noise", "random_mask",
]

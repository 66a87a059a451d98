"""Augment layer: batch-wide, on-device augmentations that make the views of SSL methods."""

from scssl.augment.config import AugmentationConfig, GaussianNoise, Masking
from scssl.augment.ops import Augmenter, gaussian_noise, random_mask

__all__ = ["AugmentationConfig", "Augmenter", "GaussianNoise", "Masking", "gaussian_noise", "random_mask"]

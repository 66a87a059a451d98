"""Augmentation settings: each augmentation has its strength and a per-view probability."""

from __future__ import annotations

from dataclasses import field

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import settings

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


@settings
class Masking:
    """Set a ``rate`` fraction of the genes of a cell to zero (CLEAR's semantics; scSSL-Bench's
    code kept ``rate`` and zeroed the rest)."""

    rate: Fraction = 0.2
    prob: Fraction = 0.5


@settings
class GaussianNoise:
    """Add N(0, sigma^2) noise to a ``rate`` fraction of the genes of a cell."""

    sigma: NonNegative = 0.2
    rate: Fraction = 0.8
    prob: Fraction = 0.5


@settings
class AugmentationConfig:
    """The augmentations applied, in this order, to each view. Defaults: scSSL-Bench's clear_pipeline."""

    masking: Masking = field(default_factory=Masking)
    gaussian_noise: GaussianNoise = field(default_factory=GaussianNoise)

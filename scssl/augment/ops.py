"""Augmentations as tensor operations on a whole mini-batch, on its own device.

Each op draws random numbers only for the cells it is applied to.
"""

from __future__ import annotations

import torch

from scssl.augment.config import AugmentationConfig


def random_mask(x: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Zero each gene of each cell with probability ``rate``."""
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= rate
    return x * keep


def gaussian_noise(x: torch.Tensor, sigma: float, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Add N(0, sigma^2) to each gene of each cell with probability ``rate``."""
    hit = torch.rand(x.shape, generator=generator, device=x.device) < rate
    noise = torch.randn(x.shape, generator=generator, device=x.device) * sigma
    return x + noise * hit


def _apply_to_some(x: torch.Tensor, prob: float, generator: torch.Generator, op) -> torch.Tensor:
    """Apply ``op`` to the cells that win a coin flip of probability ``prob`` (one flip per cell)."""
    if prob <= 0.0:
        return x
    if prob >= 1.0:
        return op(x)
    chosen = torch.nonzero(torch.rand(x.shape[0], generator=generator, device=x.device) < prob).squeeze(1)
    out = x.clone()
    out[chosen] = op(x[chosen])
    return out


class Augmenter:
    """Makes the two views of a mini-batch from an ``AugmentationConfig``, reproducibly per seed."""

    def __init__(self, config: AugmentationConfig, device: torch.device | str = "cpu", seed: int = 0):
        self.config = config
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        c, g = self.config, self.generator
        x = _apply_to_some(x, c.masking.prob, g, lambda v: random_mask(v, c.masking.rate, g))
        x = _apply_to_some(
            x, c.gaussian_noise.prob, g,
            lambda v: gaussian_noise(v, c.gaussian_noise.sigma, c.gaussian_noise.rate, g),
        )
        return x

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(x), self.view(x)

import pytest
import torch

from scssl.augment import AugmentationConfig, Augmenter, GaussianNoise, Masking, gaussian_noise, random_mask


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.8])
def test_masking_zeroes_the_stated_fraction(rate):
    x = torch.rand(256, 1000) + 1.0  # no zeros before masking
    zeroed = (random_mask(x, rate, _gen()) == 0).float().mean().item()
    assert abs(zeroed - rate) < 0.02


def test_gaussian_noise_hits_rate_with_sigma():
    x = torch.ones(256, 1000)
    out = gaussian_noise(x, sigma=0.5, rate=0.3, generator=_gen())
    changed = out != x
    assert abs(changed.float().mean().item() - 0.3) < 0.02
    assert abs((out - x)[changed].std().item() - 0.5) < 0.02


@pytest.mark.parametrize("prob", [0.0, 0.3, 0.5, 1.0])
def test_each_view_applies_an_augmentation_with_its_probability(prob):
    config = AugmentationConfig(masking=Masking(rate=0.5, prob=prob), gaussian_noise=GaussianNoise(prob=0.0))
    x = torch.rand(4000, 50) + 1.0
    view = Augmenter(config, seed=1).view(x)
    masked_cells = (view == 0).any(dim=1).float().mean().item()
    assert abs(masked_cells - prob) < 0.03


def test_same_seed_same_views_and_views_differ():
    x = torch.rand(64, 100)
    a1, a2 = Augmenter(AugmentationConfig(), seed=7)(x)
    b1, b2 = Augmenter(AugmentationConfig(), seed=7)(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    c1, _ = Augmenter(AugmentationConfig(), seed=8)(x)
    assert not torch.equal(a1, c1)


def test_input_is_not_modified():
    x = torch.rand(32, 20)
    before = x.clone()
    Augmenter(AugmentationConfig(masking=Masking(prob=1.0)), seed=0)(x)
    assert torch.equal(x, before)

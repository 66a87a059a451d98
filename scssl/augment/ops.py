"""Augmentations as tensor operations on a whole mini-batch, on its own device.

Each op takes the cells it is applied to and a ``torch.Generator``; ``Augmenter`` flips one coin per
cell and view for each augmentation and draws random numbers only for the cells that won it.
"""

from __future__ import annotations

import torch

from scssl.augment.config import AugmentationConfig
from scssl.augment.neighbours import NeighbourGraph


def _rand(shape, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)


def random_mask(x: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Zero each gene of each cell with probability ``rate``."""
    return x * (_rand(x.shape, x, g) >= rate)


def gaussian_noise(x: torch.Tensor, sigma: float, rate: float, g: torch.Generator) -> torch.Tensor:
    """Add N(0, sigma^2) to each gene of each cell with probability ``rate``."""
    hit = _rand(x.shape, x, g) < rate
    return x + torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * sigma * hit


def inner_swap(x: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Swap the values of int(rate x genes / 2) random gene pairs in each cell.

    The pairs are disjoint, so exactly 2 x int(rate x genes / 2) genes move (scSSL-Bench drew pairs
    with replacement, so overlapping pairs moved somewhat fewer).
    """
    n_pairs = int(x.shape[1] * rate // 2)
    if n_pairs == 0:
        return x
    genes = _rand(x.shape, x, g).topk(2 * n_pairs, dim=1, sorted=False).indices
    first, second = genes[:, :n_pairs], genes[:, n_pairs:]
    out = x.clone()
    out.scatter_(1, first, x.gather(1, second))
    out.scatter_(1, second, x.gather(1, first))
    return out


def crossover(x: torch.Tensor, donors: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Take each gene from the matching row of ``donors`` with probability ``rate``."""
    return torch.where(_rand(x.shape, x, g) < rate, donors, x)


def dropout(x: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Zero each gene with probability ``rate`` and rescale the others by 1 / (1 - rate) (Richter et al.)."""
    return x * (_rand(x.shape, x, g) >= rate) / (1.0 - rate)


def negative_binomial_noise(x: torch.Tensor, intensity: float, g: torch.Generator, total_count: int = 10):
    """Add log1p of NB(total_count, p ~ U(0, 1)) counts normalised to 1e4 per cell, times ``intensity``
    (Richter et al.). NB is drawn as Poisson(Gamma(total_count, p / (1 - p))), the Gamma as a sum of
    ``total_count`` exponentials, so that every draw comes from ``g``."""
    p = _rand(x.shape, x, g).clamp(max=0.999)
    exponentials = -torch.log(_rand((total_count,) + tuple(x.shape), x, g).clamp(min=1e-12)).sum(dim=0)
    counts = torch.poisson(exponentials * p / (1 - p), generator=g)
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0) * 1e4
    return (x + intensity * torch.log1p(normalised)).clamp(min=0.0)


def mix(x: torch.Tensor, partner: torch.Tensor, alpha: float, mode: str, g: torch.Generator) -> torch.Tensor:
    """Mix each cell with its partner: ``int`` lambda x + (1 - lambda) y with lambda ~ U(alpha, 1);
    ``exc`` each gene from the partner with probability 1 - alpha; ``geo`` x^lambda y^(1 - lambda)."""
    if mode == "exc":
        return torch.where(_rand(x.shape, x, g) >= alpha, partner, x)
    lam = alpha + (1.0 - alpha) * _rand((x.shape[0], 1), x, g)
    if mode == "int":
        return lam * x + (1.0 - lam) * partner
    return x.clamp(min=0.0) ** lam * partner.clamp(min=0.0) ** (1.0 - lam)


class Augmenter:
    """Makes the two views of a mini-batch from an ``AugmentationConfig``, reproducibly per seed.

    Neighbour augmentations need ``rows`` (a function from cell indices to their dense rows, such as
    ``CellMatrix.rows``) and a ``NeighbourGraph`` of the same cells; the mini-batch's cell indices are
    passed with it. Per view the order is: BBKNN, MNN (one coin flip for both views), masking, Gaussian
    noise, InnerSwap, CrossOver, negative-binomial noise, dropout.
    """

    def __init__(self, config: AugmentationConfig, device: torch.device | str = "cpu", seed: int = 0,
                 rows=None, graph: NeighbourGraph | None = None):
        if config.uses_neighbours and (rows is None or graph is None):
            raise ValueError("BBKNN and MNN augmentations need the cells' rows and a NeighbourGraph")
        self.config = config
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.rows = rows
        if graph is not None:
            self.within = torch.as_tensor(graph.within, device=self.device)
            self.balanced = torch.as_tensor(graph.balanced, device=self.device)
            self.mnn = torch.as_tensor(graph.mnn, device=self.device)
            self.mnn_count = (self.mnn >= 0).sum(dim=1)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        views = [x, x]
        if c.bbknn.prob > 0:
            views = [self._some(v, c.bbknn.prob, lambda v, s: self._mix_with(v, self._balanced(idx[s]), c.bbknn))
                     for v in views]
        if c.mnn.prob > 0:
            views = self._mnn(views, idx)
        return self._view(views[0]), self._view(views[1])

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        c, g = self.config, self.generator
        x = self._some(x, c.masking.prob, lambda v, s: random_mask(v, c.masking.rate, g))
        x = self._some(x, c.gaussian_noise.prob,
                       lambda v, s: gaussian_noise(v, c.gaussian_noise.sigma, c.gaussian_noise.rate, g))
        x = self._some(x, c.inner_swap.prob, lambda v, s: inner_swap(v, c.inner_swap.rate, g))
        if c.crossover.prob > 0 and len(x) > 1:
            donors = x[self._other_cells(len(x))]
            x = self._some(x, c.crossover.prob, lambda v, s: crossover(v, donors[s], c.crossover.rate, g))
        x = self._some(x, c.negbin_noise.prob, lambda v, s: negative_binomial_noise(v, c.negbin_noise.intensity, g))
        x = self._some(x, c.dropout.prob, lambda v, s: dropout(v, c.dropout.rate, g))
        return x

    def _some(self, x: torch.Tensor, prob: float, op) -> torch.Tensor:
        """Apply ``op(cells, their positions)`` to the cells that win a coin flip of probability ``prob``."""
        if prob <= 0.0:
            return x
        if prob >= 1.0:
            return op(x, torch.arange(len(x), device=x.device))
        chosen = torch.nonzero(_rand(len(x), x, self.generator) < prob).squeeze(1)
        out = x.clone()
        out[chosen] = op(x[chosen], chosen)
        return out

    def _other_cells(self, n: int) -> torch.Tensor:
        """For each position, another uniformly random position of the mini-batch."""
        shift = torch.randint(1, n, (n,), generator=self.generator, device=self.device)
        return (torch.arange(n, device=self.device) + shift) % n

    def _pick(self, candidates: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
        """One uniformly random column per row among the first ``counts`` of ``candidates``."""
        u = torch.rand(len(candidates), generator=self.generator, device=self.device)
        column = (u * counts).long().clamp(max=candidates.shape[1] - 1)
        return candidates.gather(1, column.unsqueeze(1)).squeeze(1)

    def _balanced(self, cells: torch.Tensor) -> torch.Tensor:
        return self._pick(self.balanced[cells, :, : self.config.bbknn.knn].flatten(1),
                          self.balanced.shape[1] * self.config.bbknn.knn)

    def _within(self, cells: torch.Tensor, knn: int) -> torch.Tensor:
        return self._pick(self.within[cells, :knn], knn)

    def _mix_with(self, x: torch.Tensor, partners: torch.Tensor, settings) -> torch.Tensor:
        return mix(x, self.rows(partners), settings.alpha, settings.mode, self.generator)

    def _mnn(self, views: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        """CLAIRE-style: view 1 mixes the cell with a within-batch neighbour; view 2 mixes one of the cell's
        MNN partners (the cell itself when it has none) with that partner's within-batch neighbour."""
        s = self.config.mnn
        chosen = torch.nonzero(_rand(len(idx), views[0], self.generator) < s.prob).squeeze(1)
        if len(chosen) == 0:
            return views
        cells = idx[chosen]
        count = self.mnn_count[cells]
        partner = torch.where(count > 0, self._pick(self.mnn[cells], count.clamp(min=1)), cells)
        first, second = views[0].clone(), views[1].clone()
        first[chosen] = self._mix_with(views[0][chosen], self._within(cells, s.knn), s)
        second[chosen] = self._mix_with(self.rows(partner), self._within(partner, s.knn), s)
        return [first, second]

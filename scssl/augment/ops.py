"""Augmentations as tensor operations on a whole mini-batch, on its own device.

``Augmenter`` flips one coin per cell and view for each augmentation; the op then changes only the
cells that won it, in place in a copy of the mini-batch, and draws random numbers only for what it
changes (the positions of masked genes, the noise of noisy genes), not for every gene of every cell.
"""

from __future__ import annotations

import math

import torch

from scssl.augment.config import AugmentationConfig
from scssl.augment.neighbours import NeighbourGraph


def _rand(shape, like: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=like.device, dtype=like.dtype)


def _geometric_positions(n_rows: int, n_cols: int, q: float, g: torch.Generator, device) -> torch.Tensor:
    """Per row, increasing positions of Bernoulli(q) successes drawn as geometric gaps; entries past the
    row end are >= n_cols. About q x n_cols numbers are drawn per row instead of n_cols."""
    per_chunk = int(q * n_cols + 4 * math.sqrt(n_cols * q * (1 - q)) + 8)
    log_miss = math.log1p(-q)
    last = torch.full((n_rows, 1), -1.0, device=device)
    chunks = []
    while bool((last < n_cols - 1).any()):  # rarely more than one chunk: 4 standard deviations of slack
        u = torch.rand(n_rows, per_chunk, generator=g, device=device).clamp_(min=1e-30)
        positions = last + torch.cumsum(torch.floor(torch.log(u) / log_miss) + 1, dim=1)
        chunks.append(positions)
        last = positions[:, -1:]
    return torch.cat(chunks, dim=1)


def bernoulli_grid(n_rows: int, n_cols: int, rate: float, g: torch.Generator, device) -> torch.Tensor:
    """An n_rows x n_cols boolean grid of independent Bernoulli(``rate``) trials, drawn through the
    rarer outcome's geometric gaps."""
    q = min(rate, 1.0 - rate)
    grid = torch.zeros(n_rows, n_cols + 1, dtype=torch.bool, device=device)
    if q > 0:
        grid.scatter_(1, _geometric_positions(n_rows, n_cols, q, g, device).clamp_(max=n_cols).long(), True)
    grid = grid[:, :n_cols]
    return ~grid if rate > 0.5 else grid


def bernoulli_flat(n_cols: int, rate: float, g: torch.Generator, *row_starts: torch.Tensor) -> list[torch.Tensor]:
    """Independent Bernoulli(``rate``) trials on a len(row_starts) x n_cols grid; for each tensor of
    row starts given, the flat indices (row start + column) of the successes.

    Exact; for rates up to 1/2 only the successes' positions are drawn (geometric gaps), so the cost
    follows the number of successes rather than the grid. Flat indices address ``tensor.view(-1)``.
    """
    n_rows, device = len(row_starts[0]), row_starts[0].device
    if rate <= 0.0 or n_rows == 0:
        return [torch.empty(0, dtype=torch.long, device=device) for _ in row_starts]
    if rate > 0.5:
        r, c = torch.nonzero(bernoulli_grid(n_rows, n_cols, rate, g, device), as_tuple=True)
        return [starts[r] + c for starts in row_starts]
    positions = _geometric_positions(n_rows, n_cols, rate, g, device).long()
    inside = positions < n_cols
    return [torch.masked_select(positions + starts.unsqueeze(1), inside) for starts in row_starts]


# Each op below changes ``view`` (a contiguous cells x genes tensor) in place, in the rows ``rows``
# only, and returns it.

def random_mask(view: torch.Tensor, rows: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Zero each gene of each cell with probability ``rate``."""
    [flat] = bernoulli_flat(view.shape[1], rate, g, rows * view.shape[1])
    view.view(-1).index_fill_(0, flat, 0.0)
    return view


def gaussian_noise(view: torch.Tensor, rows: torch.Tensor, sigma: float, rate: float, g: torch.Generator):
    """Add N(0, sigma^2) to each gene of each cell with probability ``rate``."""
    if rate > 0.5:  # most genes get noise: draw it for the whole rows and zero the rest
        noise = torch.randn(len(rows), view.shape[1], generator=g, device=view.device, dtype=view.dtype)
        noise.mul_(bernoulli_grid(len(rows), view.shape[1], rate, g, view.device)).mul_(sigma)
        return view.index_add_(0, rows, noise)
    [flat] = bernoulli_flat(view.shape[1], rate, g, rows * view.shape[1])
    noise = torch.randn(len(flat), generator=g, device=view.device, dtype=view.dtype) * sigma
    view.view(-1).index_add_(0, flat, noise)
    return view


def inner_swap(view: torch.Tensor, rows: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Swap the values of int(rate x genes / 2) random gene pairs in each cell, as scSSL-Bench.

    Pairs are drawn with replacement, as in the study; a pair that shares a gene with another pair is
    dropped, so the values of a cell are permuted and slightly fewer than rate x genes move.
    """
    n_genes = view.shape[1]
    n_pairs = int(n_genes * rate // 2)
    if n_pairs == 0 or len(rows) == 0:
        return view
    genes = torch.randint(n_genes, (len(rows), 2 * n_pairs), generator=g, device=view.device)
    draws = torch.zeros(len(rows), n_genes, dtype=torch.int16, device=view.device)
    draws.scatter_add_(1, genes, torch.ones_like(genes, dtype=torch.int16))
    repeated = draws.gather(1, genes) > 1
    first, second = genes[:, :n_pairs], genes[:, n_pairs:]
    second = torch.where(repeated[:, :n_pairs] | repeated[:, n_pairs:], first, second)  # dropped: swap with itself
    starts = (rows * n_genes).unsqueeze(1)
    first, second = (first + starts).flatten(), (second + starts).flatten()
    a, b = view.take(first), view.take(second)
    flat = view.view(-1)
    flat.index_copy_(0, first, b)
    flat.index_copy_(0, second, a)
    return view


def crossover(view: torch.Tensor, rows: torch.Tensor, source: torch.Tensor, donors: torch.Tensor, rate: float,
              g: torch.Generator) -> torch.Tensor:
    """Take each gene of cell ``rows[i]`` from row ``donors[i]`` of ``source`` with probability ``rate``."""
    n_genes = view.shape[1]
    flat, from_flat = bernoulli_flat(n_genes, rate, g, rows * n_genes, donors * n_genes)
    view.view(-1).index_copy_(0, flat, source.take(from_flat))
    return view


def dropout(view: torch.Tensor, rows: torch.Tensor, rate: float, g: torch.Generator) -> torch.Tensor:
    """Zero each gene with probability ``rate`` and rescale the others by 1 / (1 - rate) (Richter et al.)."""
    view[rows] = view[rows] / (1.0 - rate)
    return random_mask(view, rows, rate, g)


def negative_binomial_noise(view: torch.Tensor, rows: torch.Tensor, intensity: float, g: torch.Generator,
                            total_count: int = 10) -> torch.Tensor:
    """Add log1p of NB(total_count, p ~ U(0, 1)) counts normalised to 1e4 per cell, times ``intensity``
    (Richter et al.). NB is drawn as Poisson(Gamma(total_count, p / (1 - p))), the Gamma as a sum of
    ``total_count`` exponentials, so that every draw comes from ``g``."""
    x = view[rows]
    p = _rand(x.shape, x, g).clamp(max=0.999)
    exponentials = -torch.log(_rand((total_count,) + tuple(x.shape), x, g).clamp(min=1e-12)).sum(dim=0)
    counts = torch.poisson(exponentials * p / (1 - p), generator=g)
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0) * 1e4
    view[rows] = (x + intensity * torch.log1p(normalised)).clamp(min=0.0)
    return view


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
        view = x.clone()
        if (rows := self._coin(len(x), c.masking.prob)) is not None:
            random_mask(view, rows, c.masking.rate, g)
        if (rows := self._coin(len(x), c.gaussian_noise.prob)) is not None:
            gaussian_noise(view, rows, c.gaussian_noise.sigma, c.gaussian_noise.rate, g)
        if (rows := self._coin(len(x), c.inner_swap.prob)) is not None:
            inner_swap(view, rows, c.inner_swap.rate, g)
        if len(x) > 1 and (rows := self._coin(len(x), c.crossover.prob)) is not None:
            crossover(view, rows, x, self._other_cells(len(x))[rows], c.crossover.rate, g)
        if (rows := self._coin(len(x), c.negbin_noise.prob)) is not None:
            negative_binomial_noise(view, rows, c.negbin_noise.intensity, g)
        if (rows := self._coin(len(x), c.dropout.prob)) is not None:
            dropout(view, rows, c.dropout.rate, g)
        return view

    def _coin(self, n: int, prob: float) -> torch.Tensor | None:
        """The positions of the cells that win a coin flip of probability ``prob``; None when none can."""
        if prob <= 0.0:
            return None
        if prob >= 1.0:
            return torch.arange(n, device=self.device)
        return torch.nonzero(torch.rand(n, generator=self.generator, device=self.device) < prob).squeeze(1)

    def _some(self, x: torch.Tensor, prob: float, op) -> torch.Tensor:
        """A copy of ``x`` with ``op(cells, their positions)`` applied to the cells that win the coin flip."""
        rows = self._coin(len(x), prob)
        if rows is None:
            return x
        out = x.clone()
        out[rows] = op(x[rows], rows)
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
        chosen = self._coin(len(idx), s.prob)
        if len(chosen) == 0:
            return views
        cells = idx[chosen]
        count = self.mnn_count[cells]
        partner = torch.where(count > 0, self._pick(self.mnn[cells], count.clamp(min=1)), cells)
        first, second = views[0].clone(), views[1].clone()
        first[chosen] = self._mix_with(views[0][chosen], self._within(cells, s.knn), s)
        second[chosen] = self._mix_with(self.rows(partner), self._within(partner, s.knn), s)
        return [first, second]

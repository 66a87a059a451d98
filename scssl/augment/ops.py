"""Augmentations as tensor operations on a whole mini-batch, on its own device.

``Augmenter`` flips one coin per cell and view for each augmentation; the op then changes only the
cells that won it, in place in a copy of the mini-batch. An op draws its numbers for every gene of every
cell and keeps the winners': no shape depends on a draw, so a step on a GPU never waits for the device
(nothing like a count of the winners reaches the host). On a CPU the ``Augmenter`` runs masking, Gaussian
noise, InnerSwap and CrossOver as the compiled pass of ``rowwise`` instead, which draws only what it changes
and is faster there than these ops.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from scssl.augment.config import ViewAugmentations
from scssl.augment.neighbours import NeighbourGraph


class RandomSource:
    """The augmentations' random numbers as tensors on ``device``, reproducible from one seed.

    On a GPU every number comes from the device's own generator, so that nothing crosses to the host.
    On a CPU a step's random numbers cost about as much as its network work, and one generator runs on
    one core: so there are ``STREAMS`` independent streams (seeded from ``seed``), and a large draw is
    cut into that many parts, filled at the same time on torch's intra-op threads where it has more than
    one. The numbers depend on the seed alone, not on the threads. Uniforms and integers come from
    numpy's PCG64 (faster than torch's generator), normals from torch's (its vectorised Box-Muller
    beats numpy's ziggurat).
    """

    STREAMS = 2
    SPLIT_FROM = 1 << 16  # smaller draws come from the first stream alone

    def __init__(self, seed: int = 0, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            self._device_generator = torch.Generator(device=self.device).manual_seed(seed)
            return
        streams = np.random.SeedSequence(seed).spawn(self.STREAMS)
        self._numpy = [np.random.Generator(np.random.PCG64(s)) for s in streams]
        self._torch = [torch.Generator().manual_seed(int(s.generate_state(1)[0])) for s in streams]

    @property
    def generator(self) -> torch.Generator:
        """A torch generator on the device, for the ops that draw through torch alone."""
        return self._torch[0] if self.device.type == "cpu" else self._device_generator

    def uniform(self, *shape: int) -> torch.Tensor:
        """float32 in [0, 1)."""
        if self.device.type != "cpu":
            return torch.rand(shape, generator=self._device_generator, device=self.device)
        out = np.empty(shape, dtype=np.float32)
        self._fill(out.reshape(-1), lambda part, i: self._numpy[i].random(out=part, dtype=np.float32))
        return torch.from_numpy(out)

    def normal(self, *shape: int) -> torch.Tensor:
        """float32 N(0, 1)."""
        if self.device.type != "cpu":
            return torch.randn(shape, generator=self._device_generator, device=self.device)
        out = torch.empty(shape)
        self._fill(out.view(-1), lambda part, i: part.normal_(generator=self._torch[i]))
        return out

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """int64 uniform in [low, high)."""
        if self.device.type != "cpu":
            return torch.randint(low, high, shape, generator=self._device_generator, device=self.device)
        return torch.from_numpy(self._numpy[0].integers(low, high, shape))

    def keys(self, *shape: int) -> np.ndarray:
        """uint64 keys of the counter-based generator of ``rowwise`` (CPU only)."""
        return self._numpy[0].integers(0, 2**64, shape, dtype=np.uint64)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson counts of the given rates, in ``rates``' dtype."""
        return torch.poisson(rates, generator=self.generator)

    def _fill(self, flat, fill) -> None:
        """``fill(part, stream)`` over ``STREAMS`` consecutive parts of ``flat`` (all by stream 0 when
        small), the parts at the same time when torch may use several threads."""
        if len(flat) < self.SPLIT_FROM:
            fill(flat, 0)
            return
        bounds = np.linspace(0, len(flat), self.STREAMS + 1).astype(int)
        parts = [(flat[a:b], i) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        if torch.get_num_threads() == 1:
            for part, i in parts:
                fill(part, i)
            return
        helpers = [_helper_threads().submit(fill, part, i) for part, i in parts[1:]]
        fill(*parts[0])
        for helper in helpers:
            helper.result()


@functools.cache
def _helper_threads() -> ThreadPoolExecutor:
    """Threads that fill the other parts of a large draw (generators release the GIL while they fill)."""
    return ThreadPoolExecutor(RandomSource.STREAMS - 1, thread_name_prefix="scssl-random")


def padded_rows(n_rows: int, n_cols: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """An uninitialised n_rows x n_cols tensor whose rows are 64-byte aligned with scratch space after
    each (at least one element, zero): the layout the compiled row-wise pass writes (``rowwise``)."""
    width = (n_cols + 16) // 16 * 16
    rows = torch.empty(n_rows, width, dtype=dtype, device=device)
    rows[:, n_cols:] = 0.0
    return rows[:, :n_cols]


# Each op below changes ``view`` (cells x genes) in place, in the cells that won their coin only (``won``: one
# bool per row), and returns it. Every op draws its random numbers for the whole view and keeps those of the
# winners, so no shape depends on the draws: on a GPU nothing waits for the device to know how many won.

def random_mask(view: torch.Tensor, won: torch.Tensor, rate: float, rng: RandomSource) -> torch.Tensor:
    """Zero each gene of each winning cell with probability ``rate``."""
    hidden = rng.uniform(*view.shape) < rate
    return view.masked_fill_(hidden & won.unsqueeze(1), 0.0)


def gaussian_noise(view: torch.Tensor, won: torch.Tensor, sigma: float, rate: float, rng: RandomSource):
    """Add N(0, sigma^2) to each gene of each winning cell with probability ``rate``."""
    noisy = (rng.uniform(*view.shape) < rate) & won.unsqueeze(1)
    return view.addcmul_(rng.normal(*view.shape).to(view.dtype), noisy.to(view.dtype), value=sigma)


def inner_swap(view: torch.Tensor, won: torch.Tensor, rate: float, rng: RandomSource) -> torch.Tensor:
    """Swap the values of int(rate x genes / 2) random gene pairs in each winning cell, as scSSL-Bench.

    Pairs are drawn with replacement, as in the study; a pair that shares a gene with another pair is
    dropped, so the values of a cell are permuted and slightly fewer than rate x genes move.
    """
    n_genes = view.shape[1]
    n_pairs = int(n_genes * rate // 2)
    if n_pairs == 0 or len(view) == 0:
        return view
    genes = rng.integers(0, n_genes, len(view), 2 * n_pairs)
    draws = torch.zeros(len(view), n_genes, dtype=torch.uint8, device=view.device)
    draws.scatter_add_(1, genes, torch.ones_like(genes, dtype=torch.uint8))
    repeated = draws.gather(1, genes) > 1
    dropped = repeated[:, :n_pairs] | repeated[:, n_pairs:] | ~won.unsqueeze(1)
    first, second = genes[:, :n_pairs], genes[:, n_pairs:]
    second.copy_(torch.where(dropped, first, second))  # a dropped pair swaps a gene with itself
    return view.scatter_(1, genes, view.gather(1, genes.roll(n_pairs, dims=1)))


def crossover(view: torch.Tensor, won: torch.Tensor, source: torch.Tensor, donors: torch.Tensor, rate: float,
              rng: RandomSource) -> torch.Tensor:
    """Take each gene of each winning cell ``i`` from row ``donors[i]`` of ``source`` (cells x genes) with
    probability ``rate``."""
    taken = (rng.uniform(*view.shape) < rate) & won.unsqueeze(1)
    return view.copy_(torch.where(taken, source.index_select(0, donors), view))


def dropout(view: torch.Tensor, won: torch.Tensor, rate: float, rng: RandomSource) -> torch.Tensor:
    """Zero each gene with probability ``rate`` and rescale the others by 1 / (1 - rate) (Richter et al.)."""
    view.mul_(torch.where(won, 1.0 / (1.0 - rate), 1.0).to(view.dtype).unsqueeze(1))
    return random_mask(view, won, rate, rng)


def negative_binomial_noise(view: torch.Tensor, won: torch.Tensor, intensity: float, rng: RandomSource,
                            total_count: int = 10) -> torch.Tensor:
    """Add log1p of NB(total_count, p ~ U(0, 1)) counts normalised to 1e4 per cell, times ``intensity``
    (Richter et al.). NB is drawn as Poisson(Gamma(total_count, p / (1 - p))), the Gamma as a sum of
    ``total_count`` exponentials, so that every draw comes from ``rng``."""
    p = rng.uniform(*view.shape).to(view.dtype).clamp(max=0.999)
    exponentials = -torch.log(rng.uniform(total_count, *view.shape).to(view.dtype).clamp(min=1e-12)).sum(dim=0)
    counts = rng.poisson(exponentials * p / (1 - p))
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0) * 1e4
    noisy = (view + intensity * torch.log1p(normalised)).clamp(min=0.0)
    return view.copy_(torch.where(won.unsqueeze(1), noisy, view))


def mix(x: torch.Tensor, partner: torch.Tensor, alpha: float, mode: str, rng: RandomSource) -> torch.Tensor:
    """Mix each cell with its partner: ``int`` lambda x + (1 - lambda) y with lambda ~ U(alpha, 1);
    ``exc`` each gene from the partner with probability 1 - alpha; ``geo`` x^lambda y^(1 - lambda)."""
    if mode == "exc":
        return torch.where(rng.uniform(*x.shape) >= alpha, partner, x)
    lam = (alpha + (1.0 - alpha) * rng.uniform(x.shape[0], 1)).to(x.dtype)
    if mode == "int":
        return lam * x + (1.0 - lam) * partner
    return x.clamp(min=0.0) ** lam * partner.clamp(min=0.0) ** (1.0 - lam)


class Augmenter:
    """Makes the two views of a mini-batch from ``ViewAugmentations``, reproducibly per seed.

    Neighbour augmentations need ``rows`` (a function from cell indices to their dense rows, such as
    ``CellMatrix.rows``) and a ``NeighbourGraph`` of the same cells; the mini-batch's cell indices are
    passed with it. Per view the order is: BBKNN, MNN (one coin flip for both views), masking, Gaussian
    noise, InnerSwap, CrossOver, negative-binomial noise, dropout. The two views are the halves of one
    ``padded_rows`` tensor, so they are not contiguous (their rows carry scratch space).

    With ``compiled`` (the default on a CPU) masking, Gaussian noise, InnerSwap and CrossOver run as one
    compiled pass per cell (``rowwise``); otherwise (on a GPU) as the tensor ops of this module. Both
    have the same semantics; a seed gives the same views with the same choice.
    """

    def __init__(self, config: ViewAugmentations, device: torch.device | str = "cpu", seed: int = 0,
                 rows=None, graph: NeighbourGraph | None = None, compiled: bool | None = None):
        if config.uses_neighbours and (rows is None or graph is None):
            raise ValueError("BBKNN and MNN augmentations need the cells' rows and a NeighbourGraph")
        self.config = config
        self.device = torch.device(device)
        self.compiled = self.device.type == "cpu" if compiled is None else compiled
        if self.compiled and self.device.type != "cpu":
            raise ValueError(f"the compiled row-wise augmentations run on a CPU, not on {self.device}")
        self.random = RandomSource(seed, self.device)
        self.rows = rows
        if graph is not None:
            self.within = torch.as_tensor(graph.within, device=self.device)
            self.balanced = torch.as_tensor(graph.balanced, device=self.device)
            self.mnn = torch.as_tensor(graph.mnn, device=self.device)
            self.mnn_count = (self.mnn >= 0).sum(dim=1)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        inputs = [x, x]
        if c.bbknn.prob > 0:
            inputs = [self._some(v, c.bbknn.prob, lambda v: self._mix_with(v, self._balanced(idx), c.bbknn))
                      for v in inputs]
        if c.mnn.prob > 0:
            inputs = self._mnn(inputs, idx)
        return self._views(inputs)

    def _views(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views, augmented together as the 2n rows of one tensor: every op runs once per mini-batch
        instead of once per view (each row has its own coins and draws). The views are its two halves."""
        c, rng = self.config, self.random
        n, n_genes = inputs[0].shape
        views = padded_rows(2 * n, n_genes, inputs[0].dtype, self.device)
        if self.compiled:
            self._row_wise_compiled(views, inputs)
        else:
            self._row_wise_ops(views, inputs)
        if (won := self._coin(2 * n, c.negbin_noise.prob)) is not None:
            negative_binomial_noise(views, won, c.negbin_noise.intensity, rng)
        if (won := self._coin(2 * n, c.dropout.prob)) is not None:
            dropout(views, won, c.dropout.rate, rng)
        return views[:n], views[n:]

    def _row_wise_compiled(self, views: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        from scssl.augment.rowwise import augment_rows  # numba here: a GPU run never loads it

        c, n = self.config, len(inputs[0])
        flags = [self._coin_flags(2 * n, prob) for prob in
                 (c.masking.prob, c.gaussian_noise.prob, c.inner_swap.prob, c.crossover.prob if n > 1 else 0.0)]
        everyone = torch.arange(2 * n)
        source, donors = self._donors(inputs, everyone) if n > 1 else (torch.cat(inputs), everyone)
        source_rows = everyone % n if source is inputs[0] else everyone
        augment_rows(views, source.contiguous(), source_rows, self.random.keys(2 * n, 4), *flags, donors, c)

    def _row_wise_ops(self, views: torch.Tensor, inputs: list[torch.Tensor]) -> None:
        c, rng = self.config, self.random
        n = len(inputs[0])
        views[:n] = inputs[0]
        views[n:] = inputs[1]
        if (won := self._coin(2 * n, c.masking.prob)) is not None:
            random_mask(views, won, c.masking.rate, rng)
        if (won := self._coin(2 * n, c.gaussian_noise.prob)) is not None:
            gaussian_noise(views, won, c.gaussian_noise.sigma, c.gaussian_noise.rate, rng)
        if (won := self._coin(2 * n, c.inner_swap.prob)) is not None:
            inner_swap(views, won, c.inner_swap.rate, rng)
        if n > 1 and (won := self._coin(2 * n, c.crossover.prob)) is not None:
            source, donors = self._donors(inputs, torch.arange(2 * n, device=self.device))
            crossover(views, won, source, donors, c.crossover.rate, rng)

    def _coin(self, n: int, prob: float) -> torch.Tensor | None:
        """Per cell, whether it wins a coin flip of probability ``prob``; None when none can."""
        if prob <= 0.0:
            return None
        if prob >= 1.0:
            return torch.ones(n, dtype=torch.bool, device=self.device)
        return self.random.uniform(n) < prob

    def _coin_flags(self, n: int, prob: float) -> np.ndarray:
        """Per position, whether it wins a coin flip of probability ``prob`` (CPU)."""
        won = self._coin(n, prob)
        return np.zeros(n, dtype=bool) if won is None else won.numpy()

    def _donors(self, inputs: list[torch.Tensor], rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each of ``rows`` (of the stacked views), another uniformly random cell of the mini-batch, as
        a row of the returned source: the view's own input before its augmentations."""
        n = len(inputs[0])
        cells = rows % n
        others = (cells + self.random.integers(1, n, len(rows))) % n
        if inputs[0] is inputs[1]:
            return inputs[0], others
        return torch.cat(inputs), others + rows - cells

    def _some(self, x: torch.Tensor, prob: float, op) -> torch.Tensor:
        """``x`` with ``op(x)`` in the cells that win the coin flip."""
        won = self._coin(len(x), prob)
        return x if won is None else torch.where(won.unsqueeze(1), op(x), x)

    def _pick(self, candidates: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
        """One uniformly random column per row among the first ``counts`` of ``candidates``."""
        u = self.random.uniform(len(candidates))
        column = (u * counts).long().clamp(max=candidates.shape[1] - 1)
        return candidates.gather(1, column.unsqueeze(1)).squeeze(1)

    def _balanced(self, cells: torch.Tensor) -> torch.Tensor:
        return self._pick(self.balanced[cells, :, : self.config.bbknn.knn].flatten(1),
                          self.balanced.shape[1] * self.config.bbknn.knn)

    def _within(self, cells: torch.Tensor, knn: int) -> torch.Tensor:
        return self._pick(self.within[cells, :knn], knn)

    def _mix_with(self, x: torch.Tensor, partners: torch.Tensor, settings) -> torch.Tensor:
        return mix(x, self.rows(partners), settings.alpha, settings.mode, self.random)

    def _mnn(self, views: list[torch.Tensor], idx: torch.Tensor) -> list[torch.Tensor]:
        """CLAIRE-style: view 1 mixes the cell with a within-batch neighbour; view 2 mixes one of the cell's
        MNN partners (the cell itself when it has none) with that partner's within-batch neighbour."""
        s = self.config.mnn
        won = self._coin(len(idx), s.prob).unsqueeze(1)
        count = self.mnn_count[idx]
        partner = torch.where(count > 0, self._pick(self.mnn[idx], count.clamp(min=1)), idx)
        first = self._mix_with(views[0], self._within(idx, s.knn), s)
        second = self._mix_with(self.rows(partner), self._within(partner, s.knn), s)
        return [torch.where(won, first, views[0]), torch.where(won, second, views[1])]

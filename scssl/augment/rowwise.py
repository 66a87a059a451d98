"""The row-wise augmentations (masking, Gaussian noise, InnerSwap, CrossOver) in one compiled pass per cell,
for CPUs.

On a CPU the tensor ops in ``ops.py`` cost as much as the network work: each is a pass over the whole
mini-batch, and torch's generators are serial. Here every cell's row is augmented while it sits in the
cache, the cells in parallel (numba), with the same semantics as those ops:

- masking: each gene is zeroed with probability ``rate``;
- Gaussian noise: each gene gets N(0, sigma^2) added with probability ``rate``;
- InnerSwap: int(rate x genes / 2) gene pairs drawn with replacement are swapped, a pair that shares a
  gene with another pair (or with itself) is dropped;
- CrossOver: each gene is taken from the donor's row of the inputs with probability ``rate``.

Random numbers come from a counter-based generator (SplitMix64: the k-th number of a key is a hash of
key + k x gamma), with one key per cell and augmentation drawn from ``RandomSource``, so that the views
depend on the seed alone, not on the threads. A Bernoulli(rate) trial compares a 64-bit number with
rate x 2^64 (exact to 2^-64); normals come from the ziggurat of Marsaglia and Tsang (2000), with the
layer taken from other bits than the value (Doornik 2005).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba
import numpy as np
import torch

if TYPE_CHECKING:
    from scssl.augment.config import AugmentationConfig

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LAYER_BITS = np.uint64(127)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53
_ZIGGURAT_R = 3.442619855899  # the start of the tail


def _ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marsaglia and Tsang's 128 layers for 32-bit signed draws: the acceptance bounds ``k``, the
    scales ``w`` (x = draw x w) and the density at each layer's edge ``f``."""
    m, v = 2.0**31, 9.91256303526217e-3
    d = t = _ZIGGURAT_R
    k, w, f = np.zeros(128, np.int64), np.zeros(128), np.zeros(128)
    q = v / math.exp(-0.5 * d * d)
    k[0], k[1] = int(d / q * m), 0
    w[0], w[127] = q / m, d / m
    f[0], f[127] = 1.0, math.exp(-0.5 * d * d)
    for i in range(126, 0, -1):
        d = math.sqrt(-2.0 * math.log(v / d + math.exp(-0.5 * d * d)))
        k[i + 1] = int(d / t * m)
        t = d
        f[i] = math.exp(-0.5 * d * d)
        w[i] = d / m
    return k, w, f


_K, _W, _F = _ziggurat_tables()


@numba.njit(inline="always")
def _bits(key, k):
    """The k-th 64-bit number of ``key`` (SplitMix64)."""
    z = key + k * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _unit(z):
    """A 64-bit number as a uniform in (0, 1]."""
    return ((z >> np.uint64(11)) + np.uint64(1)) * _TO_UNIT


@numba.njit(inline="always")
def _normal(key, k, layer_k, layer_w, layer_f):
    """A standard normal from the numbers of ``key`` from the k-th on; returns it and the next k."""
    while True:
        z = _bits(key, k)
        k += np.uint64(1)
        layer = np.int64(z & _LAYER_BITS)
        draw = np.int64(np.int32(np.uint32(z >> np.uint64(32))))
        x = draw * layer_w[layer]
        if abs(draw) < layer_k[layer]:
            return x, k
        if layer == 0:  # the tail beyond r
            while True:
                tail = -math.log(_unit(_bits(key, k))) / _ZIGGURAT_R
                y = -math.log(_unit(_bits(key, k + np.uint64(1))))
                k += np.uint64(2)
                if y + y >= tail * tail:
                    break
            return (_ZIGGURAT_R + tail if draw > 0 else -_ZIGGURAT_R - tail), k
        u = _unit(_bits(key, k))
        k += np.uint64(1)
        if layer_f[layer] + u * (layer_f[layer - 1] - layer_f[layer]) < math.exp(-0.5 * x * x):
            return x, k


@numba.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def _augment_rows(views, n_genes, source, source_rows, keys, masking, mask_below, noise, sigma, noise_below,
                  swap, n_pairs, crossover, donors, cross_below, layer_k, layer_w, layer_f):
    for r in numba.prange(views.shape[0]):
        view = views[r]
        view[:n_genes] = source[source_rows[r]]
        key = keys[r, 0]
        if masking[r]:
            for j in range(n_genes):
                if _bits(key, np.uint64(j)) < mask_below:
                    view[j] = 0.0
        key = keys[r, 1]
        if noise[r]:
            k = np.uint64(n_genes)  # the first n_genes numbers decide which genes get noise
            for j in range(n_genes):
                if _bits(key, np.uint64(j)) < noise_below:
                    z, k = _normal(key, k, layer_k, layer_w, layer_f)
                    view[j] += sigma * z
        key = keys[r, 2]
        if swap[r] and n_pairs > 0:
            genes = np.empty(2 * n_pairs, np.int64)
            drawn = np.zeros(n_genes, np.uint8)  # how often each gene was drawn, up to 2
            for p in range(2 * n_pairs):
                gene = np.int64((_bits(key, np.uint64(p)) >> np.uint64(11)) * _TO_UNIT * n_genes)
                genes[p] = gene
                if drawn[gene] < 2:
                    drawn[gene] += 1
            for p in range(n_pairs):
                a, b = genes[p], genes[n_pairs + p]
                if drawn[a] == 1 and drawn[b] == 1:
                    view[a], view[b] = view[b], view[a]
        key = keys[r, 3]
        if crossover[r]:
            donor = source[donors[r]]
            for j in range(n_genes):
                if _bits(key, np.uint64(j)) < cross_below:
                    view[j] = donor[j]


def _numba_threads_as_torch() -> None:
    """Run the pass on as many threads as torch's intra-op pool has.

    numba's OpenMP layer, when it starts its threads (the first parallel call in a process), sets the
    OpenMP thread count of the calling thread to every core, and torch reads that count as its own: a
    trial given one CPU would train on all of them from its first mini-batch on, and end a rounding
    away from the same trial in a worker whose threads had already started. Put torch's count back.
    """
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _below(rate: float) -> np.uint64:
    """The 64-bit bound under which a uniform 64-bit number falls with probability ``rate``."""
    return np.uint64(min(int(rate * 2.0**64), 2**64 - 1))


def augment_rows(views: torch.Tensor, source: torch.Tensor, source_rows: torch.Tensor, keys: np.ndarray,
                 masking: np.ndarray, noise: np.ndarray, swap: np.ndarray, crossover: np.ndarray,
                 donors: torch.Tensor, config: AugmentationConfig) -> torch.Tensor:
    """Fill ``views`` (CPU, rows x genes, rows one after another, as ``padded_rows``) with the rows
    ``source_rows`` of ``source`` and augment them.

    ``masking``, ``noise``, ``swap`` and ``crossover`` are per-row flags (the coins the cells won);
    ``donors`` are the CrossOver donors' rows of ``source``; ``keys`` (rows x 4, uint64) seed each row's
    numbers of each augmentation.
    """
    _numba_threads_as_torch()
    c, (n_rows, n_genes) = config, views.shape
    rows = views.as_strided((n_rows, views.stride(0)), (views.stride(0), 1))  # contiguous: compiles faster code
    _augment_rows(
        rows.numpy(), n_genes, source.numpy(), source_rows.numpy(), keys,
        masking, _below(c.masking.rate), noise, c.gaussian_noise.sigma, _below(c.gaussian_noise.rate),
        swap, int(n_genes * c.inner_swap.rate // 2), crossover, donors.numpy(), _below(c.crossover.rate),
        _K, _W, _F,
    )
    return views

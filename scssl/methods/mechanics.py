"""Mechanics shared by several methods, each written once: the EMA update and its cosine schedule
(MoCo, BYOL), the FIFO memory queue (MoCo negatives, NNCLR support set) and nearest-neighbour lookup."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """``start`` at step 0 rising to ``end`` at ``total_steps`` along a half cosine (BYOL, solo-learn)."""
    if total_steps <= 0:
        return end
    progress = min(step, total_steps) / total_steps
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to be moved by ``ema_update`` only."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)


class MemoryQueue(nn.Module):
    """The ``size`` most recent vectors, oldest replaced first; starts as random unit vectors (as lightly)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        batch = batch.detach()[-len(self.bank):]
        positions = (torch.arange(len(batch), device=batch.device) + self.pointer) % len(self.bank)
        self.bank.index_copy_(0, positions, batch.to(self.bank.dtype))
        self.pointer.copy_((self.pointer + len(batch)) % len(self.bank))  # on the device: no step waits for it


def nearest_neighbour(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """For each query row, the support row of highest cosine similarity (NNCLR)."""
    similarity = F.normalize(query, dim=1) @ F.normalize(support, dim=1).T
    return support[similarity.argmax(dim=1)]

"""The one epoch loop. Every network that trains in epochs (the SSL methods, scGPT's fine-tuning, the tasks'
heads) hands it its mini-batches and its loss of one; the loop owns the optimiser, the learning-rate
schedule, gradient clipping, the NaN check and the per-epoch report."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class EpochReport:
    epoch: int  # 1-based: the number of epochs done
    loss: float
    seconds: float


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training cannot go on."""


@dataclass(frozen=True)
class Optimisation:
    """Adam or AdamW at ``lr`` with ``weight_decay``; the gradient norm clipped at ``grad_clip`` (None: not);
    with ``lr_step`` (step size in epochs, factor) the learning rate multiplied by the factor every step size."""

    lr: float
    weight_decay: float
    optimizer: str = "adam"
    grad_clip: float | None = None
    lr_step: tuple[int, float] | None = None


def run_epochs(
    name: str,
    parameters: list[torch.nn.Parameter],
    epochs: int,
    batches: Callable[[int], Iterable[Any]],
    loss: Callable[[Any], torch.Tensor],
    optimisation: Optimisation,
    before_epoch: Callable[[int], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
) -> None:
    """Train ``parameters`` for ``epochs``: each epoch (1-based) takes ``loss(batch)`` of every batch of
    ``batches(epoch)`` and an optimiser step; ``after_step(steps so far)`` follows each step, ``before_epoch``
    starts an epoch and ``on_epoch`` ends it. A mean loss that is NaN or infinite raises NonFiniteLossError
    naming ``name``: nothing sensible can follow it."""
    kind = torch.optim.AdamW if optimisation.optimizer == "adamw" else torch.optim.Adam
    optimizer = kind(parameters, lr=optimisation.lr, weight_decay=optimisation.weight_decay)
    step_lr = optimisation.lr_step
    scheduler = None if step_lr is None else torch.optim.lr_scheduler.StepLR(optimizer, *step_lr)
    step = 0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        if before_epoch is not None:
            before_epoch(epoch)
        total, count = None, 0
        for batch in batches(epoch):
            value = loss(batch)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            if optimisation.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, optimisation.grad_clip)
            optimizer.step()
            step += 1
            if after_step is not None:
                after_step(step)
            total = value.detach() if total is None else total + value.detach()  # no wait for the device per step
            count += 1
        mean_loss = float(total) / count if count else float("nan")
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"{name}: loss is {mean_loss} in epoch {epoch}")
        if scheduler is not None:
            scheduler.step()
        if on_epoch is not None:
            on_epoch(EpochReport(epoch, mean_loss, time.perf_counter() - started))

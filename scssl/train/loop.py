"""One training loop for every SSL method, standalone or inside a Ray Tune trial, and ``fit_embedding``,
which runs it (or fits a baseline) for any registered method.

Per-epoch progress goes to an ``on_epoch`` callback, so the caller decides what to do with it
(print it, evaluate and report it to Tune); the loop knows nothing about Ray or MLflow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from scssl.augment import AugmentationConfig, Augmenter, NeighbourGraph
from scssl.data import CellMatrix
from scssl.methods import SSLMethod, get_method
from scssl.train.settings import TrainSettings


@dataclass
class EpochReport:
    epoch: int  # 1-based: the number of epochs done
    loss: float
    seconds: float


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training cannot go on."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    method_cls: type[SSLMethod],
    params,
    X: np.ndarray | sp.spmatrix,
    settings: TrainSettings,
    augment: AugmentationConfig,
    seed: int = 0,
    on_epoch: Callable[[SSLMethod, EpochReport], None] | None = None,
    graph: NeighbourGraph | None = None,
) -> SSLMethod:
    """Train ``method_cls(params)`` on the cells of ``X`` and return the model (in eval mode).

    ``graph`` (the neighbours of the rows of ``X``) is needed by the BBKNN and MNN augmentations.
    """
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    cells = CellMatrix(X, device)
    model = method_cls(cells.n_genes, params).to(device)
    augmenter = Augmenter(augment, device, seed, rows=cells.rows, graph=graph)
    order = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10, 0.1) if settings.schedule == "step" else None

    batch_size = min(settings.batch_size, cells.n_cells)
    n_batches = cells.n_cells // batch_size  # drop_last, as the study: no tiny last batch for BatchNorm
    total_steps, step = settings.epochs * n_batches, 0
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        permutation = torch.randperm(cells.n_cells, generator=order).to(device)
        total = torch.zeros((), device=device)
        for b in range(n_batches):
            idx = permutation[b * batch_size : (b + 1) * batch_size]
            loss = model.loss(*augmenter(cells.rows(idx), idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            model.after_step(step, total_steps)
            total += loss.detach()
        mean_loss = float(total) / n_batches
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"{method_cls.name}: loss is {mean_loss} in epoch {epoch}")
        if scheduler is not None:
            scheduler.step()
        model.eval()
        if on_epoch is not None:
            on_epoch(model, EpochReport(epoch, mean_loss, time.perf_counter() - started))
    return model.eval()


@torch.no_grad()
def embed(model: SSLMethod, X: np.ndarray | sp.spmatrix, batch_size: int = 1024) -> np.ndarray:
    """Encoder output for every cell, with BatchNorm in eval mode (independent of batch composition)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = np.concatenate([model.embed(x).cpu().numpy() for x in CellMatrix(X, device).batches(batch_size)])
    model.train(was_training)
    return out


def fit_embedding(
    method: str,
    params,
    X_train: np.ndarray | sp.spmatrix,
    X_embed: dict[str, np.ndarray | sp.spmatrix],
    train_settings: TrainSettings,
    augment: AugmentationConfig,
    seed: int,
    on_epoch: Callable | None = None,
    graph: NeighbourGraph | None = None,
) -> dict[str, np.ndarray]:
    """Fit ``method`` on ``X_train`` and embed each matrix of ``X_embed`` (same keys in the result).

    ``graph`` holds the neighbours of ``X_train``'s rows, for the BBKNN and MNN augmentations.
    """
    cls = get_method(method)
    if not cls.trainable:
        baseline = cls(params, seed=seed).fit(X_train)
        return {key: baseline.embed(X) for key, X in X_embed.items()}
    model = train(cls, params, X_train, train_settings, augment, seed, on_epoch, graph)
    return {key: embed(model, X) for key, X in X_embed.items()}

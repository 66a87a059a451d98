"""One training loop for every network method, standalone or inside a Ray Tune trial, and ``fit``, which
trains (or fits) any registered method into a ``Model`` the tasks use.

The loop hands each mini-batch to the method's own ``training_loss``: the method makes its views or masks.
Per-epoch progress goes to an ``on_epoch`` callback, so the caller decides what to do with it (print it,
evaluate and report it to Tune); the loop knows nothing about Ray or MLflow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from scssl.augment import AugmentationConfig, NeighbourGraph
from scssl.data import CellMatrix
from scssl.methods import Batch, SSLMethod, TrainingContext, get_method
from scssl.methods.base import Reconstruction
from scssl.train.settings import TrainSettings


@dataclass
class EpochReport:
    epoch: int  # 1-based: the number of epochs done
    loss: float
    seconds: float


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training cannot go on."""


@dataclass
class TrainingData:
    """The cells a method trains on: expression, gene names (gene-programme masks), batch codes and the
    neighbour graph of the rows (BBKNN and MNN augmentations)."""

    X: np.ndarray | sp.spmatrix
    genes: np.ndarray | None = None
    batch_codes: np.ndarray | None = None
    graph: NeighbourGraph | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(model: SSLMethod, settings: TrainSettings) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def train(
    method_cls: type[SSLMethod],
    params,
    X: np.ndarray | sp.spmatrix,
    settings: TrainSettings,
    augment: AugmentationConfig | None = None,
    seed: int = 0,
    on_epoch: Callable[[SSLMethod, EpochReport], None] | None = None,
    graph: NeighbourGraph | None = None,
    genes: np.ndarray | None = None,
    batch_codes: np.ndarray | None = None,
) -> SSLMethod:
    """Train ``method_cls(params)`` on the cells of ``X`` and return the model (in eval mode)."""
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    cells = CellMatrix(X, device)
    model = method_cls(cells.n_genes, params).to(device)
    model.setup(TrainingContext(cells.rows, genes, graph, augment, seed, device))
    codes = None if batch_codes is None else torch.tensor(np.asarray(batch_codes, dtype=np.int64), device=device)
    order = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = _optimizer(model, settings)
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
            loss = model.training_loss(Batch(cells.rows(idx), idx, None if codes is None else codes[idx]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
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


class TrainedNetwork:
    """A network method after training, with the interface of a fitted method: ``embed``, and
    ``reconstruct`` when the method has a decoder; ``network`` is there to be fine-tuned."""

    def __init__(self, network: SSLMethod):
        self.network = network

    def embed(self, X: np.ndarray | sp.spmatrix) -> np.ndarray:
        return embed(self.network, X)

    @torch.no_grad()
    def reconstruct(self, X: np.ndarray | sp.spmatrix, seed: int, batch_size: int = 1024) -> Reconstruction:
        """The network's reconstruction of every cell of ``X`` from its training-time masking, masks drawn
        from ``seed``."""
        device = next(self.network.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        parts = [(x, *self.network.reconstruct(x, generator)) for x in CellMatrix(X, device).batches(batch_size)]
        inputs, x_hat, scored = (np.concatenate([p[i].cpu().numpy() for p in parts]) for i in range(3))
        return Reconstruction(inputs.astype(np.float32), x_hat.astype(np.float32), scored.astype(bool))


def fit(
    method: str,
    params,
    data: TrainingData,
    train_settings: TrainSettings,
    augment: AugmentationConfig | None,
    seed: int,
    on_epoch: Callable | None = None,
):
    """``method`` fitted on ``data``: a network trained by the loop (a ``TrainedNetwork``), or a method that
    fits by itself; either has ``embed(X)`` and, if it ``reconstructs``, ``reconstruct(X, seed)``."""
    cls = get_method(method)
    if issubclass(cls, SSLMethod):
        return TrainedNetwork(train(cls, params, data.X, train_settings, augment, seed, on_epoch, data.graph,
                                    data.genes, data.batch_codes))
    return cls(params, seed=seed).fit(data.X)


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
    """Fit ``method`` on ``X_train`` and embed each matrix of ``X_embed`` (same keys in the result)."""
    model = fit(method, params, TrainingData(X_train, graph=graph), train_settings, augment, seed, on_epoch)
    return {key: model.embed(X) for key, X in X_embed.items()}

"""One training loop for every network method, standalone or inside a Ray Tune trial, and ``fit``, which
trains (or fits) any registered method into a ``Model`` the tasks use.

The loop hands each mini-batch to the method's own ``training_loss``: the method makes its views or masks.
Per-epoch progress goes to an ``on_epoch`` callback, so the caller decides what to do with it (print it,
evaluate and report it to Tune); the loop knows nothing about Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from scssl.augment import AugmentationConfig
from scssl.data import CellMatrix, Cells
from scssl.methods import Batch, SSLMethod, TrainingContext, get_method
from scssl.methods.base import Reconstruction
from scssl.methods.domain_norm import codes_on, configure_domains, in_chunks, uses_domains
from scssl.train.epochs import EpochReport, Optimisation, run_epochs
from scssl.train.settings import TrainSettings


def as_cells(data: Cells | np.ndarray | sp.spmatrix) -> Cells:
    """``data``, or a matrix of expression alone, as ``Cells``."""
    return data if isinstance(data, Cells) else Cells(data)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _matrices(cls: type[SSLMethod], cells: Cells, device: torch.device) -> tuple[CellMatrix, CellMatrix | None]:
    """The RNA on ``device``, and the second modality where the cells have one and the method uses it."""
    other = cells.other if cls.uses_other else None
    return CellMatrix(cells.X, device), None if other is None else CellMatrix(other, device)


def train(
    method_cls: type[SSLMethod],
    params,
    data: Cells | np.ndarray | sp.spmatrix,
    settings: TrainSettings,
    augment: AugmentationConfig | None = None,
    seed: int = 0,
    on_epoch: Callable[[SSLMethod, EpochReport], None] | None = None,
) -> SSLMethod:
    """Train ``method_cls(params)`` on ``data`` (``Cells``, or an expression matrix) and return the model
    (in eval mode); with a second modality in the cells, a method that ``uses_other`` trains on both."""
    cells = as_cells(data)
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    rna, other = _matrices(method_cls, cells, device)
    model = method_cls(rna.n_genes, params, 0 if other is None else other.n_genes).to(device)
    codes = codes_on(cells.batch_codes, device)
    model.setup(TrainingContext(rna.rows, cells.genes, cells.graph, augment, seed, device,
                                None if other is None else other.rows, codes))
    if uses_domains(model):
        configure_domains(model, cells.batch_codes, device)
    order = torch.Generator(device="cpu").manual_seed(seed)
    batch_size = min(settings.batch_size, rna.n_cells)
    n_batches = rna.n_cells // batch_size  # drop_last, as the study: no tiny last batch for BatchNorm
    total_steps = settings.epochs * n_batches

    def batches(epoch: int):
        permutation = torch.randperm(rna.n_cells, generator=order).to(device)
        for b in range(n_batches):
            idx = permutation[b * batch_size : (b + 1) * batch_size]
            yield Batch(rna.rows(idx), idx, None if codes is None else codes[idx],
                        None if other is None else other.rows(idx))

    def before_epoch(epoch: int) -> None:
        model.train()
        model.before_epoch(epoch)

    def after_epoch(report: EpochReport) -> None:
        model.eval()
        if on_epoch is not None:
            on_epoch(model, report)

    optimisation = Optimisation(settings.lr, settings.weight_decay, settings.optimizer, settings.grad_clip,
                                (10, 0.1) if settings.schedule == "step" else None)
    run_epochs(method_cls.name, list(model.parameters()), settings.epochs, batches, model.training_loss, optimisation,
               before_epoch, lambda step: model.after_step(step, total_steps), after_epoch)
    return model.eval()


@torch.no_grad()
def embed(model: SSLMethod, data: Cells | np.ndarray | sp.spmatrix, batch_size: int = 1024) -> np.ndarray:
    """The model's embedding of every cell (joint where the cells have the second modality it trained on),
    with BatchNorm in eval mode (independent of batch composition); domain norms as ``in_chunks`` says."""
    cells = as_cells(data)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rna, other = _matrices(type(model), cells if model.n_other else Cells(cells.X), device)
    codes = codes_on(cells.batch_codes, device)

    parts = in_chunks(model, lambda idx, codes: model.embed(rna.rows(idx), None if other is None else other.rows(idx),
                                                            codes), rna.n_cells, codes, batch_size, device)
    out = np.concatenate([part.cpu().numpy() for part in parts])
    model.train(was_training)
    return out


class TrainedNetwork:
    """A network method after training, with the interface of a fitted method: ``embed``, and
    ``reconstruct`` when the method has a decoder; ``network`` is there to be fine-tuned."""

    def __init__(self, network: SSLMethod):
        self.network = network

    def embed(self, cells: Cells) -> np.ndarray:
        return embed(self.network, cells)

    @torch.no_grad()
    def reconstruct(self, cells: Cells, seed: int, batch_size: int = 1024) -> Reconstruction:
        """The network's reconstruction of every cell from its training-time masking, masks drawn from ``seed``;
        domain norms as ``in_chunks`` says."""
        device = next(self.network.parameters()).device
        matrix = CellMatrix(cells.X, device)
        drawn = {}

        def chunk(rows: torch.Tensor, codes: torch.Tensor | None):
            if rows[0] == 0:  # each pass over the cells (two with an adaptation pass) draws the same masks
                drawn["masks"] = torch.Generator(device=device).manual_seed(seed)
            x = matrix.rows(rows)
            return (x, *self.network.reconstruct(x, drawn["masks"], codes))

        parts = in_chunks(self.network, chunk, matrix.n_cells, codes_on(cells.batch_codes, device), batch_size,
                          device)
        inputs, x_hat, scored = (np.concatenate([p[i].cpu().numpy() for p in parts]) for i in range(3))
        return Reconstruction(inputs.astype(np.float32), x_hat.astype(np.float32), scored.astype(bool))


def fit(
    method: str,
    params,
    cells: Cells,
    train_settings: TrainSettings,
    augment: AugmentationConfig | None,
    seed: int,
    on_epoch: Callable | None = None,
):
    """``method`` fitted on ``cells``: a network trained by the loop (a ``TrainedNetwork``), or a method that
    fits by itself. Either has ``embed(cells)``, and ``reconstruct(X, seed)`` if the method ``Reconstructs``;
    ``on_epoch(model, report)`` sees the model with the same interface after each epoch."""
    cls = get_method(method)
    if not issubclass(cls, SSLMethod):
        return cls(params, seed=seed).fit(cells, train_settings, on_epoch)
    per_epoch = None if on_epoch is None else lambda network, report: on_epoch(TrainedNetwork(network), report)
    return TrainedNetwork(train(cls, params, cells, train_settings, augment, seed, per_epoch))

"""One training loop for every network method, standalone or inside a Ray Tune trial, and ``fit``, which
trains (or fits) any registered method into a ``Model`` the tasks use.

The loop hands each mini-batch to the method's own ``training_loss``: the method makes its views or masks.
Per-epoch progress goes to an ``on_epoch`` callback, so the caller decides what to do with it (print it,
evaluate and report it to Tune); the loop knows nothing about Ray or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from scssl.augment import AugmentationConfig
from scssl.data import CellMatrix, Cells
from scssl.data.cells import device_bytes
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


def _matrices(cls: type[SSLMethod], cells: Cells, device: torch.device,
              held: tuple[CellMatrix, ...] = ()) -> tuple[CellMatrix, CellMatrix | None]:
    """The RNA on ``device``, and the second modality where the cells have one and the method uses it: a matrix
    already ``held`` there (a training's, for the per-epoch validation) taken as it is, the others uploaded."""
    def upload(matrix) -> CellMatrix:
        return next((m for m in held if m.source is matrix and m.device == device), None) or CellMatrix(matrix, device)

    other = cells.other if cls.uses_other else None
    return upload(cells.X), None if other is None else upload(other)


DEVICE_HEADROOM = 512 * 2**20  # a network's mini-batches, views, activations and optimiser beside its data


def check_device_memory(device: torch.device, matrices: list) -> None:
    """A ``torch.cuda.OutOfMemoryError`` before anything is uploaded when the GPU has less memory free than the
    ``matrices`` take there and a network's working memory: a trial on a shared GPU (``tune.gpus_per_trial``
    below 1) then waits for Ray to retry it, instead of failing mid-epoch."""
    need = sum(device_bytes(matrix) for matrix in matrices) + DEVICE_HEADROOM
    free, total = torch.cuda.mem_get_info(device)
    if need > free:
        raise torch.cuda.OutOfMemoryError(
            f"training needs about {need / 2**30:.2f} GiB of {device} for its cells and network, and "
            f"{free / 2**30:.2f} of its {total / 2**30:.2f} GiB are free (other trials share it: tune.gpus_per_trial)")


@dataclass
class Training:
    """A network set up to train on its cells' device: ``model``, and ``batches(epoch)``, the epoch's shuffled
    mini-batches (``steps_per_epoch`` of them, each cut from the matrices uploaded there, ``uploads``)."""

    model: SSLMethod
    batches: Callable[[int], Iterator[Batch]]
    steps_per_epoch: int
    uploads: tuple[CellMatrix, ...]


def start_training(method_cls: type[SSLMethod], params, data: Cells | np.ndarray | sp.spmatrix,
                   settings: TrainSettings, augment: AugmentationConfig | None = None, seed: int = 0,
                   shard: tuple[int, int] | None = None) -> Training:
    """``method_cls(params)`` built and set up on the device of ``settings`` to train on ``data``. The cells are
    uploaded once; a mini-batch is gathered there by index, and its order drawn on the host from ``seed``.
    With ``shard`` (rank, workers), one worker of a data-parallel training: the same network on every worker
    (initialised from ``seed``), each training on its own share of the cells (``Cells.shard``) with its own
    mini-batch order and augmentations (from ``seed`` + rank); ``run_training`` averages their gradients."""
    cells = as_cells(data)
    rank, workers = shard or (0, 1)
    own_seed = seed + rank  # a worker's own mini-batch order, augmentations and dropout
    if shard is not None:
        cells = cells.shard(rank, workers, settings.batch_size, seed)
    device = resolve_device(settings.device)
    if device.type == "cuda":
        check_device_memory(device, [cells.X] + ([cells.other] if method_cls.uses_other and cells.other is not None
                                                 else []))
    torch.manual_seed(seed)
    rna, other = _matrices(method_cls, cells, device)
    model = method_cls(rna.n_genes, params, 0 if other is None else other.n_genes).to(device)
    if shard is not None:
        torch.manual_seed(own_seed)
    codes = codes_on(cells.batch_codes, device)
    model.setup(TrainingContext(rna.rows, cells.genes, cells.graph, augment, own_seed, device,
                                None if other is None else other.rows, codes))
    if uses_domains(model):
        configure_domains(model, cells.batch_codes, device)
    order = torch.Generator(device="cpu").manual_seed(own_seed)
    batch_size = min(settings.batch_size, rna.n_cells)

    def batches(epoch: int) -> Iterator[Batch]:
        for idx, x in rna.shuffled(batch_size, order):
            yield Batch(x, idx, None if codes is None else codes[idx], None if other is None else other.rows(idx))

    return Training(model, batches, rna.steps(batch_size), tuple(m for m in (rna, other) if m is not None))


class _StepLoss(torch.nn.Module):
    """A method's training loss as a module's forward: DistributedDataParallel syncs the gradients of what its
    forward computed."""

    def __init__(self, model: SSLMethod):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model.training_loss(batch)


def step_loss(model: SSLMethod) -> Callable[[Batch], torch.Tensor]:
    """``model.training_loss``; in a process group of several workers (``torch.distributed``, which Ray Train sets
    up: gloo on CPUs, NCCL on GPUs) the same loss through DistributedDataParallel, so that each backward pass
    averages the gradients over the workers and every worker takes the same optimiser step. Buffers (BatchNorm's
    running statistics, a MoCo queue) are rank 0's, broadcast before each step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model.training_loss
    return DistributedDataParallel(_StepLoss(model), find_unused_parameters=True)


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
    training = start_training(method_cls, params, data, settings, augment, seed)
    run_training(training, settings, on_epoch)
    return training.model


def run_training(training: Training, settings: TrainSettings,
                 on_epoch: Callable[[SSLMethod, EpochReport], None] | None = None) -> None:
    """Train ``training.model`` for ``settings.epochs`` (in eval mode after each epoch and at the end)."""
    model = training.model
    total_steps = settings.epochs * training.steps_per_epoch
    if settings.compile:
        for module in model.children():
            module.compile()
    precision = torch.autocast(resolve_device(settings.device).type, torch.bfloat16,
                               enabled=settings.precision == "bf16")

    loss_of = step_loss(model)

    def loss(batch: Batch) -> torch.Tensor:
        with precision:
            return loss_of(batch)

    def before_epoch(epoch: int) -> None:
        model.train()
        model.before_epoch(epoch)

    def after_epoch(report: EpochReport) -> None:
        model.eval()
        if on_epoch is not None:
            on_epoch(model, report)

    optimisation = Optimisation(settings.lr, settings.weight_decay, settings.optimizer, settings.grad_clip,
                                (10, 0.1) if settings.schedule == "step" else None)
    run_epochs(model.name, list(model.parameters()), settings.epochs, training.batches, loss, optimisation,
               before_epoch, lambda step: model.after_step(step, total_steps), after_epoch)
    model.eval()


@torch.no_grad()
def embed(model: SSLMethod, data: Cells | np.ndarray | sp.spmatrix, batch_size: int = 1024,
          held: tuple[CellMatrix, ...] = ()) -> np.ndarray:
    """The model's embedding of every cell (joint where the cells have the second modality it trained on),
    with BatchNorm in eval mode (independent of batch composition); domain norms as ``in_chunks`` says. Matrices
    ``held`` on the model's device are not uploaded again."""
    cells = as_cells(data)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rna, other = _matrices(type(model), cells if model.n_other else Cells(cells.X), device, held)
    codes = codes_on(cells.batch_codes, device)

    parts = in_chunks(model, lambda idx, codes: model.embed(rna.rows(idx), None if other is None else other.rows(idx),
                                                            codes), rna.n_cells, codes, batch_size, device)
    out = np.concatenate([part.cpu().numpy() for part in parts])
    model.train(was_training)
    return out


class TrainedNetwork:
    """A network method after training, with the interface of a fitted method: ``embed``, and
    ``reconstruct`` when the method has a decoder; ``network`` is there to be fine-tuned. Cells whose matrices
    are those it trained on (``uploads``) are embedded from the copy already on its device."""

    def __init__(self, network: SSLMethod, uploads: tuple[CellMatrix, ...] = ()):
        self.network, self.uploads = network, uploads

    def embed(self, cells: Cells) -> np.ndarray:
        return embed(self.network, cells, held=self.uploads)

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
    shard: tuple[int, int] | None = None,
):
    """``method`` fitted on ``cells``: a network trained by the loop (a ``TrainedNetwork``), or a method that
    fits by itself. Either has ``embed(cells)``, and ``reconstruct(X, seed)`` if the method ``Reconstructs``;
    ``on_epoch(model, report)`` sees the model with the same interface after each epoch. ``shard``: this worker's
    (rank, workers) of a data-parallel training (``start_training``), for a network method."""
    cls = get_method(method)
    if not issubclass(cls, SSLMethod):
        if shard is not None:
            raise ValueError(f"{method} fits by itself, in one process: it cannot train on several workers")
        return cls(params, seed=seed).fit(cells, train_settings, on_epoch)
    training = start_training(cls, params, cells, train_settings, augment, seed, shard)
    trained = TrainedNetwork(training.model, training.uploads)
    run_training(training, train_settings, None if on_epoch is None else lambda _, report: on_epoch(trained, report))
    return trained

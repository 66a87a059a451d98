"""A head on a pretrained encoder, trained on the reference cells and applied to the query (Richter et al.
2024): a classifier for cell-type prediction, a regression onto the other modality for cross-modality
prediction. With ``freeze`` only the head trains; otherwise the whole network does (fine-tuning). The same
network from random weights is the supervised baseline a pretrained encoder has to beat."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from scssl.data import CellMatrix
from scssl.evaluate.cell_typing import label_transfer_scores
from scssl.evaluate.settings import FineTuneSettings
from scssl.methods.domain_norm import codes_on, in_chunks
from scssl.train.epochs import Optimisation, run_epochs


class EncoderWithHead(torch.nn.Module):
    """A pretrained encoder and a linear head on its output; the rows' batch codes go to the encoder."""

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(x, codes))


def train_head(
    encoder: torch.nn.Module, embedding_dim: int, n_outputs: int, X_ref: np.ndarray | sp.spmatrix,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], targets: torch.Tensor,
    settings: FineTuneSettings, seed: int, device: torch.device | str = "cpu", freeze: bool = False,
    ref_codes: np.ndarray | None = None,
) -> torch.nn.Sequential:
    """A copy of ``encoder`` (cells -> ``embedding_dim``) with a linear head of ``n_outputs``, trained with AdamW
    on ``loss(output, targets[batch])`` over shuffled mini-batches of the reference cells (the epoch loop of
    ``scssl.train``); in eval mode (an ``EncoderWithHead``).
    ``ref_codes``: the reference cells' batches, for an encoder with domain-specific BatchNorm.

    The caller's encoder is left untouched, so one pretrained encoder serves every seed and task. A last
    batch of one cell is skipped (BatchNorm cannot train on it); the seed fixes the head's initial weights,
    dropout and the order of cells. A frozen encoder stays in eval mode (its BatchNorm statistics fixed).
    """
    torch.manual_seed(seed)
    network = EncoderWithHead(copy.deepcopy(encoder), torch.nn.Linear(embedding_dim, n_outputs)).to(device)
    if freeze:
        network.encoder.requires_grad_(False)
    trained = [p for p in network.parameters() if p.requires_grad]
    reference = CellMatrix(X_ref, device)
    codes = codes_on(ref_codes, device)
    order = torch.Generator(device="cpu").manual_seed(seed)
    network.train()
    if freeze:
        network.encoder.eval()

    def batches(epoch: int):
        permutation = torch.randperm(reference.n_cells, generator=order).to(device)
        return [batch for batch in permutation.split(settings.batch_size) if len(batch) >= 2]

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        return loss(network(reference.rows(batch), None if codes is None else codes[batch]), targets[batch])

    run_epochs("fine-tuning head", trained, settings.epochs, batches, batch_loss,
               Optimisation(settings.lr, settings.weight_decay, "adamw"))
    return network.eval()


@torch.no_grad()
def predict(network: torch.nn.Module, X: np.ndarray | sp.spmatrix, codes: np.ndarray | None, batch_size: int,
            device) -> torch.Tensor:
    """The network's output for every cell of ``X``, in chunks; domain norms as ``in_chunks`` says (batches of
    ``codes`` the encoder did not train on: by their statistics over all of ``X``, never a chunk's)."""
    cells = CellMatrix(X, device)
    parts = in_chunks(network, lambda rows, batches: network(cells.rows(rows), batches), cells.n_cells,
                      codes_on(codes, device), batch_size, torch.device(device))
    return torch.cat([part.cpu() for part in parts])


def fine_tune(
    encoder: torch.nn.Module, embedding_dim: int,
    X_ref: np.ndarray | sp.spmatrix, ref_labels: np.ndarray,
    X_query: np.ndarray | sp.spmatrix, query_labels: np.ndarray,
    settings: FineTuneSettings, seed: int, device: torch.device | str = "cpu",
    ref_codes: np.ndarray | None = None, query_codes: np.ndarray | None = None,
) -> dict[str, float]:
    """Fine-tune ``encoder`` with a classifier head on the reference cell types; the scores of its query
    predictions, those of kNN label transfer. ``class_weighted``: cross-entropy weighted by inverse class
    frequency (sklearn's "balanced": every type weighs the same in total). ``ref_codes`` and ``query_codes``:
    the cells' batches, for an encoder with domain-specific BatchNorm."""
    types, codes = np.unique(np.asarray(ref_labels), return_inverse=True)
    weight = None
    if settings.class_weighted:
        balanced = compute_class_weight("balanced", classes=np.arange(len(types)), y=codes)
        weight = torch.as_tensor(balanced, dtype=torch.float32, device=device)
    network = train_head(encoder, embedding_dim, len(types), X_ref,
                         lambda output, target: F.cross_entropy(output, target, weight=weight),
                         torch.as_tensor(codes, device=device), settings, seed, device, ref_codes=ref_codes)
    predicted = predict(network, X_query, query_codes, settings.batch_size, device).argmax(dim=1)
    return label_transfer_scores(types, query_labels, types[predicted.numpy()])


def regress(
    encoder: torch.nn.Module, embedding_dim: int, X_ref: np.ndarray | sp.spmatrix, Y_ref: np.ndarray | sp.spmatrix,
    X_query: np.ndarray | sp.spmatrix, settings: FineTuneSettings, seed: int, device: torch.device | str = "cpu",
    freeze: bool = False, ref_codes: np.ndarray | None = None, query_codes: np.ndarray | None = None,
) -> np.ndarray:
    """Richter et al.'s cross-modality prediction: a linear regression head from ``encoder`` onto the other
    modality ``Y_ref`` (MSE), trained on the reference cells (the encoder frozen, or fine-tuned with it);
    the query's predicted other modality. Batch codes as for ``fine_tune``."""
    targets = torch.as_tensor(np.asarray(Y_ref.todense() if sp.issparse(Y_ref) else Y_ref, dtype=np.float32),
                              device=device)
    network = train_head(encoder, embedding_dim, targets.shape[1], X_ref, F.mse_loss, targets, settings, seed,
                         device, freeze, ref_codes)
    return predict(network, X_query, query_codes, settings.batch_size, device).numpy()

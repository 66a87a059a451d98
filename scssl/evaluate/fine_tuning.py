"""Cell typing by fine-tuning (Richter et al. 2024): a linear head on a pretrained encoder, the whole
network trained on the reference labels and scored on the query. The same network from random weights
is the supervised baseline a pretrained encoder has to beat."""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from scssl.data import CellMatrix
from scssl.evaluate.cell_typing import label_transfer_scores
from scssl.evaluate.settings import FineTuneSettings


def fine_tune(
    encoder: torch.nn.Module, embedding_dim: int,
    X_ref: np.ndarray | sp.spmatrix, ref_labels: np.ndarray,
    X_query: np.ndarray | sp.spmatrix, query_labels: np.ndarray,
    settings: FineTuneSettings, seed: int, device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Train a copy of ``encoder`` (cells -> ``embedding_dim``) with a classifier head on the reference
    cells and return the scores of its query predictions, those of kNN label transfer.

    The caller's encoder is left untouched, so one pretrained encoder serves every seed and task.
    Mini-batches are shuffled each epoch and a last batch of one cell is skipped (BatchNorm cannot
    train on it); the seed fixes the head's initial weights, dropout and the order of cells.
    """
    types, codes = np.unique(np.asarray(ref_labels), return_inverse=True)
    torch.manual_seed(seed)
    network = torch.nn.Sequential(copy.deepcopy(encoder), torch.nn.Linear(embedding_dim, len(types))).to(device)
    reference = CellMatrix(X_ref, device)
    targets = torch.as_tensor(codes, device=device)
    weight = None
    if settings.class_weighted:  # inverse class frequency (sklearn's "balanced"): every type weighs the same in total
        balanced = compute_class_weight("balanced", classes=np.arange(len(types)), y=codes)
        weight = torch.as_tensor(balanced, dtype=torch.float32, device=device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    order = torch.Generator(device="cpu").manual_seed(seed)

    network.train()
    for _ in range(settings.epochs):
        permutation = torch.randperm(reference.n_cells, generator=order).to(device)
        for batch in permutation.split(settings.batch_size):
            if len(batch) < 2:
                continue
            loss = F.cross_entropy(network(reference.rows(batch)), targets[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    network.eval()
    with torch.no_grad():
        predicted = torch.cat([network(x).argmax(dim=1).cpu()
                               for x in CellMatrix(X_query, device).batches(settings.batch_size)])
    return label_transfer_scores(types, query_labels, types[predicted.numpy()])


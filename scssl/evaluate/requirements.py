"""What a data set must hold for each task to be scored, checked before any training starts.

Without these checks a too-small data set fails late, inside scib-metrics ("No objects to
concatenate", "n must be smaller than the number of neighbors"), or yields scores that mean nothing.
"""

from __future__ import annotations

import numpy as np

from scssl.data.prepare import DataError, PreparedDataset
from scssl.evaluate.cell_typing import K_NEIGHBORS
from scssl.stages import MODALITY_TASKS, QUERY_TASKS

LABEL_TASKS = ("cell_typing", "fine_tuned_cell_typing")  # the tasks that score the query's cell types
MIN_CELLS = {
    # All cells: scib-metrics computes its metrics on each cell's 15, 50 and 90 nearest neighbours (the
    # cell itself included); with 89 cells or fewer it fails ("n must be smaller than the number of neighbors").
    "batch_correction": 90,
    # Reference cells (of every task that scores query cells): with k = 11 neighbours a kNN vote over fewer than ~2 k cells is a vote over almost
    # all of them, whatever the embedding. Measured on synthetic data (5 types): with 11 reference cells a
    # random embedding scores the same query macro-F1 as a PCA (0.07); at 30 PCA reaches 0.82, at 50 0.99,
    # where it levels off. The tuning objective classifies 20 % of the reference by the rest: at 50 cells
    # it ranks PCA over a weak embedding every time, at 20 in under half the draws.
    "cell_typing": 50,
}


def check_tasks(dataset: PreparedDataset, tasks: list[str], source: str, tunes: bool = False) -> None:
    """Raise a DataError (naming ``source``, the data file) when ``dataset`` cannot serve one of ``tasks``,
    or, when the study ``tunes``, its tuning objective (kNN on a validation split of the reference cells)."""
    name, obs = dataset.id, dataset.obs
    if tunes and len(dataset.reference_index) < MIN_CELLS["cell_typing"]:
        raise DataError(f"{source}: tuning needs at least {MIN_CELLS['cell_typing']} reference cells (its objective "
                        f"is a kNN vote on a validation split of them), data set {name!r} has "
                        f"{len(dataset.reference_index)}; hold out fewer query_batches", "query_batches")
    if "batch_correction" in tasks:
        need = MIN_CELLS["batch_correction"]
        if dataset.n_cells < need:
            raise DataError(f"{source}: batch_correction needs at least {need} cells, data set {name!r} has "
                            f"{dataset.n_cells}", "path")
        batches = sorted(obs["batch"].unique())
        if len(batches) < 2:
            raise DataError(f"{source}: batch_correction needs at least 2 batches in "
                            f"obs[{dataset.batch_key!r}], data set {name!r} has 1 ({batches[0]!r})", "batch_key")
        types = sorted(obs["label"].unique())
        if len(types) < 2:  # measured: cLISI, and so Bio and Total, come out as -inf
            raise DataError(f"{source}: batch_correction needs at least 2 cell types in "
                            f"obs[{dataset.labels_key!r}], data set {name!r} has 1 ({types[0]!r})", "labels_key")
        if (obs.groupby("label", observed=True)["batch"].nunique() < 2).all():  # scib-metrics 0.6 raises then
            raise DataError(f"{source}: batch_correction needs a cell type found in at least 2 batches (silhouette "
                            f"batch and kBET compare the batches within each type); in data set {name!r} every type "
                            f"of obs[{dataset.labels_key!r}] sits in one batch of obs[{dataset.batch_key!r}]",
                            "labels_key")
    for task in [t for t in tasks if t in MODALITY_TASKS and dataset.other is None]:
        raise DataError(f"{source}: {task} needs a second modality, and data set {name!r} has RNA only; give "
                        "its `modality` (protein or ATAC), or use a multimodal built-in data set", "modality")
    for task in [t for t in tasks if t in QUERY_TASKS]:
        need, n_ref, n_query = MIN_CELLS["cell_typing"], len(dataset.reference_index), len(dataset.query_index)
        if n_ref < need:
            raise DataError(f"{source}: {task} needs at least {need} reference cells (kNN with "
                            f"k = {K_NEIGHBORS}), data set {name!r} has {n_ref} (and {n_query} query cells); "
                            "hold out fewer query_batches", "query_batches")
        if n_query == 0:
            raise DataError(f"{source}: {task} needs at least 1 query cell, data set {name!r} has none; "
                            "name the held-out batches in query_batches", "query_batches")
    if set(tasks) & set(LABEL_TASKS):
        _check_shared_types(dataset, [t for t in tasks if t in LABEL_TASKS], source)


def _check_shared_types(dataset: PreparedDataset, tasks: list[str], source: str) -> None:
    """Cell typing scores query cells of the types the reference has: none is an error, some a note with counts."""
    labels = dataset.labels
    reference = set(labels[dataset.reference_index])
    query = labels[dataset.query_index]
    unseen = ~np.isin(query, list(reference))
    if unseen.all():
        raise DataError(f"{source}: {' and '.join(tasks)} score the query cells of cell types the reference has, and "
                        f"none of the {len(query)} query cells of data set {dataset.id!r} has one (query types "
                        f"{sorted(map(str, set(query)))[:5]}, reference types {sorted(map(str, reference))[:5]}); check labels_key and "
                        "query_batches", "query_batches")
    if unseen.any():
        dataset.notes.append(f"{int(unseen.sum())} of {len(query)} query cells are of {len(set(query[unseen]))} cell "
                             f"type(s) the reference lacks (e.g. {sorted(map(str, set(query[unseen])))[:3]}): cell typing scores "
                             "the other cells, its 'all types' columns every cell")

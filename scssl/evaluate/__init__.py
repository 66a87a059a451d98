"""Evaluate layer: scIB batch-correction metrics and kNN query-to-reference cell typing."""

from scssl.evaluate.batch_correction import (
    AGGREGATES, BATCH_METRICS, BIO_METRICS, aggregate, exact_neighbors, scib_scores,
)
from scssl.evaluate.cell_typing import K_NEIGHBORS, knn_accuracy, knn_cell_typing, validation_split

__all__ = [
    "AGGREGATES", "BATCH_METRICS", "BIO_METRICS", "K_NEIGHBORS", "aggregate", "exact_neighbors",
    "knn_accuracy", "knn_cell_typing", "scib_scores", "validation_split",
]

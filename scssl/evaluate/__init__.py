"""Evaluate layer: scIB batch-correction metrics and kNN query-to-reference cell typing.

Loaded on first use (anndata, sklearn, scib-metrics).
"""

from scssl import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "batch_correction": ["AGGREGATES", "BATCH_METRICS", "BIO_METRICS", "aggregate", "exact_neighbors", "scib_scores"],
    "cell_typing": ["K_NEIGHBORS", "knn_accuracy", "knn_cell_typing", "validation_split"],
})

__all__ = [
    "AGGREGATES", "BATCH_METRICS", "BIO_METRICS", "K_NEIGHBORS", "aggregate", "exact_neighbors",
    "knn_accuracy", "knn_cell_typing", "scib_scores", "validation_split",
]

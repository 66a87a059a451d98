"""Evaluate layer: the benchmark tasks (``TASKS``, one file each in ``tasks/``) and their metrics: scIB batch
correction, kNN and fine-tuned query-to-reference cell typing, gene-expression reconstruction, modality
prediction.

Loaded on first use (anndata, sklearn, scib-metrics).
"""

from scssl import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "batch_correction": ["aggregate", "exact_neighbors", "metric_set", "scib_scores"],
    "cell_typing": ["K_NEIGHBORS", "knn_accuracy", "knn_cell_typing", "label_transfer_scores", "validation_split"],
    "fine_tuning": ["fine_tune"],
    "reconstruction": ["mean_reconstruction", "pca_reconstruction", "reconstruction_scores"],
    "settings": ["FineTuneSettings"],
    "shared": ["SharedData", "TaskInputs"],
    "tasks": ["TASKS"],
    "tasks.batch_correction": ["AGGREGATES", "BATCH_METRICS", "BIO_METRICS"],
})

__all__ = [
    "AGGREGATES", "BATCH_METRICS", "BIO_METRICS", "FineTuneSettings", "K_NEIGHBORS", "SharedData", "TASKS",
    "TaskInputs", "aggregate", "exact_neighbors", "fine_tune", "knn_accuracy", "knn_cell_typing",
    "label_transfer_scores", "mean_reconstruction", "metric_set", "pca_reconstruction", "reconstruction_scores",
    "scib_scores", "validation_split",
]

"""The embeddings of a data set as one .h5ad: ``obsm["X_<method>"]`` per method (scverse convention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scssl.data import PreparedDataset


def write_embeddings(dataset: PreparedDataset, embedding_dir: Path, out: Path, seed: int) -> Path:
    """Collect the saved embeddings of ``seed`` into ``out``.

    ``X_<method>`` is the batch-correction model's embedding (trained on all cells);
    ``X_<method>_reference_model`` the cell-typing model's (trained on reference cells, query mapped).
    """
    adata = dataset.to_anndata()
    for file in sorted(embedding_dir.glob(f"*__seed{seed}.npy")):
        method, task, _ = file.stem.split("__")
        key = f"X_{method}" if task == "batch_correction" else f"X_{method}_reference_model"
        adata.obsm[key] = np.load(file)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out

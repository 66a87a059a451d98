"""The embeddings of a data set as one .h5ad: ``obsm["X_<method>"]`` per method (scverse convention)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scssl.data import PreparedDataset


def write_embeddings(dataset: PreparedDataset, embedding_dir: Path, out: Path, seeds: dict[str, int]) -> Path:
    """Collect the saved embeddings of each task's seed (``seeds``: task -> seed) into ``out``.

    ``X_<method>`` is the batch-correction model's embedding (trained on all cells);
    ``X_<method>_reference_model`` the cell-typing model's (trained on reference cells, query mapped).
    A sweep's configurations add their variant: ``X_<method>_<variant>``.
    """
    adata = dataset.to_anndata()
    files = [file for task, seed in seeds.items()
             for pattern in (f"*__{task}__seed{seed}.npy", f"*__{task}__seed{seed}__*.npy")
             for file in embedding_dir.glob(pattern)]
    for file in sorted(files):
        method, task, _, *variant = file.stem.split("__")  # a sweep's files end with their variant
        key = "_".join([f"X_{method}", *variant] + ([] if task == "batch_correction" else ["reference_model"]))
        adata.obsm[key] = np.load(file)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out

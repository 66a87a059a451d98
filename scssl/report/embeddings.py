"""The embeddings of a data set as one .h5ad: ``obsm["X_<method>"]`` per method (scverse convention)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from scssl.data import PreparedDataset
from scssl.evaluate.tasks import TASKS


def write_embeddings(dataset: PreparedDataset, embeddings: list[tuple[str, str, str, Path]], out: Path) -> Path:
    """Collect ``embeddings`` ((method, task, variant, ``.npy`` file) of the study's current finished jobs) into
    ``out``.

    ``X_<method>`` is the embedding of a task's model trained on all cells (batch correction's);
    ``X_<method>_reference_model`` that of one trained on the reference cells, the query mapped (cell typing's).
    A sweep's configurations add their variant: ``X_<method>_<variant>``.
    """
    adata = dataset.to_anndata()
    for method, task, variant, file in sorted(embeddings):
        parts = [f"X_{method}"] + ([re.sub(r"[^A-Za-z0-9.=_-]+", "_", variant)] if variant else [])
        key = "_".join(parts + ([] if TASKS[task].trains_on == "all" else ["reference_model"]))
        adata.obsm[key] = np.load(file)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    return out

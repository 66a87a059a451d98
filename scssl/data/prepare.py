"""Read an .h5ad, check its keys, and preprocess it as scSSL-Bench does.

normalize_total(1e4) -> log1p -> batch-aware HVGs (flavor 'seurat') chosen on **reference cells
only**. Query cells are then cut to exactly the reference's genes, in the same order: the
study's code re-selected genes on all cells, so its query genes could differ from the training genes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
from anndata import OldFormatWarning
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scssl.data.spec import DatasetSpec
from scssl.settings import ConfigError

REFERENCE, QUERY = "reference", "query"


@dataclass
class PreparedDataset:
    """Log-normalised HVG expression of all cells, with batch, label and reference/query split.

    Plain numpy/scipy so that Ray can put it in the object store once and share it with trials.
    ``obs`` has the categorical columns ``batch``, ``label`` and ``split``.
    """

    id: str
    X: sp.csr_matrix
    genes: np.ndarray
    obs: pd.DataFrame
    batch_key: str
    labels_key: str

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    @property
    def reference_index(self) -> np.ndarray:
        return np.flatnonzero(self.obs["split"].to_numpy() == REFERENCE)

    @property
    def query_index(self) -> np.ndarray:
        return np.flatnonzero(self.obs["split"].to_numpy() == QUERY)

    @property
    def label_codes(self) -> np.ndarray:
        return self.obs["label"].cat.codes.to_numpy()

    @property
    def batch_codes(self) -> np.ndarray:
        return self.obs["batch"].cat.codes.to_numpy()

    def to_anndata(self) -> ad.AnnData:
        """The preprocessed cells, with the user's own key names for batch and label."""
        obs = self.obs.rename(columns={"batch": self.batch_key, "label": self.labels_key})
        return ad.AnnData(X=self.X, obs=obs, var=pd.DataFrame(index=self.genes))


def read_h5ad(path: str | Path) -> ad.AnnData:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: data file not found")
    if path.suffix != ".h5ad":
        raise ConfigError(f"{path}: expected an .h5ad file")
    with warnings.catch_warnings():  # files written by older anndata versions read fine
        warnings.simplefilter("ignore", OldFormatWarning)
        return ad.read_h5ad(path)


def prepare(spec: DatasetSpec, adata: ad.AnnData | None = None) -> PreparedDataset:
    """Load (unless ``adata`` is given), validate and preprocess the data set of a resolved ``spec``."""
    import scanpy as sc  # here, not at the top: it takes seconds, and trial workers only unpickle the result

    source = spec.path
    adata = read_h5ad(spec.path) if adata is None else adata
    for what, key in (("batch_key", spec.batch_key), ("labels_key", spec.labels_key)):
        if key not in adata.obs:
            raise ConfigError(
                f"{source}: {what} {key!r} is not a column of obs; columns are {list(adata.obs.columns)}"
            )
    counts = _counts(adata, spec.counts_layer, source)

    batch = adata.obs[spec.batch_key].astype(str)
    query_batches = list(spec.query_batches or [])
    unknown = sorted(set(query_batches) - set(batch))
    if unknown:
        raise ConfigError(
            f"{source}: query_batches {unknown} are not values of obs[{spec.batch_key!r}]; "
            f"values are {sorted(set(batch))}"
        )
    is_query = batch.isin(query_batches).to_numpy()
    if is_query.all():
        raise ConfigError(f"{source}: query_batches {query_batches} leave no reference cells")

    cells = ad.AnnData(X=counts, obs=pd.DataFrame({"batch": batch.to_numpy()}, index=adata.obs_names))
    cells.var_names = adata.var_names.astype(str)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    genes = select_hvgs(cells[~is_query].copy(), spec.n_hvgs)

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(batch.to_numpy()),
            "label": pd.Categorical(adata.obs[spec.labels_key].astype(str).to_numpy()),
            "split": pd.Categorical(np.where(is_query, QUERY, REFERENCE), categories=[REFERENCE, QUERY]),
        },
        index=adata.obs_names.astype(str),
    )
    X = sp.csr_matrix(cells[:, genes].X, dtype=np.float32)
    return PreparedDataset(spec.label, X, np.asarray(genes), obs, spec.batch_key, spec.labels_key)


def select_hvgs(reference: ad.AnnData, n_hvgs: int) -> list[str]:
    """Batch-aware highly variable genes of log-normalised reference cells, in the data's gene order."""
    if n_hvgs >= reference.n_vars:
        return list(reference.var_names)
    import scanpy as sc

    table = sc.pp.highly_variable_genes(
        reference, n_top_genes=n_hvgs, flavor="seurat", batch_key="batch", inplace=False
    )
    return list(reference.var_names[table["highly_variable"].to_numpy()])


def _counts(adata: ad.AnnData, layer: str | None, source: str) -> sp.csr_matrix:
    if layer is not None and layer not in adata.layers:
        raise ConfigError(
            f"{source}: counts_layer {layer!r} is not a layer; layers are {list(adata.layers)} "
            "(leave counts_layer empty if X holds raw counts)"
        )
    counts = sp.csr_matrix(adata.layers[layer] if layer is not None else adata.X, dtype=np.float32)
    where = f"layers[{layer!r}]" if layer is not None else "X"
    if counts.nnz and counts.data.min() < 0:
        raise ConfigError(f"{source}: {where} has negative values; expected raw counts")
    if counts.nnz and not np.allclose(counts.data[:10000], np.round(counts.data[:10000])):
        raise ConfigError(f"{source}: {where} is not integer-valued; expected raw counts (set counts_layer)")
    return counts

"""Highly variable genes from chunked statistics against scanpy's batch-aware 'seurat' selection on the whole matrix."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scssl.data import BUILTIN_DATASETS
from scssl.data.hvg import HVGStatistics


def _log_normalised(counts: sp.csr_matrix) -> sp.csr_matrix:
    cells = ad.AnnData(counts.astype(np.float32))
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    return sp.csr_matrix(cells.X)


def _scanpy(X, batches, genes, n_top) -> np.ndarray:
    cells = ad.AnnData(X, obs=pd.DataFrame({"batch": batches}, index=[f"c{i}" for i in range(X.shape[0])]),
                       var=pd.DataFrame(index=genes))
    table = sc.pp.highly_variable_genes(cells, n_top_genes=n_top, flavor="seurat", batch_key="batch", inplace=False)
    return table["highly_variable"].to_numpy()


def _chunked(X, batches, genes, n_top, chunk) -> np.ndarray:
    names = sorted(set(batches), reverse=True)  # any order of batches: the selection sorts them as scanpy does
    codes = np.array([names.index(b) for b in batches])
    stats = HVGStatistics(genes, names)
    for start in range(0, X.shape[0], chunk):
        stats.add(X[start:start + chunk], codes[start:start + chunk])
    return stats.highly_variable(n_top)


@pytest.mark.parametrize("n_top", [50, 200, 390])
def test_chunked_statistics_pick_scanpys_genes_on_synthetic_counts(n_top):
    rng = np.random.default_rng(0)
    genes = np.array([f"g{i}" for i in range(400)])
    batches = rng.choice(["b1", "b2", "b3"], size=900)
    rates = rng.gamma(0.3, 2.0, size=400) * np.where(batches[:, None] == "b2", rng.uniform(0.5, 2, 400), 1.0)
    counts = rng.poisson(rates)
    counts[batches == "b3", :30] = 0  # genes that one batch never expresses
    X = _log_normalised(sp.csr_matrix(counts))
    expected = _scanpy(X, batches, genes, n_top)
    assert expected.sum() == n_top
    np.testing.assert_array_equal(_chunked(X, batches, genes, n_top, chunk=137), expected)


def test_chunked_statistics_pick_scanpys_genes_on_real_counts():
    builtin = BUILTIN_DATASETS["pbmc_hao2021"]
    adata = ad.read_h5ad(builtin.path)
    counts = adata.layers[builtin.counts_layer] if builtin.counts_layer else adata.X
    X = _log_normalised(sp.csr_matrix(counts))
    batches = adata.obs[builtin.batch_key].astype(str).to_numpy()
    genes = adata.var_names.to_numpy()
    for n_top in (100, 300):
        np.testing.assert_array_equal(_chunked(X, batches, genes, n_top, chunk=250), _scanpy(X, batches, genes, n_top))

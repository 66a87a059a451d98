import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

from scssl.data import BUILTIN_DATASETS, CellMatrix, Cells, DatasetSpec, make_synthetic, prepare, resolve
from scssl.data.cells import RowsOf, device_bytes, gather_rows
from scssl.settings import ConfigError


def _spec(path, **kw):
    base = dict(path=str(path), batch_key="batch", labels_key="cell_type", counts_layer="counts")
    return DatasetSpec(**{**base, **kw})


def test_query_cells_get_exactly_the_reference_genes(tmp_path):
    adata = make_synthetic(n_cells=600, n_genes=400, n_batches=3, seed=3)
    # Give the query batch its own strongly variable genes, so that HVGs over all cells differ.
    counts = adata.layers["counts"].toarray()
    is_query = (adata.obs["batch"] == "batch2").to_numpy()
    counts[np.ix_(is_query, np.arange(300, 400))] *= np.random.default_rng(0).integers(0, 30, (is_query.sum(), 100))
    adata.X = adata.layers["counts"] = sp.csr_matrix(counts)
    path = tmp_path / "shifted.h5ad"
    adata.write_h5ad(path)

    data = prepare(_spec(path, query_batches=["batch2"], n_hvgs=100))

    # The genes are scanpy's batch-aware seurat HVGs of the log-normalised reference cells, in data order.
    ref = adata[~is_query].copy()
    ref.X = ref.layers["counts"].astype(np.float32)
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, n_top_genes=100, flavor="seurat", batch_key="batch")
    assert list(data.genes) == list(ref.var_names[ref.var["highly_variable"]])

    everyone = adata.copy()
    everyone.X = everyone.layers["counts"].astype(np.float32)
    sc.pp.normalize_total(everyone, target_sum=1e4)
    sc.pp.log1p(everyone)
    sc.pp.highly_variable_genes(everyone, n_top_genes=100, flavor="seurat", batch_key="batch")
    assert set(data.genes) != set(everyone.var_names[everyone.var["highly_variable"]]), "test data too easy"

    # Query rows hold the query cells' own values of exactly those genes.
    columns = [adata.var_names.get_loc(g) for g in data.genes]
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[:, columns]
    np.testing.assert_allclose(data.X[data.query_index].toarray(), expected[is_query], rtol=1e-5, atol=1e-5)
    assert (data.obs["split"].to_numpy() == "query").sum() == is_query.sum()


def test_all_genes_kept_when_fewer_than_n_hvgs(synthetic_h5ad):
    data = prepare(_spec(synthetic_h5ad, query_batches=["batch2"], n_hvgs=4000))
    assert data.X.shape == (400, 300)


def test_builtin_dataset_by_name(tmp_path):
    spec = resolve(DatasetSpec(name="bmmc_cite_starter"), tmp_path)
    data = prepare(spec)
    assert data.X.shape == (600, 1000)
    assert data.obs["label"].nunique() == 41
    assert set(data.obs.loc[data.obs["split"] == "query", "batch"]) == {"s1d2"}
    assert BUILTIN_DATASETS["bmmc_cite_starter"].path.is_file()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(batch_key="donor"), "batch_key 'donor' is not a column of obs"),
        (dict(labels_key="celltype"), "labels_key 'celltype' is not a column of obs"),
        (dict(counts_layer="raw"), "counts_layer 'raw' is not a layer"),
        (dict(query_batches=["batch9"]), "query_batches ['batch9'] are not values of obs['batch']"),
        (dict(query_batches=["batch0", "batch1", "batch2"]), "leave no reference cells"),
    ],
)
def test_bad_keys_name_file_and_key(synthetic_h5ad, change, message):
    with pytest.raises(ConfigError) as err:
        prepare(_spec(synthetic_h5ad, **change))
    assert message in str(err.value) and str(synthetic_h5ad) in str(err.value)


def test_log_normalised_input_is_refused(tmp_path):
    adata = make_synthetic(n_cells=50, n_genes=20)
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()))
    adata.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(ConfigError, match="not integer-valued"):
        prepare(_spec(tmp_path / "lognorm.h5ad", counts_layer=None))


def test_spec_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        DatasetSpec(batch_key="b", labels_key="c")
    with pytest.raises(ValueError, match="needs `batch_key` and `labels_key`"):
        DatasetSpec(path="x.h5ad")


def test_sparse_minibatch_equals_dense_rows(rng):
    dense = rng.poisson(0.3, size=(50, 40)).astype(np.float32)
    idx = torch.tensor([7, 0, 49, 7, 3])
    np.testing.assert_array_equal(CellMatrix(sp.csr_matrix(dense)).rows(idx).numpy(), dense[idx.numpy()])
    np.testing.assert_array_equal(CellMatrix(dense).rows(idx).numpy(), dense[idx.numpy()])
    batches = list(CellMatrix(sp.csr_matrix(dense)).batches(16))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    np.testing.assert_array_equal(torch.cat(batches).numpy(), dense)


def test_the_device_gather_equals_scipy_rows_empty_and_repeated_ones_included(rng):
    """``gather_rows``, the GPU's sync-free densification, here on CPU tensors."""
    dense = rng.poisson(0.3, size=(50, 40)).astype(np.float32)
    dense[[3, 11]] = 0.0  # rows without a stored value
    X = sp.csr_matrix(dense)
    idx = torch.tensor([7, 0, 49, 7, 3, 11])
    arrays = (torch.as_tensor(X.indptr.astype(np.int64)), torch.as_tensor(X.indices.astype(np.int32)),
              torch.as_tensor(X.data))
    widest = int(np.diff(X.indptr).max())
    np.testing.assert_array_equal(gather_rows(*arrays, widest, idx, 40).numpy(), dense[idx.numpy()])


def test_rows_of_a_shared_matrix_are_cut_without_a_copy_and_gather_as_a_copy_would(rng):
    dense = rng.poisson(0.3, size=(50, 40)).astype(np.float32)
    cells = Cells(sp.csr_matrix(dense), batch_codes=np.arange(50) % 3, counts=sp.csr_matrix(dense * 2))
    rows, then = np.flatnonzero(np.arange(50) % 4 != 1), np.array([5, 0, 20, 2])
    shared = cells.subset(rows, shared=True).subset(then, shared=True)
    assert isinstance(shared.X, RowsOf) and shared.X.matrix is cells.X and shared.counts.matrix is cells.counts
    copied = cells.subset(rows).subset(then)
    np.testing.assert_array_equal(shared.batch_codes, copied.batch_codes)
    np.testing.assert_array_equal(shared.materialised().counts.toarray(), copied.counts.toarray())
    idx = torch.tensor([3, 0, 3])
    for X in (shared.X, RowsOf.of(dense, rows)[then]):
        np.testing.assert_array_equal(CellMatrix(X).rows(idx).numpy(), copied.X.toarray()[idx.numpy()])
    assert device_bytes(shared.X) == 8 * cells.X.nnz + 8 * 51 + 8 * 4


def test_synthetic_has_types_batches_and_protein():
    adata = make_synthetic(n_cells=300, n_genes=50, n_batches=3, n_cell_types=4, n_proteins=10, seed=2)
    assert adata.obs["batch"].nunique() == 3 and adata.obs["cell_type"].nunique() == 4
    assert adata.obsm["protein_expression"].shape == (300, 10)
    counts = adata.layers["counts"].toarray()
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    # cell types differ in expression: mean profiles of two types are far apart
    types = adata.obs["cell_type"].to_numpy()
    profile = pd.DataFrame(np.log1p(counts)).groupby(types).mean()
    assert np.abs(profile.iloc[0] - profile.iloc[1]).max() > 1.0


def test_to_anndata_uses_the_users_keys(prepared):
    adata = prepared.to_anndata()
    assert isinstance(adata, ad.AnnData)
    assert {"batch", "cell_type", "split"} <= set(adata.obs.columns)

"""The checks `prepare` runs on a loaded data file, and the per-task minimums of `check_tasks`."""

import importlib
import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scssl.data import DatasetSpec, make_synthetic
from scssl.data.prepare import DataError, PreparedDataset, prepare
from scssl.evaluate.tasks import TASKS, check_tasks
from scssl.settings import ConfigError

prepare_module = importlib.import_module("scssl.data.prepare")  # the module, not the function of that name


def _spec(path, **kw):
    base = dict(path=str(path), batch_key="batch", labels_key="cell_type", counts_layer="counts")
    return DatasetSpec(**{**base, **kw})


def _write(tmp_path, adata, name="cells.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def _small(**kw):
    return make_synthetic(**{"n_cells": 60, "n_genes": 30, "n_batches": 2, "n_cell_types": 3, **kw})


def _error(spec) -> DataError:
    with pytest.raises(DataError) as err:
        prepare(spec)
    return err.value


def _text(tmp_path):
    path = tmp_path / "cells.h5ad"
    path.write_text("cell,gene0\ncell0,3\n")
    return path


def _truncated(tmp_path):
    path = _write(tmp_path, _small())
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 9 // 10])
    return path


def _plain_hdf5(tmp_path):
    path = tmp_path / "cells.h5ad"
    with h5py.File(path, "w") as f:
        f["values"] = np.arange(5)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_text, "(Unable to synchronously open file (file signature not found))"),
        (_truncated, "truncated file: eof = "),
        (_plain_hdf5, "(HDF5 without the AnnData layout: no 'obs' and 'var' groups, top-level keys ['values'])"),
    ],
)
def test_unreadable_file_is_named_with_its_reason(tmp_path, make, reason):
    path = make(tmp_path)
    err = _error(_spec(path))
    assert err.key == "path" and isinstance(err, ConfigError)
    assert str(err).startswith(f"{path}: not a readable .h5ad file (") and reason in str(err)
    assert "\n" not in str(err)


@pytest.mark.filterwarnings("ignore:.* names are not unique")
@pytest.mark.parametrize(("axis", "what"), [("var", "gene"), ("obs", "cell")])
def test_duplicate_names_are_refused_with_examples_and_hint(tmp_path, axis, what):
    adata = _small()
    names = list(getattr(adata, f"{axis}_names"))
    names[5], names[7], names[9] = names[0], names[1], names[1]
    setattr(adata, f"{axis}_names", names)
    path = _write(tmp_path, adata)
    err = _error(_spec(path))
    assert err.key == "path"
    assert str(err) == (
        f"{path}: 2 {what} names occur more than once, e.g. ['{what}0', '{what}1']; expected unique names: "
        f"call adata.{axis}_names_make_unique() and write the file again"
    )


def _with_missing(column):
    """60 cells, 5 of them without a value in obs[column]: 2 NaN, one empty, one blank, one 'nan' text."""
    adata = _small()
    values = adata.obs[column].astype(object).to_numpy(copy=True)
    values[[3, 10]] = np.nan
    values[[20, 30, 40]] = ["", "  ", "nan"]
    adata.obs[column] = values
    return adata


@pytest.mark.parametrize(("column", "key", "what"), [("cell_type", "labels_key", "cell type"),
                                                     ("batch", "batch_key", "batch")])
def test_missing_batch_or_label_is_an_error(tmp_path, column, key, what):
    path = _write(tmp_path, _with_missing(column))
    err = _error(_spec(path))
    assert err.key == key
    assert str(err) == (
        f"{path}: 5 of 60 cells have no {what} in obs['{column}'] (NaN or empty), e.g. ['cell3', 'cell10', "
        "'cell20']; fill them in, or set drop_missing: true to drop those cells"
    )


@pytest.mark.parametrize(("column", "what"), [("cell_type", "cell type"), ("batch", "batch")])
def test_drop_missing_drops_those_cells_and_says_so(tmp_path, column, what):
    path = _write(tmp_path, _with_missing(column))
    data = prepare(_spec(path, drop_missing=True))
    assert data.notes == [f"dropped 5 cells whose {what} (obs['{column}']) is missing (NaN or empty)"]
    assert data.n_cells == 55 and "cell3" not in data.obs.index
    assert set(data.obs["label" if column == "cell_type" else "batch"]) <= {"type0", "type1", "type2",
                                                                          "batch0", "batch1"}


def test_cells_and_genes_without_counts_are_dropped(tmp_path):
    adata = _small()
    counts = adata.layers["counts"].toarray()
    counts[[1, 2, 3]] = 0
    counts[:, [4, 5]] = 0
    # gene6 has counts only in query cells: a gene counts as empty only if no cell at all has counts
    is_query = (adata.obs["batch"] == "batch1").to_numpy()
    counts[~is_query, 6] = 0
    adata.layers["counts"] = sp.csr_matrix(counts)
    data = prepare(_spec(_write(tmp_path, adata), query_batches=["batch1"]))
    assert data.notes == ["dropped 3 cells with no counts", "dropped 2 genes with no counts in any cell"]
    assert data.X.shape == (57, 28)
    assert "gene4" not in data.genes and "gene6" in data.genes and "cell1" not in data.obs.index


def test_zero_cells_left_is_an_error(tmp_path):
    adata = _small()
    adata.layers["counts"] = sp.csr_matrix(adata.shape, dtype=np.float32)
    path = _write(tmp_path, adata)
    err = _error(_spec(path))
    assert err.key == "counts_layer" and str(err) == f"{path}: no cells left (dropped 60 cells with no counts)"

    adata = _small()
    adata.obs["cell_type"] = ""
    path = _write(tmp_path, adata, "unlabelled.h5ad")
    err = _error(_spec(path, drop_missing=True))
    assert err.key == "labels_key"
    assert str(err) == (f"{path}: no cells left (dropped 60 cells whose cell type (obs['cell_type']) is missing "
                        "(NaN or empty))")


def test_a_batch_per_cell_is_refused(tmp_path):
    adata = _small()
    adata.obs["barcode"] = adata.obs_names
    path = _write(tmp_path, adata)
    err = _error(_spec(path, batch_key="barcode"))
    assert err.key == "batch_key"
    assert str(err) == (f"{path}: each of the 60 reference batches in obs['barcode'] holds a single cell; "
                        "expected a column of batches (donors, samples) of several cells each")


@pytest.mark.parametrize(
    ("value", "kind"), [(2.5, "not integer-valued"), (-1.0, "negative"), (np.nan, "NaN or infinite"),
                        (np.inf, "NaN or infinite")],
)
def test_every_stored_count_is_checked(tmp_path, value, kind):
    adata = make_synthetic(n_cells=100, n_genes=300)  # over 10,000 stored values
    counts = adata.layers["counts"]
    assert counts.nnz > 20_000
    counts.data[-1] = value  # the last stored value: cell99 and its last stored gene
    gene = adata.var_names[counts.indices[-1]]
    path = _write(tmp_path, adata)
    err = _error(_spec(path))
    assert err.key == "counts_layer"
    assert str(err) == (f"{path}: layers['counts'] does not hold raw counts: 1 values are {kind} "
                        f"(e.g. {value:g} at cell 'cell99', gene '{gene}'); expected non-negative integers")


def test_counts_are_checked_chunk_by_chunk(tmp_path, monkeypatch):
    adata = _small()
    counts = adata.X
    bad = [5, 6, 7, 300, 301, counts.nnz - 1]  # across the boundaries of 7-value chunks
    counts.data[bad] = [0.5, 1.5, -2.0, 3.5, -1.0, 4.5]
    path = _write(tmp_path, adata)
    monkeypatch.setattr(prepare_module, "_CHUNK", 7)
    err = _error(_spec(path, counts_layer=None))
    first_gene = adata.var_names[counts.indices[5]]
    row7 = np.searchsorted(counts.indptr, 7, side="right") - 1
    assert f"{path}: X does not hold raw counts: 4 values are not integer-valued (e.g. 0.5 at cell 'cell0', " \
           f"gene '{first_gene}'); 2 values are negative (e.g. -2 at cell 'cell{row7}', gene " \
           f"'{adata.var_names[counts.indices[7]]}'); expected non-negative integers; set counts_layer if a " \
           "layer holds them (layers: ['counts'])" == str(err)


def test_existing_key_errors_are_data_errors_with_their_key(synthetic_h5ad, tmp_path):
    cases = [
        (dict(batch_key="donor"), "batch_key"), (dict(labels_key="celltype"), "labels_key"),
        (dict(counts_layer="raw"), "counts_layer"), (dict(query_batches=["batch9"]), "query_batches"),
        (dict(query_batches=["batch0", "batch1", "batch2"]), "query_batches"),
    ]
    assert [_error(_spec(synthetic_h5ad, **change)).key for change, _ in cases] == [key for _, key in cases]
    assert _error(_spec(tmp_path / "absent.h5ad")).key == "path"


def test_data_error_survives_pickling():
    err = pickle.loads(pickle.dumps(DataError("x.h5ad: bad", "labels_key")))
    assert (type(err), str(err), err.key) == (DataError, "x.h5ad: bad", "labels_key")


def test_fingerprint_follows_data_and_settings(synthetic_h5ad):
    spec = _spec(synthetic_h5ad, query_batches=["batch2"], n_hvgs=100)
    first = prepare(spec)
    assert len(first.fingerprint) == 16 and int(first.fingerprint, 16) >= 0
    assert prepare(spec).fingerprint == first.fingerprint
    assert prepare(_spec(synthetic_h5ad, query_batches=["batch2"], n_hvgs=120)).fingerprint != first.fingerprint
    assert prepare(_spec(synthetic_h5ad, query_batches=["batch1"], n_hvgs=100)).fingerprint != first.fingerprint
    again = pickle.loads(pickle.dumps(first))
    assert again.fingerprint == first.fingerprint and again.notes == []


def _dataset(n_ref, n_query, n_batches=2, n_types=2) -> PreparedDataset:
    """Cells with no expression (check_tasks looks only at obs), batch and type cycling (each type in each batch)."""
    n = n_ref + n_query
    obs = pd.DataFrame(
        {"batch": pd.Categorical([f"b{i % n_batches}" for i in range(n)]),
         "label": pd.Categorical([f"t{i // n_batches % n_types}" for i in range(n)]),
         "split": pd.Categorical(["reference"] * n_ref + ["query"] * n_query, categories=["reference", "query"])},
        index=[f"c{i}" for i in range(n)],
    )
    return PreparedDataset("tiny", sp.csr_matrix((n, 3), dtype=np.float32), np.array(["g0", "g1", "g2"]), obs,
                           "donor", "cell_type")


def _task_error(dataset, task) -> DataError:
    with pytest.raises(DataError) as err:
        check_tasks(dataset, [task], "d.h5ad")
    return err.value


def test_batch_correction_minimums():
    assert TASKS["batch_correction"].min_cells == 90
    check_tasks(_dataset(90, 0), ["batch_correction"], "d.h5ad")
    err = _task_error(_dataset(80, 9), "batch_correction")
    assert (err.key, str(err)) == ("path", "d.h5ad: batch_correction needs at least 90 cells, data set 'tiny' has 89")
    err = _task_error(_dataset(100, 0, n_batches=1), "batch_correction")
    assert (err.key, str(err)) == ("batch_key", "d.h5ad: batch_correction needs at least 2 batches in "
                                                "obs['donor'], data set 'tiny' has 1 ('b0')")
    err = _task_error(_dataset(100, 0, n_types=1), "batch_correction")
    assert err.key == "labels_key" and "needs at least 2 cell types in obs['cell_type']" in str(err)


def test_batch_correction_needs_a_cell_type_in_two_batches():
    confounded = _dataset(100, 0)
    confounded.obs["label"] = pd.Categorical(confounded.obs["batch"].astype(str).str.replace("b", "t"))
    err = _task_error(confounded, "batch_correction")
    assert (err.key, str(err)) == ("labels_key", "d.h5ad: batch_correction needs a cell type found in at least 2 "
                                   "batches (silhouette batch and kBET compare the batches within each type); in "
                                   "data set 'tiny' every type of obs['cell_type'] sits in one batch of obs['donor']")
    confounded.obs.loc["c0", "label"] = "t1"  # one cell of t1 in batch b0 makes a type with two batches
    check_tasks(confounded, ["batch_correction"], "d.h5ad")


def test_cell_typing_minimums():
    assert TASKS["cell_typing"].min_cells == 50
    check_tasks(_dataset(50, 1), ["cell_typing"], "d.h5ad")
    err = _task_error(_dataset(49, 60), "cell_typing")
    assert (err.key, str(err)) == ("query_batches", "d.h5ad: cell_typing needs at least 50 reference cells (kNN "
                                   "with k = 11), data set 'tiny' has 49 (and 60 query cells); hold out fewer "
                                   "query_batches")
    err = _task_error(_dataset(200, 0), "cell_typing")
    assert err.key == "query_batches" and "cell_typing needs at least 1 query cell" in str(err)
    check_tasks(_dataset(49, 60), ["batch_correction"], "d.h5ad")  # only the tasks asked for are checked

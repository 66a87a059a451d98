"""Multimodal data: a second modality from a .h5mu or a second .h5ad, paired by cell name, and missing-modality
prediction from the RNA embedding."""

from pathlib import Path

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr
from sklearn.neighbors import NearestNeighbors

from scssl.augment import AugmentationConfig
from scssl.data import DatasetSpec, prepare, resolve
from scssl.data.spec import ModalitySpec
from scssl.evaluate import FineTuneSettings, SharedData, TASKS, TaskInputs
from scssl.evaluate.tasks import check_tasks
from scssl.methods import METHODS, PCABaseline
from scssl.search_space import trial_settings
from scssl.settings import ConfigError
from scssl.stages import TuneSettings
from scssl.train import TrainSettings


def _paired(n=90, genes=40, features=12, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(n)]
    obs = pd.DataFrame({"batch": np.repeat(["a", "b", "c"], n // 3), "cell_type": rng.choice(["x", "y"], n)},
                       index=names)
    rna = ad.AnnData(sp.csr_matrix(rng.poisson(3.0, (n, genes)).astype(np.float32)), obs=obs,
                     var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))
    other = ad.AnnData(sp.csr_matrix(rng.poisson(5.0, (n, features)).astype(np.float32)), obs=obs.copy(),
                       var=pd.DataFrame(index=[f"p{j}" for j in range(features)]))
    return rna, other


def _spec(data, **modality):
    return DatasetSpec(path=str(data), batch_key="batch", labels_key="cell_type", query_batches=["c"],
                       modality=ModalitySpec(kind="protein", **modality))


def test_a_mudata_file_and_two_h5ad_files_give_the_same_data_set(tmp_path):
    rna, other = _paired()
    rna.write_h5ad(tmp_path / "rna.h5ad")
    other[::-1].copy().write_h5ad(tmp_path / "adt.h5ad")  # another order: cells pair by name
    mudata.MuData({"rna": rna, "prot": other}).write_h5mu(tmp_path / "cite.h5mu")
    two_files = prepare(_spec(tmp_path / "rna.h5ad", path=str(tmp_path / "adt.h5ad")))
    one_file = prepare(_spec(tmp_path / "cite.h5mu", mod="prot"))
    assert (two_files.X != one_file.X).nnz == 0 and (two_files.other.X != one_file.other.X).nnz == 0
    assert two_files.obs.equals(one_file.obs) and list(two_files.other.features) == list(one_file.other.features)
    assert two_files.fingerprint == one_file.fingerprint
    # the protein of each cell is its own: CLR of its own counts (muon's, per cell)
    counts = other.X.toarray()
    cell = counts[5]
    expected = np.log1p(cell / np.exp(np.log1p(cell).mean()))
    np.testing.assert_allclose(two_files.other.X[5].toarray().ravel(), expected, rtol=1e-5)


def test_cells_measured_in_one_modality_are_kept_for_the_methods_that_use_them_or_dropped(tmp_path):
    rna, other = _paired()
    rna[:80].copy().write_h5ad(tmp_path / "rna.h5ad")  # 10 cells with protein only
    other[5:].copy().write_h5ad(tmp_path / "adt.h5ad")  # 5 cells with RNA only (batch a)
    ds = prepare(_spec(tmp_path / "rna.h5ad", path=str(tmp_path / "adt.h5ad")))
    assert ds.n_cells == 75 and ds.other.X.shape == (75, 12)  # the tasks score the paired cells
    assert any(n.startswith("kept 5 cells with RNA but no protein measurement (mosaic)") for n in ds.notes)
    assert "dropped 10 cells with protein but no RNA measurement (mosaic)" in ds.notes
    kept = ds.rna_only.cells
    assert kept.X.shape == (5, ds.X.shape[1]) and list(kept.genes) == list(ds.genes)
    assert not ds.rna_only.is_query.any() and set(kept.batch_codes) == {list(ds.obs["batch"].cat.categories).index("a")}
    # preprocessed as the paired cells: log-normalised counts of the same genes
    counts = rna.X[:5].toarray()
    genes = [list(rna.var_names).index(g) for g in ds.genes]
    expected = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)[:, genes]
    np.testing.assert_allclose(kept.X.toarray(), expected, rtol=1e-5)
    np.testing.assert_array_equal(kept.counts.toarray(), counts[:, genes])
    # methods that can use them train on them after the paired reference cells, their protein unobserved
    shared = SharedData.build(ds, TuneSettings(), with_graphs=False)
    plain, mosaic = shared.training_data("reference"), shared.training_data("reference", rna_only=True)
    n_ref = len(ds.reference_index)
    assert plain.n_cells == n_ref and plain.other_observed is None
    assert mosaic.n_cells == n_ref + 5 and mosaic.other_observed.tolist() == [True] * n_ref + [False] * 5
    assert mosaic.other_counts[n_ref:].nnz == 0 and mosaic.other.shape == (n_ref + 5, 12)
    assert TASKS["cell_typing"].serves("totalvi") and METHODS["totalvi"].uses_rna_only
    assert not METHODS["simclr"].uses_rna_only


def test_the_builtin_mosaic_and_multiome_data_sets(tmp_path):
    hao = prepare(resolve(DatasetSpec(name="pbmc_hao2021_cite"), tmp_path))
    assert hao.n_cells == 800 and hao.other.X.shape == (800, 224)
    assert hao.rna_only.cells.n_cells == 400 and not hao.rna_only.is_query.any()  # donor p1_0: RNA only
    multiome = prepare(resolve(DatasetSpec(name="bmmc_multiome", modality=ModalitySpec(
        kind="atac", path=str(Path(resolve(DatasetSpec(name="bmmc_multiome"), tmp_path).modality.path)),
        counts_layer="counts", n_features=100)), tmp_path))
    assert multiome.other.kind == "atac" and multiome.other.X.shape == (500, 100)
    assert set(np.unique(multiome.other.target.data)) == {1.0}  # the prediction target is binary


def test_a_bad_modality_names_its_key(tmp_path):
    rna, other = _paired()
    rna.write_h5ad(tmp_path / "rna.h5ad")
    other.obs_names = [f"other{i}" for i in range(other.n_obs)]
    other.write_h5ad(tmp_path / "adt.h5ad")
    with pytest.raises(ConfigError, match="no cell name of the RNA") as err:
        prepare(_spec(tmp_path / "rna.h5ad", path=str(tmp_path / "adt.h5ad")))
    assert err.value.key == "modality.path"
    mudata.MuData({"rna": rna}).write_h5mu(tmp_path / "rna.h5mu")
    with pytest.raises(ConfigError, match=r"no modality 'prot'; modalities are \['rna'\]"):
        prepare(_spec(tmp_path / "rna.h5mu", mod="prot"))
    with pytest.raises(ConfigError, match="modality_prediction needs a second modality"):
        plain = prepare(DatasetSpec(path=str(tmp_path / "rna.h5ad"), batch_key="batch", labels_key="cell_type",
                                    query_batches=["c"]))
        check_tasks(plain, ["modality_prediction"], "rna.h5ad")


@pytest.fixture(scope="module")
def cite(tmp_path_factory):
    return prepare(resolve(DatasetSpec(name="bmmc_cite"), tmp_path_factory.mktemp("d")))


def _inputs(method, **settings):
    trial = trial_settings(METHODS[method], TrainSettings(**{"epochs": 30, "batch_size": 64, "lr": 1e-3, **settings}),
                           AugmentationConfig(), {})
    return TaskInputs(method, trial, 0, 1, FineTuneSettings())


def test_the_protein_prediction_is_the_mean_of_the_5_cosine_nearest_reference_cells(cite):
    shared = SharedData.build(cite, TuneSettings(), with_graphs=False)
    metrics, embedding = TASKS["modality_prediction"].run(shared, _inputs("pca"))
    ref, query = cite.reference_index, cite.query_index
    direct = PCABaseline(PCABaseline.Params()).fit(cite.cells(ref)).embed(cite.cells())
    np.testing.assert_allclose(embedding, direct, rtol=1e-4, atol=1e-5)
    neighbours = NearestNeighbors(n_neighbors=5, metric="cosine").fit(direct[ref]).kneighbors(direct[query])[1]
    protein = cite.other.X.toarray()
    predicted = protein[ref][neighbours].mean(axis=1)
    r = [pearsonr(protein[query][i], predicted[i])[0] for i in range(len(query))]
    assert metrics["pearson"] == pytest.approx(np.mean(r), rel=1e-4)


def test_a_few_epochs_of_simclr_raise_the_protein_prediction_over_its_untrained_encoder(cite):
    shared = SharedData.build(cite, TuneSettings(), with_graphs=False)
    trained, _ = TASKS["modality_prediction"].run(shared, _inputs("simclr"))
    untrained, _ = TASKS["modality_prediction"].run(shared, _inputs("simclr", epochs=1, lr=1e-9))
    assert trained["pearson"] > untrained["pearson"] + 0.01, (untrained["pearson"], trained["pearson"])


def test_cross_modality_heads_frozen_and_fine_tuned(cite):
    shared = SharedData.build(cite, TuneSettings(), with_graphs=False)
    inputs = TaskInputs("simclr", _inputs("simclr", epochs=5).trial, 0, 1, FineTuneSettings(epochs=30, lr=1e-2))
    metrics, _ = TASKS["cross_modality_prediction"].run(shared, inputs)
    assert set(TASKS["cross_modality_prediction"].metrics) <= set(metrics)
    assert metrics["pearson"] != metrics["head_pearson"]  # two heads: the encoder frozen, and fine-tuned
    # both beat predicting every query cell as the mean protein of the reference, per cell a constant offset
    protein = cite.other.X.toarray()
    mean = np.broadcast_to(protein[cite.reference_index].mean(axis=0), protein[cite.query_index].shape)
    floor = float(np.mean((protein[cite.query_index] - mean) ** 2))
    assert metrics["mse"] < floor and metrics["head_mse"] < floor, (metrics["mse"], metrics["head_mse"], floor)
    assert not TASKS["cross_modality_prediction"].serves("pca")

"""Transfer: methods pretrained on one data set and scored on another, genes aligned by name."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from scssl.augment import AugmentationConfig
from scssl.data import DatasetSpec, prepare
from scssl.evaluate import FineTuneSettings, SharedData, TASKS, TaskInputs
from scssl.experiment import load_experiment
from scssl.methods import METHODS
from scssl.search_space import trial_settings
from scssl.settings import ConfigError
from scssl.stages import TuneSettings
from scssl.study import prepare_datasets
from scssl.train import TrainSettings


def _write(path, genes, n_cells=120, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_cells, len(genes))).astype(np.float32)
    obs = pd.DataFrame({"batch": np.repeat(["a", "b", "c"], n_cells // 3),
                        "cell_type": rng.choice(["t1", "t2", "t3"], n_cells)},
                       index=[f"{path.stem}_{i}" for i in range(n_cells)])
    ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    return counts


def test_target_genes_are_aligned_by_name_and_missing_ones_are_zero(tmp_path):
    pretrain_genes = [f"G{i}" for i in range(10)]
    target_genes = ["G7", "X1", "G2", "G0", "G9", "X2", "G4", "G5"]  # shuffled; G1, G3, G6, G8 missing
    counts = _write(tmp_path / "target.h5ad", target_genes)
    spec = DatasetSpec(path=str(tmp_path / "target.h5ad"), batch_key="batch", labels_key="cell_type")
    aligned = prepare(spec, genes=np.array(pretrain_genes))
    assert list(aligned.genes) == pretrain_genes
    own = prepare(spec)  # the same cells on their own genes
    for j, gene in enumerate(pretrain_genes):
        column = aligned.X[:, j].toarray().ravel()
        if gene in target_genes:
            np.testing.assert_allclose(column, own.X[:, list(own.genes).index(gene)].toarray().ravel(), rtol=1e-6)
        else:
            assert not column.any()
    assert aligned.missing_genes.tolist() == [g not in target_genes for g in pretrain_genes]
    assert any("4 of the 10 pretraining genes are not in" in note for note in aligned.notes)
    # normalised over the cell's own genes, as the target's own preprocessing
    totals = counts.sum(axis=1)
    np.testing.assert_allclose(aligned.X[0, 0], np.log1p(counts[0, 3] / totals[0] * 1e4), rtol=1e-5)


def test_no_shared_gene_is_an_error(tmp_path):
    _write(tmp_path / "target.h5ad", ["X1", "X2"])
    spec = DatasetSpec(path=str(tmp_path / "target.h5ad"), batch_key="batch", labels_key="cell_type")
    with pytest.raises(ConfigError, match="none of the 3 pretraining genes"):
        prepare(spec, genes=np.array(["G1", "G2", "G3"]))


def _experiment(tmp_path, **target):
    _write(tmp_path / "big.h5ad", [f"G{i}" for i in range(40)], n_cells=240, seed=1)
    _write(tmp_path / "small.h5ad", [f"G{i}" for i in range(5, 45)], n_cells=180, seed=2)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "exp", "output_dir": "out", "methods": ["pca", "mae"], "tasks": ["cell_typing", "reconstruction"],
        "datasets": [
            {"path": "big.h5ad", "id": "big", "batch_key": "batch", "labels_key": "cell_type", "query_batches": ["c"]},
            {"path": "small.h5ad", "id": "small_from_big", "batch_key": "batch", "labels_key": "cell_type",
             "query_batches": ["c"], **target},
        ],
        "final": {"retrain": "defaults", "seeds": [0]},
    }))
    return path


def test_an_experiment_names_its_pretraining_data_set(tmp_path):
    experiment = load_experiment(_experiment(tmp_path, pretrain="big"))
    datasets = prepare_datasets(experiment)
    assert list(datasets["small_from_big"].genes) == list(datasets["big"].genes)
    assert int(datasets["small_from_big"].missing_genes.sum()) == 5
    with pytest.raises(ConfigError, match=r"datasets.1.pretrain: 'nosuch' is not the id of a data set"):
        load_experiment(_experiment(tmp_path, pretrain="nosuch"))
    with pytest.raises(ConfigError, match=r"datasets.1.pretrain: a data set cannot pretrain itself"):
        load_experiment(_experiment(tmp_path, pretrain="small_from_big"))


def test_a_transfer_row_trains_on_the_pretraining_cells(tmp_path):
    experiment = load_experiment(_experiment(tmp_path, pretrain="big"))
    datasets = prepare_datasets(experiment)
    shared = SharedData.build(datasets["small_from_big"], TuneSettings(), False, pretrain=datasets["big"])
    assert shared.training_data("reference").X.shape == datasets["big"].X.shape  # every pretraining cell
    trial = trial_settings(METHODS["mae"], TrainSettings(epochs=2, batch_size=32), AugmentationConfig(), {})
    inputs = TaskInputs("mae", trial, 0, 1, FineTuneSettings())
    metrics, embedding = TASKS["reconstruction"].run(shared, inputs)
    assert embedding.shape[0] == datasets["small_from_big"].n_cells
    assert np.isfinite(metrics["mse"])
    metrics, _ = TASKS["cell_typing"].run(shared, inputs)
    assert 0 <= metrics["accuracy"] <= 1


def test_a_targets_batches_are_new_to_a_model_pretrained_on_another_data_set(tmp_path, monkeypatch):
    """Both files code their batches a, b, c as 0, 1, 2: the target's must not be taken for the pretraining set's."""
    from scssl.methods.scvi import SCVI

    experiment = load_experiment(_experiment(tmp_path, pretrain="big"))
    datasets = prepare_datasets(experiment)
    shared = SharedData.build(datasets["small_from_big"], TuneSettings(), False, pretrain=datasets["big"])
    pretraining = shared.training_data("reference")
    assert not set(pretraining.batch_codes) & set(shared.cells().batch_codes)
    mapped = []
    monkeypatch.setattr(SCVI, "_mapped", lambda self, cells: mapped.append(cells.n_cells) or
                        np.zeros((cells.n_cells, self.params.n_latent), np.float32))
    model = SCVI(SCVI.Params(n_latent=4)).fit(pretraining, TrainSettings(epochs=1, batch_size=64))
    model.embed(shared.cells())
    assert mapped == [datasets["small_from_big"].n_cells]  # every target cell mapped by scArches surgery


def test_a_model_pretrained_on_another_protein_panel_embeds_the_target_from_its_rna(tmp_path):
    from scssl.data import resolve

    big = prepare(resolve(DatasetSpec(name="bmmc_cite"), tmp_path))  # 134 proteins
    small = prepare(resolve(DatasetSpec(name="pbmc_hao2021_cite"), tmp_path), genes=big.genes)  # 224 proteins
    shared = SharedData.build(small, TuneSettings(), False, pretrain=big)
    assert shared.cells().other is None and shared.training_data("reference").other.shape[1] == 134
    trial = trial_settings(METHODS["simclr"], TrainSettings(epochs=1, batch_size=64), AugmentationConfig(),
                           {"method": {"embedding_dim": 8}})
    metrics, embedding = TASKS["cell_typing"].run(shared, TaskInputs("simclr", trial, 0, 1, FineTuneSettings()))
    assert embedding.shape == (small.n_cells, 8)  # the RNA encoder's: no encoder for this panel
    assert metrics["macro_f1"] == metrics["rna_macro_f1"]
    own = SharedData.build(big, TuneSettings(), False, pretrain=big)  # the same panel: the joint embedding
    assert own.cells().other is not None

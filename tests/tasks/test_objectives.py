"""The tuning objective of each task, scored per epoch on the validation cells of the reference."""

import numpy as np
import pytest
import yaml
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from scssl.augment import AugmentationConfig
from scssl.data import Cells, DatasetSpec, prepare, resolve
from scssl.evaluate import SharedData
from scssl.experiment import load_experiment
from scssl.settings import ConfigError, parse
from scssl.stages import TuneSettings
from scssl.train import TrainSettings
from scssl.tune import trainable


@pytest.fixture(scope="module")
def cite(tmp_path_factory):
    return prepare(resolve(DatasetSpec(name="bmmc_cite"), tmp_path_factory.mktemp("d")))


def _trial(monkeypatch, shared, method, config, objective, **train):
    reports, models = [], []
    monkeypatch.setattr(trainable.tune, "report", reports.append)
    fit = trainable.fit

    def keep(*args):  # the trained model, to score it directly
        models.append(fit(*args))
        return models[-1]

    monkeypatch.setattr(trainable, "fit", keep)
    trainable.run_trial(config, shared, method, TrainSettings(epochs=2, batch_size=64, **train), AugmentationConfig(),
                        seed=0, threads=1, objective=objective)
    return reports, models[0]


def test_the_modality_prediction_objective_is_the_knn_prediction_of_the_validation_cells(monkeypatch, cite):
    shared = SharedData.build(cite, TuneSettings(), with_graphs=False)
    reports, model = _trial(monkeypatch, shared, "simclr", {"method": {"embedding_dim": 8}}, "modality_prediction")
    assert [r["epoch"] for r in reports] == [1, 2]
    ref = cite.reference_index
    val = shared.is_validation
    rna = model.embed(Cells(cite.X[ref]))  # the RNA embedding of the reference
    neighbours = NearestNeighbors(n_neighbors=5, metric="cosine").fit(rna[~val]).kneighbors(rna[val])[1]
    target = cite.other.target[ref].toarray()
    predicted = target[~val][neighbours].mean(axis=1)
    truth = target[val]
    expected = np.mean([np.corrcoef(t, p)[0, 1] for t, p in zip(truth, predicted)])
    assert reports[-1][trainable.OBJECTIVES["modality_prediction"]] == pytest.approx(expected, rel=1e-5)
    assert trainable.METRIC in reports[-1]  # cell typing is reported whatever the objective


def test_the_batch_correction_objective_weighs_cell_types_and_batch_mixing(monkeypatch, cite):
    """Against scikit-learn's kNN (k = 11) on the trained model's embedding: 0.6 x the validation cells' cell-type
    accuracy + 0.4 x (1 - their batch accuracy), scIB's weights."""
    shared = SharedData.build(cite, TuneSettings(), with_graphs=False)
    reports, model = _trial(monkeypatch, shared, "vicreg", {"method": {"embedding_dim": 8}}, "batch_correction")
    ref, val = cite.reference_index, shared.is_validation
    embedding = model.embed(shared.cells(ref))

    def accuracy(values):
        predicted = KNeighborsClassifier(n_neighbors=11).fit(embedding[~val], values[~val]).predict(embedding[val])
        return np.mean(predicted == values[val])

    cell_types, batches = accuracy(cite.labels[ref]), accuracy(cite.obs["batch"].to_numpy()[ref])
    last = reports[-1]
    assert last[trainable.METRIC] == pytest.approx(cell_types)
    assert last[trainable.BATCH_METRIC] == pytest.approx(1 - batches)
    assert last[trainable.SCORE] == pytest.approx(0.6 * cell_types + 0.4 * (1 - batches))


def test_the_reconstruction_objective_is_the_masked_explained_variance(monkeypatch, prepared):
    """Against scikit-learn's explained variance, per gene over the validation cells' hidden entries (genes with
    two or more), averaged; the masks drawn as the trial draws them (one chunk, the trial's seed)."""
    import torch
    from sklearn.metrics import explained_variance_score

    shared = SharedData.build(prepared, TuneSettings(), with_graphs=False)
    reports, model = _trial(monkeypatch, shared, "mae", {"method": {"embedding_dim": 8}}, "reconstruction")
    x = torch.as_tensor(prepared.X[prepared.reference_index][shared.is_validation].toarray())
    network = model.network
    with torch.no_grad():
        masked = network.masker(x, torch.Generator().manual_seed(0))
        x_hat = network.decoder(network.encoder(masked.inputs)).numpy()
    x, hidden = x.numpy(), masked.hidden.numpy()
    per_gene = [explained_variance_score(x[hidden[:, g], g], x_hat[hidden[:, g], g])
                for g in range(x.shape[1]) if hidden[:, g].sum() >= 2]
    assert reports[-1][trainable.OBJECTIVES["reconstruction"]] == pytest.approx(np.mean(per_gene), rel=1e-4)


def test_an_objective_a_method_or_data_set_cannot_serve_is_an_error(tmp_path):
    def experiment(**fields):
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({"name": "e", "methods": ["simclr"], "tasks": ["cell_typing"],
                                        "datasets": [{"name": "bmmc_cite_starter", "query_batches": ["s1d2"]}],
                                        **fields}))
        return path

    with pytest.raises(ConfigError, match=r"tune.objective: modality_prediction needs a second modality"):
        load_experiment(experiment(tune={"objective": "modality_prediction"}))
    with pytest.raises(ConfigError, match=r"tune.objective: reconstruction .* \['simclr'\] do not"):
        load_experiment(experiment(tune={"objective": "reconstruction"}))
    with pytest.raises(ConfigError, match="multi_objective pairs cell-type accuracy"):
        parse(TuneSettings, {"objective": "modality_prediction", "multi_objective": True}, "t")


def test_a_trial_cuts_the_reference_rows_once(monkeypatch, prepared):
    """The cells it trains on and the cells it embeds each epoch are one cut of the reference rows."""
    from scssl.data import PreparedDataset

    shared = SharedData.build(prepared, TuneSettings(), with_graphs=False)
    cut, cells = [], PreparedDataset.cells
    monkeypatch.setattr(PreparedDataset, "cells",
                        lambda self, rows=None, *args: cut.append(rows is not None) or cells(self, rows, *args))
    reports, _ = _trial(monkeypatch, shared, "simclr", {"method": {"embedding_dim": 8}}, "cell_typing")
    assert len(reports) == 2 and sum(cut) == 1

"""scVI and scANVI (scvi-tools): trained on the reference, the query batches mapped by scArches surgery, embedded
like every method; scANVI learns from the training labels only."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from scssl.data import DatasetSpec, prepare, resolve
from scssl.evaluate.cell_typing import knn_cell_typing
from scssl.methods import SCANVI, SCVI
from scssl.methods.scanvi import UNLABELED, semisupervised_epochs
from scssl.train import TrainSettings

SMALL = {"n_layers": 1, "n_latent": 10, "query_epochs": 20}  # scSSL-Bench's 8 layers need far more than 600 cells


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory):
    return prepare(resolve(DatasetSpec(name="pbmc_hao2021"), tmp_path_factory.mktemp("data")))


def _reference(ds):
    ref = ds.reference_index
    return replace(ds.cells(ref), labels=ds.label_codes[ref])


def _fit(cls, ds, epochs=10, lr=1e-3, **params):
    return cls(cls.Params(**{**SMALL, **params}), seed=0).fit(_reference(ds), TrainSettings(epochs=epochs, lr=lr,
                                                                                             batch_size=128))


@pytest.mark.slow
def test_query_batches_are_mapped_by_scarches_surgery_with_the_reference_frozen(pbmc):
    ds = pbmc
    model = _fit(SCVI, ds)
    weights = {k: v.clone() for k, v in model.model.module.state_dict().items()}
    ref, query = ds.reference_index, ds.query_index
    alone = model.embed(ds.cells(ref))
    mixed = model.embed(ds.cells())
    np.testing.assert_array_equal(mixed[ref], alone)  # reference cells: the reference model's embedding
    assert all(torch.equal(weights[k], v) for k, v in model.model.module.state_dict().items())
    np.testing.assert_array_equal(mixed[query], model.embed(ds.cells(query)))  # seeded: the same mapping again
    # the query's batch reaches the encoder: as if it were a reference batch, the same cells embed otherwise
    as_reference = replace(ds.cells(query), batch_codes=np.full(len(query), ds.batch_codes[ref][0]))
    assert not np.allclose(mixed[query], model.embed(as_reference), atol=1e-3)
    mapped_once = model.embed(ds.cells(query))
    shorter = SCVI(SCVI.Params(**{**SMALL, "query_epochs": 1}), seed=0)  # the same reference model
    shorter.model, shorter.batches, shorter.train_settings = model.model, model.batches, model.train_settings
    assert not np.allclose(mapped_once, shorter.embed(ds.cells(query)), atol=1e-3)  # the query training ran


def test_an_encoder_blind_to_the_batch_embeds_a_query_directly(pbmc):
    model = _fit(SCVI, pbmc, epochs=2, encode_covariates=False)
    query = pbmc.cells(pbmc.query_index)
    as_reference = replace(query, batch_codes=np.full(query.n_cells, pbmc.batch_codes[pbmc.reference_index][0]))
    np.testing.assert_allclose(model.embed(query), model.embed(as_reference), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [SCVI, SCANVI])
def test_a_few_epochs_on_real_data_type_the_query_better_than_the_untrained_model(cls, pbmc):
    ds = pbmc
    ref, query, labels = ds.reference_index, ds.query_index, ds.labels

    def macro_f1(model):
        embedding = model.embed(ds.cells())
        return knn_cell_typing(embedding[ref], labels[ref], embedding[query], labels[query])["macro_f1"]

    untrained, trained = macro_f1(_fit(cls, ds, epochs=2, lr=1e-9)), macro_f1(_fit(cls, ds, epochs=30))
    assert trained > untrained + 0.2, f"{cls.name}: query macro F1 {untrained:.3f} -> {trained:.3f}"


def test_scanvi_learns_from_the_known_labels_only_and_numbers_its_epochs_on(pbmc):
    ds = pbmc
    cells = _reference(ds)
    hidden = np.random.default_rng(0).random(cells.n_cells) < 0.3
    reports = []
    model = SCANVI(SCANVI.Params(**SMALL), seed=0).fit(replace(cells, labels=np.where(hidden, -1, cells.labels)),
                                                       TrainSettings(epochs=8, lr=1e-3, batch_size=128),
                                                       lambda m, r: reports.append((r.epoch, type(m.model).__name__)))
    assert [e for e, _ in reports] == list(range(1, 9))
    assert semisupervised_epochs(8) == 2 and [m for _, m in reports] == ["SCVI"] * 6 + ["SCANVI"] * 2
    registered = model.model.adata.obs["label"].to_numpy()
    assert (registered[hidden] == UNLABELED).all() and (registered[~hidden] != UNLABELED).all()
    with pytest.raises(ValueError, match="labels"):
        SCANVI(SCANVI.Params(**SMALL)).fit(replace(cells, labels=None), TrainSettings(epochs=1))


def test_semisupervised_share_of_the_epochs():
    assert [semisupervised_epochs(n) for n in (1, 2, 3, 8, 40, 400)] == [1, 1, 1, 2, 10, 10]


def test_a_trial_hides_the_validation_labels_and_a_task_does_not(pbmc):
    from scssl.evaluate.shared import SharedData
    from scssl.stages import TuneSettings

    shared = SharedData.build(pbmc, TuneSettings(), with_graphs=False)
    codes = pbmc.label_codes[pbmc.reference_index]
    trial = shared.training_data("reference", validating=True).labels
    np.testing.assert_array_equal(trial, np.where(shared.is_validation, -1, codes))
    np.testing.assert_array_equal(shared.training_data("reference").labels, codes)
    assert shared.is_validation.any() and shared.cells().labels is None  # cells to embed never carry labels

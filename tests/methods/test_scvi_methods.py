"""totalVI and MultiVI (scvi-tools) against what their callers rely on beyond ``test_generative_methods``: the
reported loss is the epoch's training loss, training resumes in training mode after each mid-training
evaluation, the parameters reach scvi-tools, MultiVI's peaks are binarised on a copy, and the protein
prediction is in the units of ``Cells.other``, and no data stays registered with scvi-tools after use."""

from dataclasses import replace

import numpy as np
import pytest
import scvi
from lightning.pytorch import Callback

from scssl.data import DatasetSpec, prepare, resolve
from scssl.methods import MultiVI, TotalVI
from scssl.train import TrainSettings

CASES = {"totalvi": (TotalVI, scvi.model.TOTALVI, "bmmc_cite"), "multivi": (MultiVI, scvi.model.MULTIVI, "bmmc_multiome")}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {name: prepare(resolve(DatasetSpec(name=name), root)) for name in ("bmmc_cite", "bmmc_multiome")}


def _without_other(cells):
    return replace(cells, other=None, other_counts=None)


class Steps(Callback):
    """Each training step's epoch, loss, number of cells, and whether the module was in training mode."""

    def __init__(self):
        self.rows: list[tuple[int, float, int, bool]] = []
        self._mode = True

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._mode = module.module.training

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.rows.append((trainer.current_epoch + 1, float(loss), len(batch["X"]), self._mode))


@pytest.mark.parametrize("name", list(CASES))
def test_reports_the_epochs_training_loss_and_trains_in_training_mode_after_each_evaluation(
        name, datasets, monkeypatch):
    cls, model_cls, dataset = CASES[name]
    ds = datasets[dataset]
    steps = Steps()
    train = model_cls.train
    monkeypatch.setattr(model_cls, "train", lambda self, *a, callbacks=(), **k: train(
        self, *a, callbacks=[steps, *callbacks], **k))
    query = _without_other(ds.cells(ds.query_index[:50]))
    reports, embeddings = [], []

    def on_epoch(model, report):
        reports.append(report)
        embeddings.append(model.embed(query))  # RNA alone, mid-training

    cls(cls.Params(n_latent=6), seed=0).fit(ds.cells(ds.reference_index),
                                            TrainSettings(epochs=3, lr=2e-3, batch_size=64), on_epoch)
    assert [r.epoch for r in reports] == [1, 2, 3]
    rows = np.array(steps.rows)
    for report in reports:
        epoch = rows[rows[:, 0] == report.epoch]
        assert len(epoch) >= 2 and report.seconds > 0
        np.testing.assert_allclose(report.loss, np.average(epoch[:, 1], weights=epoch[:, 2]), rtol=1e-5)
    assert rows[:, 3].all(), "a training step ran in eval mode after an evaluation"
    assert all(e.shape == (50, 6) and e.dtype == np.float32 and np.isfinite(e).all() for e in embeddings)


def test_multivi_binarises_a_copy_of_the_peaks_and_keeps_scvi_tools_default_sizes(datasets):
    ds = datasets["bmmc_multiome"]
    cells = ds.cells(ds.reference_index)
    counts = cells.other_counts * 3  # counts, not already binary, some stored as explicit zeros
    counts.data[::7] = 0
    before = counts.copy()
    model = MultiVI(MultiVI.Params(), seed=0).fit(replace(cells, other_counts=counts), TrainSettings(epochs=1))
    peaks = model.model.adata.mod["atac"].X
    assert peaks.max() == 1 and peaks.nnz == counts.count_nonzero()
    assert (counts != before).nnz == 0  # the caller's matrix untouched
    n_hidden = min(128, int(np.sqrt(counts.shape[1])))  # MULTIVI's defaults: hidden sqrt(peaks), latent sqrt(hidden)
    assert (model.model.module.n_hidden, model.model.module.n_latent) == (n_hidden, int(np.sqrt(n_hidden)))
    sized = MultiVI(MultiVI.Params(n_latent=5, n_hidden=16), seed=0).fit(cells, TrainSettings(epochs=1))
    assert (sized.model.module.n_hidden, sized.embed(cells).shape) == (16, (cells.n_cells, 5))


def test_totalvi_predicts_protein_from_rna_in_the_units_of_cells_other(datasets):
    ds = datasets["bmmc_cite"]
    query = ds.cells(ds.query_index)
    truth = query.other.toarray()  # CLR per cell
    model = TotalVI(TotalVI.Params(), seed=0).fit(ds.cells(ds.reference_index),
                                                  TrainSettings(epochs=10, lr=4e-3, batch_size=128))
    predicted = model.predict_other(_without_other(query))
    assert predicted.dtype == np.float32 and predicted.shape == truth.shape and predicted.min() >= 0
    assert 0.75 < predicted.mean() / truth.mean() < 1.33  # raw or log1p counts would be several times larger
    per_protein = np.corrcoef(predicted.mean(axis=0), truth.mean(axis=0))[0, 1]
    assert per_protein > 0.7, f"the predicted protein levels follow the measured ones poorly: r={per_protein:.2f}"


@pytest.mark.parametrize("name", list(CASES))
def test_neither_a_model_nor_its_embeddings_stay_registered_with_scvi_tools(name, datasets):
    import gc

    cls, model_cls, dataset = CASES[name]
    ds = datasets[dataset]
    classwide = len(model_cls._setup_adata_manager_store)
    model = cls(cls.Params(), seed=0).fit(ds.cells(ds.reference_index), TrainSettings(epochs=1))
    registered = model.model._per_instance_manager_store[model.model.id]
    before = len(registered)
    for _ in range(3):
        model.embed(ds.cells(ds.query_index))
        model.predict_other(_without_other(ds.cells(ds.query_index)))
    assert len(registered) == before
    assert len(model_cls._setup_adata_manager_store) == classwide
    model_id = model.model.id
    del model, registered
    gc.collect()
    assert model_id not in model_cls._per_instance_manager_store  # the training data went with the model

"""totalVI and MultiVI (scvi-tools) behind the fitted-method contract: per-epoch reports, embeddings with and
without the second modality, and their own prediction of it."""

from dataclasses import replace

import numpy as np
import pytest

from scssl.data import DatasetSpec, prepare, resolve
from scssl.data.modalities import clr
from scssl.evaluate.modality_prediction import modality_prediction_scores
from scssl.methods import MultiVI, TotalVI
from scssl.methods.scvi_base import SAMPLES, seeded
from scssl.train import TrainSettings

CASES = {"totalvi": (TotalVI, "bmmc_cite", 4e-3), "multivi": (MultiVI, "bmmc_multiome", 1e-3)}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    cls, name, lr = CASES[request.param]
    return cls, prepare(resolve(DatasetSpec(name=name), tmp_path_factory.mktemp("d"))), lr


def _without_other(cells):
    return replace(cells, other=None, other_counts=None)


def test_fit_reports_each_epoch_and_embeds_mid_training(case):
    cls, ds, lr = case
    ref = ds.reference_index
    reports, embeddings = [], []

    def on_epoch(model, report):
        reports.append(report)
        embeddings.append(model.embed(ds.cells(ref[:40])))

    model = cls(cls.Params(), seed=0).fit(ds.cells(ref), TrainSettings(epochs=3, lr=lr, batch_size=128), on_epoch)
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert all(np.isfinite(r.loss) and r.seconds > 0 for r in reports)
    assert reports[-1].loss < reports[0].loss  # training went on after each mid-training embedding
    assert not np.allclose(embeddings[0], embeddings[-1])
    assert model.model.is_trained_
    # the same seed trains the same model, whether or not it is evaluated after each epoch
    again = cls(cls.Params(), seed=0).fit(ds.cells(ref), TrainSettings(epochs=3, lr=lr, batch_size=128))
    np.testing.assert_allclose(model.embed(ds.cells()), again.embed(ds.cells()), rtol=1e-4, atol=1e-5)


def test_embeds_and_predicts_cells_without_the_second_modality(case):
    cls, ds, lr = case
    ref, query = ds.reference_index, ds.query_index
    model = cls(cls.Params(), seed=0).fit(ds.cells(ref), TrainSettings(epochs=2, lr=lr, batch_size=128))
    joint = model.embed(ds.cells(query))
    rna = model.embed(_without_other(ds.cells(query)))
    assert joint.shape == rna.shape and joint.dtype == np.float32 and np.isfinite(rna).all()
    assert not np.allclose(joint, rna)  # the second modality counts when it is there
    predicted = model.predict_other(_without_other(ds.cells(query)))
    assert predicted.shape == (len(query), ds.other.X.shape[1]) and np.isfinite(predicted).all()
    if cls is MultiVI:
        assert predicted.min() >= 0 and predicted.max() <= 1  # accessibility probabilities
    else:  # totalVI's denoised protein averaged over the training batches, CLR per cell as the package's protein
        with model._in_model(_without_other(ds.cells(query))) as data, seeded(model.seed):
            _, protein = model.model.get_normalized_expression(data, transform_batch=model._measured(),
                                                               n_samples=SAMPLES, return_numpy=True)
        np.testing.assert_allclose(predicted, clr(protein).toarray(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(predicted, model.predict_other(_without_other(ds.cells(query))))


def test_training_improves_the_models_own_prediction(case):
    cls, ds, lr = case
    ref, query = ds.reference_index, ds.query_index
    truth = ds.other.target[query].toarray()
    binary = ds.other.kind == "atac"

    def score(epochs):
        model = cls(cls.Params(), seed=0).fit(ds.cells(ref), TrainSettings(epochs=epochs, lr=lr, batch_size=128))
        predicted = model.predict_other(_without_other(ds.cells(query)))
        return modality_prediction_scores(truth, predicted, binary=binary)["auroc" if binary else "pearson"]

    short, long = score(1), score(30)
    assert long > short + 0.02, f"{cls.name}: {short:.3f} after 1 epoch, {long:.3f} after 30"


def test_both_train_on_cells_without_the_second_modality(case):
    cls, ds, lr = case
    ref = ds.reference_index
    paired, alone = ds.cells(ref[:150]), ds.cells(ref[150:])
    cells = paired.with_rna_only(replace(alone, other=None, other_counts=None))
    model = cls(cls.Params(), seed=0).fit(cells, TrainSettings(epochs=2, lr=lr, batch_size=64))
    assert model.model.adata.n_obs >= cells.n_cells  # every cell trained on
    if cls is TotalVI:  # unmeasured protein: batches of their own, masked by totalVI
        batches = set(model.model.adata.obs["batch"].astype(str))
        assert any(b.endswith("|rna_only") for b in batches)
        mask = model.model.protein_state_registry.protein_batch_mask  # per batch: which proteins were measured
        assert mask is not None and any(not np.asarray(v).any() for v in mask.values())
    else:  # MultiVI: a cell with no accessible peak is an RNA-only cell
        assert (np.asarray(model.model.adata.mod["atac"].X.sum(axis=1)).ravel() == 0).sum() >= len(ref) - 150
    assert model.embed(ds.cells()).shape[0] == ds.n_cells

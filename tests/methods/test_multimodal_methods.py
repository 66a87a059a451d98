"""Multimodal methods: one encoder and head per modality, fused (add, mean, concat, clip), the CLIP loss,
per-modality augmentations, scCLIP, and training on the CITE-seq starter."""

import math

import numpy as np
import pytest
import torch
import yaml

from scssl.augment import AugmentationConfig
from scssl.data import Cells, DatasetSpec, prepare, resolve
from scssl.evaluate.modality_prediction import knn_modality_prediction, modality_prediction_scores
from scssl.experiment import load_experiment
from scssl.methods import METHODS, SCCLIP, SimCLR, TwoViewMethod, VICReg
from scssl.methods.base import Batch, FusedHead, TrainingContext
from scssl.methods.losses import clip_loss
from scssl.settings import ConfigError, parse
from scssl.train import TrainSettings, embed, train

TWO_VIEW = [n for n, c in METHODS.items() if issubclass(c, TwoViewMethod) and c.uses_other]


@pytest.fixture(scope="module")
def cite(tmp_path_factory):
    return prepare(resolve(DatasetSpec(name="bmmc_cite"), tmp_path_factory.mktemp("d")))


def test_clip_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    scale = 2.0
    cos = [[1.0, 0.0], [0.6, 0.8]]  # cos(a_i, b_j)

    def ce(rows):  # mean over rows of -log softmax(scale * row)[i]
        return sum(-math.log(math.exp(scale * r[i]) / sum(math.exp(scale * v) for v in r))
                   for i, r in enumerate(rows)) / len(rows)

    expected = (ce(cos) + ce([list(c) for c in zip(*cos)])) / 2
    assert clip_loss(a, b, torch.tensor(math.log(scale))).item() == pytest.approx(expected, rel=1e-6)
    # the scale is capped at 100, as CLIP's
    capped = clip_loss(a, b, torch.tensor(math.log(1000.0)))
    assert capped.item() == pytest.approx(clip_loss(a, b, torch.tensor(math.log(100.0))).item(), rel=1e-6)


@pytest.mark.parametrize("fusion, fused", [("add", 1), ("mean", 1), ("concat", 2), ("clip", 2)])
@pytest.mark.parametrize("name", TWO_VIEW)
def test_each_fusion_gives_its_embedding_and_projection_shapes(name, fusion, fused):
    cls = METHODS[name]
    x, other = torch.randn(16, 30), torch.randn(16, 7)
    model = cls(30, cls.Params(embedding_dim=8, fusion=fusion), n_other=7).eval()
    assert isinstance(model.projector, FusedHead)
    assert model.embed(x, other).shape == (16, 16)  # joint: both encoders' outputs
    assert model.embed(x).shape == (16, 8)  # without the other modality: the RNA encoder's
    rna_only = cls(30, cls.Params(embedding_dim=8, fusion=fusion, embedding="rna"), n_other=7).eval()
    assert rna_only.embed(x, other).shape == (16, 8)
    projected = cls(30, cls.Params(embedding_dim=8, fusion=fusion, predict_projection=True), n_other=7).eval()
    width = projected.projector.rna[-1].num_features if hasattr(projected.projector.rna[-1], "num_features") \
        else projected.projector.rna[-1].out_features
    assert projected.embed(x, other).shape == (16, fused * width)
    assert projected.embed(x).shape == (16, width)


@pytest.mark.parametrize("fusion", ["add", "mean", "concat", "clip"])
@pytest.mark.parametrize("name", TWO_VIEW)
def test_every_two_view_method_trains_on_two_modalities(name, fusion, cite):
    cls = METHODS[name]
    ref = cite.reference_index
    losses = []
    model = train(cls, cls.Params(embedding_dim=8, fusion=fusion), cite.cells(ref),
                  TrainSettings(epochs=2, batch_size=64), AugmentationConfig(),
                  on_epoch=lambda m, r: losses.append(r.loss))
    assert model.n_other == cite.other.X.shape[1] and len(losses) == 2 and np.isfinite(losses).all()
    assert embed(model, cite.cells()).shape == (cite.n_cells, 16)
    assert all(not head.recorded for head in model.modules() if isinstance(head, FusedHead))


def test_clip_fusion_adds_the_clip_loss_of_each_view_and_learns_its_scale(cite):
    torch.manual_seed(0)
    model = SimCLR(cite.X.shape[1], SimCLR.Params(embedding_dim=8, fusion="clip"), n_other=cite.other.X.shape[1])
    model.setup(TrainingContext(None, None, None, parse(AugmentationConfig, {"preset": "base"}, "t"), 0,
                                torch.device("cpu")))
    x = torch.tensor(cite.X[:32].toarray())
    other = torch.tensor(cite.other.X[:32].toarray())
    loss = model.training_loss(Batch(x, torch.arange(32), other=other))
    # with no augmentation both views are the cells themselves: the method's loss plus CLIP of each view
    h = model.encoder((x, other))
    rna, prot = model.projector.rna(h[0]), model.projector.other(h[1])
    model.projector.recorded.clear()
    expected = model.loss((x, other), (x, other)) + 2 * clip_loss(rna, prot, model.logit_scale)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


def test_each_modality_has_its_own_augmentations(cite):
    augment = parse(AugmentationConfig, {"preset": "base", "other": {"preset": "base",
                                                                     "masking": {"rate": 1.0, "prob": 1.0}}}, "t")
    model = SimCLR(cite.X.shape[1], SimCLR.Params(), n_other=cite.other.X.shape[1])
    model.setup(TrainingContext(None, None, None, augment, 0, torch.device("cpu")))
    x = torch.tensor(cite.X[:16].toarray())
    other = torch.tensor(cite.other.X[:16].toarray())
    rna1, rna2 = model.augmenter(x)
    other1, other2 = model.other_augmenter(other)
    assert torch.equal(rna1, x) and torch.equal(rna2, x)  # the RNA: no augmentation
    assert other1.abs().sum() == 0 and other2.abs().sum() == 0  # the protein: every value masked
    same = parse(AugmentationConfig, {"preset": "base", "masking": {"rate": 1.0, "prob": 1.0}}, "t")
    model.setup(TrainingContext(None, None, None, same, 0, torch.device("cpu")))
    assert model.other_augmenter(other)[0].abs().sum() == 0  # unset: the RNA's settings


def test_scclip_trains_on_two_modalities_and_refuses_one(cite):
    ref = cite.reference_index
    model = train(SCCLIP, SCCLIP.Params(embedding_dim=8, projection_dim=8), cite.cells(ref),
                  TrainSettings(epochs=2, batch_size=64))
    assert embed(model, cite.cells()).shape == (cite.n_cells, 16)
    assert embed(model, Cells(cite.X)).shape == (cite.n_cells, 8)
    with pytest.raises(ValueError, match="scclip needs multimodal data"):
        train(SCCLIP, SCCLIP.Params(), Cells(cite.X[ref]), TrainSettings(epochs=1))


def test_an_experiment_with_a_multimodal_method_on_rna_only_data_is_an_error(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "e", "methods": ["pca", "scclip"], "tasks": ["cell_typing"],
                                    "datasets": [{"name": "bmmc_cite_starter", "query_batches": ["s1d2"]}]}))
    with pytest.raises(ConfigError, match=r"methods: scclip needs a second modality .*datasets.0 \('bmmc_cite_starter'\) "
                                          r"has RNA only"):
        load_experiment(path)


def test_a_few_epochs_of_simclr_raise_the_protein_prediction_over_the_untrained_encoder(cite):
    ref, query = cite.reference_index, cite.query_index
    truth = cite.other.target[query].toarray()

    def pearson(model):
        rna = embed(model, Cells(cite.X))  # missing-modality prediction: the RNA embedding
        predicted = knn_modality_prediction(rna[ref], cite.other.target[ref], rna[query])
        return modality_prediction_scores(truth, predicted)["pearson"]

    params = SimCLR.Params(fusion="concat")
    torch.manual_seed(0)
    untrained = pearson(SimCLR(cite.X.shape[1], params, n_other=cite.other.X.shape[1]))
    trained = pearson(train(SimCLR, params, cite.cells(ref), TrainSettings(epochs=20, batch_size=64, lr=1e-3),
                            AugmentationConfig()))
    assert trained > untrained + 0.03, f"protein Pearson {untrained:.3f} -> {trained:.3f}"


def test_vicreg_on_two_modalities_beats_its_untrained_joint_embedding(cite):
    from scssl.evaluate import knn_accuracy, validation_split

    labels = cite.label_codes
    is_val = validation_split(labels, 0.3, 1000, seed=0)
    torch.manual_seed(0)
    params = VICReg.Params()
    untrained = knn_accuracy(embed(VICReg(cite.X.shape[1], params, cite.other.X.shape[1]), cite.cells()), labels,
                             is_val)
    model = train(VICReg, params, cite.cells(), TrainSettings(epochs=20, batch_size=64, lr=1e-3),
                  AugmentationConfig())
    trained = knn_accuracy(embed(model, cite.cells()), labels, is_val)
    assert trained > untrained + 0.03, f"kNN accuracy {untrained:.3f} -> {trained:.3f}"


def test_a_search_space_tunes_the_second_modalitys_augmentations(tmp_path):
    from scssl.methods import get_method
    from scssl.search_space import load_search_space, trial_settings

    path = tmp_path / "simclr.yaml"
    path.write_text(yaml.safe_dump({"augment": {"other": {"masking": {"rate": {"uniform": [0.1, 0.9]}}}}}))
    space = load_search_space(path, get_method("simclr"))
    assert list(space.entries) == [("augment", "other", "masking", "rate")]
    rna = parse(AugmentationConfig, {"preset": "base", "other": {"preset": "base"}}, "t")
    trial = trial_settings(get_method("simclr"), TrainSettings(), rna, {"augment": {"other": {"masking": {"rate": 0.7}}}})
    assert trial.augment.other.masking.rate == 0.7 and trial.augment.other.gaussian_noise.prob == 0.0
    assert trial.augment.masking.rate == 0.2  # the RNA's untouched

"""The masked autoencoder, the method contract it shares with the two-view methods, and Richter et al.'s tasks."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from scssl.augment import AugmentationConfig
from scssl.data import Cells
from scssl.evaluate import FineTuneSettings, SharedData, TASKS, TaskInputs
from scssl.experiment import load_experiment
from scssl.methods import MAE, METHODS, PCABaseline, SimCLR
from scssl.methods.losses import masked_mse
from scssl.search_space import load_search_space, trial_settings
from scssl.settings import ConfigError
from scssl.stages import TuneSettings
from scssl.train import TrainSettings, train

ROOT = Path(__file__).resolve().parents[2]


def test_masked_loss_by_hand():
    x_hat = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    x = torch.tensor([[0.0, 2.0], [2.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    squared = [1.0, 4.0, 9.0]  # the three masked entries; the unmasked one (error 0) must not count
    assert masked_mse(x_hat, x, mask).item() == pytest.approx(sum(squared) / 3)
    assert masked_mse(x_hat, x, mask, "all_entries").item() == pytest.approx(sum(squared) / 4)  # the study's code


def test_the_default_encoder_is_scssl_benchs_and_richters_is_a_preset():
    default = MAE(50, MAE.Params()).encoder
    assert [type(m) for m in default] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.Dropout]
    richter = MAE(50, MAE.Params(encoder_preset="richter"))
    dims = [(m.in_features, m.out_features) for m in richter.encoder if isinstance(m, nn.Linear)]
    assert dims == [(50, 512), (512, 512), (512, 256), (256, 256), (256, 64)]
    assert sum(isinstance(m, nn.SELU) for m in richter.encoder) == 4
    assert [m.p for m in richter.encoder if isinstance(m, nn.Dropout)] == [0.1] * 4 + [0.0]
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)) for m in richter.modules())
    decoder = [(m.in_features, m.out_features) for m in richter.decoder if isinstance(m, nn.Linear)]
    assert decoder == [(64, 256), (256, 256), (256, 512), (512, 512), (512, 50)]  # mirrors the encoder
    assert isinstance(richter.decoder[-1], nn.Linear)  # no Sigmoid: log-normalised values exceed 1
    assert MAE.Params(encoder_preset="richter", embedding_dim=16).embedding_dim == 16  # a key beats its preset
    assert SimCLR.Params(encoder_preset="richter", hidden_dims=[32]).hidden_dims == (32,)


def test_a_training_step_hides_what_the_mask_says(prepared):
    torch.manual_seed(0)
    model = train(MAE, MAE.Params(embedding_dim=8, mask_rate=0.3), prepared.X, TrainSettings(epochs=1, batch_size=64))
    x = torch.rand(256, prepared.X.shape[1])
    _, scored = model.reconstruct(x, torch.Generator().manual_seed(1))
    assert scored.float().mean().item() == pytest.approx(0.3, abs=0.02)


def test_the_hallmark_programmes_mask_whole_programmes_of_real_genes(bmmc):
    params = MAE.Params(embedding_dim=8, masking="gene_program", gene_programs="hallmark", mask_rate=0.1)
    model = train(MAE, params, Cells(bmmc.X, bmmc.genes), TrainSettings(epochs=1, batch_size=128))
    programmes = model.masker.membership
    _, scored = model.reconstruct(torch.rand(4, bmmc.X.shape[1]), torch.Generator().manual_seed(0))
    assert torch.equal(scored[0], scored[3])  # one draw for the whole batch
    chosen = [p for p in range(len(programmes)) if (programmes[p] & ~scored[0]).sum() == 0]
    assert chosen and torch.equal(programmes[chosen].any(0), scored[0])  # the union of whole programmes


@pytest.mark.parametrize("masking", ["isolated_gp_to_gp", "random"])
def test_reconstruction_scores_every_masking_on_the_entries_the_encoder_did_not_see(bmmc, masking):
    """GP->GP learns the programme it is shown; its masked scores, like random masking's, are on hidden entries."""
    params = MAE.Params(embedding_dim=8, masking=masking, gene_programs="hallmark")
    model = train(MAE, params, Cells(bmmc.X, bmmc.genes), TrainSettings(epochs=1, batch_size=128))
    x = torch.as_tensor(np.asarray(bmmc.X[:64].todense(), dtype=np.float32))
    _, scored = model.reconstruct(x, torch.Generator().manual_seed(0))
    seen = model.masker(x, torch.Generator().manual_seed(0)).inputs != 0  # the same draw: what the encoder saw
    assert scored.any() and not (scored & seen).any()
    assert (scored | seen | (x == 0)).all()  # every other entry: scored, or zero in the data anyway


@pytest.fixture(scope="module")
def bmmc(tmp_path_factory):
    from scssl.data import DatasetSpec, prepare, resolve

    return prepare(resolve(DatasetSpec(name="bmmc_cite_starter"), tmp_path_factory.mktemp("d")))


def _inputs(method, seed=0, **settings):
    train_settings = TrainSettings(**{"epochs": 30, "batch_size": 64, "lr": 1e-3, **settings})
    trial = trial_settings(METHODS[method], train_settings, AugmentationConfig(), {})
    return TaskInputs(method, trial, seed, 1, FineTuneSettings(epochs=10))


def test_a_few_epochs_on_real_data_reconstruct_below_the_mean_floor(bmmc):
    shared = SharedData.build(bmmc, TuneSettings(), with_graphs=False)
    untrained, _ = TASKS["reconstruction"].run(shared, _inputs("mae", epochs=1, lr=1e-9))
    trained, embedding = TASKS["reconstruction"].run(shared, _inputs("mae"))
    assert embedding.shape == (bmmc.n_cells, 64)
    assert trained["masked_mse"] < trained["mean_floor_masked_mse"] < untrained["masked_mse"]
    # the PCA baseline reconstructs every entry it sees: no masked scores, and it is its own PCA floor
    pca, _ = TASKS["reconstruction"].run(shared, _inputs("pca"))
    assert "masked_mse" not in pca and pca["mse"] == pytest.approx(pca["pca_floor_mse"], rel=1e-4)


def test_the_fine_tuned_classifier_beats_chance_beside_its_twin_from_scratch(prepared):
    shared = SharedData.build(prepared, TuneSettings(), with_graphs=False)
    metrics, _ = TASKS["fine_tuned_cell_typing"].run(shared, _inputs("simclr", epochs=2))
    chance = 1 / prepared.obs["label"].nunique()
    assert metrics["macro_f1"] > 2 * chance and metrics["scratch_macro_f1"] > 2 * chance


def test_a_task_is_planned_only_for_methods_that_can_serve_it():
    assert TASKS["reconstruction"].serves("mae") and TASKS["reconstruction"].serves("pca")
    assert not TASKS["reconstruction"].serves("simclr")  # no decoder
    assert not TASKS["fine_tuned_cell_typing"].serves("pca")  # no network
    assert all(TASKS["cell_typing"].serves(m) for m in METHODS)


def test_a_section_the_method_does_not_read_is_an_error(tmp_path):
    space = tmp_path / "mae.yaml"
    space.write_text(yaml.safe_dump({"method": {"mask_rate": 0.5}, "augment": {"masking": {"prob": 0.5}}}))
    with pytest.raises(ConfigError, match=r"mae.yaml: augment: method 'mae' does not use an? 'augment' section"):
        load_search_space(space, MAE)
    space.write_text(yaml.safe_dump({"method": {"projector_layers": {"int": [1, 3]}}}))
    with pytest.raises(ConfigError, match=r"method.projector_layers: 'projector_layers' is not a parameter of MAEParams"):
        load_search_space(space, MAE)
    space.write_text(yaml.safe_dump({"train": {"lr": 0.1}}))
    with pytest.raises(ConfigError, match="method 'pca' does not use a 'train' section"):
        load_search_space(space, PCABaseline)


def test_an_augment_block_no_method_uses_is_an_error(tmp_path, small_experiment):
    path = small_experiment("exp", methods=["pca", "mae"], augment={"masking": {"prob": 0.5}},
                            final={"seeds": [0], "retrain": "defaults"})
    with pytest.raises(ConfigError, match=r"exp.yaml: augment: none of the methods \['pca', 'mae'\]"):
        load_experiment(path)
    path = small_experiment("exp", fine_tuning={"epochs": 3})
    with pytest.raises(ConfigError, match="exp.yaml: fine_tuning: only the fine_tuned_cell_typing and cross_modality_prediction tasks use it"):
        load_experiment(path)


def test_a_gmt_named_by_a_search_space_is_found_beside_it(tmp_path, small_experiment):
    folder = tmp_path / "spaces"
    folder.mkdir()
    (folder / "tiny.gmt").write_text("P1\tdesc\tGENE1\tGENE2\n")
    (folder / "mae.yaml").write_text(yaml.safe_dump({"method": {"masking": "gene_program", "gene_programs": "tiny.gmt",
                                                                "mask_rate": {"choice": [0.2, 0.5]}}}))
    experiment = load_experiment(small_experiment("exp", methods=["mae"], search_spaces=str(folder)))
    assert experiment.search_spaces["mae"].entries[("method", "gene_programs")] == str(folder / "tiny.gmt")
    (folder / "mae.yaml").write_text(yaml.safe_dump({"method": {"masking": "gene_program",
                                                                "gene_programs": "missing.gmt"}}))
    with pytest.raises(ConfigError, match=r"(?s)mae.yaml: method.gene_programs = 'missing.gmt'.*neither a built-in"):
        load_experiment(small_experiment("exp", methods=["mae"], search_spaces=str(folder)))


def test_masked_explained_variance_is_finite_on_real_masks(bmmc):
    shared = SharedData.build(bmmc, TuneSettings(), with_graphs=False)
    metrics, _ = TASKS["reconstruction"].run(shared, _inputs("mae", epochs=2))
    assert all(math.isfinite(v) for v in metrics.values())
    assert set(TASKS["reconstruction"].metrics) <= set(metrics)

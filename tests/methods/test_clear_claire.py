"""CLEAR and CLAIRE: their losses by hand, CLAIRE's MNN positives and GMM anchor filter, their momentum key
encoders, their search spaces, and a few epochs on the built-in BMMC data."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from scssl.methods.base import TrainingContext
from scssl.methods.claire import CLAIRE, filter_partners, gmm_keep
from scssl.methods.clear import CLEAR

ROOT = Path(__file__).resolve().parents[2]


def _identity_networks(model):
    """Make every Linear of the query and key encoders the identity: on non-negative inputs (ReLU leaves them
    be) each encoder returns its input, so the loss can be computed by hand from the views."""
    with torch.no_grad():
        for encoder in (model.encoder, model.key_encoder):
            for layer in encoder.modules():
                if isinstance(layer, nn.Linear):
                    layer.weight.copy_(torch.eye(*layer.weight.shape))
                    layer.bias.zero_()
    return model.eval()


VIEW1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
VIEW2 = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
QUEUE = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [3.0, 4.0]])
T = 0.5
R = 1 / math.sqrt(2)
# queries VIEW1 against keys VIEW2 and QUEUE, by cosine / T: cell 0 positive 1, negatives 0, -1, 0.6;
# cell 1 positive 1/sqrt(2), negatives 1, 0, 0.8
LOSS_12 = [-math.log(math.exp(1 / T) / (math.exp(1 / T) + math.exp(0) + math.exp(-1 / T) + math.exp(0.6 / T))),
           -math.log(math.exp(R / T) / (math.exp(R / T) + math.exp(1 / T) + math.exp(0) + math.exp(0.8 / T)))]
# queries VIEW2 against keys VIEW1: cell 0 as above; cell 1 positive 1/sqrt(2), negatives 1/sqrt(2), -1/sqrt(2),
# 1.4/sqrt(2)
LOSS_21 = [LOSS_12[0],
           -math.log(math.exp(R / T) / (2 * math.exp(R / T) + math.exp(-R / T) + math.exp(1.4 * R / T)))]


def test_clear_loss_by_hand_and_queues_the_keys():
    model = _identity_networks(CLEAR(2, CLEAR.Params(hidden_dims=(2,), embedding_dim=2, memory_size=3,
                                                     temperature=T)))
    model.queue.bank.copy_(QUEUE)
    assert model.loss(VIEW1, VIEW2).item() == pytest.approx(sum(LOSS_12) / 2, rel=1e-6)
    torch.testing.assert_close(model.queue.bank[:2], VIEW2)  # the keys: view 2 through the key encoder


def test_claire_loss_is_symmetric_by_hand_and_its_queue_starts_at_zero():
    params = CLAIRE.Params(hidden_dims=(2, 2), embedding_dim=2, memory_size=3, temperature=T)
    model = _identity_networks(CLAIRE(2, params))
    # an empty (zero) queue: each of the 3 negatives has cosine 0
    expected = sum(-math.log(math.exp(c / T) / (math.exp(c / T) + 3)) for c in (1.0, R)) / 2
    assert model.loss(VIEW1, VIEW2).item() == pytest.approx(expected, rel=1e-6)
    model = _identity_networks(CLAIRE(2, params))
    model.queue.bank.copy_(QUEUE)
    assert model.loss(VIEW1, VIEW2).item() == pytest.approx((sum(LOSS_12) + sum(LOSS_21)) / 4, rel=1e-6)
    # both directions saw the same queue; then view 1's keys were queued, and view 2's after them
    torch.testing.assert_close(model.queue.bank, torch.stack([VIEW2[1], VIEW1[1], VIEW2[0]]))


def _linear_dims(module):
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_encoders_and_embeddings_are_the_authors():
    x = torch.rand(6, 40)
    clear = CLEAR(40, CLEAR.Params()).eval()
    assert _linear_dims(clear.encoder) == [(40, 1024), (1024, 128)]
    assert isinstance(clear.encoder[-1], nn.ReLU) and not any(isinstance(m, nn.BatchNorm1d) for m in clear.modules())
    with torch.no_grad():  # CLEAR embeds with the key encoder
        clear.key_encoder[0].weight.add_(1.0)
        torch.testing.assert_close(clear.embed(x), nn.functional.normalize(clear.key_encoder(x), dim=1))
    claire = CLAIRE(40, CLAIRE.Params()).eval()
    assert _linear_dims(claire.encoder) == [(40, 10), (10, 5), (5, 128)]
    assert [m.p for m in claire.encoder if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.0]
    assert isinstance(claire.encoder[-1], nn.ReLU)
    torch.testing.assert_close(claire.embed(x), nn.functional.normalize(claire.encoder(x), dim=1))
    assert _linear_dims(CLAIRE(40, CLAIRE.Params(hidden_dims=(16,))).encoder) == [(40, 16), (16, 128)]


@pytest.mark.parametrize("cls", [CLEAR, CLAIRE])
def test_momentum_key_encoder_moves_by_the_constant_momentum(cls):
    torch.manual_seed(0)
    model = cls(20, cls.Params(embedding_dim=8, hidden_dims=(16,)))
    before = [p.detach().clone() for p in model.key_encoder.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.rand(32, 20)
    model.loss(x, x + 0.1 * torch.rand_like(x)).backward()
    optimizer.step()
    model.after_step(3, 10)
    for t0, t1, online in zip(before, model.key_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(t1, 0.999 * t0 + 0.001 * online.detach())
    assert any(not torch.equal(t0, t1) for t0, t1 in zip(before, model.key_encoder.parameters()))
    assert all(not p.requires_grad for p in model.key_encoder.parameters())


def test_gmm_keeps_the_populous_high_similarity_component():
    rng = np.random.default_rng(0)
    similarity = np.concatenate([rng.normal(0.9, 0.03, 30), rng.normal(0.1, 0.03, 8)])
    assert gmm_keep(similarity, 0.5).tolist() == [True] * 30 + [False] * 8
    assert gmm_keep(np.array([0.3]), 0.5).tolist() == [True]  # one pair: nothing to filter


def test_filter_partners_drops_the_dissimilar_pairs_and_compacts_each_row():
    # cells 0-9 in one batch, 10-19 in the other; MNN pairs (i, i + 10), and (0, 18)
    angle = np.linspace(0.0, 0.1, 20)
    angle[[18, 19]] = math.pi / 2  # cells 18 and 19 point elsewhere: pairs (8, 18), (9, 19), (0, 18) are wrong
    embedding = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    partners = np.full((20, 3), -1)
    partners[:10, 0], partners[10:, 0] = np.arange(10, 20), np.arange(10)
    partners[0] = [18, 10, -1]
    partners[18] = [8, 0, -1]
    filtered = filter_partners(partners, embedding, 0.5)
    expected = np.full((20, 3), -1)
    expected[:8, 0], expected[10:18, 0] = np.arange(10, 18), np.arange(8)
    np.testing.assert_array_equal(filtered, expected)  # cell 0 keeps 10, now first


@pytest.fixture(scope="module")
def bmmc(tmp_path_factory):
    from scssl.data import DatasetSpec, prepare, resolve

    return prepare(resolve(DatasetSpec(name="bmmc_cite_starter"), tmp_path_factory.mktemp("d")))


@pytest.fixture(scope="module")
def bmmc_cells(bmmc):
    from scssl.augment import build_neighbour_graph

    return replace(bmmc.cells(), graph=build_neighbour_graph(bmmc.X, bmmc.obs["batch"].to_numpy()))


def _set_up(model, cells, seed=0):
    from scssl.data import CellMatrix

    model.setup(TrainingContext(CellMatrix(cells.X, "cpu").rows, cells.genes, cells.graph, None, seed,
                                torch.device("cpu")))
    return model


def test_claire_positives_are_mnn_partners_in_another_batch(bmmc_cells):
    graph, batches, X = bmmc_cells.graph, bmmc_cells.batch_codes, bmmc_cells.X.toarray()
    model = _set_up(CLAIRE(X.shape[1], CLAIRE.Params(alpha=1.0)), bmmc_cells)  # alpha 1: views unmixed
    has_partner = (graph.mnn >= 0).any(axis=1)
    index = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:128]
    cells, view1, view2 = model.views(index)
    cells = cells.numpy()
    assert has_partner[cells].all()
    kept = has_partner[index.numpy()]
    assert 0 < kept.sum() < len(index)
    np.testing.assert_array_equal(cells[kept], index.numpy()[kept])  # anchors of the batch stay themselves
    np.testing.assert_array_equal(view1.numpy(), X[cells])
    # the row of each view 2 is one of the anchor's MNN partners, of another batch
    cell_of_row = {row.tobytes(): i for i, row in enumerate(X)}
    assert len(cell_of_row) == len(X)
    partners = np.array([cell_of_row[row.tobytes()] for row in view2.numpy()])
    assert all(p in graph.mnn[c] for c, p in zip(cells, partners))
    assert (batches[partners] != batches[cells]).all()


def test_claire_filters_its_anchors_at_the_filter_epoch_only(bmmc_cells):
    from scssl.train import embed

    torch.manual_seed(0)
    model = _set_up(CLAIRE(bmmc_cells.X.shape[1], CLAIRE.Params(filter_epoch=2)), bmmc_cells).train()
    for epoch in (1, 2, 4):
        model.before_epoch(epoch)
        np.testing.assert_array_equal(model.augmenter.mnn.numpy(), bmmc_cells.graph.mnn)
    model.before_epoch(3)  # after 2 epochs
    assert model.training
    embedding = embed(model, bmmc_cells.X)
    expected = filter_partners(bmmc_cells.graph.mnn, embedding, 0.5)
    np.testing.assert_array_equal(model.augmenter.mnn.numpy(), expected)
    dropped = (bmmc_cells.graph.mnn >= 0) & (expected < 0)
    assert 0 < dropped.sum() < (bmmc_cells.graph.mnn >= 0).sum() / 2
    assert len(model.anchors) == ((expected >= 0).any(axis=1)).sum()


def test_claire_needs_the_neighbour_graph(bmmc):
    from scssl.train import TrainSettings, train

    with pytest.raises(ValueError, match="NeighbourGraph"):
        train(CLAIRE, CLAIRE.Params(), bmmc.X, TrainSettings(epochs=1, batch_size=64))
    assert CLAIRE.needs_neighbours and not CLEAR.needs_neighbours
    assert CLAIRE.sections == {"train"} and "augment" in CLEAR.sections


@pytest.mark.parametrize("cls", [CLEAR, CLAIRE])
def test_search_space_names_only_real_parameters(cls):
    from scssl.search_space import load_search_space

    space = load_search_space(ROOT / "search_spaces" / f"{cls.name}.yaml", cls)
    assert any(path[0] == "method" for path in space.entries)


# As for MoCo in test_methods.py: the defaults (a queue of 1024 or 2048 keys, momentum 0.999) suit long runs
# on large data, not 120 steps on 600 cells, where the key encoder (CLEAR's embedding) would barely move.
SMALL_DATA_PARAMS = {"memory_size": 256, "momentum_start": 0.9, "momentum_end": 0.9}


@pytest.mark.parametrize("cls", [CLEAR, CLAIRE])
def test_a_few_epochs_on_real_data_beat_the_untrained_encoder(cls, bmmc, bmmc_cells):
    from scssl.augment import AugmentationConfig
    from scssl.evaluate import knn_accuracy, validation_split
    from scssl.train import TrainSettings, embed, train

    labels = bmmc.label_codes
    is_val = validation_split(labels, 0.3, 1000, seed=0)
    torch.manual_seed(0)
    params = cls.Params(**SMALL_DATA_PARAMS)
    untrained = knn_accuracy(embed(cls(bmmc.X.shape[1], params), bmmc.X), labels, is_val)
    model = train(cls, params, bmmc_cells, TrainSettings(epochs=30, batch_size=128, lr=1e-4),
                  AugmentationConfig() if "augment" in cls.sections else None)
    trained = knn_accuracy(embed(model, bmmc.X), labels, is_val)
    assert trained > untrained + 0.05, f"{cls.name}: kNN accuracy {untrained:.3f} -> {trained:.3f}"
    if cls is CLAIRE:  # the loop called the filter after epoch 4: some pairs are gone
        assert (model.augmenter.mnn >= 0).sum() < (bmmc_cells.graph.mnn >= 0).sum()

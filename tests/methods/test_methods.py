"""The two-view SSL methods: a training step each, their settings, momentum targets, queues, and a few epochs on
real data beating the untrained encoder."""

import math

import pytest
import torch
from torch import nn

from scssl.methods import BYOL, METHODS, NNCLR, MoCo, SimCLR, SSLMethod, TwoViewMethod, VICReg
from scssl.methods.mechanics import MemoryQueue, cosine_schedule, nearest_neighbour


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if issubclass(c, TwoViewMethod)])
def test_every_ssl_method_trains_a_step(name):
    cls = METHODS[name]
    torch.manual_seed(0)
    model = cls(30, cls.Params(embedding_dim=8))
    x = torch.rand(16, 30)
    loss = model.loss(x, x + 0.1 * torch.randn_like(x))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert model.embed(x).shape == (16, 8)


def _linear_dims(module):
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_projector_depth_and_width_are_really_used():
    simclr = SimCLR(30, SimCLR.Params(embedding_dim=16, projector_layers=3, projector_hidden_mult=2.0,
                                      projector_out_mult=0.5))
    assert _linear_dims(simclr.projector) == [(16, 32), (32, 32), (32, 8)]
    assert isinstance(list(simclr.projector)[-1], nn.BatchNorm1d)  # SimCLR head ends in BN
    vic = VICReg(30, VICReg.Params(embedding_dim=16))
    assert _linear_dims(vic.projector) == [(16, 16), (16, 64)]     # h -> h -> 4h, as scSSL-Bench
    assert isinstance(list(vic.projector)[-1], nn.Linear)
    assert _linear_dims(vic.encoder) == [(30, 128), (128, 16)]


def test_paper_defaults():
    assert SimCLR.Params().temperature == 0.5 and SimCLR.Params().embedding_dim == 64
    p = VICReg.Params()
    assert (p.sim_weight, p.var_weight, p.cov_weight, p.projector_out_mult) == (5.0, 5.0, 1.0, 4.0)
    with pytest.raises(ValueError):
        SimCLR.Params(temperature=0.0)
    with pytest.raises(ValueError):
        SimCLR.Params(unknown=1)


def test_cosine_momentum_schedule():
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(25, 100, 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("cls", [MoCo, BYOL])
def test_momentum_target_moves_by_the_scheduled_amount(cls):
    torch.manual_seed(0)
    model = cls(20, cls.Params(embedding_dim=8))
    online, target = model.momentum_pairs()[0]
    before = [p.detach().clone() for p in target.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x = torch.rand(32, 20)
    model.loss(x, x + 0.1 * torch.randn_like(x)).backward()
    optimizer.step()
    model.after_step(3, 10)
    m = cosine_schedule(3, 10, 0.996, 1.0)
    for t0, t1, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * o.detach())
    assert any(not torch.equal(t0, t1) for t0, t1 in zip(before, target.parameters())), "target did not move"
    assert all(not p.requires_grad for p in target.parameters())


def test_training_loop_moves_the_byol_target(prepared):
    from scssl.augment import AugmentationConfig
    from scssl.train import TrainSettings, train

    model = train(BYOL, BYOL.Params(embedding_dim=8), prepared.X, TrainSettings(epochs=2, batch_size=64, lr=1e-3),
                  AugmentationConfig())
    torch.manual_seed(0)  # train() seeds with 0 before building the model: the same initial target
    initial = BYOL(prepared.X.shape[1], BYOL.Params(embedding_dim=8))
    moved = [not torch.equal(a, b) for a, b in zip(initial.target_encoder.parameters(),
                                                   model.target_encoder.parameters())]
    assert all(moved)


def test_memory_queue_is_first_in_first_out():
    queue = MemoryQueue(size=5, dim=1)
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    queue.enqueue(torch.tensor([[4.0], [5.0], [6.0]]))  # 6 replaces the oldest, 1
    assert queue.bank.squeeze(1).tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]
    queue.enqueue(torch.tensor([[7.0]]))
    assert queue.bank.squeeze(1).tolist() == [6.0, 7.0, 3.0, 4.0, 5.0]


def test_nearest_neighbour_is_by_cosine():
    support = torch.tensor([[1.0, 0.0], [0.0, 5.0], [-1.0, -1.0]])
    query = torch.tensor([[0.1, 3.0], [2.0, 0.1], [-3.0, -2.0]])
    assert torch.equal(nearest_neighbour(query, support), support[[1, 0, 2]])


def test_moco_queues_keys_and_nnclr_queues_view_two():
    torch.manual_seed(0)
    x1, x2 = torch.rand(8, 20), torch.rand(8, 20)
    moco = MoCo(20, MoCo.Params(embedding_dim=4, memory_size=16))
    moco.loss(x1, x2)
    keys = moco.key_projector(moco.key_encoder(x2))
    torch.testing.assert_close(moco.queue.bank[:8], keys.detach())
    nnclr = NNCLR(20, NNCLR.Params(embedding_dim=4, memory_size=16))
    nnclr.loss(x1, x2)
    torch.testing.assert_close(nnclr.support.bank[:8], nnclr.projector(nnclr.encoder(x2)).detach())


@pytest.fixture(scope="module")
def bmmc(tmp_path_factory):
    from scssl.data import DatasetSpec, prepare, resolve

    return prepare(resolve(DatasetSpec(name="bmmc_cite_starter"), tmp_path_factory.mktemp("d")))


# MoCo's defaults suit long runs on large data: its queue (2048 keys) is over three times the 600 cells
# here, and at momentum 0.996 its key network moves a third of the way to the query network in these
# 120 steps. A queue smaller than the data set and a faster key network suit this short run.
SMALL_DATA_PARAMS = {"moco": {"memory_size": 256, "momentum_start": 0.9},
                     "clear": {"memory_size": 128, "momentum_start": 0.99, "momentum_end": 0.99}}
# Concerto's attention network costs about 1 s an epoch here (the others 0.05); 10 epochs already lift its kNN
# accuracy from 0.39 to about 0.5, as 30 do.
EPOCHS = {"concerto": 10}


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] * (n in EPOCHS))  # 10 epochs: 15 s
                                  for n, c in METHODS.items()  # CLAIRE needs a neighbour graph: test_clear_claire.py
                                  if issubclass(c, SSLMethod) and c.modality is None and not c.needs_neighbours])
def test_a_few_epochs_on_real_data_beat_the_untrained_encoder(name, bmmc):
    from scssl.augment import AugmentationConfig
    from scssl.evaluate import knn_accuracy, validation_split
    from scssl.train import TrainSettings, embed, train

    cls = METHODS[name]
    labels = bmmc.label_codes
    is_val = validation_split(labels, 0.3, 1000, seed=0)
    torch.manual_seed(0)
    params = cls.Params(**SMALL_DATA_PARAMS.get(name, {}))
    untrained = knn_accuracy(embed(cls(bmmc.X.shape[1], params), bmmc.X), labels, is_val)
    model = train(cls, params, bmmc.X, TrainSettings(epochs=EPOCHS.get(name, 30), batch_size=128, lr=1e-3),
                  AugmentationConfig())
    trained = knn_accuracy(embed(model, bmmc.X), labels, is_val)
    assert trained > untrained + 0.02, f"{name}: kNN accuracy {untrained:.3f} -> {trained:.3f}"

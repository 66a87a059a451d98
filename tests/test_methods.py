import math

import pytest
import torch
from torch import nn

from scssl.methods import METHODS, SimCLR, VICReg
from scssl.methods.losses import nt_xent, vicreg


def test_nt_xent_orthogonal_pairs_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # each sample: positive cos 1, two negatives cos 0  ->  -log(e^2 / (e^2 + 2))
    expected = math.log(1 + 2 * math.exp(-2))
    assert nt_xent(z, z.clone(), temperature=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_general_case_by_hand():
    z1 = torch.tensor([[1.0, 2.0], [0.5, -1.0], [-1.0, 0.3]])
    z2 = torch.tensor([[0.8, 1.5], [1.0, -0.2], [-0.4, 0.9]])
    t = 0.7
    zs = [v / v.norm() for v in torch.cat([z1, z2])]
    n = 3
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        num = math.exp(float(zs[i] @ zs[j]) / t)
        den = sum(math.exp(float(zs[i] @ zs[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(num / den)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / (2 * n), rel=1e-5)


def test_vicreg_by_hand():
    eps = 1e-4
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    invariance = 1.0 / 4                                    # one squared difference of 1 over 4 entries
    var_z1 = (0.0 + (1 - math.sqrt(0.0 + eps))) / 2         # dim 0 std sqrt(2) > 1, dim 1 constant
    var_z2 = (0.0 + (1 - math.sqrt(0.5 + eps))) / 2         # dim 1 = [1, 0]: unbiased variance 0.5
    cov_z2 = 2 * 1.0**2 / 2                                 # cov(dim0, dim1) = 1, both off-diagonals, / d
    expected = 5 * invariance + 5 * 0.5 * (var_z1 + var_z2) + 1 * (0.0 + cov_z2)
    assert vicreg(z1, z2, 5.0, 5.0, 1.0).item() == pytest.approx(expected, rel=1e-5)


def test_vicreg_weights_are_used():
    z1, z2 = torch.randn(16, 4), torch.randn(16, 4)
    only_sim = vicreg(z1, z2, 1.0, 0.0, 0.0).item()
    assert only_sim == pytest.approx(torch.nn.functional.mse_loss(z1, z2).item(), rel=1e-6)
    assert vicreg(z1, z2, 2.0, 0.0, 0.0).item() == pytest.approx(2 * only_sim, rel=1e-6)


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.trainable])
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

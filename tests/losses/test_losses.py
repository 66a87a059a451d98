"""The shared SSL losses (``scssl.methods.losses``), each against a value computed by hand."""

import math

import pytest
import torch

from scssl.methods.losses import barlow_twins, negative_cosine, nt_xent, nt_xent_with_queue, vicreg


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


def test_nt_xent_with_queue_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [3.0, 4.0]])
    t = 0.5
    unit = lambda v: v / v.norm()
    total = 0.0
    for qi, ki in zip(q, k):
        pos = math.exp(float(unit(qi) @ unit(ki)) / t)
        neg = sum(math.exp(float(unit(qi) @ unit(n)) / t) for n in negatives)
        total += -math.log(pos / (pos + neg))
    assert nt_xent_with_queue(q, k, negatives, t).item() == pytest.approx(total / 2, rel=1e-6)


def test_negative_cosine_by_hand_and_stops_gradient():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    z = torch.tensor([[0.0, 3.0], [2.0, 2.0]], requires_grad=True)
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(-(0.0 + 1.0) / 2)
    loss.backward()
    assert z.grad is None and p.grad is not None


def test_barlow_twins_by_hand():
    z1 = torch.tensor([[1.0, 2.0], [3.0, 0.0], [2.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]])
    lam = 5e-3

    def standardise(col):
        mean = sum(col) / len(col)
        std = math.sqrt(sum((c - mean) ** 2 for c in col) / (len(col) - 1))
        return [(c - mean) / std for c in col]

    a = [standardise(z1[:, j].tolist()) for j in range(2)]
    b = [standardise(z2[:, j].tolist()) for j in range(2)]
    c = [[sum(x * y for x, y in zip(a[i], b[j])) / 3 for j in range(2)] for i in range(2)]
    expected = (1 - c[0][0]) ** 2 + (1 - c[1][1]) ** 2 + lam * (c[0][1] ** 2 + c[1][0] ** 2)
    assert barlow_twins(z1, z2, lam).item() == pytest.approx(expected, rel=1e-5)

import os
import subprocess
import sys

import numpy as np
from scipy import stats
import pytest
import torch

from scssl.augment import (
    AugmentationConfig, Augmenter, build_neighbour_graph, crossover, dropout, gaussian_noise, inner_swap, mix,
    negative_binomial_noise, random_mask,
)
from scssl.augment.ops import RandomSource
from scssl.data import CellMatrix, make_synthetic
from scssl.settings import parse

OFF = parse(AugmentationConfig, {"preset": "base"}, "test")


def _gen(seed=0):
    return RandomSource(seed)


def _all(x):
    return torch.ones(len(x), dtype=torch.bool)


def _on(op, x, won, *args):
    """``op`` applied to the cells of a copy of ``x`` that ``won``."""
    return op(x.clone(), won, *args)


def _only(**sections) -> AugmentationConfig:
    """The base preset (everything off) with the given augmentations switched on."""
    return parse(AugmentationConfig, {"preset": "base", **sections}, "test")


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.8])
def test_masking_zeroes_the_stated_fraction(rate):
    x = torch.rand(256, 1000) + 1.0  # no zeros before masking
    zeroed = _on(random_mask, x, _all(x), rate, _gen()) == 0
    assert abs(zeroed.float().mean().item() - rate) < 0.02
    lag = (zeroed[:, 1:] & zeroed[:, :-1]).float().mean().item()  # neighbouring genes independent
    assert abs(lag - rate**2) < 0.01


@pytest.mark.parametrize("rate", [0.3, 0.8])
def test_gaussian_noise_hits_rate_with_sigma(rate):
    x = torch.ones(256, 1000)
    out = _on(gaussian_noise, x, _all(x), 0.5, rate, _gen())
    changed = out != x
    assert abs(changed.float().mean().item() - rate) < 0.02
    assert abs((out - x)[changed].std().item() - 0.5) < 0.02
    assert abs((out - x)[changed].mean().item()) < 0.01


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_inner_swap_moves_the_stated_fraction_within_each_cell(rate):
    x = torch.rand(256, 1000)
    out = _on(inner_swap, x, _all(x), rate, _gen())
    moved = (out != x).float().mean().item()
    pairs = int(1000 * rate // 2)
    expected = 2 * pairs / 1000 * (1 - 2 / 1000) ** (2 * pairs - 2)  # a pair is kept if neither gene is drawn again
    assert abs(moved - expected) < 0.01
    assert torch.equal(out.sort(dim=1).values, x.sort(dim=1).values)  # values only move within the cell


def test_crossover_takes_the_stated_fraction_from_the_donor():
    x, donors = torch.rand(256, 1000), torch.rand(256, 1000)
    out = _on(crossover, x, _all(x), donors, torch.arange(len(x)), 0.25, _gen())
    from_donor = (out == donors).float().mean().item()
    assert abs(from_donor - 0.25) < 0.02 and torch.equal(torch.where(out == donors, x, out), x)


def test_ops_change_only_the_given_cells():
    x = torch.rand(50, 300) + 1.0
    rows = torch.tensor([3, 17, 40])
    won = torch.zeros(len(x), dtype=torch.bool).index_fill_(0, rows, True)
    for op, args in ((random_mask, (0.5,)), (gaussian_noise, (1.0, 0.5)), (gaussian_noise, (1.0, 0.9)),
                     (inner_swap, (0.5,)), (dropout, (0.5,)), (crossover, (torch.zeros(50, 300), torch.arange(50), 0.5)),
                     (negative_binomial_noise, (0.5,))):
        out = _on(op, x, won, *args, _gen())
        changed = torch.nonzero((out != x).any(dim=1)).squeeze(1)
        assert torch.equal(changed, rows)


def test_dropout_zeroes_and_rescales():
    x = torch.rand(256, 1000) + 1.0
    out = _on(dropout, x, _all(x), 0.3, _gen())
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.02
    torch.testing.assert_close(out[kept], x[kept] / 0.7)


def test_negative_binomial_noise_adds_scaled_nonnegative_noise():
    x = torch.rand(128, 500)
    out = _on(negative_binomial_noise, x, _all(x), 0.2, _gen())
    assert (out >= 0).all() and (out >= x - 1e-6).all()
    assert torch.equal(_on(negative_binomial_noise, x, _all(x), 0.0, _gen()), x)
    added = (out - x) / 0.2  # log1p of counts normalised to 1e4 per cell
    assert torch.allclose(torch.expm1(added).sum(dim=1), torch.full((128,), 1e4), rtol=1e-3)


@pytest.mark.parametrize("mode", ["int", "geo"])
def test_mix_weight_is_between_alpha_and_one(mode):
    x, y = torch.full((500, 1), 2.0), torch.full((500, 1), 8.0)
    out = mix(x, y, 0.6, mode, _gen())
    lam = (8.0 - out) / 6.0 if mode == "int" else torch.log(out / 8.0) / torch.log(torch.tensor(2.0 / 8.0))
    assert lam.min() >= 0.6 - 1e-5 and lam.max() <= 1.0 + 1e-5 and lam.std() > 0.05


def test_mix_exchange_takes_genes_from_partner_with_probability_one_minus_alpha():
    x, y = torch.zeros(256, 1000), torch.ones(256, 1000)
    assert abs(mix(x, y, 0.3, "exc", _gen()).mean().item() - 0.7) < 0.02


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("name", ["masking", "gaussian_noise", "inner_swap", "crossover", "negbin_noise", "dropout"])
@pytest.mark.parametrize("prob", [0.0, 0.3, 1.0])
def test_each_view_applies_an_augmentation_with_its_probability(name, prob, compiled):
    config = _only(**{name: {"prob": prob}})
    x = torch.rand(3000, 60) + 1.0
    first, second = ((view != x).any(dim=1).float() for view in Augmenter(config, seed=1, compiled=compiled)(x))
    for changed in (first, second):
        assert abs(changed.mean().item() - prob) < 0.035
    assert abs((first * second).mean().item() - prob**2) < 0.035  # independent coins for the two views


def test_clear_pipeline_is_the_default_and_presets_apply():
    default = AugmentationConfig()
    assert (default.masking.rate, default.masking.prob) == (0.2, 0.5)
    assert (default.gaussian_noise.sigma, default.gaussian_noise.rate) == (0.2, 0.8)
    assert (default.inner_swap.rate, default.crossover.rate, default.crossover.prob) == (0.1, 0.25, 0.5)
    assert not default.uses_neighbours
    ours = parse(AugmentationConfig, {"preset": "our_pipeline", "masking": {"rate": 0.3}}, "test")
    assert (ours.mnn.prob, ours.mnn.knn, ours.masking.rate, ours.masking.prob) == (0.5, 3, 0.3, 0.5)
    assert ours.crossover.prob == 0.0 and ours.uses_neighbours
    assert all(getattr(OFF, n).prob == 0 for n in ("masking", "gaussian_noise", "inner_swap", "crossover"))


@pytest.mark.parametrize("compiled", [True, False])
def test_same_seed_same_views_and_views_differ(compiled):
    x = torch.rand(64, 100)
    a1, a2 = Augmenter(AugmentationConfig(), seed=7, compiled=compiled)(x)
    b1, b2 = Augmenter(AugmentationConfig(), seed=7, compiled=compiled)(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)
    assert not torch.equal(a1, Augmenter(AugmentationConfig(), seed=8, compiled=compiled)(x)[0])


@pytest.mark.parametrize("compiled", [True, False])
def test_input_is_not_modified(compiled):
    x = torch.rand(32, 20)
    before = x.clone()
    config = _only(masking={"prob": 1.0}, inner_swap={"prob": 1.0}, crossover={"prob": 1.0})
    Augmenter(config, seed=0, compiled=compiled)(x)
    assert torch.equal(x, before)


# The compiled row-wise pass (the CPU default) against the stated rates, as the tensor ops above.

def _compiled_view(x: torch.Tensor, seed: int = 0, **sections) -> torch.Tensor:
    """The first view of ``x`` with the given augmentations at prob 1, through the compiled pass."""
    return Augmenter(_only(**{name: {"prob": 1.0, **kw} for name, kw in sections.items()}), seed=seed,
                     compiled=True)(x)[0]


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5, 0.9])
def test_compiled_masking_zeroes_the_stated_fraction(rate):
    out = _compiled_view(torch.rand(256, 1000) + 1.0, masking={"rate": rate})
    assert abs((out == 0).float().mean().item() - rate) < 0.01
    per_row = (out == 0).float().mean(dim=1)  # independent genes: binomial spread across cells
    assert abs(per_row.var().item() - rate * (1 - rate) / 1000) < 0.3 * rate * (1 - rate) / 1000


@pytest.mark.parametrize("rate", [0.3, 0.8, 1.0])
def test_compiled_gaussian_noise_is_normal_at_its_rate_and_sigma(rate):
    x = torch.ones(256, 1000)
    out = _compiled_view(x, gaussian_noise={"sigma": 0.5, "rate": rate})
    changed = out != x
    assert abs(changed.float().mean().item() - rate) < 0.01
    noise = ((out - x)[changed] / 0.5).double().numpy()
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 1.0) < 0.01
    assert stats.kstest(noise, "norm").pvalue > 1e-3
    beyond = np.abs(noise) > 3.0  # the ziggurat's tail beyond its base layer is drawn apart
    assert abs(beyond.mean() - 2 * stats.norm.sf(3.0)) < 4 * np.sqrt(2 * stats.norm.sf(3.0) / len(noise))


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_compiled_inner_swap_permutes_the_stated_fraction(rate):
    x = torch.rand(256, 1000)
    out = _compiled_view(x, inner_swap={"rate": rate})
    assert torch.equal(out.sort(dim=1).values, x.sort(dim=1).values)  # each cell's values, moved
    pairs = int(1000 * rate // 2)
    expected = 2 * pairs / 1000 * (1 - 2 / 1000) ** (2 * pairs - 2)
    assert abs((out != x).float().mean().item() - expected) < 0.01


def test_compiled_crossover_takes_the_stated_fraction_from_one_other_cell():
    x = torch.rand(256, 1000)
    out = _compiled_view(x, crossover={"rate": 0.25})
    changed = out != x
    assert abs(changed.float().mean().item() - 0.25) < 0.01
    for row in range(256):
        genes = torch.nonzero(changed[row]).squeeze(1)
        donors = (x[:, genes] == out[row, genes]).all(dim=1).nonzero().squeeze(1)
        assert donors.tolist() != [row] and len(donors) == 1


def test_compiled_views_do_not_depend_on_the_number_of_threads():
    x = torch.rand(128, 300)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = Augmenter(AugmentationConfig(), seed=3)(x)
        torch.set_num_threads(2)
        two = Augmenter(AugmentationConfig(), seed=3)(x)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_compiled_pass_leaves_torch_its_threads():
    """numba's first parallel call in a process starts its OpenMP threads and raised torch's count to
    every core, so the first trial in a fresh Ray worker trained on more threads than it was given."""
    script = (
        "import torch\n"
        "from scssl.augment import AugmentationConfig, Augmenter\n"
        "torch.set_num_threads(1)\n"
        "Augmenter(AugmentationConfig(), seed=0)(torch.rand(64, 100))\n"
        "print(torch.get_num_threads())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1"]


@pytest.fixture(scope="module")
def cells_and_graph():
    adata = make_synthetic(n_cells=600, n_genes=80, n_batches=3, n_cell_types=4, seed=5)
    X = np.log1p(adata.X.toarray()).astype(np.float32)
    X += np.arange(len(X))[:, None] * 1e-3  # distinct rows, so that a row identifies its cell
    batches = adata.obs["batch"].to_numpy()
    return X, batches, build_neighbour_graph(X, batches)


def _row_ids(view: torch.Tensor, X: np.ndarray) -> np.ndarray:
    """The cell each row of ``view`` is an exact copy of."""
    distance = torch.cdist(view, torch.as_tensor(X), compute_mode="donot_use_mm_for_euclid_dist")
    assert (distance.min(dim=1).values < 1e-5).all()
    return distance.argmin(dim=1).numpy()


def test_neighbour_graph_is_true_neighbours(cells_and_graph):
    X, batches, graph = cells_and_graph
    codes = np.unique(batches, return_inverse=True)[1]
    assert (codes[graph.within] == codes[:, None]).all()
    assert (graph.within != np.arange(len(X))[:, None]).all()
    assert all((codes[graph.balanced[:, b]] == b).all() for b in range(3))
    i, j = np.nonzero(graph.mnn >= 0)
    partner = graph.mnn[i, j]
    assert len(i) > 0 and (codes[partner] != codes[i]).all()
    assert all(a in graph.mnn[b] for a, b in zip(i, partner))  # mutual
    # the within-batch neighbours are the nearest of the batch in the graph's own PCA space: they are
    # much closer than random cells of the batch
    near = np.linalg.norm(X[graph.within[:, 0]] - X, axis=1).mean()
    rand = np.linalg.norm(X[np.random.default_rng(0).permutation(len(X))] - X, axis=1).mean()
    assert near < 0.8 * rand


def test_bbknn_partners_come_from_the_balanced_graph(cells_and_graph):
    X, _, graph = cells_and_graph
    cells = CellMatrix(X)
    config = _only(bbknn={"prob": 1.0, "alpha": 0.0, "mode": "exc", "knn": 3})  # alpha 0: every gene from the partner
    idx = torch.arange(0, 600, 3)
    view, _ = Augmenter(config, seed=0, rows=cells.rows, graph=graph)(cells.rows(idx), idx)
    partners = _row_ids(view, X)
    for cell, partner in zip(idx.numpy(), partners):
        assert partner in graph.balanced[cell, :, :3]


def test_mnn_views_use_within_neighbours_and_mnn_partners(cells_and_graph):
    X, _, graph = cells_and_graph
    cells = CellMatrix(X)
    config = _only(mnn={"prob": 1.0, "alpha": 0.0, "mode": "exc", "knn": 4})
    idx = torch.arange(600)
    first, second = Augmenter(config, seed=0, rows=cells.rows, graph=graph)(cells.rows(idx), idx)
    first_ids, second_ids = _row_ids(first, X), _row_ids(second, X)
    for cell in range(600):
        assert first_ids[cell] in graph.within[cell, :4]
        partners = graph.mnn[cell][graph.mnn[cell] >= 0]
        anchors = partners if len(partners) else [cell]
        assert any(second_ids[cell] in graph.within[a, :4] for a in anchors)


def test_neighbour_augmentations_need_a_graph():
    with pytest.raises(ValueError, match="NeighbourGraph"):
        Augmenter(_only(mnn={"prob": 0.5}))

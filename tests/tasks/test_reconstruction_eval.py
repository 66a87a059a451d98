import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import explained_variance_score, mean_squared_error

from scssl.evaluate.reconstruction import mean_reconstruction, pca_reconstruction, reconstruction_scores


def sklearn_scores(x, x_hat):
    return {
        "mse": mean_squared_error(x, x_hat),
        "explained_variance": explained_variance_score(x, x_hat, multioutput="uniform_average"),
        "explained_variance_weighted": explained_variance_score(x, x_hat, multioutput="variance_weighted"),
    }


def expression_with_constant_genes(rng, n_cells=60, n_genes=12):
    """Log-normal-like expression and a noisy reconstruction, with the constant genes sklearn treats
    specially: predicted badly (scores 0), predicted exactly (1), and off by a constant (1)."""
    x = np.log1p(rng.poisson(3.0, size=(n_cells, n_genes)) * rng.gamma(2.0, size=n_genes))
    x_hat = x + rng.normal(0, 0.5, size=x.shape)
    x[:, 0] = 0.0
    x[:, 1], x_hat[:, 1] = 1.5, 1.5
    x[:, 2], x_hat[:, 2] = 2.0, 2.5
    return x, x_hat


@pytest.mark.parametrize("chunk_cells", [7, 1024])
def test_scores_equal_sklearn_with_constant_genes(rng, chunk_cells):
    x, x_hat = expression_with_constant_genes(rng)
    scores = reconstruction_scores(x, x_hat, chunk_cells=chunk_cells)
    assert set(scores) == {"mse", "explained_variance", "explained_variance_weighted"}
    for name, expected in sklearn_scores(x, x_hat).items():
        assert scores[name] == pytest.approx(expected, rel=1e-12), name


def test_all_constant_genes_weight_uniformly_as_sklearn():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    x_hat = np.array([[1.0, 0.5], [1.0, 0.0], [1.0, 1.0]])  # gene 0 exact (1), gene 1 varying residual (0)
    scores = reconstruction_scores(x, x_hat)
    assert scores["explained_variance"] == scores["explained_variance_weighted"] == 0.5
    for name, expected in sklearn_scores(x, x_hat).items():
        assert scores[name] == pytest.approx(expected), name


def test_a_constant_gene_scores_as_sklearn_means_even_where_its_rounding_does_not(rng):
    """The mean of 60 copies of 0.1 is not exactly 0.1, so sklearn finds a variance of 1e-33 and scores the gene
    -4.6e32; the gene is constant, which sklearn scores 0, as it does the same data with the gene at 0.0. Likewise
    a constant gene off by a constant residual scores 1 (the residual -0.2 has no variance either)."""
    x, x_hat = expression_with_constant_genes(rng)
    exact = sklearn_scores(x, x_hat)
    x[:, 0] = 0.1
    x[:, 1], x_hat[:, 1] = 0.1, 0.3
    assert explained_variance_score(x, x_hat, multioutput="uniform_average") < -1e20  # sklearn's rounding
    scores = reconstruction_scores(x, x_hat)
    assert scores["explained_variance"] == pytest.approx(exact["explained_variance"], rel=1e-12)
    assert scores["explained_variance_weighted"] == pytest.approx(exact["explained_variance_weighted"], rel=1e-12)


def test_all_true_mask_gives_the_unmasked_scores(rng):
    x, x_hat = expression_with_constant_genes(rng)
    scores = reconstruction_scores(x, x_hat, mask=np.ones(x.shape, dtype=bool), chunk_cells=16)
    for name in ["mse", "explained_variance", "explained_variance_weighted"]:
        assert scores[f"masked_{name}"] == pytest.approx(scores[name], rel=1e-12), name


def test_masked_scores_by_hand():
    x = np.array([[1.0, 2.0, 0.0], [3.0, 4.0, 0.0], [5.0, 6.0, 7.0]])
    x_hat = np.array([[1.0, 0.0, 0.0], [2.0, 4.0, 0.0], [5.0, 9.0, 0.0]])
    mask = np.array([[True, True, False], [True, False, False], [False, True, True]])  # gene 2 masked once: left out
    # gene 0 on cells 0, 1: x = [1, 3], residual [0, 1]: mse 0.5, var(x) 1, var(residual) 0.25, EV 0.75
    # gene 1 on cells 0, 2: x = [2, 6], residual [2, -3]: mse 6.5, var(x) 4, var(residual) 6.25, EV -0.5625
    scores = reconstruction_scores(x, x_hat, mask=mask)
    assert scores["masked_mse"] == pytest.approx(3.5)
    assert scores["masked_explained_variance"] == pytest.approx((0.75 - 0.5625) / 2)
    assert scores["masked_explained_variance_weighted"] == pytest.approx((1 * 0.75 + 4 * -0.5625) / 5)
    assert scores["mse"] == pytest.approx(mean_squared_error(x, x_hat))


def test_masked_scores_are_nan_when_no_gene_has_two_masked_cells(rng):
    x, x_hat = expression_with_constant_genes(rng)
    mask = np.zeros(x.shape, dtype=bool)
    mask[0] = True  # one masked cell per gene: no variance to explain
    scores = reconstruction_scores(x, x_hat, mask=mask)
    assert np.isnan([scores["masked_mse"], scores["masked_explained_variance"],
                     scores["masked_explained_variance_weighted"]]).all()
    assert scores["mse"] == pytest.approx(mean_squared_error(x, x_hat))


def test_mismatched_shapes_are_refused_not_broadcast(rng):
    x = rng.normal(size=(5, 3))
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_scores(x, x.mean(axis=0, keepdims=True))
    with pytest.raises(ValueError, match="mask"):
        reconstruction_scores(x, x, mask=np.ones(3, dtype=bool))


def test_sparse_input_gives_the_dense_scores(rng):
    x, x_hat = expression_with_constant_genes(rng)
    x[rng.random(x.shape) < 0.6] = 0.0
    mask = rng.random(x.shape) < 0.3
    dense = reconstruction_scores(x, x_hat, mask=mask)
    assert reconstruction_scores(sp.csr_matrix(x), x_hat, mask=mask, chunk_cells=9) == pytest.approx(dense, rel=1e-12)
    assert reconstruction_scores(sp.coo_matrix(x), sp.csr_matrix(x_hat), mask=mask) == pytest.approx(dense, rel=1e-12)


def test_mean_floor_explains_nothing_on_held_out_cells(rng):
    X = rng.gamma(2.0, size=(150, 20)) * rng.gamma(1.0, size=20)
    train, held_out = X[:100], X[100:]
    floor = mean_reconstruction(train, len(held_out))
    assert floor.shape == held_out.shape and np.allclose(floor, train.mean(axis=0))
    np.testing.assert_allclose(mean_reconstruction(sp.csr_matrix(train), 3), floor[:3])
    scores = reconstruction_scores(held_out, floor)
    assert scores["explained_variance"] <= 1e-12 and scores["explained_variance_weighted"] <= 1e-12
    # off by the training mean's error as well as the spread: worse than the held-out cells' own mean
    assert scores["mse"] > mean_squared_error(held_out, np.broadcast_to(held_out.mean(axis=0), held_out.shape))


def test_pca_with_all_components_reconstructs_exactly(rng):
    X = rng.normal(size=(30, 50))  # centred rank 29 = min(shape) - 1, the most ARPACK allows
    np.testing.assert_allclose(pca_reconstruction(X, X, n_components=100), X, atol=1e-8)


def test_pca_floor_is_the_top_components_projection_and_beats_the_mean(rng):
    low_rank = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 40)) + rng.normal(0, 0.1, size=(300, 40))
    train, held_out = low_rank[:200], low_rank[200:]
    reconstruction = pca_reconstruction(train, held_out, n_components=3)

    mean = train.mean(axis=0)
    top = np.linalg.svd(train - mean, full_matrices=False)[2][:3]
    np.testing.assert_allclose(reconstruction, (held_out - mean) @ top.T @ top + mean, atol=1e-8)

    pca = reconstruction_scores(held_out, reconstruction)
    floor = reconstruction_scores(held_out, mean_reconstruction(train, len(held_out)))
    assert pca["explained_variance"] > 0.9 > floor["explained_variance"]
    assert pca["mse"] < floor["mse"] / 10


def test_pca_floor_takes_sparse_input(rng):
    X = rng.poisson(0.7, size=(80, 30)).astype(float)
    dense = pca_reconstruction(X[:60], X[60:], n_components=5)
    np.testing.assert_allclose(pca_reconstruction(sp.csr_matrix(X[:60]), sp.csr_matrix(X[60:]), 5), dense, atol=1e-8)

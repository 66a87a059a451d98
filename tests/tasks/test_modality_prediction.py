import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import pearsonr
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from scssl.evaluate.modality_prediction import K_MODALITY, knn_modality_prediction, modality_prediction_scores


def test_prediction_equals_mean_over_sklearn_cosine_neighbours(rng):
    ref, query = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    ref_protein = rng.gamma(2.0, size=(60, 7))

    predicted = knn_modality_prediction(ref, ref_protein, query)

    nearest = NearestNeighbors(n_neighbors=5, metric="cosine").fit(ref).kneighbors(query, return_distance=False)
    assert K_MODALITY == 5
    assert predicted.dtype == np.float32 and predicted.shape == (25, 7)
    np.testing.assert_allclose(predicted, ref_protein[nearest].mean(axis=1), rtol=1e-6)


def test_neighbours_are_by_angle_not_distance():
    # the query points along x; the reference cells along x are far away, those near it point diagonally
    ref = np.array([[10, 0.1], [20, -0.1], [30, 0.2], [40, 0.0], [50, 0.1], [1, 1], [0.9, 1.1], [1.1, 0.9]])
    ref_other = np.r_[np.ones((5, 2)), np.zeros((3, 2))]
    np.testing.assert_array_equal(knn_modality_prediction(ref, ref_other, np.array([[1.0, 0.0]])), [[1, 1]])
    # with fewer reference cells than k, all of them are averaged
    few = knn_modality_prediction(ref[:3], ref_other[:3] * [[1], [2], [6]], np.array([[1.0, 0.0]]))
    assert few.tolist() == [[3, 3]]


def test_sparse_reference_modality_gives_the_same_prediction(rng):
    ref, query = rng.normal(size=(50, 6)), rng.normal(size=(20, 6))
    ref_atac = (rng.random((50, 40)) < 0.2).astype(np.float32)
    dense = knn_modality_prediction(ref, ref_atac, query)
    np.testing.assert_array_equal(knn_modality_prediction(ref, sp.csr_matrix(ref_atac), query), dense)
    assert isinstance(dense, np.ndarray)


def test_pearson_per_cell_and_per_feature_equal_scipy(rng):
    true = rng.gamma(2.0, size=(30, 10))
    predicted = true + rng.normal(scale=1.5, size=true.shape)

    scores = modality_prediction_scores(true, predicted)

    per_cell = [pearsonr(true[i], predicted[i])[0] for i in range(30)]
    per_feature = [pearsonr(true[:, j], predicted[:, j])[0] for j in range(10)]
    assert scores["pearson"] == pytest.approx(np.mean(per_cell))
    assert scores["pearson_min"] == pytest.approx(np.min(per_cell))
    assert scores["pearson_max"] == pytest.approx(np.max(per_cell))
    assert scores["feature_pearson"] == pytest.approx(np.mean(per_feature))
    assert "auroc" not in scores


def test_rmse_by_hand():
    scores = modality_prediction_scores(np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[1.0, 1.0], [2.0, 1.0]]))
    assert scores["rmse"] == pytest.approx(np.sqrt((1 + 0 + 0 + 4) / 4))


def test_constant_cells_and_features_are_left_out():
    true = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 5.0], [0.1, 0.1, 0.1], [3.0, 1.0, 2.0]])
    # constant in float, but 0.1 has no exact binary form: centring on its computed mean leaves rounding noise
    predicted = np.array([[1.0, 3.0, 2.0], [0.1, 0.1, 0.1], [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]])

    scores = modality_prediction_scores(true, predicted)

    defined = [pearsonr(true[i], predicted[i])[0] for i in (0, 3)]  # cell 2 has constant truth, cell 1 prediction
    assert scores["pearson"] == pytest.approx(np.mean(defined))
    assert scores["pearson_min"] == pytest.approx(min(defined))
    assert scores["pearson_max"] == pytest.approx(max(defined))

    true_by_feature, predicted_by_feature = true.T.copy(), predicted.T.copy()  # the same cases, across cells
    scores = modality_prediction_scores(true_by_feature, predicted_by_feature)
    assert scores["feature_pearson"] == pytest.approx(np.mean(defined))


def test_perfect_prediction_has_r_of_exactly_one():
    true = np.array([[0.6, 0.3, 0.0, 0.0]])  # its r with 3 x itself rounds to 1.0000000000000002 unless clipped
    assert modality_prediction_scores(true, 3 * true)["pearson_max"] == 1.0


def test_no_defined_pearson_gives_nan():
    scores = modality_prediction_scores(np.ones((3, 4)), np.arange(12.0).reshape(3, 4))
    assert np.isnan(scores["pearson"]) and np.isnan(scores["pearson_min"]) and np.isnan(scores["pearson_max"])
    assert np.isnan(scores["feature_pearson"])
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((np.arange(12.0) - 1) ** 2)))


def test_auroc_equals_sklearn_for_binary_truth(rng):
    true = (rng.random((20, 15)) < 0.3).astype(np.float32)
    predicted = np.clip(true * 0.3 + rng.random(true.shape) * 0.7, 0, 1)

    scores = modality_prediction_scores(sp.csr_matrix(true), predicted, binary=True)

    assert scores["auroc"] == pytest.approx(roc_auc_score(true.ravel(), predicted.ravel()))
    assert 0.5 < scores["auroc"] < 1
    assert scores == pytest.approx(modality_prediction_scores(true, predicted, binary=True))


def test_auroc_is_nan_when_truth_has_one_class():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn warns (older versions raise) on a single class
        scores = modality_prediction_scores(np.zeros((3, 4)), np.arange(12.0).reshape(3, 4), binary=True)
    assert np.isnan(scores["auroc"])


def test_mismatched_shapes_are_rejected(rng):
    with pytest.raises(ValueError, match="rows of ref_other"):
        knn_modality_prediction(rng.normal(size=(10, 3)), np.ones((9, 2)), rng.normal(size=(4, 3)))
    with pytest.raises(ValueError, match="true values have shape"):
        modality_prediction_scores(np.ones((3, 4)), np.ones((3, 5)))


def test_spearman_per_cell_equals_scipy_and_mse_by_hand(rng):
    from scipy.stats import spearmanr

    true = rng.poisson(2.0, (6, 9)).astype(float)  # ties, as counts have
    predicted = true + rng.normal(0, 1.0, true.shape)
    scores = modality_prediction_scores(true, predicted)
    expected = np.mean([spearmanr(true[i], predicted[i])[0] for i in range(6)])
    assert scores["spearman"] == pytest.approx(expected, rel=1e-10)
    assert scores["mse"] == pytest.approx(((true - predicted) ** 2).mean(), rel=1e-12)

import numpy as np
import pytest
import scipy.sparse as sp

from scssl.data.modalities import binarise, clr, log_normalise, tfidf, top_features_by_count

COUNTS = np.array([[0, 2, 1, 3],
                   [4, 0, 0, 1],
                   [1, 1, 1, 1]], dtype=np.float32)


def test_clr_equals_muon_formula_per_cell():
    result = clr(sp.csr_matrix(COUNTS))

    # muon's dense branch, axis=1: log1p(x / exp(mean over all features of log1p(x)))
    expected = np.log1p(COUNTS / np.exp(np.log1p(COUNTS).mean(axis=1, keepdims=True)))
    assert isinstance(result, sp.csr_matrix) and result.dtype == np.float32
    np.testing.assert_allclose(result.toarray(), expected, rtol=1e-6)
    # by hand: cell 3 has log1p(1) = log 2 everywhere, so x / 2 = 0.5; cell 2's geometric mean of x + 1 is 10 ** (1/4)
    np.testing.assert_allclose(result.toarray()[2], np.log(1.5), rtol=1e-6)
    assert result[1, 0] == pytest.approx(np.log1p(4 / 10 ** 0.25), rel=1e-6)


def test_clr_keeps_zeros_and_sparsity():
    result = clr(sp.csr_matrix(COUNTS))
    assert result.nnz == np.count_nonzero(COUNTS)
    assert np.array_equal(result.toarray() == 0, COUNTS == 0)


def test_log_normalise_scales_each_cell_to_target_sum():
    result = log_normalise(COUNTS, target_sum=10).toarray()
    np.testing.assert_allclose(result[0], np.log1p([0, 20 / 6, 10 / 6, 30 / 6]), rtol=1e-6)
    np.testing.assert_allclose(result[2], np.log1p(2.5), rtol=1e-6)
    np.testing.assert_allclose(np.expm1(log_normalise(COUNTS).toarray()).sum(axis=1), 1e4, rtol=1e-5)


def test_binarise_marks_counts():
    result = binarise(np.array([[0, 3, 1], [2, 0, 0]]))
    assert result.dtype == np.float32 and np.array_equal(result.toarray(), [[0, 1, 1], [1, 0, 0]])
    # a stored zero, and a count stored in two parts (scipy adds them up)
    unusual = sp.csr_matrix((np.array([0.0, 2.0, 1.0]), np.array([0, 1, 1]), np.array([0, 3])), shape=(1, 2))
    assert binarise(unusual).toarray().tolist() == [[0, 1]]


def test_tfidf_equals_muon_formula():
    binary = (COUNTS > 0).astype(np.float32)
    result = tfidf(sp.csr_matrix(binary))

    # muon's defaults: log1p(1e4 * TF) * log1p(IDF), TF = x / cell total, IDF = n_cells / peak total
    term_frequency = np.log1p(1e4 * binary / binary.sum(axis=1, keepdims=True))
    inverse_document_frequency = np.log1p(binary.shape[0] / binary.sum(axis=0))
    assert isinstance(result, sp.csr_matrix) and result.dtype == np.float32
    np.testing.assert_allclose(result.toarray(), term_frequency * inverse_document_frequency, rtol=1e-6)
    # by hand: cell 3 opens all 4 peaks (TF = 2500); peak 1 is open in 2 of 3 cells (IDF = 1.5)
    assert result[2, 0] == pytest.approx(np.log(2501) * np.log(2.5), rel=1e-6)
    assert result[1, 1] == 0


def test_tfidf_leaves_empty_cells_and_peaks_zero():
    binary = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    result = tfidf(binary).toarray()
    assert np.isfinite(result).all() and not result[1].any() and not result[:, 1].any()
    assert result[2, 0] == pytest.approx(np.log1p(1e4) * np.log1p(1.5), rel=1e-6)


@pytest.mark.parametrize("transform", [clr, log_normalise, binarise, tfidf])
def test_sparse_and_dense_input_agree(transform):
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.7, size=(30, 12)).astype(np.float32)
    counts[:, 3] = 0  # a feature without counts
    from_dense, from_sparse = transform(counts), transform(sp.csr_matrix(counts))
    assert isinstance(from_dense, sp.csr_matrix) and from_dense.dtype == np.float32
    np.testing.assert_array_equal(from_dense.toarray(), from_sparse.toarray())


def test_transforms_do_not_change_their_input():
    counts = sp.csr_matrix(COUNTS, dtype=np.float64)  # float64: no conversion copy to hide a change in place
    counts.data[0] = 0  # a stored zero, which the transforms drop from their own copy
    for transform in (clr, log_normalise, binarise, tfidf):
        transform(counts)
    assert counts.nnz == np.count_nonzero(COUNTS) and counts.data[0] == 0


def test_top_features_by_count_breaks_ties_by_column_order():
    # column totals 5, 3, 2, 5, 3, 0
    counts = sp.csr_matrix(np.array([[5, 1, 2, 0, 3, 0],
                                     [0, 2, 0, 5, 0, 0]], dtype=np.float32))
    assert top_features_by_count(counts, 1).tolist() == [0]
    assert top_features_by_count(counts, 2).tolist() == [0, 3]
    assert top_features_by_count(counts, 3).tolist() == [0, 1, 3]  # 1 before 4: equal totals, earlier column
    assert top_features_by_count(counts, 4).tolist() == [0, 1, 3, 4]
    assert top_features_by_count(counts.toarray(), 6).tolist() == list(range(6))
    assert top_features_by_count(counts, 100).tolist() == list(range(6))
    assert top_features_by_count(counts, 0).tolist() == []
    with pytest.raises(ValueError, match="non-negative"):
        top_features_by_count(counts, -1)


@pytest.mark.parametrize("transform", [clr, log_normalise, binarise, tfidf, lambda x: top_features_by_count(x, 2)])
def test_negative_input_is_rejected(transform):
    negative = COUNTS.copy()
    negative[1, 2] = -1
    with pytest.raises(ValueError, match="negative"):
        transform(negative)
    with pytest.raises(ValueError, match="negative"):
        transform(sp.csr_matrix(negative))

"""Per-modality preprocessing of raw counts (cells x features) for multimodal data: CLR or log-normalisation for
protein (CITE-seq), binarisation and TF-IDF for chromatin accessibility (ATAC), and count-based feature selection.

Formulas follow muon (``mu.prot.pp.clr`` with ``axis=1``, ``mu.atac.pp.tfidf`` with its defaults) so that numbers
match the tools the benchmarked studies used, without importing muon or scanpy. Every function takes a scipy
sparse matrix or a dense array, returns CSR float32, works on stored values only (zeros stay zero, no dense copy
of a large peak matrix) and raises ``ValueError`` on negative input, which no count matrix holds.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def clr(counts) -> sp.csr_matrix:
    """Centred log-ratio of each cell, as muon's ``mu.prot.pp.clr(adata, axis=1)`` (flavor "seurat")::

        clr(x)_ij = log1p(x_ij / exp(mean_j' log1p(x_ij')))

    the mean running over all features of cell i, zeros included. Zeros stay zero, so sparsity is kept.
    """
    X = _nonnegative_csr(counts)
    log_geometric_mean = np.asarray(X.log1p().sum(axis=1)).ravel() / X.shape[1]
    X.data = np.log1p(X.data / _per_stored_value(np.exp(log_geometric_mean), X))
    return X.astype(np.float32)


def log_normalise(counts, target_sum: float = 1e4) -> sp.csr_matrix:
    """``log1p(x_ij * target_sum / sum_j' x_ij')``: the RNA treatment, an alternative to CLR for protein.
    Cells without counts stay zero."""
    X = _nonnegative_csr(counts)
    X.data = np.log1p(X.data * target_sum / _per_stored_value(np.asarray(X.sum(axis=1)).ravel(), X))
    return X.astype(np.float32)


def binarise(counts) -> sp.csr_matrix:
    """1 where a feature has a count in a cell (accessible peak), else 0, as muon's ``mu.atac.pp.binarize``."""
    X = _nonnegative_csr(counts)
    X.data = np.ones_like(X.data)
    return X.astype(np.float32)


def tfidf(binary) -> sp.csr_matrix:
    """TF-IDF of (binarised) peak counts, as muon's ``mu.atac.pp.tfidf`` with its defaults (log_tf, log_idf,
    not log_tfidf, scale_factor 1e4)::

        tfidf_ij = log1p(1e4 * x_ij / sum_j' x_ij') * log1p(n_cells / sum_i' x_i'j)

    Entries without a count are zero; so are whole cells or peaks without counts (muon's NaN -> 0).
    """
    X = _nonnegative_csr(binary)
    term_frequency = X.data * 1e4 / _per_stored_value(np.asarray(X.sum(axis=1)).ravel(), X)
    inverse_document_frequency = X.shape[0] / np.asarray(X.sum(axis=0)).ravel()[X.indices]
    X.data = np.log1p(term_frequency) * np.log1p(inverse_document_frequency)
    return X.astype(np.float32)


def top_features_by_count(counts, n: int) -> np.ndarray:
    """Column indices of the ``n`` features with the most total counts, in column order; of features with equal
    totals the earlier columns are taken, so the choice is reproducible. ``n`` beyond the width takes all."""
    X = _nonnegative_csr(counts)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    totals = np.asarray(X.sum(axis=0)).ravel()
    most_first = np.argsort(-totals, kind="stable")
    return np.sort(most_first[:n])


def _nonnegative_csr(counts) -> sp.csr_matrix:
    """A float64 CSR copy without stored zeros, safe to change in place; negative counts are an error."""
    X = sp.csr_matrix(counts).astype(np.float64, copy=True)
    X.sum_duplicates()
    X.eliminate_zeros()
    if (X.data < 0).any():
        raise ValueError(f"expected non-negative counts; {int((X.data < 0).sum())} values are negative")
    return X


def _per_stored_value(per_cell: np.ndarray, X: sp.csr_matrix) -> np.ndarray:
    """``per_cell`` repeated for each stored value of its cell, to scale ``X.data`` row by row."""
    return np.repeat(per_cell, np.diff(X.indptr))

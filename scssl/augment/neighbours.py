"""Neighbour graphs for the BBKNN and MNN augmentations, computed once per set of training cells.

Every index in a graph is a row of the matrix it was built from, so an augmentation's partner is
a true neighbour (scSSL-Bench's code used the position in a neighbour list as a row index, so its
"neighbour" was one of the first k cells of the data set). Neighbours are exact Euclidean ones in a
50-component PCA (``scssl.neighbours``, the search behind every graph of scssl); mutual nearest neighbours
are found on L2-normalised components.
scSSL-Bench used Annoy (Manhattan) for within-batch kNN, bbknn's graph, and Seurat-style CCA anchors
for MNN; these are close, not identical, choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from scssl.neighbours import nearest

MAX_KNN = 20
MAX_MNN = 10


@dataclass
class NeighbourGraph:
    """``within[i]``: the nearest cells of i's own batch, nearest first (i excluded).
    ``balanced[i, b]``: the nearest cells of batch b (i excluded). ``mnn[i]``: i's mutual nearest
    neighbours in other batches, padded with -1."""

    within: np.ndarray
    balanced: np.ndarray
    mnn: np.ndarray


def build_neighbour_graph(
    X: np.ndarray | sp.spmatrix, batches: np.ndarray, n_pcs: int = 50, k_anchor: int = 5, seed: int = 0
) -> NeighbourGraph:
    from sklearn.decomposition import PCA  # sklearn here: a NeighbourGraph alone (a type, a pickle) needs none

    n = X.shape[0]
    n_components = min(n_pcs, min(X.shape) - 1)
    pcs = PCA(n_components=n_components, svd_solver="arpack", random_state=seed).fit_transform(X)
    codes = np.unique(np.asarray(batches), return_inverse=True)[1]
    members = [np.flatnonzero(codes == b) for b in range(codes.max() + 1)]

    within = np.empty((n, MAX_KNN), dtype=np.int64)
    balanced = np.empty((n, len(members), MAX_KNN), dtype=np.int64)
    for b, rows in enumerate(members):
        neighbours = _knn_rows(pcs[rows], pcs, rows, MAX_KNN)  # every cell's nearest cells of batch b
        balanced[:, b] = neighbours
        within[rows] = neighbours[rows]

    unit = pcs / np.maximum(np.linalg.norm(pcs, axis=1, keepdims=True), 1e-12)
    pairs = sp.csr_matrix((n, n), dtype=np.int8)
    for a in range(len(members)):
        for b in range(a + 1, len(members)):
            pairs = pairs + _mutual_pairs(unit, members[a], members[b], k_anchor, n)
    return NeighbourGraph(within, balanced, _padded_rows(pairs + pairs.T, MAX_MNN))


def _knn_rows(reference: np.ndarray, queries: np.ndarray, reference_rows: np.ndarray, k: int) -> np.ndarray:
    """For every query, the data-set rows of its k nearest reference cells, itself excluded; when the
    batch has fewer than k other cells, its cells repeat to fill k columns (a one-cell batch: itself)."""
    _, idx = nearest(reference, queries, k + 1)
    rows = reference_rows[idx]
    is_self = rows == np.arange(len(queries))[:, None]
    rows = np.take_along_axis(rows, np.argsort(is_self, axis=1, kind="stable"), axis=1)  # self moved last
    available = np.maximum(rows.shape[1] - is_self.sum(axis=1), 1)
    return np.take_along_axis(rows, np.arange(k)[None, :] % available[:, None], axis=1)


def _mutual_pairs(unit: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """An n x n matrix with a 1 at (i, j) for each mutual nearest neighbour pair, i in a and j in b."""
    def knn_matrix(src: np.ndarray, dst: np.ndarray) -> sp.csr_matrix:
        idx = nearest(unit[dst], unit[src], k)[1]
        return sp.csr_matrix((np.ones(idx.size, dtype=np.int8), (np.repeat(src, idx.shape[1]), dst[idx].ravel())),
                             shape=(n, n))
    return knn_matrix(rows_a, rows_b).multiply(knn_matrix(rows_b, rows_a).T).tocsr()


def _padded_rows(matrix: sp.csr_matrix, width: int) -> np.ndarray:
    """The column indices of each row's non-zeros, at most ``width``, padded with -1."""
    matrix = sp.csr_matrix(matrix)
    counts = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    position = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], counts)
    keep = position < width
    out = np.full((matrix.shape[0], width), -1, dtype=np.int64)
    out[rows[keep], position[keep]] = matrix.indices[keep]
    return out

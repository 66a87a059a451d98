"""Cells as methods see them (``Cells``), and on the training device, cut into dense float32 mini-batches
(``CellMatrix``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from scssl.augment import NeighbourGraph


class CellMatrix:
    """A cells x genes matrix held on ``device``; ``rows(idx)`` returns a dense mini-batch.

    A sparse matrix stays sparse on the device (CSR arrays) and only the selected rows are
    densified, so a large data set never exists densely in memory. On a CPU scipy densifies them: its
    compiled row loop is several times faster than the index operations that do it on a GPU.
    """

    def __init__(self, X: np.ndarray | sp.spmatrix, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.n_cells, self.n_genes = X.shape
        self.sparse = sp.issparse(X)
        self._csr = None
        if self.sparse and self.device.type == "cpu":
            self._csr = sp.csr_matrix(X, dtype=np.float32)
        elif self.sparse:
            X = sp.csr_matrix(X, dtype=np.float32)
            self._indptr = torch.as_tensor(X.indptr.astype(np.int64), device=self.device)
            self._indices = torch.as_tensor(X.indices.astype(np.int64), device=self.device)
            self._values = torch.as_tensor(X.data, device=self.device)
        else:
            self._dense = torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return self._dense.index_select(0, idx)  # a third of the time of self._dense[idx] on a CPU
        if self._csr is not None:
            return torch.from_numpy(self._csr[idx.numpy()].toarray())
        starts = self._indptr[idx]
        counts = self._indptr[idx + 1] - starts
        nnz = int(counts.sum())
        # position in the CSR arrays of each stored value of the selected rows, and its row in the batch
        shift = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts, output_size=nnz)
        pos = torch.arange(nnz, device=self.device) + shift
        row = torch.repeat_interleave(torch.arange(len(idx), device=self.device), counts, output_size=nnz)
        out = torch.zeros(len(idx), self.n_genes, device=self.device)
        out.view(-1).index_put_((row * self.n_genes + self._indices[pos],), self._values[pos])
        return out

    def batches(self, batch_size: int):
        """Consecutive dense mini-batches over all cells, in order (for embedding)."""
        for start in range(0, self.n_cells, batch_size):
            yield self.rows(torch.arange(start, min(start + batch_size, self.n_cells), device=self.device))


@dataclass
class Cells:
    """Cells as a method trains on or embeds them.

    ``X`` is the log-normalised expression of the data set's genes (``genes``); ``counts`` the raw counts
    of the same genes (for methods with a count likelihood); ``batch_codes`` integer batches. With a second
    modality (``other_kind`` protein or atac), ``other`` is what a network sees of it (CLR / log1p protein,
    TF-IDF peaks) and ``other_counts`` its raw counts (peaks: binary); ``other_observed`` marks the cells
    whose second modality was measured (None: all; the others, mosaic data's RNA-only cells, hold zeros).
    ``graph`` is the cells' neighbour graph, for the BBKNN and MNN augmentations (training only);
    ``labels`` their cell-type codes, -1 where unknown, for a method that learns from labels (training
    only: cells to embed never carry them).
    """

    X: np.ndarray | sp.spmatrix
    genes: np.ndarray | None = None
    batch_codes: np.ndarray | None = None
    graph: NeighbourGraph | None = None
    counts: sp.spmatrix | None = None
    other: sp.spmatrix | None = None
    other_counts: sp.spmatrix | None = None
    other_kind: str | None = None
    other_observed: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    def subset(self, rows: np.ndarray) -> "Cells":
        """These cells' ``rows``, without a graph (its rows would no longer match)."""

        def cut(matrix):
            return None if matrix is None else matrix[rows]

        return Cells(self.X[rows], self.genes, cut(self.batch_codes), None, cut(self.counts), cut(self.other),
                     cut(self.other_counts), self.other_kind, cut(self.other_observed), cut(self.labels))

    def with_rna_only(self, extra: "Cells") -> "Cells":
        """These cells followed by ``extra``, cells measured by RNA alone (same genes): their second modality
        zero and marked unobserved, their labels unknown; without a graph."""
        n = extra.n_cells

        def zeros(matrix):
            if matrix is None:
                return None
            return sp.vstack([matrix, sp.csr_matrix((n, matrix.shape[1]), dtype=matrix.dtype)]).tocsr()

        counts = None if self.counts is None else sp.vstack([self.counts, extra.counts]).tocsr()
        observed = np.ones(self.n_cells, bool) if self.other_observed is None else self.other_observed
        return Cells(sp.vstack([self.X, extra.X]).tocsr(), self.genes,
                     np.concatenate([self.batch_codes, extra.batch_codes]), None,
                     counts, zeros(self.other), zeros(self.other_counts),
                     self.other_kind, np.concatenate([observed, np.zeros(n, bool)]),
                     None if self.labels is None else np.concatenate([self.labels, np.full(n, -1)]))

"""Cells as methods see them (``Cells``), and on the training device, cut into dense float32 mini-batches
(``CellMatrix``); ``RowsOf``: rows of a matrix held once, cut without a copy; ``StoredCells``: a matrix on disk."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from scssl.data.store import CellStore, StoredCells

if TYPE_CHECKING:
    from scssl.augment import NeighbourGraph


@dataclass(frozen=True)
class RowsOf:
    """The rows ``index`` of ``matrix``, a matrix held once (a data set's, read without a copy from Ray's object store
    by every trial of a node) and gathered only a mini-batch at a time: a trial cuts its cells without copying them.
    Indexing cuts the index, not the matrix; ``materialised`` copies the rows into a matrix of their own, for a
    method that reads whole matrices."""

    matrix: np.ndarray | sp.csr_matrix
    index: np.ndarray

    @classmethod
    def of(cls, matrix, rows: np.ndarray) -> "RowsOf":
        """``matrix``'s ``rows`` (an index or a mask), without a copy of the matrix."""
        if isinstance(matrix, RowsOf):
            return matrix[rows]
        return cls(matrix, np.arange(matrix.shape[0])[rows])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.index), self.matrix.shape[1]

    def __getitem__(self, rows) -> "RowsOf":
        return RowsOf(self.matrix, self.index[rows])

    def materialised(self) -> np.ndarray | sp.csr_matrix:
        return self.matrix[self.index]


def materialised(matrix):
    """``matrix`` as a matrix of its own (a ``RowsOf`` copied out; None and matrices as they are)."""
    return matrix.materialised() if isinstance(matrix, RowsOf) else matrix


class CellMatrix:
    """A cells x genes matrix held on ``device``; ``rows(idx)`` returns a dense mini-batch.

    A sparse matrix stays sparse on the device (CSR arrays, int32 column indices) and only the selected rows
    are densified, so a large data set never exists densely in memory. On a CPU scipy densifies them: its
    compiled row loop is several times faster than the index operations that do it elsewhere. On a GPU
    ``gather_rows`` does it without waiting for the device. Of ``RowsOf`` a CPU holds the whole matrix as it is
    (no copy) and maps each mini-batch's rows through the index; a GPU holds the whole matrix too (the copy on
    the device is the trial's own anyway). Of ``StoredCells`` nothing is held: rows are read from disk, and a
    training epoch streams (``shuffled``).
    """

    def __init__(self, X: np.ndarray | sp.spmatrix | RowsOf | StoredCells, device: torch.device | str = "cpu"):
        self.source = X  # what was uploaded: a later user of the same matrix on the device takes this copy
        self.device = torch.device(device)
        self.n_cells, self.n_genes = X.shape
        self._index = None
        if isinstance(X, RowsOf):
            self._index = torch.as_tensor(X.index, dtype=torch.long, device=self.device)
            X = X.matrix
        self.stored = X if isinstance(X, StoredCells) else None
        self.sparse = sp.issparse(X) or self.stored is not None
        self._csr = None
        if self.stored is not None:  # read from disk a mini-batch at a time
            return
        if self.sparse and self.device.type == "cpu":
            self._csr = sp.csr_matrix(X, dtype=np.float32)
        elif self.sparse:
            X = sp.csr_matrix(X, dtype=np.float32)
            self._indptr = torch.as_tensor(X.indptr.astype(np.int64), device=self.device)
            self._indices = torch.as_tensor(X.indices.astype(np.int32), device=self.device)
            self._values = torch.as_tensor(X.data, device=self.device)
            self._widest = int(np.diff(X.indptr).max(initial=0))  # known here, so no step asks the device
        else:
            self._dense = torch.as_tensor(np.asarray(X, dtype=np.float32), device=self.device)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self._index is not None:
            idx = self._index[idx]
        if self.stored is not None:
            return dense_on(self.stored.read(idx.cpu().numpy()), self.device)
        if not self.sparse:
            return self._dense.index_select(0, idx)  # a third of the time of self._dense[idx] on a CPU
        if self._csr is not None:
            return torch.from_numpy(self._csr[idx.numpy()].toarray())
        return gather_rows(self._indptr, self._indices, self._values, self._widest, idx, self.n_genes)

    def shuffled(self, batch_size: int, order: torch.Generator):
        """One epoch of (rows, dense mini-batch), ``batch_size`` rows each in an order drawn from ``order`` (a
        CPU generator), the last smaller batch dropped (as the study: no tiny batch for BatchNorm). Stored cells
        come from annbatch's loader of chunks of the pre-shuffled store (``StoredCells.minibatches``), the rest
        from a permutation, gathered on the device."""
        if self.stored is not None and self._index is None:
            seed = int(torch.randint(2**62, (1,), generator=order))
            for matrix, rows in self.stored.minibatches(batch_size, seed):
                yield torch.as_tensor(rows, device=self.device), dense_on(matrix, self.device)
            return
        permutation = torch.randperm(self.n_cells, generator=order).to(self.device)
        for b in range(self.steps(batch_size)):
            idx = permutation[b * batch_size : (b + 1) * batch_size]
            yield idx, self.rows(idx)

    def steps(self, batch_size: int) -> int:
        """Mini-batches in an epoch of ``shuffled``."""
        if self.stored is not None and self._index is None:
            return self.stored.steps(batch_size)
        return self.n_cells // batch_size

    def batches(self, batch_size: int):
        """Consecutive dense mini-batches over all cells, in order (for embedding)."""
        for start in range(0, self.n_cells, batch_size):
            yield self.rows(torch.arange(start, min(start + batch_size, self.n_cells), device=self.device))


def dense_on(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """A CSR matrix read on the host as a dense float32 tensor on ``device``: densified by scipy on a CPU, else
    sent as CSR (int32 column indices) and densified there."""
    if device.type == "cpu":
        return torch.from_numpy(matrix.toarray())
    sparse = torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                     torch.from_numpy(matrix.indices.astype(np.int32)),
                                     torch.from_numpy(matrix.data), matrix.shape)
    return sparse.to(device, non_blocking=True).to_dense()


def device_bytes(X: np.ndarray | sp.spmatrix | RowsOf) -> int:
    """Bytes a ``CellMatrix`` of ``X`` holds on a GPU: CSR values float32, int32 column indices, int64 row pointers,
    the ``RowsOf`` index int64; a dense matrix float32."""
    index = 0
    if isinstance(X, RowsOf):
        X, index = X.matrix, 8 * len(X.index)
    if isinstance(X, StoredCells):  # streamed: only its mini-batches reach the device
        return index
    if sp.issparse(X):
        return index + 8 * X.nnz + 8 * (X.shape[0] + 1)
    return index + 4 * X.shape[0] * X.shape[1]


def gather_rows(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, widest: int, idx: torch.Tensor,
                n_cols: int) -> torch.Tensor:
    """Rows ``idx`` of a CSR matrix (its arrays as tensors; ``widest``: its most stored values in a row) as a dense
    float32 tensor. Each row reads ``widest`` slots, those past its own values adding zero to column 0: the
    shapes never depend on the data, so nothing waits for the device (as a total count of values would)."""
    starts = indptr[idx]
    counts = indptr[idx + 1] - starts
    slot = torch.arange(widest, device=idx.device)
    stored = slot < counts.unsqueeze(1)
    position = torch.where(stored, starts.unsqueeze(1) + slot, 0)
    columns = torch.where(stored, indices[position].long(), 0)
    out = torch.zeros(len(idx), n_cols, dtype=values.dtype, device=idx.device)
    return out.scatter_add_(1, columns, torch.where(stored, values[position], 0.0))


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

    @classmethod
    def of_store(cls, store: CellStore, part: str) -> "Cells":
        """A store's ``reference`` or ``query`` cells as a network method trains on or embeds them, in the store's
        order (``X.obs_column("row")`` maps them to the prepared order). Raw counts stay on disk: the methods
        that read them read whole matrices, which a store is there to avoid."""
        X = store.cells(part)
        return cls(X, store.genes, X.obs_column("batch_code").astype(np.int64))

    def subset(self, rows: np.ndarray, shared: bool = False) -> "Cells":
        """These cells' ``rows``, without a graph (its rows would no longer match); with ``shared`` the matrices'
        rows are not copied but indexed (``RowsOf``), for a method that gathers its mini-batches by index."""

        def cut(values):
            return None if values is None else values[rows]

        def cut_matrix(matrix):
            return RowsOf.of(matrix, rows) if shared and matrix is not None else cut(matrix)

        return Cells(cut_matrix(self.X), self.genes, cut(self.batch_codes), None, cut_matrix(self.counts),
                     cut_matrix(self.other), cut_matrix(self.other_counts), self.other_kind, cut(self.other_observed),
                     cut(self.labels))

    def shard(self, rank: int, workers: int, batch_size: int, seed: int) -> "Cells":
        """The cells worker ``rank`` of ``workers`` trains on: stored cells its share of the store
        (``StoredCells.sharded``), others a share of a permutation drawn from ``seed`` (the same on every worker),
        rows indexed, not copied; each worker as many whole mini-batches of ``batch_size`` as the others."""
        if isinstance(self.X, StoredCells):
            return replace(self, X=self.X.sharded(rank, workers))
        share = self.n_cells // workers // batch_size * batch_size
        if share == 0:
            raise ValueError(f"{self.n_cells} cells cannot give each of {workers} workers a mini-batch of "
                             f"{batch_size}")
        rows = np.random.default_rng(seed).permutation(self.n_cells)[rank * share:(rank + 1) * share]
        return self.subset(np.sort(rows), shared=True)

    def materialised(self) -> "Cells":
        """These cells with matrices of their own (``RowsOf`` copied out), for a method that reads whole matrices."""
        return replace(self, X=materialised(self.X), counts=materialised(self.counts), other=materialised(self.other),
                       other_counts=materialised(self.other_counts))

    def with_rna_only(self, extra: "Cells") -> "Cells":
        """These cells followed by ``extra``, cells measured by RNA alone (same genes): their second modality
        zero and marked unobserved, their labels unknown; without a graph (a copy: matrices of their own)."""
        cells, extra, n = self.materialised(), extra.materialised(), extra.n_cells

        def zeros(matrix):
            if matrix is None:
                return None
            return sp.vstack([matrix, sp.csr_matrix((n, matrix.shape[1]), dtype=matrix.dtype)]).tocsr()

        counts = None if cells.counts is None else sp.vstack([cells.counts, extra.counts]).tocsr()
        observed = np.ones(cells.n_cells, bool) if cells.other_observed is None else cells.other_observed
        return Cells(sp.vstack([cells.X, extra.X]).tocsr(), cells.genes,
                     np.concatenate([cells.batch_codes, extra.batch_codes]), None,
                     counts, zeros(cells.other), zeros(cells.other_counts),
                     cells.other_kind, np.concatenate([observed, np.zeros(n, bool)]),
                     None if cells.labels is None else np.concatenate([cells.labels, np.full(n, -1)]))

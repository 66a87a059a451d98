"""Batch-aware highly variable genes from statistics gathered chunk by chunk, so a data set need not fit in memory.

scanpy's ``highly_variable_genes(flavor="seurat", batch_key=...)`` needs, per batch and gene, only the number of
cells, the sum and the sum of squares of expm1 of the log-normalised values, and how many cells express the gene:
``HVGStatistics`` adds those up over chunks of cells, and ``highly_variable`` turns them into scanpy's selection,
step for step (per batch: the genes it expresses, log dispersion normalised within 20 bins of log mean, the top
genes; across batches: ranked by the number of batches that select a gene, ties broken by the mean normalised
dispersion). ``tests/data/test_hvg.py`` checks it against scanpy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

N_BINS = 20  # scanpy's default


class HVGStatistics:
    """Per batch (``batches``, codes into it) and gene: cells, sum and sum of squares of expm1(x), cells with x > 0."""

    def __init__(self, genes: np.ndarray, batches: list[str]):
        self.genes, self.batches = np.asarray(genes).astype(str), list(batches)
        shape = (len(batches), len(genes))
        self.cells = np.zeros(len(batches))
        self.sums, self.squares, self.expressing = np.zeros(shape), np.zeros(shape), np.zeros(shape)

    def subset(self, genes: np.ndarray) -> "HVGStatistics":
        """These statistics of the genes ``genes`` (a mask or an index) alone."""
        part = HVGStatistics(self.genes[genes], self.batches)
        part.cells = self.cells
        part.sums, part.squares, part.expressing = self.sums[:, genes], self.squares[:, genes], self.expressing[:, genes]
        return part

    def add(self, X: sp.spmatrix | np.ndarray, codes: np.ndarray) -> None:
        """Add cells ``X`` (log-normalised, cells x genes) of the batches ``codes``; a cell of code -1 is left out."""
        X = sp.csr_matrix(X)
        for code in np.unique(codes[codes >= 0]):
            rows = X[codes == code]
            values = np.expm1(rows.data).astype(np.float64)  # in the data's own precision, as scanpy
            columns = rows.indices
            self.cells[code] += rows.shape[0]
            self.sums[code] += np.bincount(columns, values, minlength=len(self.genes))
            self.squares[code] += np.bincount(columns, values * values, minlength=len(self.genes))
            self.expressing[code] += np.bincount(columns[values > 0], minlength=len(self.genes))

    def highly_variable(self, n_top: int) -> np.ndarray:
        """Which genes scanpy's batch-aware 'seurat' selection of ``n_top`` genes picks (a mask over ``genes``)."""
        order = sorted(range(len(self.batches)), key=lambda code: self.batches[code])  # scanpy's: categories sorted
        per_batch = [self._one_batch(code, n_top) for code in order if self.cells[code] > 0]
        df = pd.concat(per_batch, axis=0)
        df["highly_variable"] = df["highly_variable"].astype(int)
        df = df.groupby(df.index, observed=True).agg(
            {"means": "mean", "dispersions": "mean", "dispersions_norm": "mean", "highly_variable": "sum"})
        df["highly_variable_nbatches"] = df["highly_variable"]
        df.sort_values(["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last",
                       inplace=True)
        df["highly_variable"] = np.arange(df.shape[0]) < n_top
        return df.loc[self.genes, "highly_variable"].to_numpy()

    def _one_batch(self, code: int, n_top: int) -> pd.DataFrame:
        """The table scanpy makes for one batch: its expressed genes' statistics, the others all zero."""
        n, expressed = self.cells[code], self.expressing[code] > 0
        mean = self.sums[code][expressed] / n
        var = (self.squares[code][expressed] - n * mean * mean) / (n - 1) if n > 1 else np.full(mean.shape, np.nan)
        mean[mean == 0] = 1e-12
        dispersion = var / mean
        dispersion[dispersion == 0] = np.nan
        dispersion, mean = np.log(dispersion), np.log1p(mean)
        df = pd.DataFrame({"means": mean, "dispersions": dispersion}, index=self.genes[expressed])
        df["mean_bin"] = pd.cut(df["means"], bins=N_BINS)
        grouped = df.groupby("mean_bin", observed=True)["dispersions"].agg(avg="mean", dev="std")
        alone = grouped["dev"].isnull()  # a gene alone in its bin: normalised dispersion 1
        grouped.loc[alone, "dev"] = grouped.loc[alone, "avg"]
        grouped.loc[alone, "avg"] = 0
        stats = grouped.loc[df["mean_bin"]].set_index(df.index)
        df["dispersions_norm"] = (df["dispersions"] - stats["avg"]) / stats["dev"]
        norm = df["dispersions_norm"].to_numpy()
        ranked = np.sort(norm[~np.isnan(norm)])[::-1]
        cutoff = ranked[min(n_top, expressed.sum(), len(ranked)) - 1]
        df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cutoff
        df = df.drop(columns="mean_bin")
        missing = pd.DataFrame(0.0, index=self.genes[~expressed], columns=["means", "dispersions", "dispersions_norm"])
        missing["highly_variable"] = False
        return pd.concat([df, missing]).loc[self.genes]

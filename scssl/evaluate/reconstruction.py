"""Gene-expression reconstruction (Richter et al. 2024): how well a model's output recovers the
log-normalised expression of query cells, overall and on the entries hidden from it, next to two
floors every method must beat: the training mean and a PCA of the same size as its embedding.

Numpy and sklearn only: the scores read a finished reconstruction, so no torch is needed here.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA

CHUNK_CELLS = 1024  # cells densified at once: bounds the memory of sparse input to one chunk


def reconstruction_scores(
    x: np.ndarray | sp.spmatrix, x_hat: np.ndarray | sp.spmatrix, mask: np.ndarray | None = None,
    chunk_cells: int = CHUNK_CELLS,
) -> dict[str, float]:
    """MSE and explained variance of ``x_hat`` against ``x`` (cells x genes), as sklearn defines them.

    ``mse``, ``explained_variance`` and ``explained_variance_weighted`` equal sklearn's
    ``mean_squared_error`` and ``explained_variance_score`` (uniform / variance-weighted average over
    genes), constant genes included; only where sklearn's rounding gives a constant gene a variance of
    1e-33 (and a score of -1e32) this scores it as sklearn does an exactly constant one. With a boolean
    ``mask`` of the entries hidden from the model, the ``masked_`` scores apply the same per-gene
    definitions (MSE too: a mean over genes) to each gene's masked cells only, leaving out genes with
    fewer than 2 of them (NaN if none is left): masking is judged on what the model could not see.
    """
    if x.shape != x_hat.shape or (mask is not None and np.shape(mask) != x.shape):
        raise ValueError(f"shapes differ: x {x.shape}, x_hat {x_hat.shape}"
                         + ("" if mask is None else f", mask {np.shape(mask)}"))
    x, x_hat = (m.tocsr() if sp.issparse(m) else m for m in (x, x_hat))  # CSR: row chunks cut cheaply
    scores = _scores(_per_gene_statistics(x, x_hat, None, chunk_cells))
    if mask is not None:
        masked = _scores(_per_gene_statistics(x, x_hat, np.asarray(mask, dtype=bool), chunk_cells))
        scores.update({f"masked_{name}": value for name, value in masked.items()})
    return scores


def _rows(matrix: np.ndarray | sp.spmatrix, rows: slice) -> np.ndarray:
    part = matrix[rows]
    return np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float64)


def _per_gene_statistics(x, x_hat, mask: np.ndarray | None, chunk_cells: int) -> dict[str, np.ndarray]:
    """Per gene with at least 2 counted cells (all, or the masked ones): the mean squared residual and the
    variances of the residual and of ``x`` over them. Two passes over chunks of cells (means, then squared
    deviations) keep the variances as exact as sklearn's; a gene whose values (or residuals) are all
    equal gets a variance of exactly 0, which rounding would not always give."""
    n_cells, n_genes = x.shape
    chunks = [slice(start, start + chunk_cells) for start in range(0, n_cells, chunk_cells)]

    def chunk(rows: slice):
        x_part = _rows(x, rows)
        counted = np.ones(x_part.shape, dtype=bool) if mask is None else mask[rows]
        return x_part, x_part - _rows(x_hat, rows), counted

    count, sum_x, sum_residual, sum_squared_residual = (np.zeros(n_genes) for _ in range(4))
    low_x, low_residual = np.full(n_genes, np.inf), np.full(n_genes, np.inf)
    high_x, high_residual = np.full(n_genes, -np.inf), np.full(n_genes, -np.inf)
    for rows in chunks:
        x_part, residual, counted = chunk(rows)
        count += counted.sum(axis=0)
        sum_x += np.where(counted, x_part, 0.0).sum(axis=0)
        sum_residual += np.where(counted, residual, 0.0).sum(axis=0)
        sum_squared_residual += np.where(counted, residual**2, 0.0).sum(axis=0)
        low_x = np.minimum(low_x, np.where(counted, x_part, np.inf).min(axis=0))
        high_x = np.maximum(high_x, np.where(counted, x_part, -np.inf).max(axis=0))
        low_residual = np.minimum(low_residual, np.where(counted, residual, np.inf).min(axis=0))
        high_residual = np.maximum(high_residual, np.where(counted, residual, -np.inf).max(axis=0))

    kept = count >= 2
    n = np.where(kept, count, 1.0)
    mean_x, mean_residual = sum_x / n, sum_residual / n
    squares_x, squares_residual = np.zeros(n_genes), np.zeros(n_genes)
    for rows in chunks:
        x_part, residual, counted = chunk(rows)
        squares_x += np.where(counted, (x_part - mean_x) ** 2, 0.0).sum(axis=0)
        squares_residual += np.where(counted, (residual - mean_residual) ** 2, 0.0).sum(axis=0)
    return {
        "mse": (sum_squared_residual / n)[kept],
        "residual_variance": np.where(low_residual == high_residual, 0.0, squares_residual / n)[kept],
        "variance": np.where(low_x == high_x, 0.0, squares_x / n)[kept],
    }


def _scores(stats: dict[str, np.ndarray]) -> dict[str, float]:
    """Average per-gene scores as sklearn does: a gene with a constant residual scores 1, a constant gene
    predicted with a varying residual 0, and with all genes constant the weighted average is uniform."""
    residual_variance, variance = stats["residual_variance"], stats["variance"]
    if len(variance) == 0:
        return dict.fromkeys(["mse", "explained_variance", "explained_variance_weighted"], float("nan"))
    per_gene = np.ones_like(variance)
    informative = (residual_variance != 0) & (variance != 0)
    per_gene[informative] = 1 - residual_variance[informative] / variance[informative]
    per_gene[(residual_variance != 0) & (variance == 0)] = 0.0
    return {
        "mse": float(stats["mse"].mean()),
        "explained_variance": float(per_gene.mean()),
        "explained_variance_weighted": float(np.average(per_gene, weights=variance if variance.any() else None)),
    }


def mean_reconstruction(X_train: np.ndarray | sp.spmatrix, n_cells: int) -> np.ndarray:
    """The floor of knowing nothing about a cell: every cell reconstructed as the training cells' mean."""
    mean = np.asarray(X_train.mean(axis=0), dtype=np.float64).ravel()
    return np.repeat(mean[None, :], n_cells, axis=0)


def pca_reconstruction(
    X_train: np.ndarray | sp.spmatrix, X_eval: np.ndarray | sp.spmatrix, n_components: int, seed: int = 0,
) -> np.ndarray:
    """The linear floor: ``X_eval`` projected onto the top principal components of ``X_train`` and back.

    Give it as many components as the method's embedding has dimensions. ARPACK takes sparse input
    without densifying it (sklearn >= 1.4) and needs fewer than ``min(X_train.shape)`` components, so
    ``n_components`` is capped there.
    """
    n_components = min(n_components, min(X_train.shape) - 1)
    pca = PCA(n_components=n_components, svd_solver="arpack", random_state=seed).fit(X_train)
    return pca.inverse_transform(pca.transform(X_eval))

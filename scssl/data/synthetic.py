"""Synthetic count data with cell types and batch effects, for tests and scale benchmarks."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def make_synthetic(
    n_cells: int = 1000,
    n_genes: int = 500,
    n_batches: int = 2,
    n_cell_types: int = 5,
    n_proteins: int = 0,
    batch_effect: float = 0.5,
    mean_library_size: float = 2000.0,
    seed: int = 0,
) -> ad.AnnData:
    """Negative-binomial counts: each type up-regulates its own marker genes, each batch scales genes.

    ``X`` and ``layers["counts"]`` hold the counts (CSR float32); ``obs`` has ``batch`` and
    ``cell_type``; with ``n_proteins`` > 0, ``obsm["protein_expression"]`` holds protein counts.
    """
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(n_cell_types, size=n_cells)
    batch = rng.integers(n_batches, size=n_cells)

    def type_profiles(n_features: int) -> np.ndarray:
        base = rng.normal(0.0, 1.0, size=n_features)
        profiles = np.tile(base, (n_cell_types, 1))
        markers = np.array_split(rng.permutation(n_features), n_cell_types)
        for t, genes in enumerate(markers):
            profiles[t, genes[: max(1, len(genes) // 2)]] += 2.5
        return profiles

    def nb_counts(log_mean: np.ndarray, library: np.ndarray, dispersion: float = 5.0) -> np.ndarray:
        rate = np.exp(log_mean)
        mean = library[:, None] * rate / rate.sum(axis=1, keepdims=True)
        return rng.poisson(rng.gamma(dispersion, mean / dispersion)).astype(np.float32)

    batch_shift = rng.normal(0.0, batch_effect, size=(n_batches, n_genes))
    profiles = type_profiles(n_genes)
    library = rng.lognormal(np.log(mean_library_size), 0.3, size=n_cells)
    chunks = [  # a thousand cells at a time, so that large data sets never exist densely
        sp.csr_matrix(nb_counts(profiles[cell_type[s]] + batch_shift[batch[s]], library[s]))
        for s in (slice(i, i + 1000) for i in range(0, n_cells, 1000))
    ]
    counts = sp.vstack(chunks, format="csr")

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]))
    adata.layers["counts"] = counts.copy()
    if n_proteins:
        protein = nb_counts(type_profiles(n_proteins)[cell_type], library / 10)
        adata.obsm["protein_expression"] = pd.DataFrame(
            protein, index=adata.obs_names, columns=[f"protein{p}" for p in range(n_proteins)]
        )
    return adata

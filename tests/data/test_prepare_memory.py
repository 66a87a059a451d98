"""Preprocessing reads a file's raw counts a chunk of cells at a time: its peak memory grows with the result (the
chosen genes), not with the counts it reads."""

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scssl.data import DatasetSpec, prepare

GENES, STORED = 2000, 200


def _write(path, n_cells: int) -> int:
    """A file of ``n_cells`` cells with their counts in a layer (4 batches, 3 cell types); the bytes of its counts."""
    rng = np.random.default_rng(0)
    indices = np.sort(rng.choice(GENES, (n_cells, STORED)), axis=1)  # repeats merge: a few cells hold fewer
    counts = sp.csr_matrix((rng.integers(1, 20, n_cells * STORED).astype(np.float32), indices.ravel(),
                            np.arange(n_cells + 1) * STORED), shape=(n_cells, GENES))
    counts.sum_duplicates()
    obs = pd.DataFrame({"batch": rng.choice(["a", "b", "c", "d"], n_cells), "cell_type": rng.choice(["x", "y", "z"], n_cells)},
                       index=[f"cell{i}" for i in range(n_cells)])
    ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(GENES)]),
               layers={"counts": counts}).write_h5ad(path)
    return counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes


def _peak(path) -> int:
    tracemalloc.start()
    try:
        prepare(DatasetSpec(path=str(path), batch_key="batch", labels_key="cell_type", counts_layer="counts",
                            n_hvgs=50, query_batches=["d"]))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_peak_memory_of_preprocessing_grows_with_its_result_not_with_the_counts(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys.modules["scssl.data.prepare"], "_CHUNK_CELLS", 2000)
    small, large = _write(tmp_path / "small.h5ad", 5000), _write(tmp_path / "large.h5ad", 40000)
    _peak(tmp_path / "small.h5ad")  # imports and first-use caches out of the way
    growth = _peak(tmp_path / "large.h5ad") - _peak(tmp_path / "small.h5ad")
    print(f"counts {small / 2**20:.1f} -> {large / 2**20:.1f} MiB; peak memory grew by {growth / 2**20:.1f} MiB")
    assert growth < 0.2 * (large - small)  # holding the counts would grow it by at least their growth

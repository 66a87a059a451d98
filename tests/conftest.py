import numpy as np
import pytest

from scssl.data import DatasetSpec, make_synthetic, prepare


@pytest.fixture(scope="session")
def synthetic_h5ad(tmp_path_factory):
    """A small synthetic data set written as an .h5ad, read back by the real loader."""
    path = tmp_path_factory.mktemp("data") / "synthetic.h5ad"
    make_synthetic(n_cells=400, n_genes=300, n_batches=3, n_cell_types=4, seed=1).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def prepared(synthetic_h5ad):
    spec = DatasetSpec(path=str(synthetic_h5ad), batch_key="batch", labels_key="cell_type",
                       counts_layer="counts", query_batches=["batch2"], n_hvgs=200)
    return prepare(spec)


@pytest.fixture
def rng():
    return np.random.default_rng(0)

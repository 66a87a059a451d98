import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from scssl.data import DatasetSpec, make_synthetic, prepare

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def small_experiment(tmp_path, synthetic_h5ad):
    """Write ``<tmp_path>/<name>.yaml``: simclr on the synthetic data, cell typing, 2 epochs, one seed, study
    folder ``<tmp_path>/out``; keyword arguments replace top-level keys."""

    def write(name: str, **overrides) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({
            "name": name, "output_dir": "out", "search_spaces": str(ROOT / "search_spaces"),
            "datasets": [{"path": str(synthetic_h5ad), "batch_key": "batch", "labels_key": "cell_type",
                          "counts_layer": "counts", "query_batches": ["batch2"], "n_hvgs": 200}],
            "methods": ["simclr"], "tasks": ["cell_typing"], "train": {"epochs": 2, "batch_size": 64},
            "final": {"seeds": [0]}, **overrides,
        }))
        return path

    return write


@pytest.fixture(autouse=True)
def no_jax_threads_in_the_test_process(request):
    """Tests start Ray in this process, which forks; a fork after JAX started its threads may deadlock (JAX warns
    "os.fork() was called"). Code that runs JAX belongs in a Ray worker or a spawned process."""
    yield
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and bridge._at_fork_handler_installed:
        pytest.fail(f"{request.node.nodeid} ran JAX in the test process; run it in a spawned process or a Ray worker")


def wait_for(condition, what: str, timeout: float = 300.0):
    """Poll ``condition`` until it returns something true (returned); generous for a slow machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")

"""Trials on one node share one copy of a data set held in memory: each reads it from Ray's object store without
a copy and gathers its mini-batches by index, so its own memory grows by far less than the matrix."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scssl.data import PreparedDataset
from scssl.data.prepare import QUERY, REFERENCE
from scssl.evaluate.shared import SharedData

CELLS, GENES, STORED = 60_000, 4_000, 800  # 48M stored values: 384 MB of CSR


def _dataset() -> PreparedDataset:
    rng = np.random.default_rng(0)
    indices = np.sort(rng.integers(0, GENES, (CELLS, STORED)).astype(np.int32), axis=1).ravel()
    X = sp.csr_matrix((rng.random(CELLS * STORED, dtype=np.float32), indices, np.arange(CELLS + 1) * STORED),
                      shape=(CELLS, GENES))
    batch = rng.integers(4, size=CELLS)
    obs = pd.DataFrame({"batch": pd.Categorical(batch.astype(str)),
                        "label": pd.Categorical(rng.integers(5, size=CELLS).astype(str)),
                        "split": pd.Categorical(np.where(batch == 3, QUERY, REFERENCE), categories=[REFERENCE, QUERY])},
                       index=[f"c{i}" for i in range(CELLS)])
    return PreparedDataset("synthetic", X, np.array([f"g{i}" for i in range(GENES)]), obs, "batch", "label")


@pytest.mark.slow
def test_two_concurrent_trials_hold_one_copy_of_the_data_between_them():
    import ray

    def one_trial(refs: list) -> dict:
        """One trial's training and validation embedding as ``run_trial`` does them; its private memory (USS) before
        it reads the data (after a warm-up that loads and compiles what any trial loads) and after, the data alive."""
        import psutil
        import ray

        import scssl.evaluate.shared  # noqa: F401  (loaded by any trial; its first load takes ~70 MB)

        from scssl.augment import AugmentationConfig
        from scssl.data import Cells
        from scssl.methods import SimCLR
        from scssl.train import TrainSettings, fit

        settings = TrainSettings(epochs=1, batch_size=256, device="cpu")
        warm = Cells(sp.random(512, GENES, density=0.2, format="csr", dtype=np.float32, random_state=0))
        fit("simclr", SimCLR.Params(), warm, settings, AugmentationConfig(), 0).embed(warm)
        before = psutil.Process().memory_full_info().uss
        shared: SharedData = ray.get(refs[0])
        data, cells = shared.trial_data(SimCLR)
        model = fit("simclr", SimCLR.Params(), data, settings, AugmentationConfig(), 0)
        embedding = model.embed(cells)
        after = psutil.Process().memory_full_info().uss
        return {"grew": after - before, "cells": len(embedding)}

    dataset = _dataset()
    matrix_bytes = dataset.X.data.nbytes + dataset.X.indices.nbytes + dataset.X.indptr.nbytes
    shared = SharedData(dataset, np.zeros(len(dataset.reference_index), bool), np.zeros((CELLS, 2), np.float32))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    try:
        ref = ray.put(shared)
        del shared, dataset
        trial = ray.remote(num_cpus=1)(one_trial)  # defined here: pickled by value, as the test module is no package
        results = ray.get([trial.remote([ref]), trial.remote([ref])], timeout=900)
    finally:
        ray.shutdown()
    print(f"matrix {matrix_bytes / 2**20:.0f} MiB; each trial's own memory grew by "
          f"{', '.join(f'{r['grew'] / 2**20:.0f} MiB' for r in results)}")
    for result in results:
        assert result["cells"] > 0.6 * CELLS  # the reference: three of four batches
        assert result["grew"] < 0.25 * matrix_bytes  # a copy of the reference rows would be three quarters of it

"""The contract over every registered method and task: each method that can serve a task fits on tiny data and is
scored by it (the task's headline finite, an embedding of every cell)."""

import importlib.util
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from scssl.augment import AugmentationConfig
from scssl.data import DatasetSpec, prepare, resolve
from scssl.evaluate import FineTuneSettings, SharedData, TASKS, TaskInputs
from scssl.methods import METHODS
from scssl.methods.base import UnavailableMethod
from scssl.search_space import trial_settings
from scssl.stages import TuneSettings
from scssl.train import TrainSettings

pytestmark = pytest.mark.slow

SMALL = {  # settings that keep each fit to seconds on a few hundred cells
    "scvi": {"n_layers": 1, "n_latent": 8, "query_epochs": 2},
    "scanvi": {"n_layers": 1, "n_latent": 8, "query_epochs": 2},
    "totalvi": {"n_latent": 8},
    "multivi": {"n_latent": 8},
    "scgpt": {"max_length": 64},
    "scgpt_zero_shot": {"max_length": 64},
}
SCGPT = ("scgpt", "scgpt_zero_shot")
RUNNABLE = [name for name, cls in METHODS.items() if not issubclass(cls, UnavailableMethod)
            and (name not in SCGPT or importlib.util.find_spec("scgpt") is not None)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, prepared):
    folder = tmp_path_factory.mktemp("contract")
    return {"rna": prepared, "protein": prepare(resolve(DatasetSpec(name="bmmc_cite"), folder)),
            "atac": prepare(resolve(DatasetSpec(name="bmmc_multiome"), folder))}


def _dataset(method: str, task, data):
    """The RNA data set, unless the method or the task needs a second modality (protein, or the method's)."""
    needs = METHODS[method].modality
    if needs is None and not task.needs_modality:
        return data["rna"]
    return data["atac" if needs == "atac" else "protein"]


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scored(data, tmp_path_factory):
    """Every method scored in two spawned processes of one thread each (the machine's two cores): batch correction
    runs scIB (JAX), which must not run in the test process, and JAX compiles its functions once per process."""
    folder = tmp_path_factory.mktemp("checkpoints")
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread) as pool:
        yield {method: pool.submit(_score_every_task, method, data, folder) for method in RUNNABLE}


_SHARED: dict = {}


def _score_every_task(method: str, data: dict, folder: Path) -> list[tuple[str, int, int, dict]]:
    """(task, cells of its data set, rows of the embedding, scores) for every task ``method`` serves."""
    params = dict(SMALL.get(method, {}))
    out = []
    for task in [task for task in TASKS.values() if task.serves(method)]:
        dataset = _dataset(method, task, data)
        if method in SCGPT:
            sys.path.insert(0, str(Path(__file__).parents[1]))
            from scgpt_checkpoint import write_checkpoint

            checkpoint = folder / f"{method}_{dataset.id}"  # one per method: two processes write them
            if not checkpoint.exists():
                write_checkpoint(checkpoint, [str(g) for g in dataset.genes])
            params["checkpoint"] = str(checkpoint)
        key = (dataset.id, METHODS[method].needs_neighbours)
        if key not in _SHARED:  # built once per data set in the worker, as a study builds it once
            _SHARED[key] = SharedData.build(dataset, TuneSettings(), with_graphs=key[1])
        shared = _SHARED[key]
        trial = trial_settings(METHODS[method], TrainSettings(epochs=1, batch_size=64, device="cpu"),
                               AugmentationConfig(), {"method": params} if params else {})
        metrics, embedding = task.run(shared, TaskInputs(method, trial, 0, 1, FineTuneSettings(epochs=1)))
        out.append((task.name, dataset.n_cells, len(embedding), metrics))
    return out


@pytest.mark.parametrize("method", RUNNABLE)
def test_every_method_is_scored_by_every_task_it_can_serve(method, scored):
    tasks = scored[method].result()
    assert tasks, f"{method} serves no task"
    for task, cells, rows, metrics in tasks:
        assert rows == cells, (method, task)
        assert math.isfinite(metrics[TASKS[task].headline]), (method, task, metrics)

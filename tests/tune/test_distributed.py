"""One trial on several workers: Ray Train's TorchTrainer, PyTorch DDP over gloo on the CPU (``fit``'s ``shard``,
``run_trial``'s ``workers``)."""

import sys

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from scssl.augment import AugmentationConfig
from scssl.cli import main
from scssl.evaluate.tasks.base import METRIC
from scssl.methods import SimCLR
from scssl.train import TrainSettings
from scssl.train.loop import start_training, step_loss

SETTINGS = TrainSettings(batch_size=32, device="cpu")


def first_step_gradients(X, shard, distributed: bool) -> dict[str, np.ndarray]:
    """The gradients of the first training step of worker ``shard`` (rank, workers) of SimCLR on ``X``, through
    the loss a training step takes (``step_loss``: DDP in a process group)."""
    training = start_training(SimCLR, SimCLR.Params(), X, SETTINGS, AugmentationConfig(), seed=0, shard=shard)
    loss = step_loss(training.model)
    assert isinstance(loss, torch.nn.parallel.DistributedDataParallel) == distributed
    training.model.train()
    loss(next(iter(training.batches(1)))).backward()
    return {name: p.grad.numpy().copy() for name, p in training.model.named_parameters() if p.grad is not None}


def _worker(arguments: dict) -> None:
    """Reports the gradients of its first step in a checkpoint (rank 0's: Ray Train keeps a checkpoint's metrics)."""
    import tempfile

    import ray.train

    context = ray.train.get_context()
    shard = context.get_world_rank(), context.get_world_size()
    grads = first_step_gradients(arguments["X"], shard, distributed=True)
    with tempfile.TemporaryDirectory() as folder:
        np.savez(f"{folder}/grads.npz", **grads)
        ray.train.report({"rank": shard[0]},
                         checkpoint=ray.train.Checkpoint.from_directory(folder) if shard[0] == 0 else None)


@pytest.fixture
def local_ray():
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import a test module
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_workers_take_the_gradients_one_process_averages_over_their_shares(prepared, local_ray, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    X = prepared.X[prepared.reference_index]
    result = TorchTrainer(_worker, train_loop_config={"X": X},
                          scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                          run_config=RunConfig(name="gradients", storage_path=str(tmp_path))).fit()
    with result.checkpoint.as_directory() as folder:
        distributed = dict(np.load(f"{folder}/grads.npz"))
    alone = [first_step_gradients(X, (rank, 2), distributed=False) for rank in (0, 1)]
    assert set(distributed) == set(alone[0])
    assert not np.allclose(alone[0]["encoder.0.weight"], alone[1]["encoder.0.weight"])  # each its own cells
    for name, grad in distributed.items():
        np.testing.assert_allclose(grad, (alone[0][name] + alone[1][name]) / 2, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_a_study_whose_trials_train_on_two_workers(tmp_path, small_experiment):
    experiment = small_experiment("two_workers", tune={"num_samples": 2, "workers_per_trial": 2,
                                                       "cpus_per_trial": 0.9},  # beside the waiting trial: 2 CPUs
                                  train={"epochs": 2, "batch_size": 32})
    assert main(["run", str(experiment)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    study = client.get_experiment_by_name("two_workers")
    trials = client.search_runs([study.experiment_id], "tags.`scssl.stage` = 'tune'")
    assert len(trials) == 2 and all(run.info.status == "FINISHED" for run in trials)
    for trial in trials:
        history = client.get_metric_history(trial.info.run_id, METRIC)
        assert [m.step for m in history] == [1, 2] and all(0 < m.value <= 1 for m in history)

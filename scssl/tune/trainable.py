"""The Ray Tune trainable: one trial trains one configuration and reports the objective per epoch."""

from __future__ import annotations

from collections.abc import Callable

import ray
import torch
from ray import tune

from scssl.augment import AugmentationConfig
from scssl.evaluate import knn_accuracy
from scssl.evaluate.shared import SharedData
from scssl.evaluate.tasks import (
    BATCH_METRIC, DEFAULT_OBJECTIVE, METRIC, OBJECTIVES, SCORE, TASKS, Validation, batch_mixing,
)
from scssl.methods import get_method
from scssl.search_space import trial_settings
from scssl.train import EpochReport, NonFiniteLossError, TrainSettings, fit
from scssl.tune.domains import unwrap

EPOCH = "epoch"  # reported by every trial: the epochs it has trained (the fidelity of its values)
MODE = "max"  # every objective is maximised
NONFINITE = "nonfinite_loss"  # reported instead of raising, so that Tune does not retry a NaN trial
TRIAL_ERROR = "trial_error"  # likewise for an error that a retry would only repeat
# Errors that another attempt may not meet: memory taken by another trial on a shared GPU. A lost worker
# or node never reaches the trial's code; Tune retries those by itself.
RETRIABLE = (torch.cuda.OutOfMemoryError, MemoryError)


def run_trial(
    config: dict,
    data: ray.ObjectRef | SharedData,
    method: str,
    train_settings: TrainSettings,
    augment: AugmentationConfig,
    seed: int,
    threads: int,
    objective: str = DEFAULT_OBJECTIVE,
    multi_objective: bool = False,
    workers: int = 1,
    worker_resources: dict[str, float] | None = None,
) -> None:
    """Train ``config`` on the reference cells and ``tune.report`` loss and objectives after each epoch: the
    validation cells' cell-type kNN accuracy (``METRIC``) always, and the ``objective`` task's own
    (``Task.validation_scores``), each scored on the validation cells of the reference.

    A loss that turns NaN or infinite ends the trial with a last report that says so (``NONFINITE``), and
    so does any other error of the trial's own code (``TRIAL_ERROR``): the trial is seeded, so a retry would
    fail the same way. Only ``RETRIABLE`` errors propagate, for Tune to retry the trial.

    With several ``workers`` the trial launches a Ray Train ``TorchTrainer`` of that many workers (each asking
    for ``worker_resources``: Ray's CPU, GPU and memory), trains data-parallel on them (``fit``'s ``shard``) and
    passes rank 0's reports on to Tune."""
    arguments = dict(config=config, data=data, method=method, train_settings=train_settings, augment=augment,
                     seed=seed, threads=threads, objective=objective, multi_objective=multi_objective)
    if workers == 1:
        train_and_report(**arguments, report=tune.report)
        return
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    resources = {kind: value for kind, value in (worker_resources or {"CPU": threads}).items() if value > 0}
    TorchTrainer(
        _train_on_worker, train_loop_config=arguments,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=resources.get("GPU", 0) > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="workers", storage_path=tune.get_context().get_trial_dir(),
                             callbacks=[TuneReportCallback()]),
    ).fit()


def _train_on_worker(arguments: dict) -> None:
    """One Ray Train worker of a trial: its share of the training (``fit``'s ``shard``); rank 0 scores the model
    after each epoch and its report reaches Tune, the others report the epoch alone (every worker must report)."""
    import ray.train

    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    train_and_report(**arguments, report=ray.train.report, shard=(rank, workers), scored=rank == 0)


def train_and_report(config: dict, data: ray.ObjectRef | SharedData, method: str, train_settings: TrainSettings,
                     augment: AugmentationConfig, seed: int, threads: int, objective: str, multi_objective: bool,
                     report: Callable[[dict], None], shard: tuple[int, int] | None = None, scored: bool = True) -> None:
    """``run_trial``'s training and scoring, each epoch's metrics passed to ``report``; with ``shard``, one worker's
    part (``scored``: whether it scores the model; another reports only the epoch)."""
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    torch.set_num_threads(threads)
    method_cls = get_method(method)
    trial = trial_settings(method_cls, train_settings, augment, unwrap(config))
    task = TASKS[objective]
    data, cells = shared.trial_data(method_cls)  # raw counts cut only for a method that reads them
    labels = shared.dataset.label_codes[shared.dataset.reference_index]
    epochs_done = 0

    def after_epoch(model, epoch: EpochReport) -> None:
        nonlocal epochs_done
        epochs_done = epoch.epoch
        if not scored:
            report({EPOCH: epoch.epoch})
            return
        embedding = model.embed(cells)
        accuracy = knn_accuracy(embedding, labels, shared.is_validation)
        validation = Validation(model, shared, cells, embedding, shared.is_validation, accuracy, seed)
        metrics = {EPOCH: epoch.epoch, "loss": epoch.loss, "epoch_seconds": epoch.seconds, METRIC: accuracy,
                   **(batch_mixing(validation) if multi_objective else {}), **task.validation_scores(validation)}
        report(metrics)

    try:
        fit(method, trial.params, data, trial.train, trial.augment, seed, after_epoch, shard)
    except RETRIABLE:
        raise
    except Exception as err:
        nan = float("nan")
        ended = NONFINITE if isinstance(err, NonFiniteLossError) else TRIAL_ERROR
        report({EPOCH: epochs_done + 1, ended: f"{type(err).__name__}: {err}", METRIC: nan,
                     OBJECTIVES[objective]: nan, **({BATCH_METRIC: nan, SCORE: nan} if multi_objective else {})})

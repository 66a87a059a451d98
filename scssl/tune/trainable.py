"""The Ray Tune trainable: one trial trains one configuration and reports the objective per epoch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ray
import torch
from ray import tune

from scssl.augment import AugmentationConfig, NeighbourGraph, build_neighbour_graph
from scssl.data import PreparedDataset
from scssl.evaluate import knn_accuracy, validation_split
from scssl.methods import PCABaseline, get_method
from scssl.train import EpochReport, NonFiniteLossError, TrainSettings, embed, train
from scssl.tune.search_space import trial_settings, unwrap
from scssl.tune.settings import TuneSettings

METRIC, MODE = "val_knn_accuracy", "max"
BATCH_METRIC = "val_batch_mixing"  # the second objective of a multi-objective search
SCORE = "val_score"  # 0.6 x METRIC + 0.4 x BATCH_METRIC: what ASHA ranks multi-objective trials by
NONFINITE = "nonfinite_loss"  # reported instead of raising, so that Tune does not retry a NaN trial
TRIAL_ERROR = "trial_error"  # likewise for an error that a retry would only repeat
# Errors that another attempt may not meet: memory taken by another trial on a shared GPU. A lost worker
# or node never reaches the trial's code; Tune retries those by itself.
RETRIABLE = (torch.cuda.OutOfMemoryError, MemoryError)


@dataclass
class SharedData:
    """What every trial and retrain of one data set needs, put in Ray's object store once per study.

    ``is_validation`` marks the fixed validation cells among the *reference* cells; ``pre_integration``
    is the PCA (50 components) of the preprocessed expression of all cells, for PCR comparison.
    ``reference_graph`` and ``all_graph`` are the neighbour graphs of the reference cells and of all
    cells, built only when a BBKNN or MNN augmentation may be used.
    """

    dataset: PreparedDataset
    is_validation: np.ndarray
    pre_integration: np.ndarray
    reference_graph: NeighbourGraph | None = None
    all_graph: NeighbourGraph | None = None

    @classmethod
    def build(cls, dataset: PreparedDataset, tune_settings: TuneSettings, with_graphs: bool) -> "SharedData":
        reference = dataset.reference_index
        is_validation = validation_split(
            dataset.label_codes[reference], tune_settings.validation_fraction,
            tune_settings.validation_max_cells, tune_settings.seed,
        )
        pre = PCABaseline(PCABaseline.Params(n_components=50)).fit(dataset.X).embed(dataset.X)
        if not with_graphs:
            return cls(dataset, is_validation, pre)
        batches = dataset.obs["batch"].to_numpy()
        return cls(dataset, is_validation, pre,
                   build_neighbour_graph(dataset.X[reference], batches[reference]),
                   build_neighbour_graph(dataset.X, batches))


def run_trial(
    config: dict,
    data: ray.ObjectRef | SharedData,
    method: str,
    train_settings: TrainSettings,
    augment: AugmentationConfig,
    seed: int,
    threads: int,
    multi_objective: bool = False,
) -> None:
    """Train ``config`` on the reference cells and ``tune.report`` loss and objectives after each epoch.

    A loss that turns NaN or infinite ends the trial with a last report that says so (``NONFINITE``), and
    so does any other error of the trial's own code (``TRIAL_ERROR``): the trial is seeded, so a retry would
    fail the same way. Only ``RETRIABLE`` errors propagate, for Tune to retry the trial."""
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    torch.set_num_threads(threads)
    method_cls = get_method(method)
    trial = trial_settings(method_cls, train_settings, augment, unwrap(config))
    reference = shared.dataset.reference_index
    X = shared.dataset.X[reference]
    labels = shared.dataset.label_codes[reference]
    batches = shared.dataset.obs["batch"].to_numpy()[reference]
    epochs_done = 0

    def report(model, epoch: EpochReport) -> None:
        nonlocal epochs_done
        embedding = embed(model, X)
        metrics = {"epoch": epoch.epoch, "loss": epoch.loss, "epoch_seconds": epoch.seconds,
                   METRIC: knn_accuracy(embedding, labels, shared.is_validation)}
        if multi_objective:
            metrics[BATCH_METRIC] = 1.0 - knn_accuracy(embedding, batches, shared.is_validation)
            metrics[SCORE] = 0.6 * metrics[METRIC] + 0.4 * metrics[BATCH_METRIC]
        epochs_done = epoch.epoch
        tune.report(metrics)

    try:
        train(method_cls, trial.params, X, trial.train, trial.augment, seed=seed, on_epoch=report,
              graph=shared.reference_graph)
    except RETRIABLE:
        raise
    except Exception as err:
        nan = float("nan")
        ended = NONFINITE if isinstance(err, NonFiniteLossError) else TRIAL_ERROR
        tune.report({"epoch": epochs_done + 1, ended: f"{type(err).__name__}: {err}", METRIC: nan,
                     **({BATCH_METRIC: nan, SCORE: nan} if multi_objective else {})})

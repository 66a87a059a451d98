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
from scssl.train import EpochReport, TrainSettings, embed, train
from scssl.tune.search_space import trial_settings
from scssl.tune.settings import TuneSettings

METRIC, MODE = "val_knn_accuracy", "max"


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
) -> None:
    """Train ``config`` on the reference cells and ``tune.report`` loss and objective after each epoch."""
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    torch.set_num_threads(threads)
    method_cls = get_method(method)
    trial = trial_settings(method_cls, train_settings, augment, config)
    reference = shared.dataset.reference_index
    X = shared.dataset.X[reference]
    labels = shared.dataset.label_codes[reference]

    def report(model, epoch: EpochReport) -> None:
        accuracy = knn_accuracy(embed(model, X), labels, shared.is_validation)
        tune.report({"epoch": epoch.epoch, "loss": epoch.loss, "epoch_seconds": epoch.seconds, METRIC: accuracy})

    train(method_cls, trial.params, X, trial.train, trial.augment, seed=seed, on_epoch=report,
          graph=shared.reference_graph)

"""The Ray Tune trainable: one trial trains one configuration and reports the objective per epoch."""

from __future__ import annotations

import ray
import torch
from ray import tune

from scssl.augment import AugmentationConfig
from scssl.evaluate import knn_accuracy
from scssl.evaluate.tasks import SharedData
from scssl.methods import get_method
from scssl.search_space import trial_settings
from scssl.train import EpochReport, NonFiniteLossError, TrainSettings, embed, train
from scssl.tune.domains import unwrap

METRIC, MODE = "val_knn_accuracy", "max"
BATCH_METRIC = "val_batch_mixing"  # the second objective of a multi-objective search
SCORE = "val_score"  # 0.6 x METRIC + 0.4 x BATCH_METRIC: what ASHA ranks multi-objective trials by
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
    data = shared.training_data("reference")  # the pretraining cells, in a transfer
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
        train(method_cls, trial.params, data.X, trial.train, trial.augment, seed, report, data.graph, data.genes,
              data.batch_codes)
    except RETRIABLE:
        raise
    except Exception as err:
        nan = float("nan")
        ended = NONFINITE if isinstance(err, NonFiniteLossError) else TRIAL_ERROR
        tune.report({"epoch": epochs_done + 1, ended: f"{type(err).__name__}: {err}", METRIC: nan,
                     **({BATCH_METRIC: nan, SCORE: nan} if multi_objective else {})})

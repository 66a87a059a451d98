"""The Ray Tune trainable: one trial trains one configuration and reports the objective per epoch."""

from __future__ import annotations

import numpy as np
import ray
import torch
from ray import tune

from scssl.augment import AugmentationConfig
from scssl.data import Cells
from scssl.evaluate import knn_accuracy
from scssl.evaluate.modality_prediction import knn_modality_prediction, modality_prediction_scores
from scssl.evaluate.reconstruction import reconstruction_scores
from scssl.evaluate.tasks import SharedData, rna_only
from scssl.methods import get_method
from scssl.search_space import trial_settings
from scssl.train import EpochReport, NonFiniteLossError, TrainSettings, fit
from scssl.tune.domains import unwrap

EPOCH = "epoch"  # reported by every trial: the epochs it has trained (the fidelity of its values)
METRIC, MODE = "val_knn_accuracy", "max"  # reported by every trial; every objective is maximised
BATCH_METRIC = "val_batch_mixing"  # the second objective of a multi-objective search
SCORE = "val_score"  # 0.6 x METRIC + 0.4 x BATCH_METRIC: what ASHA ranks multi-objective trials by
MODALITY_METRIC = "val_modality_pearson"
RECONSTRUCTION_METRIC = "val_masked_explained_variance"
OBJECTIVES = {"cell_typing": METRIC, "batch_correction": SCORE, "modality_prediction": MODALITY_METRIC,
              "reconstruction": RECONSTRUCTION_METRIC}  # tune.objective -> the metric the search maximises
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
    objective: str = "cell_typing",
    multi_objective: bool = False,
) -> None:
    """Train ``config`` on the reference cells and ``tune.report`` loss and objectives after each epoch
    (``OBJECTIVES``: each scored on the validation cells of the reference).

    A loss that turns NaN or infinite ends the trial with a last report that says so (``NONFINITE``), and
    so does any other error of the trial's own code (``TRIAL_ERROR``): the trial is seeded, so a retry would
    fail the same way. Only ``RETRIABLE`` errors propagate, for Tune to retry the trial."""
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    torch.set_num_threads(threads)
    method_cls = get_method(method)
    trial = trial_settings(method_cls, train_settings, augment, unwrap(config))
    reference = shared.dataset.reference_index
    cells = shared.cells(reference, method_cls.inputs)  # raw counts cut only for a method that reads them
    labels = shared.dataset.label_codes[reference]
    batches = shared.dataset.obs["batch"].to_numpy()[reference]
    validation = shared.is_validation
    epochs_done = 0

    def report(model, epoch: EpochReport) -> None:
        nonlocal epochs_done
        embedding = model.embed(cells)
        metrics = {EPOCH: epoch.epoch, "loss": epoch.loss, "epoch_seconds": epoch.seconds,
                   METRIC: knn_accuracy(embedding, labels, validation)}
        if multi_objective or objective == "batch_correction":
            metrics[BATCH_METRIC] = 1.0 - knn_accuracy(embedding, batches, validation)
            metrics[SCORE] = 0.6 * metrics[METRIC] + 0.4 * metrics[BATCH_METRIC]
        if objective == "modality_prediction":
            other = shared.dataset.other
            metrics[MODALITY_METRIC] = validation_modality_pearson(model, cells, validation, other.target[reference],
                                                                   other.kind == "atac")
        if objective == "reconstruction":
            metrics[RECONSTRUCTION_METRIC] = validation_explained_variance(model, cells.X[validation], seed)
        epochs_done = epoch.epoch
        tune.report(metrics)

    try:
        # the reference cells, or in a transfer the pretraining cells
        data = shared.training_data("reference", method_cls.uses_rna_only, validating=True, inputs=method_cls.inputs)
        fit(method, trial.params, data, trial.train, trial.augment, seed, report)
    except RETRIABLE:
        raise
    except Exception as err:
        nan = float("nan")
        ended = NONFINITE if isinstance(err, NonFiniteLossError) else TRIAL_ERROR
        tune.report({EPOCH: epochs_done + 1, ended: f"{type(err).__name__}: {err}", METRIC: nan,
                     OBJECTIVES[objective]: nan, **({BATCH_METRIC: nan, SCORE: nan} if multi_objective else {})})


def validation_modality_pearson(model, cells: Cells, validation: np.ndarray, target, binary: bool) -> float:
    """Missing-modality prediction within the reference ``cells``: each validation cell's second modality
    (``target``, the cells' rows) as the mean over its 5 cosine-nearest other reference cells in the RNA
    embedding; the mean per-cell Pearson r."""
    embedding = model.embed(rna_only(cells))
    predicted = knn_modality_prediction(embedding[~validation], target[~validation], embedding[validation])
    truth = np.asarray(target[validation].todense(), dtype=np.float32)
    return modality_prediction_scores(truth, predicted, binary=binary)["pearson"]


def validation_explained_variance(model, X, seed: int) -> float:
    """The explained variance of the masked entries of the validation cells ``X``, masked as in training."""
    made = model.reconstruct(X, seed=seed)
    return reconstruction_scores(made.inputs, made.x_hat, made.scored)["masked_explained_variance"]

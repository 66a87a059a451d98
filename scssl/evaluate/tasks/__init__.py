"""The benchmark tasks, one file each (the contract: ``base.Task``), found through ``TASKS``.

- ``batch_correction`` (scSSL-Bench): train on all cells, scIB metrics of the embedding.
- ``cell_typing`` (scSSL-Bench; Richter's zero-shot row): train on the reference, kNN label transfer to the query.
- ``reconstruction`` (Richter): train on the reference, reconstruct the query cells masked as in training.
- ``modality_prediction`` (scSSL-Bench's missing-modality prediction): the query's second modality from its
  nearest reference cells in the RNA embedding.
- ``cross_modality_prediction`` (Richter): a regression head from the RNA encoder onto the second modality.
- ``fine_tuned_cell_typing`` (Richter): encoder and classifier head fine-tuned on the reference labels.

On multimodal data the embedding of every task but modality prediction is the method's evaluation embedding
(by default joint: both modalities). With a pretraining data set (transfer), every task trains on its cells
and scores this data set's, the floors still from this data set's reference. A task a method cannot serve
(reconstruction without a decoder, fine-tuning without a network) is not planned for it (``Task.serves``).
"""

from __future__ import annotations

from scssl.evaluate.tasks.base import (
    BATCH_METRIC, METRIC, MIN_REFERENCE_CELLS, SCORE, Task, TaskTable, Validation, batch_mixing, check_shared_types,
)
from scssl.evaluate.tasks.batch_correction import BatchCorrection
from scssl.evaluate.tasks.cell_typing import CellTyping
from scssl.evaluate.tasks.cross_modality_prediction import CrossModalityPrediction
from scssl.evaluate.tasks.fine_tuned_cell_typing import FineTunedCellTyping
from scssl.evaluate.tasks.modality_prediction import ModalityPrediction
from scssl.evaluate.tasks.reconstruction import Reconstruction

TASKS: dict[str, Task] = {task.name: task for task in (  # in this order in the report and in messages
    BatchCorrection(), CellTyping(), Reconstruction(), FineTunedCellTyping(), ModalityPrediction(),
    CrossModalityPrediction(),
)}
# the tasks a search can maximise (``tune.objective``) -> the metric it maximises
OBJECTIVES = {name: task.objective for name, task in TASKS.items() if task.objective}
DEFAULT_TASKS = ("batch_correction", "cell_typing")  # an experiment's, unless it names its own
DEFAULT_OBJECTIVE = "cell_typing"  # the cheapest, and the one a multi-objective search pairs with batch mixing


def check_tasks(dataset, tasks: list[str], source: str, tunes: bool = False) -> None:
    """Raise a DataError (naming ``source``, the data file) when ``dataset`` cannot serve one of ``tasks``, or, when
    the study ``tunes``, its tuning objective (a kNN vote on a validation split of the reference cells). Checked
    before any training: without it a too-small data set fails late, inside scib-metrics, or scores nothing."""
    from scssl.data.spec import DataError

    if tunes and len(dataset.reference_index) < MIN_REFERENCE_CELLS:
        raise DataError(f"{source}: tuning needs at least {MIN_REFERENCE_CELLS} reference cells (its objective is a "
                        f"kNN vote on a validation split of them), data set {dataset.id!r} has "
                        f"{len(dataset.reference_index)}; hold out fewer query_batches", "query_batches")
    for name in tasks:
        TASKS[name].check(dataset, source)
    labelled = [name for name in tasks if TASKS[name].scores_labels]
    if labelled:
        check_shared_types(dataset, labelled, source)


__all__ = ["BATCH_METRIC", "DEFAULT_OBJECTIVE", "DEFAULT_TASKS", "METRIC", "OBJECTIVES", "SCORE", "TASKS", "Task",
           "TaskTable", "Validation", "batch_mixing", "check_tasks"]

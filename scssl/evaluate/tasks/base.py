"""The task contract. A task is one file in this folder and one line in the registry (``TASKS``): what it
needs of a method, which cells the method trains on, what a data set must hold, how it is scored, its tuning
objective and its report table. Everything else (stage settings, experiment checks, the trainable, the
retrain stage, the report) reads these declarations.

A task file imports only numpy at the top: the registry is read when an experiment is checked, which must
not load torch, sklearn or scib-metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

if TYPE_CHECKING:
    from scssl.data import PreparedDataset
    from scssl.evaluate.settings import EvaluationSettings, FineTuneSettings
    from scssl.evaluate.shared import SharedData, TaskInputs

# What every trial reports, whatever its objective: the kNN accuracy (k = 11) of the validation cells' types;
# with batch mixing (a multi-objective search, or batch correction's objective) the second objective and the
# score ASHA ranks multi-objective trials by.
METRIC = "val_knn_accuracy"
BATCH_METRIC = "val_batch_mixing"  # 1 - the kNN accuracy of the validation cells' batch
SCORE = "val_score"  # 0.6 x METRIC + 0.4 x BATCH_METRIC (scIB's weights)
# Reference cells of a task that scores query cells, and of tuning: with k = 11 neighbours a kNN vote over fewer
# than ~2 k cells is a vote over almost all of them, whatever the embedding. Measured on synthetic data (5 types):
# with 11 reference cells a random embedding scores the same query macro-F1 as a PCA (0.07); at 30 PCA reaches
# 0.82, at 50 0.99, where it levels off. The tuning objective classifies 20 % of the reference by the rest: at 50
# cells it ranks PCA over a weak embedding every time, at 20 in under half the draws.
MIN_REFERENCE_CELLS = 50


@dataclass(frozen=True)
class TableFigure:
    """A figure of a task's table per data set (``<stem>_<data set>.png``), drawn as scib-metrics draws its results
    table: columns in ``groups`` (title, metrics), metrics as coloured circles and those of ``bars`` as bars, the
    best row first."""

    caption: str
    stem: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    bars: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskTable:
    """A task's table in the report: its title and note, the metric its rank follows (None: no rank), the columns
    it gives the summary (metric or ``rank``, header), prefixed there by ``prefix``; ``name``: its files' name
    (the task's unless given: a task with two tables); ``derive``: makes its numbers from the task's per-seed
    scores (long format, as the report collects them) instead of showing them as they are; ``figure``: drawn per
    data set."""

    title: str
    note: str
    rank_by: str | None
    prefix: str
    summary: tuple[tuple[str, str], ...] = ()
    name: str = ""
    derive: Callable[[Any], Any] | None = None
    figure: TableFigure | None = None


@dataclass
class Validation:
    """What a tuning trial has after an epoch, for a task's objective: the model, the reference cells it embeds,
    their ``embedding``, which of them are the validation cells, their cell-type kNN ``accuracy`` (every trial
    reports it), the data and the trial's seed."""

    model: Any
    shared: SharedData
    cells: Any
    embedding: np.ndarray
    is_validation: np.ndarray
    accuracy: float
    seed: int


class Task:
    """One benchmark task; subclasses set the declarations and implement ``run``.

    ``metrics``: the columns of its table (it may log more); ``headline``: the metric printed per job;
    ``headers``: the report's header of each metric; ``trains_on``: ``reference`` (scored on the query) or
    ``all`` cells; ``trains_head``: it trains a head with the experiment's ``fine_tuning`` settings;
    ``needs_modality``: it scores a second modality; ``scores_labels``: it scores the query's cell types;
    ``evaluation``: what its scores depend on besides the embedding (a change reruns its jobs);
    ``objective``: the metric the search maximises when this task is the tuning objective (None: it cannot be
    one), reported with the others of ``validation_scores``; ``min_cells``: the fewest cells it trains on (of
    ``trains_on``); ``table``: its table in the report (``tables`` when it has more than one); ``scib``: its scores
    are scib-metrics' (the report names the release and metric set that made them); ``shows_embedding``: the
    report draws a UMAP of each method's embedding of every cell (a task that trains on all cells).
    """

    name: ClassVar[str]
    metrics: ClassVar[list[str]]
    headline: ClassVar[str]
    headers: ClassVar[dict[str, str]]
    table: ClassVar[TaskTable | None] = None
    trains_on: ClassVar[str] = "reference"
    trains_head: ClassVar[bool] = False
    needs_modality: ClassVar[bool] = False
    scores_labels: ClassVar[bool] = False
    evaluation: ClassVar[dict[str, Any]] = {}
    objective: ClassVar[str | None] = None
    min_cells: ClassVar[int] = MIN_REFERENCE_CELLS  # the fewest cells it trains on that give a meaningful score
    scib: ClassVar[bool] = False
    shows_embedding: ClassVar[bool] = False

    @property
    def tables(self) -> tuple[TaskTable, ...]:
        """Its tables in the report, in order."""
        return () if self.table is None else (self.table,)

    def table_note(self, scores) -> str:
        """What its table's note adds for the scores shown (long format: dataset, method, variant, task, seed,
        metric, value; every metric its runs logged); "" if nothing."""
        return ""

    @property
    def scores_query(self) -> bool:
        """Whether it trains on the reference and scores the query cells (it needs query batches)."""
        return self.trains_on == "reference"

    def serves(self, method: str) -> bool:
        """Whether ``method`` can be scored by this task (planned for it at all)."""
        return True

    def run(self, shared: SharedData, inputs: TaskInputs) -> tuple[dict[str, float], np.ndarray]:
        """Fit the method on the cells it trains on; (its scores, its embedding of every cell)."""
        raise NotImplementedError

    def settings_key(self, fine_tuning: FineTuneSettings, evaluation: EvaluationSettings) -> dict:
        """The experiment's task settings (of ``TaskInputs``) that its scores depend on: a change reruns its jobs."""
        return {}

    def validation_scores(self, validation: Validation) -> dict[str, float]:
        """A trial's ``objective`` (and what goes with it) after an epoch, on the validation cells of the reference."""
        raise NotImplementedError(f"{self.name} is not a tuning objective")

    def check_objective(self, methods: list[str], datasets: list, source: str) -> None:
        """Raise a ConfigError naming ``source`` when this objective cannot score one of the tuned ``methods`` on one
        of the ``datasets`` (specs)."""

    def check(self, dataset: PreparedDataset, source: str) -> None:
        """Raise a DataError (naming ``source``) when ``dataset`` cannot serve this task."""
        from scssl.data.spec import DataError
        from scssl.evaluate.cell_typing import K_NEIGHBORS

        name = dataset.id
        if self.needs_modality and dataset.other is None:
            raise DataError(f"{source}: {self.name} needs a second modality, and data set {name!r} has RNA only; give "
                            "its `modality` (protein or ATAC), or use a multimodal built-in data set", "modality")
        if self.scores_query:
            n_ref, n_query = len(dataset.reference_index), len(dataset.query_index)
            if n_ref < self.min_cells:
                raise DataError(f"{source}: {self.name} needs at least {self.min_cells} reference cells (kNN with "
                                f"k = {K_NEIGHBORS}), data set {name!r} has {n_ref} (and {n_query} query cells); "
                                "hold out fewer query_batches", "query_batches")
            if n_query == 0:
                raise DataError(f"{source}: {self.name} needs at least 1 query cell, data set {name!r} has none; "
                                "name the held-out batches in query_batches", "query_batches")


class HeadTask(Task):
    """A task that trains a head on the method's pretrained encoder, with the experiment's ``fine_tuning``
    settings: methods with a network only. The head gets the cells' batch codes (domain-specific BatchNorm)."""

    trains_head = True
    evaluation = {"domain_norms": "query batches adapted over all query cells"}

    def settings_key(self, fine_tuning, evaluation) -> dict:
        from scssl.settings import as_dict

        return {"fine_tuning": as_dict(fine_tuning)}

    def serves(self, method: str) -> bool:
        from scssl.methods import get_method
        from scssl.methods.base import carries_heads

        return carries_heads(get_method(method))

    def pretrained(self, shared: SharedData, inputs: TaskInputs):
        """(the fitted method, its network, the network's device, every cell's batch code)."""
        from scssl.evaluate.shared import fit_method

        model = fit_method(shared, inputs, self.trains_on)
        return model, model.network, next(model.network.parameters()).device, shared.cells().batch_codes


def check_shared_types(dataset: PreparedDataset, tasks: list[str], source: str) -> None:
    """The tasks that score the query's cell types score those the reference has: none is an error, some a note
    with counts."""
    from scssl.data.spec import DataError

    labels = dataset.labels
    reference = set(labels[dataset.reference_index])
    query = labels[dataset.query_index]
    unseen = ~np.isin(query, list(reference))
    if unseen.all():
        raise DataError(f"{source}: {' and '.join(tasks)} score the query cells of cell types the reference has, and "
                        f"none of the {len(query)} query cells of data set {dataset.id!r} has one (query types "
                        f"{sorted(map(str, set(query)))[:5]}, reference types {sorted(map(str, reference))[:5]}); "
                        "check labels_key and query_batches", "query_batches")
    if unseen.any():
        dataset.notes.append(f"{int(unseen.sum())} of {len(query)} query cells are of {len(set(query[unseen]))} cell "
                             f"type(s) the reference lacks (e.g. {sorted(map(str, set(query[unseen])))[:3]}): cell "
                             "typing scores the other cells, its 'all types' columns every cell")


def batch_mixing(validation: Validation) -> dict[str, float]:
    """The validation cells' batch mixing and its 0.6 / 0.4 score with their cell-type accuracy."""
    from scssl.evaluate.cell_typing import knn_accuracy

    batches = validation.shared.dataset.obs["batch"].to_numpy()[validation.shared.dataset.reference_index]
    mixing = 1.0 - knn_accuracy(validation.embedding, batches, validation.is_validation)
    return {BATCH_METRIC: mixing, SCORE: 0.6 * validation.accuracy + 0.4 * mixing}

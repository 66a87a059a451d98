"""What every task run shares: the data of one data set, built once per study (``SharedData``), one run's
method, settings and seed (``TaskInputs``), and the fit of the method on the cells a task trains on."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from scssl.augment import NeighbourGraph, build_neighbour_graph
from scssl.data import Cells, PreparedDataset
from scssl.data.prepare import INPUTS
from scssl.evaluate.cell_typing import validation_split
from scssl.evaluate.settings import EvaluationSettings, FineTuneSettings
from scssl.methods import PCABaseline, get_method
from scssl.search_space import TrialSettings
from scssl.stages import TuneSettings
from scssl.train import fit


@dataclass
class SharedData:
    """What every trial and retrain of one data set needs, built once per study (and put in Ray's object
    store by the tune layer).

    ``is_validation`` marks the fixed validation cells among the *reference* cells; ``pre_integration``
    is the PCA (50 components) of the preprocessed expression of all cells, for PCR comparison.
    ``reference_graph`` and ``all_graph`` are the neighbour graphs of the reference cells and of all
    cells, built only when a BBKNN or MNN augmentation may be used. With ``pretrain`` (transfer) every
    method trains on all of that data set's cells (``pretrain_graph`` its graph) and is scored here.
    """

    dataset: PreparedDataset
    is_validation: np.ndarray
    pre_integration: np.ndarray
    reference_graph: NeighbourGraph | None = None
    all_graph: NeighbourGraph | None = None
    pretrain: PreparedDataset | None = None
    pretrain_graph: NeighbourGraph | None = None

    @classmethod
    def build(cls, dataset: PreparedDataset, tune_settings: TuneSettings, with_graphs: bool,
              pretrain: PreparedDataset | None = None) -> "SharedData":
        reference = dataset.reference_index
        is_validation = validation_split(
            dataset.label_codes[reference], tune_settings.validation_fraction,
            tune_settings.validation_max_cells, tune_settings.seed,
        )
        cells = dataset.cells()
        pre = PCABaseline(PCABaseline.Params(n_components=50)).fit(cells).embed(cells)
        if not with_graphs:
            return cls(dataset, is_validation, pre, pretrain=pretrain)

        def graph(data: PreparedDataset, rows=slice(None)) -> NeighbourGraph:
            return build_neighbour_graph(data.X[rows], data.obs["batch"].to_numpy()[rows])

        return cls(dataset, is_validation, pre, graph(dataset, reference), graph(dataset), pretrain,
                   graph(pretrain) if pretrain is not None else None)

    def cells(self, rows: np.ndarray | None = None, inputs: Iterable[str] = INPUTS, shared: bool = False) -> Cells:
        """This data set's cells (or its ``rows``) as the tasks embed them. In a transfer, their batch codes
        follow the pretraining set's (a method that looks batches up by code, scVI's covariate or
        domain-specific BatchNorm, sees them as batches it was not trained on); where the pretraining data
        set lacks this one's second modality (none, or another kind or panel), their RNA alone: the model has
        no encoder for that modality. ``shared``: rows indexed, not copied, as ``PreparedDataset.cells``."""
        cells = self.dataset.cells(rows, inputs, shared)
        if self.pretrain is not None:  # its batches are not the pretraining set's batches of the same codes
            cells = replace(cells, batch_codes=cells.batch_codes + len(self.pretrain.obs["batch"].cat.categories))
        mine, theirs = self.dataset.other, None if self.pretrain is None else self.pretrain.other
        if self.pretrain is not None and mine is not None and (
                theirs is None or theirs.kind != mine.kind or not np.array_equal(theirs.features, mine.features)):
            return rna_only(cells)
        return cells

    def training_data(self, cells: str, rna_only: bool = False, validating: bool = False,
                      inputs: Iterable[str] = INPUTS, shared: bool = False) -> Cells:
        """The ``reference`` cells or ``all`` cells as a method that reads ``inputs`` trains on them (``cells``), with
        their labels; with a pretraining data set, all of its cells whatever the task. With ``rna_only`` (a method
        that can use them), mosaic data's RNA-only cells of the same batches follow. ``validating`` (a trial, which
        scores the validation cells by kNN) hides the validation cells' labels from a method that learns from
        them. With ``shared`` (a method that ``gathers_rows``) the reference cells' rows are indexed, not copied."""
        if self.pretrain is not None:
            ds, rows, graph = self.pretrain, None, self.pretrain_graph
        elif cells == "all":
            ds, rows, graph = self.dataset, None, self.all_graph
        else:
            ds, rows, graph = self.dataset, self.dataset.reference_index, self.reference_graph
        if ds.store is not None:
            return self._stored_training_data("all" if rows is None else "reference", ds,
                                              validating and ds is self.dataset)
        labels = ds.label_codes if rows is None else ds.label_codes[rows]
        if validating and ds is self.dataset and cells == "reference":
            labels = np.where(self.is_validation, -1, labels)
        data = replace(ds.cells(rows, inputs, shared), graph=graph, labels=labels)
        extra = ds.rna_only
        if not rna_only or extra is None:
            return data
        return data.with_rna_only(extra.cells if rows is None else extra.cells.subset(~extra.is_query))

    def _stored_training_data(self, part: str, ds: PreparedDataset, validating: bool) -> Cells:
        """``training_data`` of a data set on disk: its ``part`` of the store (``reference`` or ``all``), streamed,
        with labels. The validation cells are the sample's first reference cells, and so the store's first ones."""
        cells = Cells.of_store(ds.store, part)
        labels = cells.X.obs_column("label_code").astype(np.int64)
        if validating:
            labels[:len(self.is_validation)][self.is_validation] = -1
        return replace(cells, labels=labels)

    def trial_data(self, method: type) -> tuple[Cells, Cells]:
        """A tuning trial's training cells (the reference, validation labels hidden; in a transfer the pretraining
        cells) and the reference cells it embeds after each epoch, cut once where they are the same rows."""
        data = self.training_data("reference", method.uses_rna_only, validating=True, inputs=method.inputs,
                                  shared=method.gathers_rows)
        if self.pretrain is None and data.n_cells == len(self.dataset.reference_index):
            return data, replace(data, graph=None, labels=None)
        return data, self.cells(self.dataset.reference_index, method.inputs, method.gathers_rows)


@dataclass(frozen=True)
class TaskInputs:
    """One task's run: the method and its resolved settings, the seed, threads, the tasks' settings, and
    the seconds spent training (the rest of a task's time is evaluation)."""

    method: str
    trial: TrialSettings
    seed: int
    threads: int
    fine_tuning: FineTuneSettings
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    timings: dict[str, float] = field(default_factory=lambda: {"train_seconds": 0.0})


def fit_method(shared: SharedData, inputs: TaskInputs, cells: str):
    """The method fitted on the ``reference`` or ``all`` cells; the time it took counts as training."""
    trial, started, method = inputs.trial, time.perf_counter(), get_method(inputs.method)
    data = shared.training_data(cells, method.uses_rna_only, inputs=method.inputs, shared=method.gathers_rows)
    model = fit(inputs.method, trial.params, data, trial.train, trial.augment, inputs.seed)
    inputs.timings["train_seconds"] += time.perf_counter() - started
    return model


def cannot_stream(method: type) -> str | None:
    """Why ``method`` cannot train on cells streamed from a store (None: it can): only a network that reads the
    normalised data a mini-batch at a time can."""
    if not method.gathers_rows:
        return "it reads whole matrices"
    if method.inputs:
        return f"it reads {' and '.join(sorted(method.inputs))}, which a store streams to no method yet"
    if method.needs_neighbours:
        return "it trains on a neighbour graph of all cells"
    return None


def rna_only(cells: Cells) -> Cells:
    """``cells`` with their second modality unobserved (a method embeds them from the RNA)."""
    return replace(cells, other=None, other_counts=None)

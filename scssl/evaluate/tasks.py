"""The benchmark tasks, each one function of a fitted method, behind one table (``TASKS``).

- ``batch_correction`` (scSSL-Bench): train on all cells, scIB metrics of the embedding.
- ``cell_typing`` (scSSL-Bench; Richter's zero-shot row): train on the reference cells, kNN label transfer
  to the query. On multimodal data also from the RNA embedding alone (``rna_`` metrics).
- ``reconstruction`` (Richter): train on the reference, reconstruct the query cells (masked as in training),
  MSE and explained variance on the hidden entries and on all; floors: the per-gene mean of the reference
  and a PCA of the reference with as many components as the embedding, from the same inputs.
- ``modality_prediction`` (scSSL-Bench's missing-modality prediction; multimodal data): train on the
  reference, predict each query cell's second modality (protein, or ATAC's binary accessibility) as the mean
  over its 5 cosine-nearest reference cells in the RNA embedding; per-cell Pearson r, per-feature r, RMSE
  (and AUROC for ATAC). A method that predicts the modality itself (totalVI, MultiVI) adds its own
  prediction from the query's RNA (``model_`` metrics).

On multimodal data the embedding of every task but modality prediction is the method's evaluation
embedding (by default joint: both modalities); methods train on both modalities where they can.
- ``cross_modality_prediction`` (Richter; multimodal data, methods with a network): a linear regression head
  (MSE) from the RNA encoder pretrained on the reference onto the second modality, trained on the reference
  with the encoder frozen (``head_`` metrics) and fine-tuned with it; per-cell Pearson and Spearman, MSE.
- ``fine_tuned_cell_typing`` (Richter): pretrain on the reference, fine-tune encoder + classifier head on
  the reference labels, score the query; the same network trained from scratch is the ``scratch_`` twin.

With a pretraining data set (transfer), every task trains on its cells and scores this data set's, the
floors still from this data set's reference.

A task a method cannot serve (reconstruction without a decoder, fine-tuning without a network) is not
planned for it (``TaskSpec.serves``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from scssl.augment import NeighbourGraph, build_neighbour_graph
from scssl.data import Cells, PreparedDataset
from scssl.data.prepare import INPUTS
from scssl.evaluate.batch_correction import AGGREGATES, BATCH_METRICS, BIO_METRICS, scib_scores
from scssl.evaluate.cell_typing import K_NEIGHBORS, knn_cell_typing, validation_split
from scssl.evaluate.settings import FineTuneSettings
from scssl.methods import PCABaseline, get_method
from scssl.search_space import TrialSettings
from scssl.stages import TuneSettings
from scssl.train import fit

CELL_TYPING_METRICS = ["macro_f1", "accuracy", "macro_f1_all", "accuracy_all"]
RECONSTRUCTION_METRICS = [
    "masked_mse", "masked_explained_variance", "masked_explained_variance_weighted",
    "mse", "explained_variance", "explained_variance_weighted",
]
FLOORS = ("mean_floor", "pca_floor")
CROSS_MODALITY_METRICS = ["pearson", "spearman", "mse"]
MODALITY_PREDICTION_METRICS = ["pearson", "feature_pearson", "rmse", "auroc", "pearson_min", "pearson_max"]


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

    def cells(self, rows: np.ndarray | None = None, inputs: Iterable[str] = INPUTS) -> Cells:
        """This data set's cells (or its ``rows``) as the tasks embed them. In a transfer, their batch codes
        follow the pretraining set's (a method that looks batches up by code, scVI's covariate or
        domain-specific BatchNorm, sees them as batches it was not trained on); where the pretraining data
        set lacks this one's second modality (none, or another kind or panel), their RNA alone: the model has
        no encoder for that modality."""
        cells = self.dataset.cells(rows, inputs)
        if self.pretrain is not None:  # its batches are not the pretraining set's batches of the same codes
            cells = replace(cells, batch_codes=cells.batch_codes + len(self.pretrain.obs["batch"].cat.categories))
        mine, theirs = self.dataset.other, None if self.pretrain is None else self.pretrain.other
        if self.pretrain is not None and mine is not None and (
                theirs is None or theirs.kind != mine.kind or not np.array_equal(theirs.features, mine.features)):
            return rna_only(cells)
        return cells

    def training_data(self, cells: str, rna_only: bool = False, validating: bool = False,
                      inputs: Iterable[str] = INPUTS) -> Cells:
        """The ``reference`` cells or ``all`` cells as a method that reads ``inputs`` trains on them (``cells``), with
        their labels; with a pretraining data set, all of its cells whatever the task. With ``rna_only`` (a method
        that can use them), mosaic data's RNA-only cells of the same batches follow. ``validating`` (a trial, which
        scores the validation cells by kNN) hides the validation cells' labels from a method that learns from
        them."""
        if self.pretrain is not None:
            ds, rows, graph = self.pretrain, None, self.pretrain_graph
        elif cells == "all":
            ds, rows, graph = self.dataset, None, self.all_graph
        else:
            ds, rows, graph = self.dataset, self.dataset.reference_index, self.reference_graph
        labels = ds.label_codes if rows is None else ds.label_codes[rows]
        if validating and ds is self.dataset and cells == "reference":
            labels = np.where(self.is_validation, -1, labels)
        data = replace(ds.cells(rows, inputs), graph=graph, labels=labels)
        extra = ds.rna_only
        if not rna_only or extra is None:
            return data
        return data.with_rna_only(extra.cells if rows is None else extra.cells.subset(~extra.is_query))


@dataclass(frozen=True)
class TaskInputs:
    """One task's run: the method and its resolved settings, the seed, threads, the task's own settings, and
    the seconds spent training (the rest of a task's time is evaluation)."""

    method: str
    trial: TrialSettings
    seed: int
    threads: int
    fine_tuning: FineTuneSettings
    timings: dict[str, float] = field(default_factory=lambda: {"train_seconds": 0.0})


def _fit(shared: SharedData, inputs: TaskInputs, cells: str):
    """The method fitted on the ``reference`` or ``all`` cells; the time it took counts as training."""
    trial, started, method = inputs.trial, time.perf_counter(), get_method(inputs.method)
    data = shared.training_data(cells, method.uses_rna_only, inputs=method.inputs)
    model = fit(inputs.method, trial.params, data, trial.train, trial.augment, inputs.seed)
    inputs.timings["train_seconds"] += time.perf_counter() - started
    return model


def batch_correction(shared: SharedData, inputs: TaskInputs):
    ds = shared.dataset
    embedding = _fit(shared, inputs, "all").embed(shared.cells())
    labels = ds.labels
    return scib_scores(embedding, ds.obs["batch"].to_numpy(), labels, shared.pre_integration,
                       n_jobs=inputs.threads), embedding


def cell_typing(shared: SharedData, inputs: TaskInputs):
    ds = shared.dataset
    model = _fit(shared, inputs, "reference")
    embedding = model.embed(shared.cells())
    labels = ds.labels
    ref, query = ds.reference_index, ds.query_index
    metrics = knn_cell_typing(embedding[ref], labels[ref], embedding[query], labels[query])
    if ds.other is not None:  # multimodal: the same from the RNA alone
        rna = model.embed(rna_only(shared.cells()))
        scores = knn_cell_typing(rna[ref], labels[ref], rna[query], labels[query])
        metrics.update({f"rna_{k}": v for k, v in scores.items()})
    return metrics, embedding


def rna_only(cells: Cells) -> Cells:
    """``cells`` with their second modality unobserved (a method embeds them from the RNA)."""
    return replace(cells, other=None, other_counts=None)


def reconstruction(shared: SharedData, inputs: TaskInputs):
    from scssl.evaluate.reconstruction import mean_reconstruction, pca_reconstruction, reconstruction_scores

    ds = shared.dataset
    ref, query = ds.reference_index, ds.query_index
    model = _fit(shared, inputs, "reference")
    embedding = model.embed(shared.cells())
    made = model.reconstruct(ds.X[query], seed=inputs.seed)
    floors = {"mean_floor": mean_reconstruction(ds.X[ref], len(query)),  # PCA: as many components as the embedding
              "pca_floor": pca_reconstruction(ds.X[ref], made.inputs, embedding.shape[1], seed=inputs.seed)}
    genes = slice(None) if ds.missing_genes is None else ~ds.missing_genes  # a gene the data lacks: not scored
    target = np.asarray(ds.X[query].todense(), dtype=np.float32)[:, genes]
    scored = None if made.scored is None else made.scored[:, genes]
    metrics = reconstruction_scores(target, made.x_hat[:, genes], scored)
    for name, x_hat in floors.items():
        metrics.update({f"{name}_{k}": v for k, v in reconstruction_scores(target, x_hat[:, genes], scored).items()})
    return metrics, embedding


def modality_prediction(shared: SharedData, inputs: TaskInputs):
    from scssl.evaluate.modality_prediction import knn_modality_prediction, modality_prediction_scores

    ds = shared.dataset
    ref, query = ds.reference_index, ds.query_index
    model = _fit(shared, inputs, "reference")
    embedding = model.embed(rna_only(shared.cells()))  # the RNA embedding
    target, binary = ds.other.target, ds.other.kind == "atac"
    predicted = knn_modality_prediction(embedding[ref], target[ref], embedding[query])
    truth = np.asarray(target[query].todense(), dtype=np.float32)
    metrics = modality_prediction_scores(truth, predicted, binary=binary)
    if get_method(inputs.method).predicts_other:  # the model's own prediction from the query's RNA
        own = model.predict_other(rna_only(shared.cells(query)))
        metrics.update({f"model_{k}": v for k, v in modality_prediction_scores(truth, own, binary=binary).items()})
    return metrics, embedding


def cross_modality_prediction(shared: SharedData, inputs: TaskInputs):
    from scssl.evaluate.fine_tuning import regress
    from scssl.evaluate.modality_prediction import modality_prediction_scores

    ds = shared.dataset
    ref, query = ds.reference_index, ds.query_index
    model = _fit(shared, inputs, "reference")
    network = model.network
    device = next(network.parameters()).device
    truth = np.asarray(ds.other.X[query].todense(), dtype=np.float32)
    codes = shared.cells().batch_codes
    metrics = {}
    for prefix, freeze in (("head_", True), ("", False)):
        predicted = regress(network.rna_encoder, inputs.trial.params.embedding_dim, ds.X[ref], ds.other.X[ref],
                            ds.X[query], inputs.fine_tuning, inputs.seed, device, freeze, codes[ref], codes[query])
        scores = modality_prediction_scores(truth, predicted)
        metrics.update({f"{prefix}{k}": scores[k] for k in CROSS_MODALITY_METRICS})
    return metrics, model.embed(shared.cells())


def fine_tuned_cell_typing(shared: SharedData, inputs: TaskInputs):
    import torch

    from scssl.evaluate.fine_tuning import fine_tune
    from scssl.methods.domain_norm import configure_domains

    ds = shared.dataset
    ref, query = ds.reference_index, ds.query_index
    labels = ds.labels
    model = _fit(shared, inputs, "reference")
    network = model.network
    device = next(network.parameters()).device
    dim = inputs.trial.params.embedding_dim
    codes = shared.cells().batch_codes
    args = (ds.X[ref], labels[ref], ds.X[query], labels[query], inputs.fine_tuning, inputs.seed, device,
            codes[ref], codes[query])
    metrics = fine_tune(network.rna_encoder, dim, *args)
    torch.manual_seed(inputs.seed)  # the twin: the same architecture, initialised as the pretraining started
    scratch = type(network)(ds.X.shape[1], inputs.trial.params, network.n_other).rna_encoder.to(device)
    configure_domains(scratch, codes[ref], device)  # its domain norms (if any): the batches it trains on
    metrics.update({f"scratch_{k}": v for k, v in fine_tune(scratch, dim, *args).items()})
    return metrics, model.embed(shared.cells())


@dataclass(frozen=True)
class TaskSpec:
    """A task: its function (metrics, embedding of every cell), its metrics and the one printed per job, and
    the capability of a method it needs (``None``: any method)."""

    run: Callable[[SharedData, TaskInputs], tuple[dict[str, float], np.ndarray]]
    metrics: list[str]  # the columns of its table (it logs more: every floor's every score)
    headline: str
    needs: str | None = None

    def serves(self, method: str) -> bool:
        return self.needs is None or bool(getattr(get_method(method), self.needs))


TASKS: dict[str, TaskSpec] = {
    "batch_correction": TaskSpec(batch_correction, AGGREGATES + BIO_METRICS + BATCH_METRICS, "total"),
    "cell_typing": TaskSpec(cell_typing, CELL_TYPING_METRICS + [f"rna_{m}" for m in CELL_TYPING_METRICS[:2]],
                            "macro_f1"),
    "reconstruction": TaskSpec(
        reconstruction, RECONSTRUCTION_METRICS + [f"{f}_{m}" for f in FLOORS for m in RECONSTRUCTION_METRICS[:4:3]],
        "mse", needs="reconstructs"),
    "modality_prediction": TaskSpec(
        modality_prediction, MODALITY_PREDICTION_METRICS + [f"model_{m}" for m in MODALITY_PREDICTION_METRICS[:4]],
        "pearson"),
    "cross_modality_prediction": TaskSpec(
        cross_modality_prediction, CROSS_MODALITY_METRICS + [f"head_{m}" for m in CROSS_MODALITY_METRICS], "pearson",
        needs="fine_tunable"),
    "fine_tuned_cell_typing": TaskSpec(
        fine_tuned_cell_typing, CELL_TYPING_METRICS + [f"scratch_{m}" for m in CELL_TYPING_METRICS], "macro_f1",
        needs="fine_tunable"),
}

# what scoring a task depends on besides the embedding, so that changing it reruns the task's jobs
EVALUATION = {"cell_typing": {"knn_k": K_NEIGHBORS}, "batch_correction": {"scib": BIO_METRICS + BATCH_METRICS},
              "reconstruction": {"metrics": TASKS["reconstruction"].metrics, "masked": "hidden from the encoder"},
              "fine_tuned_cell_typing": {"domain_norms": "query batches adapted over all query cells"},
              "modality_prediction": {"knn_k": 5, "metric": "cosine"},
              "cross_modality_prediction": {"domain_norms": "query batches adapted over all query cells"}}

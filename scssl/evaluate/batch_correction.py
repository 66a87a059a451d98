"""Batch correction with scib-metrics: the ten metrics of scSSL-Bench, raw, plus unscaled aggregates.

scib-metrics' ``Benchmarker`` computes nine of them; it has no silhouette-batch slot any more
(BRAS replaced it), so that one is called directly. Neighbours are exact (``scssl.neighbours``), which
avoids pynndescent's compile time per process and makes the scores deterministic. scib-metrics
(and JAX under it) is imported on first use: it takes seconds, and tuning trials never need it.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import version

import anndata as ad
import numpy as np
import pandas as pd

from scssl.neighbours import nearest
from scssl.evaluate.tasks.batch_correction import BATCH_METRICS, BIO_METRICS

# scib-metrics' column names -> ours
_SCIB_NAMES = {
    "Isolated labels": "isolated_labels", "Leiden NMI": "leiden_nmi", "Leiden ARI": "leiden_ari",
    "Silhouette label": "silhouette_label", "cLISI": "clisi", "iLISI": "ilisi", "KBET": "kbet",
    "Graph connectivity": "graph_connectivity", "PCR comparison": "pcr_comparison",
}


@functools.cache  # read once per process: every run's start tags it
def metric_set() -> str:
    """The scib-metrics release and the metrics behind scssl's scIB numbers, as every run and the report record
    them: numbers of another release or set do not compare."""
    return (f"scib-metrics {version('scib-metrics')}: {', '.join(BIO_METRICS)} (bio); {', '.join(BATCH_METRICS)} "
            "(batch); unscaled, exact neighbours; Total = 0.6 Bio + 0.4 Batch")


def exact_neighbors(X: np.ndarray, k: int):
    """k exact Euclidean neighbours of each row (itself included), as scib-metrics' NeighborsResults."""
    from scib_metrics.nearest_neighbors import NeighborsResults

    distances, indices = nearest(X, X, k)
    return NeighborsResults(indices=indices, distances=distances)


def aggregate(scores: dict[str, float]) -> dict[str, float]:
    """Unscaled Bio, Batch and Total = 0.6 Bio + 0.4 Batch (scIB weighting)."""
    bio = float(np.mean([scores[m] for m in BIO_METRICS]))
    batch = float(np.mean([scores[m] for m in BATCH_METRICS]))
    return {"bio_conservation": bio, "batch_correction": batch, "total": 0.6 * bio + 0.4 * batch}


def stratified_subsample(batch: np.ndarray, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted rows of about ``size`` cells drawn at random (``seed``) within each batch x label group, each group
    keeping its share of the cells and at least one (so a rare type in a batch is still scored)."""
    codes, counts = np.unique(np.char.add(np.char.add(np.asarray(batch).astype(str), "\x1f"),
                                           np.asarray(labels).astype(str)), return_inverse=True, return_counts=True)[1:]
    quota = np.minimum(counts, np.maximum(1, np.floor(counts * size / len(codes)).astype(np.int64)))
    shuffled = np.random.default_rng(seed).permutation(len(codes))
    by_group = shuffled[np.argsort(codes[shuffled], kind="stable")]  # each group's rows, in random order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(by_group)) - np.repeat(starts, counts)
    return np.sort(by_group[position < np.repeat(quota, counts)])


def scib_scores(
    embedding: np.ndarray, batch: np.ndarray, labels: np.ndarray, pre_integration: np.ndarray, n_jobs: int = 1,
    max_cells: int | None = None, seed: int = 0,
) -> dict[str, float]:
    """The ten raw metrics, the three aggregates, ``scib_cells`` (how many cells they scored) and ``embedded_cells``
    for one embedding of all cells.

    ``pre_integration`` is the PCA of the preprocessed expression (for PCR comparison). With more than
    ``max_cells`` cells the metrics score the ``stratified_subsample`` of that size drawn with ``seed``.
    """
    import scib_metrics
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    scib_metrics.settings.verbosity = logging.WARNING  # its per-label INFO lines drown the progress output
    batch, labels = np.asarray(batch).astype(str), np.asarray(labels).astype(str)
    n_cells = len(batch)
    if max_cells is not None and len(batch) > max_cells:
        rows = stratified_subsample(batch, labels, max_cells, seed)
        embedding, pre_integration, batch, labels = embedding[rows], pre_integration[rows], batch[rows], labels[rows]
    cells = ad.AnnData(
        obs=pd.DataFrame({"batch": batch, "label": labels}, index=np.arange(len(batch)).astype(str)),
        obsm={"X_emb": np.asarray(embedding, dtype=np.float32), "X_pre": pre_integration},
    )
    benchmarker = Benchmarker(
        cells, batch_key="batch", label_key="label", embedding_obsm_keys=["X_emb"],
        bio_conservation_metrics=BioConservation(
            nmi_ari_cluster_labels_leiden={"n_jobs": n_jobs}, nmi_ari_cluster_labels_kmeans=False
        ),
        batch_correction_metrics=BatchCorrection(bras=False),
        pre_integrated_embedding_obsm_key="X_pre", n_jobs=n_jobs, progress_bar=False,
    )
    benchmarker.prepare(neighbor_computer=exact_neighbors)
    benchmarker.benchmark()
    row = benchmarker.get_results(min_max_scale=False).loc["X_emb"]
    scores = {ours: float(row[theirs]) for theirs, ours in _SCIB_NAMES.items()}
    scores["silhouette_batch"] = float(scib_metrics.silhouette_batch(cells.obsm["X_emb"], labels, batch))
    return {**{m: scores[m] for m in BIO_METRICS + BATCH_METRICS}, **aggregate(scores), "scib_cells": len(batch),
            "embedded_cells": n_cells}


def relative_to_cohort(scores: pd.DataFrame) -> pd.DataFrame:
    """The scIB metrics of ``scores`` (long: dataset, method, variant, task, seed, metric, value) min-max scaled
    across the rows of each data set and seed, with Bio, Batch and Total recomputed from the scaled metrics.

    A metric equal in every row of a cohort scales to 0, as sklearn's MinMaxScaler (which scib-metrics uses)
    does: it lowers every row's Bio or Batch by the same amount, so ranks are unchanged. Missing stays missing.
    """
    columns = list(scores.columns)
    part = scores[scores["metric"].isin(BIO_METRICS + BATCH_METRICS)]
    if part.empty:
        return pd.DataFrame(columns=columns)
    wide = part.set_index(["dataset", "seed", "method", "variant", "task", "metric"])["value"].unstack("metric")
    wide = wide.reindex(columns=BIO_METRICS + BATCH_METRICS)
    cohort = wide.groupby(level=["dataset", "seed"])
    low = cohort.transform("min")
    span = cohort.transform("max") - low
    scaled = ((wide - low) / span).mask((span == 0) & wide.notna(), 0.0)
    scaled = scaled.join(scaled.apply(lambda row: pd.Series(aggregate(row)), axis=1))
    return scaled.rename_axis(columns="metric").stack(future_stack=True).rename("value").reset_index()[columns]

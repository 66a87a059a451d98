"""Batch correction with scib-metrics: the ten metrics of scSSL-Bench, raw, plus unscaled aggregates.

scib-metrics' ``Benchmarker`` computes nine of them; it has no silhouette-batch slot any more
(BRAS replaced it), so that one is called directly. Neighbours are exact (scikit-learn), which
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
from sklearn.neighbors import NearestNeighbors

from scssl.evaluate.tasks.batch_correction import AGGREGATES, BATCH_METRICS, BIO_METRICS

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

    distances, indices = NearestNeighbors(n_neighbors=min(k, len(X))).fit(X).kneighbors(X)
    return NeighborsResults(indices=indices, distances=distances)


def aggregate(scores: dict[str, float]) -> dict[str, float]:
    """Unscaled Bio, Batch and Total = 0.6 Bio + 0.4 Batch (scIB weighting)."""
    bio = float(np.mean([scores[m] for m in BIO_METRICS]))
    batch = float(np.mean([scores[m] for m in BATCH_METRICS]))
    return {"bio_conservation": bio, "batch_correction": batch, "total": 0.6 * bio + 0.4 * batch}


def scib_scores(
    embedding: np.ndarray, batch: np.ndarray, labels: np.ndarray, pre_integration: np.ndarray, n_jobs: int = 1
) -> dict[str, float]:
    """The ten raw metrics and the three aggregates for one embedding of all cells.

    ``pre_integration`` is the PCA of the preprocessed expression (for PCR comparison).
    """
    import scib_metrics
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    scib_metrics.settings.verbosity = logging.WARNING  # its per-label INFO lines drown the progress output
    batch, labels = np.asarray(batch).astype(str), np.asarray(labels).astype(str)
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
    return {**{m: scores[m] for m in BIO_METRICS + BATCH_METRICS}, **aggregate(scores)}

"""What the report keeps in MLflow besides the retrain and tune runs: one run per study tagged
``scssl.stage=report`` holding the cells' metadata (for UMAPs) and every table, figure and the HTML page,
so that ``scssl report`` needs nothing but MLflow."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from scssl.tune.tracking import JOB_KEY, METHOD, SCIB_METRIC_SET, STAGE, VARIANT, Tracker

CELLS = "cells"  # artifact folder of the report run: <dataset>.csv, one row per cell in embedding order
# A progress bar per small downloaded file would drown the report's own lines; a user's setting wins.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def report_run(tracker: Tracker, create: bool = True) -> str | None:
    """The study's report run (the earliest, if several), created when missing and ``create``."""
    runs = tracker.runs(stage="report")
    if runs:
        return runs[0].info.run_id
    return tracker.start_run("report", {STAGE: "report"}, {}) if create else None


def log_cell_metadata(tracker: Tracker, dataset: str, obs: pd.DataFrame) -> None:
    """Keep the batch and cell type of every cell of ``dataset`` (``obs`` of its PreparedDataset, whose rows are
    the rows of every embedding) in the report run: the retrain stage calls this once per data set."""
    run_id = report_run(tracker)
    cells = obs[["batch", "label"]].astype(str).rename_axis("cell")
    tracker.client.log_text(run_id, cells.to_csv(), f"{CELLS}/{dataset}.csv")
    tracker.end_run(run_id)


def cell_metadata(tracker: Tracker, dataset: str) -> pd.DataFrame | None:
    """The cells logged by ``log_cell_metadata`` (index: cell; columns batch, label), or None."""
    run_id = report_run(tracker, create=False)
    if run_id is None:
        return None
    path = f"{CELLS}/{dataset}.csv"
    if path not in {a.path for a in tracker.client.list_artifacts(run_id, CELLS)}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = tracker.client.download_artifacts(run_id, path, folder)
        return pd.read_csv(local, index_col="cell", dtype=str, keep_default_na=False)


def embeddings(tracker: Tracker, dataset: str, task: str, seed: int,
               current: set[str]) -> dict[tuple[str, str], np.ndarray]:
    """The embedding (every cell) of each (method, variant) of ``dataset``'s latest finished retrain run of
    ``task`` and ``seed`` among the ``current`` job keys, from the run's ``.npy`` artifact; runs without one
    are left out."""
    latest = {}
    for run in tracker.runs(stage="retrain", dataset=dataset, task=task, seed=str(seed)):  # oldest first
        if Tracker.finished(run) and run.data.tags.get(JOB_KEY) in current:
            latest[(run.data.tags[METHOD], run.data.tags.get(VARIANT, ""))] = run.info.run_id
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for key, run_id in latest.items():
            files = [a.path for a in tracker.client.list_artifacts(run_id) if a.path.endswith(".npy")]
            if files:
                out[key] = np.load(tracker.client.download_artifacts(run_id, files[0], folder))
    return out


def scib_made_with(tracker: Tracker, current: set[str], tasks: list[str]) -> str:
    """Which scib-metrics release and metric set made the scIB numbers (of ``tasks``) of the study as it is now
    (each run records its own), as a sentence; "" without such runs."""
    sets = Counter(r.data.tags.get(SCIB_METRIC_SET, "a set not recorded (a run of an scssl before scib-metrics 0.6)")
                   for task in tasks for r in tracker.runs(stage="retrain", task=task)
                   if Tracker.finished(r) and r.data.tags.get(JOB_KEY) in current)
    if len(sets) <= 1:
        return "".join(f"scIB numbers made with {made_with}." for made_with in sets)
    return "scIB numbers made with several sets, which do not compare: " + "; ".join(
        f"{made_with} ({n} run{'s' * (n != 1)})" for made_with, n in sets.most_common()) + "."


def remove_logged(tracker: Tracker, paths: list[str]) -> None:
    """Delete ``paths`` (relative to the results folder) from the report run, where its artifact store can delete."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run_id = report_run(tracker, create=False)
    if run_id is None:
        return
    repository = get_artifact_repository(tracker.client.get_run(run_id).info.artifact_uri)
    for path in paths:
        try:
            repository.delete_artifacts(path)
        except Exception:  # not there, or a store that cannot delete (MLflow raises its own kinds)
            pass


def log_report(tracker: Tracker, results_dir: Path, files: list[Path]) -> str:
    """Log ``files`` (under ``results_dir``) to the report run at the same relative paths; files of the same
    name from an earlier report are replaced."""
    run_id = report_run(tracker)
    for path in files:
        folder = path.parent.relative_to(results_dir).as_posix()
        tracker.client.log_artifact(run_id, str(path), None if folder == "." else folder)
    tracker.end_run(run_id)
    return run_id

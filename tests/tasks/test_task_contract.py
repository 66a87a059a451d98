"""The task contract: a new task is one file in scssl/evaluate/tasks/ and one line in its registry, and it runs
through a study (Ray trials and jobs, MLflow) into the report with nothing else changed."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

CENTROID_TASK = '''"""Nearest-centroid cell typing: a toy task of the contract test."""

import numpy as np

from scssl.evaluate.tasks.base import Task, TaskTable


class CentroidTyping(Task):
    name = "centroid_typing"
    metrics = ["centroid_accuracy"]
    headline = "centroid_accuracy"
    headers = {"centroid_accuracy": "Centroid accuracy"}
    table = TaskTable("Nearest-centroid cell typing", "Query cells typed by the nearest reference type centroid.",
                      "centroid_accuracy", "centroid_", (("centroid_accuracy", "Centroid accuracy"),))

    def run(self, shared, inputs):
        from scssl.evaluate.shared import fit_method

        ds = shared.dataset
        embedding = fit_method(shared, inputs, self.trains_on).embed(shared.cells())
        ref, query, labels = ds.reference_index, ds.query_index, ds.labels
        types = np.unique(labels[ref])
        centroids = np.stack([embedding[ref][labels[ref] == t].mean(0) for t in types])
        distances = ((embedding[query][:, None, :] - centroids[None]) ** 2).sum(-1)
        predicted = types[distances.argmin(1)]
        return {"centroid_accuracy": float((predicted == labels[query]).mean())}, embedding
'''


@pytest.mark.slow
def test_a_task_in_one_file_and_a_registry_line_runs_through_a_study_into_the_report(tmp_path, synthetic_h5ad):
    package = tmp_path / "package"
    shutil.copytree(ROOT / "scssl", package / "scssl", ignore=shutil.ignore_patterns("__pycache__"))
    tasks = package / "scssl" / "evaluate" / "tasks"
    (tasks / "centroid_typing.py").write_text(CENTROID_TASK)
    registry = (tasks / "__init__.py").read_text()  # the registry: the task's import and its entry
    anchor = "    CrossModalityPrediction(),\n"
    assert registry.count(anchor) == 1
    registry = registry.replace(anchor, anchor + "    CentroidTyping(),\n")
    imports = "from scssl.evaluate.tasks.reconstruction import Reconstruction\n"
    registry = registry.replace(imports, imports + "from scssl.evaluate.tasks.centroid_typing import CentroidTyping\n")
    (tasks / "__init__.py").write_text(registry)

    experiment = tmp_path / "toy.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "toy", "output_dir": "out",
        "datasets": [{"path": str(synthetic_h5ad), "batch_key": "batch", "labels_key": "cell_type",
                      "counts_layer": "counts", "query_batches": ["batch2"], "n_hvgs": 200}],
        "methods": ["pca", "simclr"], "tasks": ["centroid_typing", "cell_typing"],
        "train": {"epochs": 2, "batch_size": 64}, "final": {"retrain": "defaults", "seeds": [0]},
    }))
    env = {**os.environ, "PYTHONPATH": str(package)}  # Ray's workers inherit it: they import the same copy
    done = subprocess.run([sys.executable, "-m", "scssl", "run", str(experiment)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tmp_path / "out" / "results"
    table = pd.read_csv(results / "centroid_typing.csv").set_index("method")
    assert set(table.index) == {"pca", "simclr"}
    assert table["centroid_accuracy_mean"].between(0, 1).all() and (table["centroid_accuracy_count"] == 1).all()
    assert "Nearest-centroid cell typing" in (results / "centroid_typing.md").read_text()
    summary = pd.read_csv(results / "summary.csv")
    assert "centroid_centroid_accuracy_mean" in summary.columns

"""End to end through Ray and MLflow: the tasks of Richter et al. and of multimodal data, with a transfer row."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from scssl.cli import main

pytestmark = pytest.mark.slow


def test_a_multimodal_transfer_study_fills_every_task_table(tmp_path):
    experiment = tmp_path / "tasks.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "tasks", "output_dir": "out",
        "datasets": [{"name": "bmmc_cite"},
                     {"name": "pbmc_hao2021_cite", "id": "pbmc_from_bmmc", "pretrain": "bmmc_cite"}],
        "methods": ["pca", "mae"],
        "tasks": ["cell_typing", "modality_prediction", "cross_modality_prediction", "reconstruction"],
        "train": {"epochs": 2, "batch_size": 64},
        "final": {"retrain": "defaults", "seeds": [0]},
    }))
    assert main(["run", str(experiment)]) == 0
    results = Path(tmp_path / "out" / "results")
    for table in ("cell_typing", "modality_prediction", "cross_modality_prediction", "reconstruction"):
        rows = pd.read_csv(results / f"{table}.csv")
        served = ["mae"] if table == "cross_modality_prediction" else ["mae", "pca"]  # pca has no network
        assert sorted(rows["dataset"].unique()) == ["bmmc_cite", "pbmc_from_bmmc"], table
        assert sorted(rows["method"].unique()) == served, table
    prediction = pd.read_csv(results / "modality_prediction.csv").set_index(["dataset", "method"])
    assert prediction["pearson_mean"].between(-1, 1).all()

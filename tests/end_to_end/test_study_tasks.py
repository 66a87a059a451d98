"""End to end through Ray and MLflow: the tasks of Richter et al. and of multimodal data, with a transfer row."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scssl.cli import main

pytestmark = pytest.mark.slow


def test_totalvi_and_multivi_train_inside_ray_trials_and_fill_the_tables(tmp_path):
    from scssl.tune.tracking import Tracker

    experiment = tmp_path / "generative.yaml"
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    for name in ("totalvi", "multivi"):
        (spaces / f"{name}.yaml").write_text(yaml.safe_dump({"method": {"n_latent": {"choice": [8, 12]}}}))
    base = {"output_dir": "out", "search_spaces": "spaces", "tasks": ["cell_typing", "modality_prediction"],
            "train": {"epochs": 2, "batch_size": 128, "lr": 4.0e-3},
            "tune": {"num_samples": 2, "objective": "modality_prediction"}, "final": {"seeds": [0]}}
    for name, dataset in (("totalvi", "bmmc_cite"), ("multivi", "bmmc_multiome")):
        experiment.write_text(yaml.safe_dump({"name": name, "datasets": [{"name": dataset}],
                                              "methods": ["pca", name], **base}))
        assert main(["run", str(experiment), "--output-dir", str(tmp_path / name)]) == 0
        tracker = Tracker(f"sqlite:///{tmp_path / name / 'mlflow.db'}", name, tmp_path / name / "mlartifacts")
        trials = tracker.runs(stage="tune", method=name)
        assert len(trials) == 2 and all(Tracker.finished(r) for r in trials)
        assert all("val_modality_pearson" in r.data.metrics for r in trials)
        prediction = pd.read_csv(tmp_path / name / "results" / "modality_prediction.csv").set_index("method")
        assert prediction.loc[name, ["pearson_mean", "model_pearson_mean"]].between(-1, 1).all()
        assert pd.isna(prediction.loc["pca"].get("model_pearson_mean"))  # PCA predicts nothing itself
        typing = pd.read_csv(tmp_path / name / "results" / "cell_typing.csv").set_index("method")
        assert typing.loc[name, ["macro_f1_mean", "rna_macro_f1_mean"]].between(0, 1).all()


def test_scvi_and_scanvi_train_inside_ray_trials_and_land_in_the_tables_of_the_ssl_methods(tmp_path):
    from scssl.tune.tracking import Tracker

    spaces = tmp_path / "spaces"
    spaces.mkdir()
    small = {"n_layers": 1, "query_epochs": 5, "n_latent": {"choice": [8, 12]}}
    for name, space in (("scvi", small), ("scanvi", small), ("simclr", {"temperature": {"choice": [0.5, 1.0]}})):
        (spaces / f"{name}.yaml").write_text(yaml.safe_dump({"method": space}))
    experiment = tmp_path / "scvi.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "scvi", "output_dir": "out", "search_spaces": "spaces", "datasets": [{"name": "pbmc_hao2021"}],
        "methods": ["simclr", "scvi", "scanvi"],
        "tasks": ["cell_typing", "batch_correction"], "train": {"epochs": 3, "batch_size": 128, "lr": 1.0e-3},
        "tune": {"num_samples": 2}, "final": {"seeds": [0]}}))
    assert main(["run", str(experiment)]) == 0
    tracker = Tracker(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", "scvi", tmp_path / "out" / "mlartifacts")
    for name in ("scvi", "scanvi"):
        trials = tracker.runs(stage="tune", method=name)
        assert len(trials) == 2 and all(Tracker.finished(r) for r in trials)
        assert all(0 <= r.data.metrics["val_knn_accuracy"] <= 1 for r in trials)
    for table in ("cell_typing", "batch_correction"):
        rows = pd.read_csv(tmp_path / "out" / "results" / f"{table}.csv").set_index("method")
        assert sorted(rows.index) == ["scanvi", "scvi", "simclr"], table
        assert rows["macro_f1_mean" if table == "cell_typing" else "total_mean"].between(0, 1).all(), table


@pytest.mark.skipif(importlib.util.find_spec("scgpt") is None, reason="scgpt is not installed (make test installs it)")
def test_scgpt_loads_and_fine_tunes_from_a_local_checkpoint_inside_ray_and_lands_in_the_tables(tmp_path):
    from scssl.data import DatasetSpec, prepare, resolve
    from scgpt_checkpoint import write_checkpoint

    genes = [str(g) for g in prepare(resolve(DatasetSpec(name="pbmc_hao2021"), tmp_path)).cells().genes]
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    write_checkpoint(spaces / "tiny_scgpt", genes)  # relative to the search-space files that name it
    (spaces / "scgpt.yaml").write_text(yaml.safe_dump({"method": {
        "checkpoint": "tiny_scgpt", "max_length": 32, "mask_ratio": {"choice": [0.3, 0.4]}}}))
    (spaces / "scgpt_zero_shot.yaml").write_text(yaml.safe_dump({"method": {"checkpoint": "tiny_scgpt",
                                                                            "max_length": 32}}))
    experiment = tmp_path / "scgpt.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "scgpt", "output_dir": "out", "search_spaces": "spaces", "datasets": [{"name": "pbmc_hao2021"}],
        "methods": ["pca", "scgpt_zero_shot", "scgpt"], "tasks": ["cell_typing", "batch_correction"],
        "train": {"epochs": 2, "batch_size": 64, "lr": 1.0e-3, "device": "cpu"},
        "tune": {"num_samples": 2}, "final": {"seeds": [0]}}))
    assert main(["run", str(experiment)]) == 0
    for table in ("cell_typing", "batch_correction"):
        rows = pd.read_csv(tmp_path / "out" / "results" / f"{table}.csv").set_index("method")
        assert sorted(rows.index) == ["pca", "scgpt", "scgpt_zero_shot"], table
        assert rows["macro_f1_mean" if table == "cell_typing" else "total_mean"].between(0, 1).all(), table


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

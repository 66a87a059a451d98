"""A study on a data set prepared to disk (``store_from_cells``): its methods train streamed from the store inside
Ray trials and retrain jobs, and the tasks score a sample of its cells held in memory."""

import anndata as ad
import pandas as pd
import pytest
import yaml

from scssl.cli import main

pytestmark = pytest.mark.slow


def _experiment(tmp_path, methods, **dataset):
    spaces = tmp_path / "spaces"
    spaces.mkdir(exist_ok=True)
    (spaces / "simclr.yaml").write_text(yaml.safe_dump({"method": {"temperature": {"choice": [0.5, 1.0]}}}))
    (spaces / "scvi.yaml").write_text(yaml.safe_dump({"method": {"n_latent": {"choice": [8, 12]}}}))
    experiment = tmp_path / "stored.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "stored", "output_dir": "out", "search_spaces": "spaces", "store_dir": "stores",
        "datasets": [{"name": "pbmc_hao2021", "n_hvgs": 300, **dataset}], "methods": methods,
        "tasks": ["cell_typing", "batch_correction"], "train": {"epochs": 2, "batch_size": 128, "lr": 1.0e-3},
        "tune": {"num_samples": 2}, "final": {"seeds": [0]}}))
    return experiment


def test_a_study_on_a_store_trains_streamed_and_scores_a_sample(tmp_path, capsys):
    from scssl.tune.tracking import Tracker

    experiment = _experiment(tmp_path, ["simclr"], store_from_cells=100, evaluation_cells=600)
    assert main(["run", str(experiment)]) == 0
    out = capsys.readouterr().out
    stores = list((tmp_path / "stores").iterdir())
    assert len(stores) == 1 and (stores[0] / "scssl.json").is_file()
    assert "pbmc_hao2021: 1200 cells" in out and "the tasks score 600 of its 1,200 cells" in out
    tracker = Tracker(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}", "stored", tmp_path / "out" / "mlartifacts")
    trials = tracker.runs(stage="tune", method="simclr")
    assert len(trials) == 2 and all(Tracker.finished(r) for r in trials)
    assert all(0 <= r.data.metrics["val_knn_accuracy"] <= 1 for r in trials)
    typing = pd.read_csv(tmp_path / "out" / "results" / "cell_typing.csv").set_index("method")
    assert typing.loc["simclr", "macro_f1_mean"] > 0.3
    embeddings = ad.read_h5ad(tmp_path / "out" / "results" / "embeddings_pbmc_hao2021.h5ad")
    assert embeddings.n_obs == 600  # the sample's cells: the tasks score them


def test_a_method_that_cannot_train_streamed_is_refused_before_the_data_set_is_prepared(tmp_path, capsys):
    experiment = _experiment(tmp_path, ["pca", "simclr", "scvi"], store_from_cells=100)
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "datasets.0.store_from_cells" in err and "has at least 100 cells, so it is prepared to disk" in err
    assert "pca cannot train on streamed cells (it reads whole matrices); nor can scvi" in err
    assert not (tmp_path / "stores").exists()

"""End to end: a tiny study through Ray Tune, Optuna, ASHA, MLflow, scib-metrics and the report."""

from pathlib import Path

import anndata as ad
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from scssl.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory, synthetic_h5ad):
    folder = tmp_path_factory.mktemp("study")
    experiment = folder / "tiny.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "tiny",
        "output_dir": "out",
        "search_spaces": str(ROOT / "search_spaces"),
        "datasets": [{"path": str(synthetic_h5ad), "id": "synth", "batch_key": "batch", "labels_key": "cell_type",
                      "counts_layer": "counts", "query_batches": ["batch2"], "n_hvgs": 200}],
        "methods": ["pca", "simclr", "vicreg"],
        "train": {"epochs": 2, "batch_size": 64},
        "tune": {"num_samples": 2, "grace_period": 1, "cpus_per_trial": 1},
        "final": {"seeds": [0, 1]},
    }))
    assert main(["run", str(experiment)]) == 0
    out = folder / "out"
    return experiment, out, MlflowClient(f"sqlite:///{out / 'mlflow.db'}")


def _runs(client, stage, experiment="tiny"):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`scssl.stage` = '{stage}'")


def test_every_trial_is_a_finished_mlflow_run(study):
    _, out, client = study
    runs = _runs(client, "tune")
    assert len(runs) == 4  # 2 methods x 2 trials; pca has nothing to tune
    assert sorted(r.data.tags["scssl.method"] for r in runs) == ["simclr", "simclr", "vicreg", "vicreg"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics["val_knn_accuracy"] <= 1.0
        history = client.get_metric_history(run.info.run_id, "val_knn_accuracy")
        assert [m.step for m in history] in ([1], [1, 2])  # ASHA may stop a trial after its grace period
        assert any(k.startswith("method.") for k in run.data.params)
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "config.json" in artifacts
    assert (out / "ray_results" / "synth__simclr").is_dir()


def test_retrain_runs_tables_and_embeddings(study):
    _, out, client = study
    runs = _runs(client, "retrain")
    assert len(runs) == 3 * 2 * 2 and all(r.info.status == "FINISHED" for r in runs)

    bc = pd.read_csv(out / "results" / "batch_correction.csv", index_col=[0, 1])
    assert list(bc.index.get_level_values("method")) == ["pca", "simclr", "vicreg"]
    for column in ("total_mean", "bio_conservation_mean", "batch_correction_mean", "kbet_mean", "ilisi_mean"):
        assert bc[column].between(0, 1).all(), column
    assert (bc["total_count"] == 2).all()
    ct = pd.read_csv(out / "results" / "cell_typing.csv", index_col=[0, 1])
    assert ct["macro_f1_mean"].between(0, 1).all() and (ct["macro_f1_count"] == 2).all()
    assert "| synth | simclr |" in (out / "results" / "summary.md").read_text()

    adata = ad.read_h5ad(out / "results" / "embeddings_synth.h5ad")
    assert adata.n_obs == 400
    for method in ("pca", "simclr", "vicreg"):
        assert f"X_{method}" in adata.obsm and f"X_{method}_reference_model" in adata.obsm
    assert {"batch", "cell_type", "split"} <= set(adata.obs.columns)


def test_stages_rerun_without_duplicates(study, capsys):
    experiment, out, client = study
    before = (out / "results" / "summary.md").read_text()
    assert main(["retrain", str(experiment)]) == 0
    assert "0 of 12 jobs to run" in capsys.readouterr().out
    assert len(_runs(client, "retrain")) == 12
    assert main(["report", str(experiment)]) == 0
    assert (out / "results" / "summary.md").read_text() == before
    # the study folder's own copy names this folder, wherever it is read from
    assert main(["report", str(out / "experiment.yaml")]) == 0
    assert (out / "results" / "summary.md").read_text() == before
    assert not (out / "out").exists()


def test_bad_experiment_is_a_clear_cli_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmethods: [simclr]\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "datasets" in err


def test_a_nan_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path, small_experiment):
    # temperature 1e-40 overflows the logits: the loss is NaN in the first epoch
    experiment = small_experiment("nan", search_space={"method": {"temperature": {"choice": [0.5, 1e-40]}}},
                                  tune={"search": "grid", "num_samples": 1, "grace_period": 2})
    assert main(["run", str(experiment)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = _runs(client, "tune", "nan")
    by_status = {r.info.status: r for r in runs}
    assert sorted(by_status) == ["FAILED", "FINISHED"]
    assert "loss is nan in epoch 1" in by_status["FAILED"].data.tags["scssl.error"]
    assert by_status["FINISHED"].data.params["method.temperature"] == "0.5"
    [retrain] = _runs(client, "retrain", "nan")
    assert retrain.info.status == "FINISHED" and '"temperature": 0.5' in retrain.data.tags["scssl.config"]


def test_a_study_against_a_real_mlflow_server(tmp_path, synthetic_h5ad):
    """HTTP tracking with a database backend, as on a cluster head: every trial and retrain is there."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--serve-artifacts", "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        experiment = tmp_path / "remote.yaml"
        experiment.write_text(yaml.safe_dump({
            "name": "remote", "output_dir": "out", "search_spaces": str(ROOT / "search_spaces"),
            "datasets": [{"path": str(synthetic_h5ad), "batch_key": "batch", "labels_key": "cell_type",
                          "counts_layer": "counts", "query_batches": ["batch2"], "n_hvgs": 200}],
            "methods": ["simclr"], "tasks": ["cell_typing"],
            "train": {"epochs": 2, "batch_size": 64},
            "tune": {"num_samples": 2, "grace_period": 2},
            "final": {"seeds": [0]},
        }))
        assert main(["run", str(experiment), "--tracking-uri", uri]) == 0
        client = MlflowClient(uri)
        tune_runs, retrain_runs = _runs(client, "tune", "remote"), _runs(client, "retrain", "remote")
        assert len(tune_runs) == 2 and len(retrain_runs) == 1
        assert all(r.info.status == "FINISHED" for r in tune_runs + retrain_runs)
        assert "config.json" in [a.path for a in client.list_artifacts(tune_runs[0].info.run_id)]
        assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing went to the local default store
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_multi_objective_search_reports_its_pareto_front(tmp_path, small_experiment):
    experiment = small_experiment("mo", tune={"search": "nsga2", "multi_objective": True, "num_samples": 3, "grace_period": 1})
    assert main(["run", str(experiment)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    tune_runs = _runs(client, "tune", "mo")
    assert len(tune_runs) == 3
    for run in tune_runs:
        assert 0 <= run.data.metrics["val_batch_mixing"] <= 1
        assert run.data.metrics["val_score"] == pytest.approx(
            0.6 * run.data.metrics["val_knn_accuracy"] + 0.4 * run.data.metrics["val_batch_mixing"])
    front = pd.read_csv(tmp_path / "out" / "results" / "pareto_front.csv")
    assert len(front) == 3 and front["on_front"].any()
    # the final stage retrains the best trial of each objective (one job when one trial is best on both)
    variants = {r.data.tags["scssl.variant"] for r in _runs(client, "retrain", "mo")}
    assert variants in ({"best val_knn_accuracy & val_batch_mixing"}, {"best val_knn_accuracy", "best val_batch_mixing"})


def test_a_sweep_retrains_every_grid_point_without_tuning(tmp_path, small_experiment, capsys):
    experiment = small_experiment("sweep", search_space={"method": {"temperature": {"choice": [0.5, 2.0]}}},
                                   final={"retrain": "grid", "seeds": [0]})
    assert main(["run", str(experiment)]) == 0
    assert "[tune] skipped" in capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    assert _runs(client, "tune", "sweep") == []
    runs = _runs(client, "retrain", "sweep")
    assert sorted(r.data.tags["scssl.variant"] for r in runs) == ["temperature=0.5", "temperature=2.0"]
    table = pd.read_csv(tmp_path / "out" / "results" / "cell_typing.csv")
    assert sorted(table["variant"]) == ["temperature=0.5", "temperature=2.0"]
    adata = ad.read_h5ad(tmp_path / "out" / "results" / "embeddings_synthetic.h5ad")
    assert {"X_simclr_temperature=0.5_reference_model", "X_simclr_temperature=2.0_reference_model"} <= set(adata.obsm)


def test_a_reused_worker_trains_a_configuration_to_the_same_curve(tmp_path, small_experiment):
    """The first trial runs in a new worker, the others in that worker after it: one curve for all."""
    experiment = small_experiment(
        "reuse", search_space={"method": {"temperature": {"choice": [0.5]}}}, train={"epochs": 4, "batch_size": 64},
        tune={"search": "grid", "num_samples": 3, "grace_period": 4, "max_concurrent_trials": 1,
              "reuse_actors": True})
    assert main(["tune", str(experiment)]) == 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    curves = {tuple(m.value for m in sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step))
              for r in _runs(client, "tune", "reuse")}
    assert len(curves) == 1 and len(next(iter(curves))) == 4

import importlib.metadata

import numpy as np
import pandas as pd
import pytest

from scssl.report import build_report, collect
from scssl.settings import flatten
from scssl.tune.tracking import Tracker


def _tracker(tmp_path):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "study", tmp_path / "artifacts")


def _retrain_run(tracker, method, task, seed, metrics, status="FINISHED"):
    tags = {"scssl.stage": "retrain", "scssl.dataset": "d", "scssl.method": method, "scssl.task": task,
            "scssl.seed": seed, "scssl.job_key": f"{method}/{task}/{seed}"}
    run_id = tracker.start_run(f"{method}/{task}/{seed}", tags, {"method": {"temperature": 0.5}})
    tracker.log_metrics(run_id, metrics)
    tracker.end_run(run_id, status)
    return run_id


def test_flatten():
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}


def test_tracker_logs_params_metrics_and_artifacts(tmp_path):
    tracker = _tracker(tmp_path)
    run_id = _retrain_run(tracker, "simclr", "cell_typing", 0, {"macro_f1": 0.5})
    tracker.log_json(run_id, {"method": {"temperature": 0.5}}, "config.json")
    [run] = tracker.runs(stage="retrain", method="simclr")
    assert run.data.params == {"method.temperature": "0.5"} and run.data.metrics == {"macro_f1": 0.5}
    assert (tmp_path / "artifacts").exists()
    assert Tracker.finished(run)
    assert _tracker(tmp_path).experiment_id == tracker.experiment_id  # reopened, not created again


def test_tables_are_mean_and_std_over_seeds(tmp_path):
    tracker = _tracker(tmp_path)
    f1 = {"simclr": [0.5, 0.6, 0.7], "pca": [0.2, 0.2, 0.3]}
    for method, values in f1.items():
        for seed, value in enumerate(values):
            _retrain_run(tracker, method, "cell_typing", seed, {"macro_f1": value, "accuracy": value + 0.1})
    _retrain_run(tracker, "simclr", "cell_typing", 3, {"macro_f1": 0.0}, status="FAILED")  # not counted

    current = {f"{method}/cell_typing/{seed}" for method in f1 for seed in range(4)}
    long = collect(tracker, current)
    assert len(long) == 12 and (long["variant"] == "").all()
    text = build_report(tracker, ["pca", "simclr"], current, [], 0, tmp_path / "results")

    table = pd.read_csv(tmp_path / "results" / "cell_typing.csv", index_col=[0, 1])
    assert table.loc[("d", "simclr"), "macro_f1_mean"] == pytest.approx(0.6)
    assert table.loc[("d", "simclr"), "macro_f1_std"] == pytest.approx(np.std([0.5, 0.6, 0.7], ddof=1))
    assert table.loc[("d", "pca"), "macro_f1_count"] == 3
    lines = text.splitlines()
    pca_line = next(i for i, line in enumerate(lines) if "| pca |" in line)
    simclr_line = next(i for i, line in enumerate(lines) if "| simclr |" in line)
    assert pca_line < simclr_line, "rows follow the experiment's method order"
    assert "0.600 ± 0.100" in lines[simclr_line]
    assert (tmp_path / "results" / "summary.md").read_text() == text


def test_every_run_and_the_scib_tables_say_which_scib_metrics_made_the_numbers(tmp_path, capsys):
    tracker = _tracker(tmp_path)
    scores = {"bio_conservation": 0.6, "batch_correction": 0.5, "total": 0.56}
    runs = [_retrain_run(tracker, m, "batch_correction", 0, scores) for m in ("pca", "simclr")]
    version = importlib.metadata.version("scib-metrics")
    for run in tracker.runs(stage="retrain"):
        assert run.data.tags["scssl.scib_metric_set"].startswith(f"scib-metrics {version}: isolated_labels, ")
        assert "silhouette_batch" in run.data.tags["scssl.scib_metric_set"]
    current = {"pca/batch_correction/0", "simclr/batch_correction/0"}
    build_report(tracker, ["pca", "simclr"], current, [], 0, tmp_path / "results")
    for name in ("batch_correction", "batch_correction_relative", "summary"):
        note = (tmp_path / "results" / f"{name}.md").read_text().split("\n")[0]
        assert note.endswith(f"scIB numbers made with scib-metrics {version}: isolated_labels, leiden_nmi, "
                             "leiden_ari, silhouette_label, clisi (bio); silhouette_batch, ilisi, kbet, "
                             "graph_connectivity, pcr_comparison (batch); unscaled, exact neighbours; "
                             "Total = 0.6 Bio + 0.4 Batch.")
    assert f"[report] scIB numbers made with scib-metrics {version}" in capsys.readouterr().out

    tracker.set_tags(runs[0], {"scssl.scib_metric_set": "scib-metrics 0.5.10: ..."})  # as an older release made it
    build_report(tracker, ["pca", "simclr"], current, [], 0, tmp_path / "results")
    note = (tmp_path / "results" / "batch_correction.md").read_text().split("\n")[0]
    assert "scIB numbers made with several sets, which do not compare: scib-metrics" in note
    assert "scib-metrics 0.5.10: ... (1 run)" in note and f"scib-metrics {version}:" in note

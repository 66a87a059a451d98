"""The report: cohort scaling, ranks, every text format, self-contained HTML, and the whole report rebuilt
from an MLflow store alone, byte for byte."""

import shutil

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from optuna.distributions import FloatDistribution

from scssl.evaluate import BATCH_METRICS, BIO_METRICS, aggregate
from scssl.evaluate.batch_correction import relative_to_cohort
from scssl.evaluate.tasks import TASKS
from scssl.report import benchmark_tables, build_report, log_cell_metadata
from scssl.report.figures import results_table_figure, umap_figure
from scssl.report.html import ReportFigure, write_html
from scssl.report.tables import LONG, ranks
from scssl.report.tuning import tuning_study
from scssl.tune.tracking import Tracker

PNG = b"\x89PNG\r\n\x1a\n"


def _long(scores: dict, task: str = "batch_correction") -> pd.DataFrame:
    """{(dataset, method, variant, seed): {metric: value}} as collect()'s long format."""
    rows = [(*key[:3], task, key[3], metric, value)
            for key, metrics in scores.items() for metric, value in metrics.items()]
    return pd.DataFrame(rows, columns=LONG)


def _scib(isolated_labels: float, ilisi: float) -> dict:
    """Every scIB metric 0.7 except two, with the unscaled aggregates."""
    scores = {m: 0.7 for m in BIO_METRICS + BATCH_METRICS} | {"isolated_labels": isolated_labels, "ilisi": ilisi}
    return scores | aggregate(scores)


def test_relative_to_cohort_against_hand_computed_values():
    long = _long({
        ("d", "a", "", 0): _scib(0.2, 0.1), ("d", "b", "", 0): _scib(0.4, 0.3), ("d", "c", "", 0): _scib(0.6, 0.2),
        ("d", "a", "", 1): _scib(1.0, 0.5), ("d", "b", "", 1): _scib(0.0, 0.5), ("d", "c", "", 1): _scib(0.0, 0.5),
        ("e", "a", "", 0): _scib(0.9, 0.9),  # a cohort of one: every metric constant, so 0
    })
    scaled = relative_to_cohort(long).set_index(["dataset", "method", "seed", "metric"])["value"]
    # seed 0: isolated labels 0, 0.5, 1 -> Bio = that / 5; iLISI 0, 1, 0.5 -> Batch = that / 5; the rest constant -> 0
    assert scaled[("d", "b", 0, "isolated_labels")] == pytest.approx(0.5)
    assert scaled[("d", "b", 0, "kbet")] == 0.0
    assert scaled[("d", "b", 0, "total")] == pytest.approx(0.6 * 0.1 + 0.4 * 0.2)
    assert scaled[("d", "c", 0, "total")] == pytest.approx(0.6 * 0.2 + 0.4 * 0.1)
    assert scaled[("d", "a", 1, "total")] == pytest.approx(0.6 * 0.2)  # iLISI constant in seed 1
    assert (scaled.loc["e"] == 0).all()

    [_, relative, _] = benchmark_tables(long, ["a", "b", "c"])
    numbers = relative.numbers.loc["d"].droplevel("variant")
    assert numbers["total_mean"].to_dict() == pytest.approx({"a": 0.06, "b": 0.07, "c": 0.08})
    assert numbers.loc["a", "total_std"] == pytest.approx(np.std([0.0, 0.12], ddof=1))
    assert numbers["rank"].tolist() == [3, 2, 1]
    assert "relative to the cohort" in relative.note.lower()


def test_ranks_per_dataset_with_shared_ties():
    index = pd.MultiIndex.from_tuples([("d", "a", ""), ("d", "b", ""), ("d", "c", ""), ("e", "a", "")],
                                      names=["dataset", "method", "variant"])
    summary = pd.DataFrame({"total_mean": [0.5, 0.7, 0.5, 0.1]}, index=index)
    assert ranks(summary, "total").tolist() == [2, 1, 2, 1]


def test_variant_column_only_when_a_row_has_one():
    scores = {("d", "simclr", "", 0): {"macro_f1": 0.5, "accuracy": 0.5}}
    [typing, _] = benchmark_tables(_long(scores, "cell_typing"), ["simclr"])
    assert list(typing.text().columns[:3]) == ["dataset", "method", "Rank"]

    scores = {("d", "simclr", f"t={t}", 0): {"macro_f1": 0.1 * t, "accuracy": 0.5} for t in (10, 2, 5)}
    [typing, summary] = benchmark_tables(_long(scores, "cell_typing"), ["simclr"])
    text = summary.text()
    assert list(text.columns[:3]) == ["dataset", "method", "variant"]
    assert text["variant"].tolist() == ["t=2", "t=5", "t=10"]  # numbers in labels compare as numbers
    assert typing.text()["Rank"].tolist() == ["3", "2", "1"]


def test_every_table_is_written_as_csv_markdown_and_latex(tmp_path):
    scores = {("d", m, "", s): _scib(0.1 * s + len(m) / 20, 0.3) for m in ("pca", "barlow_twins") for s in (0, 1)}
    tables = benchmark_tables(_long(scores), ["pca", "barlow_twins"])
    assert [t.name for t in tables] == ["batch_correction", "batch_correction_relative", "summary"]
    for table in tables:
        csv, md, tex = table.write(tmp_path)
        assert pd.read_csv(csv, index_col=[0, 1]).index.tolist() == [("d", "pca"), ("d", "barlow_twins")]
        assert md.read_text().startswith(f"**{table.title}.**") and "| d | barlow_twins |" in md.read_text()
        latex = tex.read_text()
        assert latex.startswith("\\begin{table}") and "\\toprule" in latex and "\\end{tabular}" in latex
        assert "barlow\\_twins" in latex and "$\\pm$" in latex and "±" not in latex


def test_scib_tables_say_which_data_sets_were_scored_on_a_subsample():
    scores = {(d, m, "", 0): _scib(0.1 * i, 0.2) | {"scib_cells": cells, "embedded_cells": 12_000}
              for d, cells in (("big", 5_000), ("small", 12_000)) for i, m in enumerate(["pca", "simclr"])}
    tables = {t.name: t for t in benchmark_tables(_long(scores), ["pca", "simclr"])}
    for name in ("batch_correction", "batch_correction_relative"):
        assert "big: 5,000 of its 12,000 cells, a subsample stratified by batch x cell type" in tables[name].note
        assert "small" not in tables[name].note
    unsampled = {key: value | {"scib_cells": 12_000} for key, value in scores.items()}
    assert "subsample" not in benchmark_tables(_long(unsampled), ["pca", "simclr"])[0].note


def test_html_is_self_contained_and_figures_are_png(tmp_path):
    scores = {("d", m, "", s): _scib(0.2 * i + 0.1 * s, 0.1 * i) for i, m in enumerate(["pca", "simclr", "vicreg"])
              for s in (0, 1)}
    tables = benchmark_tables(_long(scores), ["pca", "simclr", "vicreg"])
    figure = results_table_figure(tables[1], "d", ["pca", "simclr", "vicreg"], TASKS["batch_correction"].headers,
                                  tmp_path / "scib_table.png")
    assert figure.read_bytes().startswith(PNG)

    page = write_html("study <x>", tables, [ReportFigure("Figures: d", "results table", figure)], tmp_path / "r.html")
    html = page.read_text()
    assert "study &lt;x&gt;" in html and "<table" in html and "relative to the cohort" in html
    sources = [part.split('"', 1)[0] for part in html.split('src="')[1:]]
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "href=" not in html and "<link" not in html and "<script" not in html


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module, as creating its tables takes seconds; each test has its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _tracker(store, tmp_path):
    return Tracker(store, tmp_path.name, tmp_path / "mlartifacts")


def _cells(rng):
    """240 cells of 3 batches and 4 types, and an 8-dimensional embedding that separates the types."""
    cells = pd.DataFrame({"batch": np.repeat(["b0", "b1", "b2"], 80), "label": np.tile(["T", "B", "NK", "Mono"], 60)},
                         index=[f"cell{i}" for i in range(240)])
    centres = rng.normal(size=(4, 8)) * 4
    return cells, lambda: (centres[pd.factorize(cells["label"])[0]] + rng.normal(size=(240, 8))).astype(np.float32)


def _fake_study(tracker: Tracker, tmp_path) -> dict:
    """What tune and retrain leave in MLflow for 2 methods, 2 tasks and 2 seeds; returns the embeddings."""
    tmp_path.mkdir()
    rng = np.random.default_rng(0)
    cells, embed = _cells(rng)
    log_cell_metadata(tracker, "d", cells)
    made = {}
    for method in ("pca", "simclr"):
        for task in ("batch_correction", "cell_typing"):
            for seed in (0, 1):
                tags = {"scssl.stage": "retrain", "scssl.dataset": "d", "scssl.method": method, "scssl.task": task,
                        "scssl.seed": seed, "scssl.job_key": f"{method}/{task}/{seed}"}
                run_id = tracker.start_run(f"{method}/{task}/{seed}", tags, {})
                made[(method, task, seed)] = embed()
                path = tmp_path / f"{method}__{task}__seed{seed}.npy"
                np.save(path, made[(method, task, seed)])
                tracker.client.log_artifact(run_id, str(path))
                if task == "batch_correction":
                    scores = {m: rng.uniform() for m in BIO_METRICS + BATCH_METRICS}
                    tracker.log_metrics(run_id, scores | aggregate(scores))
                else:
                    tracker.log_metrics(run_id, {"macro_f1": rng.uniform(), "accuracy": rng.uniform()})
                tracker.end_run(run_id)
    for trial, (temperature, status) in enumerate([(0.1, "FINISHED"), (0.5, "FINISHED"), (2.0, "FINISHED"),
                                                   (0.01, "FAILED")]):
        tags = {"scssl.stage": "tune", "scssl.dataset": "d", "scssl.method": "simclr", "scssl.trial_id": trial}
        params = {"method": {"temperature": temperature, "embedding_dim": 32}, "augment": {"preset": "base"}}
        run_id = tracker.start_run(f"d/simclr/{trial}", tags, params)
        for epoch in (1, 2):
            tracker.log_metrics(run_id, {"val_knn_accuracy": 0.3 + 0.1 * epoch + temperature / 10}, step=epoch)
        tracker.end_run(run_id, status)
    return made


@pytest.mark.slow
def test_umap_figure_is_a_png(tmp_path):
    cells, embed = _cells(np.random.default_rng(0))
    out = umap_figure(embed(), cells, "d / pca", tmp_path / "umap.png")
    assert out.read_bytes().startswith(PNG)


@pytest.mark.slow
def test_report_from_mlflow_alone_twice_byte_for_byte(store, tmp_path, capsys, monkeypatch):
    drawn = {}

    def umap_stand_in(embedding, cells, title, out):  # the real one is tested above; here: what reaches it
        drawn[title] = (embedding, cells)
        Figure().savefig(out)
        return out

    monkeypatch.setattr("scssl.report.build.umap_figure", umap_stand_in)
    tracker = _tracker(store, tmp_path)
    made = _fake_study(tracker, tmp_path / "made")  # the .npy files live on only as MLflow artifacts
    results = tmp_path / "results"
    current = {f"{m}/{t}/{s}" for m in ("pca", "simclr") for t in ("batch_correction", "cell_typing") for s in (0, 1)}
    summary = build_report(tracker, ["pca", "simclr"], current, [], 0, results)
    assert sorted(drawn) == ["d / pca", "d / simclr"]
    embedding, cells = drawn["d / pca"]
    np.testing.assert_array_equal(embedding, made[("pca", "batch_correction", 0)])
    assert cells["label"].tolist()[:4] == ["T", "B", "NK", "Mono"] and cells["batch"].nunique() == 3
    assert "| d | simclr |" in summary and "Total rel." in summary
    tables = {p.name: p.read_bytes() for p in results.glob("*.*") if p.suffix in (".csv", ".md", ".tex")}
    assert {"summary.md", "summary.csv", "summary.tex", "batch_correction.tex", "batch_correction_relative.csv",
            "cell_typing.md", "metrics_per_seed.csv"} <= set(tables)
    figures = sorted(p.name for p in (results / "figures").iterdir())
    assert figures == ["optuna_d__simclr_history.png", "optuna_d__simclr_importances.png", "scib_table_d.png",
                       "umap_d__pca.png", "umap_d__simclr.png"]
    assert all((results / "figures" / f).read_bytes().startswith(PNG) for f in figures)
    assert (results / "report.html").read_text().count('src="data:image/png;base64,') == 5

    study = tuning_study(tracker, "d", "simclr")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert study.best_trial.params == {"method.temperature": 2.0, "method.embedding_dim": 32, "augment.preset": "base"}
    assert study.trials[0].intermediate_values == pytest.approx({1: 0.41, 2: 0.51})
    assert study.best_trial.distributions["method.temperature"] == FloatDistribution(0.01, 2.0)

    [run] = tracker.runs(stage="report")
    logged = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert {"cells", "figures", "report.html", "summary.md", "metrics_per_seed.csv"} <= logged
    logged_figures = {a.path for a in tracker.client.list_artifacts(run.info.run_id, "figures")}
    assert logged_figures == {f"figures/{f}" for f in figures}

    shutil.rmtree(results)
    shutil.rmtree(tmp_path / "made")
    capsys.readouterr()
    assert build_report(_tracker(store, tmp_path), ["pca", "simclr"], current, [], 0, results) == summary
    assert {p.name: p.read_bytes() for p in results.glob("*.*") if p.suffix in (".csv", ".md", ".tex")} == tables
    assert len(tracker.runs(stage="report")) == 1  # the report run is reused, not duplicated
    assert "no UMAP" not in capsys.readouterr().out


def test_report_notes_what_it_cannot_draw(store, tmp_path, capsys):
    tracker = _tracker(store, tmp_path)
    run_id = tracker.start_run("r", {"scssl.stage": "retrain", "scssl.dataset": "d", "scssl.method": "simclr",
                                     "scssl.task": "batch_correction", "scssl.seed": 0, "scssl.variant": "t=1",
                                     "scssl.job_key": "k"}, {})
    scores = {m: 0.5 for m in BIO_METRICS + BATCH_METRICS}
    tracker.log_metrics(run_id, scores | aggregate(scores))
    tracker.end_run(run_id)
    run_id = tracker.start_run("t", {"scssl.stage": "tune", "scssl.dataset": "d", "scssl.method": "simclr"},
                               {"method": {"temperature": 0.5}})
    tracker.log_metrics(run_id, {"val_knn_accuracy": 0.4}, step=1)
    tracker.end_run(run_id)

    summary = build_report(tracker, ["simclr"], {"k"}, [], 0, tmp_path / "results")
    assert "| d | simclr | t=1 |" in summary
    out = capsys.readouterr().out
    assert "no cell metadata" in out and "no parameter importances" in out
    assert sorted(p.name for p in (tmp_path / "results" / "figures").iterdir()) == [
        "optuna_d__simclr_history.png", "scib_table_d.png"]


def test_the_tuning_figures_show_only_the_latest_search():
    from types import SimpleNamespace

    from scssl.report.tuning import latest_search

    def run(start: int, key: str | None):
        tags = {} if key is None else {"scssl.tune_key": key}
        return SimpleNamespace(info=SimpleNamespace(start_time=start), data=SimpleNamespace(tags=tags))

    before_edit, after_edit, older = [run(1, "a"), run(2, "a")], [run(3, "b"), run(5, "b")], [run(0, None)]
    assert latest_search(older + before_edit + after_edit) == after_edit
    reverted = run(6, "a")  # the edit undone: the search of key "a" is the latest again
    assert latest_search(older + before_edit + after_edit + [reverted]) == before_edit + [reverted]
    assert latest_search(older) == older and latest_search([]) == []


def test_fine_tuned_rows_show_their_twin_from_scratch_and_reconstruction_its_floors():
    tuned = _long({("d", m, "", s): {"macro_f1": f, "accuracy": 0.5, "scratch_macro_f1": 0.4, "scratch_accuracy": 0.45}
                   for (m, f) in (("mae", 0.6), ("simclr", 0.5)) for s in (0, 1)}, "fine_tuned_cell_typing")
    rebuilt = _long({("d", "mae", "", s): {"mse": 0.5 + s / 10, "explained_variance": 0.2, "masked_mse": 0.6,
                                             "mean_floor_mse": 0.7, "pca_floor_mse": 0.4} for s in (0, 1)},
                    "reconstruction")
    tables = {t.name: t for t in benchmark_tables(pd.concat([tuned, rebuilt]), ["mae", "simclr"])}
    text = tables["fine_tuned_cell_typing"].text()
    assert text["Query macro-F1"].tolist() == ["0.600 ± 0.000", "0.500 ± 0.000"]
    assert text["From scratch: macro-F1"].tolist() == ["0.400 ± 0.000"] * 2
    assert text["Rank"].tolist() == ["1", "2"]
    text = tables["reconstruction"].text()
    assert text["MSE (all)"].tolist() == ["0.550 ± 0.071"]
    assert text["Mean floor: MSE (all)"].tolist() == ["0.700 ± 0.000"]
    assert text["PCA floor: MSE (all)"].tolist() == ["0.400 ± 0.000"]
    summary = tables["summary"].text()
    assert summary["Fine-tuned macro-F1"].tolist() == ["0.600 ± 0.000", "0.500 ± 0.000"]
    assert summary["Reconstruction MSE (all)"].tolist() == ["0.550 ± 0.071", "–"]

"""A study's whole report from its MLflow runs alone: tables, figures and one HTML page, written under the
results folder and logged to the study's report run."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pandas as pd

from scssl.evaluate.tasks import TASKS
from scssl.report.figures import results_table_figure, umap_figure
from scssl.report.html import ReportFigure, write_html
from scssl.report.runs import cell_metadata, embeddings, log_report, remove_logged, scib_made_with
from scssl.report.tables import Table, benchmark_tables, collect, label, shown
from scssl.report.tuning import latest_search, tuning_figures, tuning_study
from scssl.report.formats import markdown
from scssl.tune.search import pareto_front
from scssl.tune.tracking import DATASET, METHOD, TRIAL_ID, Tracker
from scssl.tune.trainable import BATCH_METRIC, METRIC


MANIFEST = ".report_files"  # in the results folder: what the last report wrote there, replaced by the next


def build_report(tracker: Tracker, methods: list[str], current: set[str], status: list[str], umap_seed: int,
                 results_dir: Path) -> str:
    """Write every table (CSV, Markdown, LaTeX), figure (PNG) and ``report.html`` under ``results_dir``, log
    them to the report run, and return the summary's Markdown (with ``status`` below it). Only the retrain runs
    of ``current`` job keys count (the study as it is now); ``status`` lists what is missing or out of date, and
    the page shows it. Rows follow ``methods``; UMAPs show the ``umap_seed`` embeddings of the task that shows them
    (``Task.shows_embedding``). The previous report's files are removed first, so none outlives the runs it came
    from; the tables come out byte for byte the same whenever the runs are the same."""
    for line in status:
        print(f"[report] not shown: {line}", flush=True)
    _remove_previous(tracker, results_dir)
    long = collect(tracker, current)
    tables = benchmark_tables(long, methods)
    scib_tasks = [name for name, task in TASKS.items() if task.scib]
    made_with = scib_made_with(tracker, current, scib_tasks)
    if made_with:  # on the tables of scIB numbers: the tasks' own and the summary
        print(f"[report] {made_with}", flush=True)
        tables = [replace(t, note=f"{t.note} {made_with}") if not t.task or TASKS[t.task].scib else t
                  for t in tables]
    study = tracker.client.get_experiment(tracker.experiment_id).name
    results_dir.mkdir(parents=True, exist_ok=True)
    if not tables:
        page = write_html(f"scssl report: {study}", [], [], results_dir / "report.html", status)
        _log(tracker, results_dir, [page])
        return "\n".join(["(no finished retrain runs of the study as it is now)", *status])
    figures_dir = results_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    files = [results_dir / "metrics_per_seed.csv"]
    shown(long).to_csv(files[0], index=False)
    for table in tables:
        files += table.write(results_dir)
    files += _pareto_fronts(tracker, results_dir)
    figures = []
    summary = tables[-1].numbers  # every (data set, method, variant), in order
    for dataset in summary.index.unique("dataset"):
        in_order = list(summary.xs(dataset, level="dataset").index.unique("method"))
        figures += _dataset_figures(tracker, tables, dataset, in_order, umap_seed, current, figures_dir)
    page = write_html(f"scssl report: {study}", tables, figures, results_dir / "report.html", status)
    run_id = _log(tracker, results_dir, files + [f.path for f in figures] + [page])
    print(f"[report] {len(files)} table files, {len(figures)} figures and report.html in {results_dir}; "
          f"logged to MLflow run {run_id}", flush=True)
    summary = (results_dir / "summary.md").read_text()
    return summary + "".join(f"\nNot shown: {line}" for line in status)


def _log(tracker: Tracker, results_dir: Path, files: list[Path]) -> str:
    """Log ``files`` to the report run and list them in the manifest; returns the run's id."""
    (results_dir / MANIFEST).write_text("".join(f"{p.relative_to(results_dir).as_posix()}\n" for p in files))
    return log_report(tracker, results_dir, files)


def _remove_previous(tracker: Tracker, results_dir: Path) -> None:
    """Delete what the previous report wrote (its manifest's files, here and in the report run)."""
    manifest = results_dir / MANIFEST
    if not manifest.exists():
        return
    written = manifest.read_text().split()
    for name in written:
        (results_dir / name).unlink(missing_ok=True)
    remove_logged(tracker, written)
    manifest.unlink()


def _dataset_figures(tracker: Tracker, tables: list[Table], dataset: str, methods: list[str], seed: int,
                     current: set[str], folder: Path) -> list[ReportFigure]:
    """The tables' figures, a UMAP per row of each task that shows its embeddings and the Optuna figures of each
    tuned method of one data set."""
    section = f"Figures: {dataset}"
    figures = []
    for table in tables:
        if table.spec is None or table.spec.figure is None or dataset not in table.numbers.index.unique("dataset"):
            continue
        rows = table.numbers.xs(dataset, level="dataset").index
        path = results_table_figure(table, dataset, [label(*r) for r in rows], TASKS[table.task].headers,
                                    folder / f"{table.spec.figure.stem}_{_safe(dataset)}.png")
        figures.append(ReportFigure(section, table.spec.figure.caption, path))
    for name, task in TASKS.items():
        own = [t for t in tables if t.task == name and dataset in t.numbers.index.unique("dataset")]
        if task.shows_embedding and own:
            rows = own[0].numbers.xs(dataset, level="dataset").index
            figures += _umaps(tracker, name, rows, dataset, seed, current, folder, section)
    for method in methods:
        study = tuning_study(tracker, dataset, method)
        if study is None:
            continue
        made = tuning_figures(study, folder / f"optuna_{_safe(dataset)}__{_safe(method)}")
        figures += [ReportFigure(section, f"{method}: Optuna {kind}", path) for kind, path in made.items()]
        if "importances" not in made:
            print(f"[report] {dataset}/{method}: no parameter importances (they need finished trials whose objective "
                  "and a parameter vary)", flush=True)
    return figures


def _umaps(tracker: Tracker, task: str, rows: pd.MultiIndex, dataset: str, seed: int, current: set[str],
           folder: Path, section: str) -> list[ReportFigure]:
    """A UMAP of ``task``'s embedding of each (method, variant) in ``rows`` that has one, from the embeddings and
    cell metadata in MLflow."""
    cells = cell_metadata(tracker, dataset)
    if cells is None:
        print(f"[report] {dataset}: no cell metadata in MLflow (see log_cell_metadata), so no UMAPs", flush=True)
        return []
    found = embeddings(tracker, dataset, task, seed, current)
    what = task.replace("_", "-")
    figures = []
    for method, variant in rows:
        name = label(method, variant)
        embedding = found.get((method, variant))
        if embedding is None or len(embedding) != len(cells):
            print(f"[report] {dataset}/{name}: no {what} embedding of all {len(cells)} cells "
                  f"for seed {seed} in MLflow, so no UMAP", flush=True)
            continue
        stem = "__".join(_safe(part) for part in (dataset, method, variant) if part)
        path = umap_figure(embedding, cells, f"{dataset} / {name}", folder / f"umap_{stem}.png")
        figures.append(ReportFigure(section, f"{name}: UMAP of the {what} embedding, seed {seed}", path))
    return figures


def _pareto_fronts(tracker: Tracker, results_dir: Path) -> list[Path]:
    """``pareto_front.csv`` / ``.md``: for a multi-objective search, every finished trial's two objectives and
    whether it is on its method's Pareto front (no other trial at least as good on both and better on one);
    the trials of each method's latest search."""
    names = [METRIC, BATCH_METRIC]
    rows = []
    runs = [r for r in tracker.runs(stage="tune") if Tracker.finished(r) and all(n in r.data.metrics for n in names)]
    for (dataset, method), group in _group(runs, (DATASET, METHOD)).items():
        group = latest_search(group)
        front = {r.info.run_id for r in pareto_front(group, names)}
        rows += [{"dataset": dataset, "method": method, "trial": r.data.tags[TRIAL_ID],
                  **{n: r.data.metrics[n] for n in names}, "on_front": r.info.run_id in front} for r in group]
    if not rows:
        return []
    frame = pd.DataFrame(rows).sort_values(["dataset", "method", METRIC], ascending=[True, True, False])
    files = [results_dir / "pareto_front.csv", results_dir / "pareto_front.md"]
    frame.to_csv(files[0], index=False, float_format="%.6g")
    front = frame[frame["on_front"]].drop(columns="on_front")
    text = front.assign(**{n: front[n].map("{:.3f}".format) for n in names})
    files[1].write_text(f"**Pareto front of the multi-objective search** ({METRIC}: cell types, {BATCH_METRIC}: "
                        f"1 - kNN accuracy of the batch, both on the validation cells).\n\n{markdown(text)}\n")
    return files


def _group(runs: list, keys: tuple[str, ...]) -> dict[tuple, list]:
    groups: dict[tuple, list] = {}
    for run in runs:
        groups.setdefault(tuple(run.data.tags[k] for k in keys), []).append(run)
    return groups


def _safe(name: str) -> str:
    """``name`` as a file-name part."""
    return re.sub(r"[^\w.=-]+", "_", name)

"""Benchmark tables from the retrain runs in MLflow: data set x method, each metric mean +- std over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scssl.evaluate import AGGREGATES, BATCH_METRICS, BIO_METRICS
from scssl.tune.tracking import DATASET, METHOD, SEED, TASK, Tracker

TASK_METRICS = {
    "batch_correction": AGGREGATES + BIO_METRICS + BATCH_METRICS,
    "cell_typing": ["macro_f1", "accuracy", "macro_f1_all", "accuracy_all"],
}
# The columns of the summary printed at the end of a study.
HEADLINE = [("batch_correction", "bio_conservation", "Bio"), ("batch_correction", "batch_correction", "Batch"),
            ("batch_correction", "total", "Total"), ("cell_typing", "macro_f1", "Query macro-F1"),
            ("cell_typing", "accuracy", "Query accuracy")]


def collect(tracker: Tracker) -> pd.DataFrame:
    """One row per finished retrain run and metric; the latest run wins for a (data set, method, task, seed)."""
    rows = []
    for run in tracker.runs(stage="retrain"):
        if not Tracker.finished(run):
            continue
        tags = run.data.tags
        for metric, value in run.data.metrics.items():
            rows.append({"dataset": tags[DATASET], "method": tags[METHOD], "task": tags[TASK],
                         "seed": int(tags[SEED]), "metric": metric, "value": value,
                         "start_time": run.info.start_time})
    columns = ["dataset", "method", "task", "seed", "metric", "value"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows).sort_values("start_time")
    frame = frame.drop_duplicates(["dataset", "method", "task", "seed", "metric"], keep="last")
    return frame[columns].sort_values(columns[:5]).reset_index(drop=True)


def summarize(long: pd.DataFrame, task: str, methods: list[str]) -> pd.DataFrame:
    """Mean, std and number of seeds of each metric of ``task``, rows (data set, method) in ``methods`` order."""
    part = long[long["task"] == task]
    stats = part.groupby(["dataset", "method", "metric"])["value"].agg(["mean", "std", "count"]).unstack("metric")
    stats = stats.swaplevel(axis=1)
    metrics = [m for m in TASK_METRICS[task] if m in stats.columns.get_level_values(0)]
    stats = stats[[(m, s) for m in metrics for s in ("mean", "std", "count")]]
    order = {m: i for i, m in enumerate(methods)}
    return stats.sort_index(key=lambda idx: idx.map(order) if idx.name == "method" else idx)


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def markdown(summary: pd.DataFrame, columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``summary``'s (metric, header) columns as mean ± std."""
    lines = ["| dataset | method | " + " | ".join(h for _, h in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for (dataset, method), row in summary.iterrows():
        cells = [_cell(row[(m, "mean")], row[(m, "std")]) if (m, "mean") in row and not pd.isna(row[(m, "mean")])
                 else "–" for m, _ in columns]
        lines.append(f"| {dataset} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(long: pd.DataFrame, methods: list[str], results_dir: Path) -> str:
    """Write every table under ``results_dir`` and return the headline Markdown table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    long.to_csv(results_dir / "metrics_per_seed.csv", index=False)
    summaries = {}
    for task in TASK_METRICS:
        if (long["task"] == task).any():
            summary = summarize(long, task, methods)
            summaries[task] = summary
            flat = summary.copy()
            flat.columns = [f"{m}_{s}" for m, s in flat.columns]
            flat.to_csv(results_dir / f"{task}.csv")
            (results_dir / f"{task}.md").write_text(
                markdown(summary, [(m, m) for m in summary.columns.get_level_values(0).unique()]) + "\n"
            )
    headline = [(task, metric, header) for task, metric, header in HEADLINE if task in summaries]
    if not headline:
        return "(no finished retrain runs)"
    joined = pd.concat(
        [summaries[task][[(metric, s) for s in ("mean", "std")]].rename(columns={metric: header}, level=0)
         for task, metric, header in headline], axis=1,
    )
    table = markdown(joined, [(h, h) for _, _, h in headline])
    seeds = int(long["seed"].nunique())
    text = (f"Mean ± std over {seeds} seed(s). Bio, Batch, Total: unscaled scIB aggregates "
            f"(Total = 0.6 Bio + 0.4 Batch). Query metrics: kNN (k = 11) on query cells of types seen in the reference.\n\n"
            f"{table}\n")
    (results_dir / "summary.md").write_text(text)
    return text

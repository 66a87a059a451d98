"""Benchmark tables from the retrain runs in MLflow: one row per data set, method and variant, each metric
mean +- std over seeds, raw and relative to the cohort of compared rows (the paper's min-max scaling)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scssl.evaluate import AGGREGATES, BATCH_METRICS, BIO_METRICS, aggregate
from scssl.evaluate.tasks import TASKS
from scssl.report.formats import cell, latex, markdown
from scssl.tune.tracking import DATASET, JOB_KEY, METHOD, SEED, TASK, VARIANT, Tracker

ROW = ["dataset", "method", "variant"]
LONG = ROW + ["task", "seed", "metric", "value"]
STATS = ("mean", "std", "count")
TASK_METRICS = {task: spec.metrics for task, spec in TASKS.items()}
SCIB_HEADERS = TASKS["batch_correction"].headers
# The summary's columns: (table, prefix of its columns in the summary, metric or rank, header).
HEADLINE = [("batch_correction", "", m, SCIB_HEADERS[m]) for m in AGGREGATES]
HEADLINE += [("batch_correction_relative", "relative_", m, f"{SCIB_HEADERS[m]} rel.") for m in AGGREGATES]
HEADLINE += [("batch_correction_relative", "relative_", "rank", "Rank (Total rel.)")]
HEADLINE += [(name, task.table.prefix, metric, header) for name, task in TASKS.items() if task.table is not None
             for metric, header in task.table.summary]
RELATIVE_NOTE = (
    "Relative to the cohort: per data set and seed, each scIB metric is min-max scaled across the rows of this "
    "table (a metric equal in every row scales to 0), then Bio and Batch are the means of the scaled bio and "
    "batch metrics and Total = 0.6 Bio + 0.4 Batch; mean ± std over seeds. Adding or removing a row changes "
    "every number. Rank: by Total (1 = best; tied rows share the better rank)."
)


@dataclass(frozen=True)
class Table:
    """One benchmark table: ``numbers`` (rows indexed by ``ROW``, columns ``<metric>_<stat>`` and ``rank``) is
    written as CSV; ``columns`` (column of ``numbers`` without the stat, header) is what the text versions show."""

    name: str
    title: str
    note: str
    numbers: pd.DataFrame
    columns: list[tuple[str, str]]

    def text(self) -> pd.DataFrame:
        """The shown columns as ``mean ± std`` strings, row labels as leading columns."""
        numbers = shown(self.numbers)
        out = pd.DataFrame(index=numbers.index)
        for key, header in self.columns:
            if key in numbers:  # a rank
                out[header] = [cell(r, "{:.0f}") for r in numbers[key]]
            else:
                out[header] = [cell(m, "{:.3f}", s) for m, s in zip(numbers[f"{key}_mean"], numbers[f"{key}_std"])]
        return out.reset_index()

    def write(self, folder: Path) -> list[Path]:
        """``<name>.csv``, ``.md`` (title and note above the table) and ``.tex`` (booktabs) in ``folder``."""
        numbers, text = shown(self.numbers), self.text()
        files = [folder / f"{self.name}.{ext}" for ext in ("csv", "md", "tex")]
        numbers.to_csv(files[0])
        files[1].write_text(f"**{self.title}.** {self.note}\n\n{markdown(text)}\n")
        files[2].write_text(latex(text, self.title, f"tab:{self.name}", labels=numbers.index.nlevels))
        return files


def collect(tracker: Tracker, current: set[str]) -> pd.DataFrame:
    """One row per metric of each finished retrain run of a job the study has now (its ``scssl.job_key`` in
    ``current``: runs of other data or settings are left out); the latest run wins for a (data set, method,
    variant, task, seed). A run without the variant tag has variant ""."""
    rows = []
    for run in tracker.runs(stage="retrain"):
        if not Tracker.finished(run) or run.data.tags.get(JOB_KEY) not in current:
            continue
        tags = run.data.tags
        for metric, value in run.data.metrics.items():
            rows.append({"dataset": tags[DATASET], "method": tags[METHOD], "variant": tags.get(VARIANT, ""),
                         "task": tags[TASK], "seed": int(tags[SEED]), "metric": metric, "value": value,
                         "start_time": run.info.start_time, "run_id": run.info.run_id})
    if not rows:
        return pd.DataFrame(columns=LONG)
    frame = pd.DataFrame(rows).sort_values(["start_time", "run_id"], kind="stable")
    frame = frame.drop_duplicates(LONG[:-1], keep="last")
    return frame[LONG].sort_values(LONG[:-1]).reset_index(drop=True)


def relative_to_cohort(long: pd.DataFrame) -> pd.DataFrame:
    """The scIB metrics of ``long`` min-max scaled across the rows of each data set and seed, with Bio, Batch
    and Total recomputed from the scaled metrics; long format, task ``batch_correction``.

    A metric equal in every row of a cohort scales to 0, as sklearn's MinMaxScaler (which scib-metrics uses)
    does: it lowers every row's Bio or Batch by the same amount, so ranks are unchanged. Missing stays missing.
    """
    part = long[(long["task"] == "batch_correction") & long["metric"].isin(BIO_METRICS + BATCH_METRICS)]
    if part.empty:
        return pd.DataFrame(columns=LONG)
    wide = part.set_index(["dataset", "seed", "method", "variant", "metric"])["value"].unstack("metric")
    wide = wide.reindex(columns=BIO_METRICS + BATCH_METRICS)
    cohort = wide.groupby(level=["dataset", "seed"])
    low = cohort.transform("min")
    span = cohort.transform("max") - low
    scaled = ((wide - low) / span).mask((span == 0) & wide.notna(), 0.0)
    scaled = scaled.join(scaled.apply(lambda row: pd.Series(aggregate(row)), axis=1))
    out = scaled.rename_axis(columns="metric").stack(future_stack=True).rename("value").reset_index()
    return out.assign(task="batch_correction")[LONG]


def summarize(long: pd.DataFrame, task: str, methods: list[str]) -> pd.DataFrame:
    """Mean, std and number of seeds of each metric of ``task`` as columns ``<metric>_<stat>``; rows by
    data set, then in ``methods`` order (others after them), then variant."""
    part = long[long["task"] == task]
    stats = part.groupby(ROW + ["metric"])["value"].agg(list(STATS)).unstack("metric")
    present = set(stats.columns.get_level_values("metric"))
    metrics = [m for m in TASK_METRICS[task] if m in present]
    flat = stats.swaplevel(axis=1)[[(m, s) for m in metrics for s in STATS]]
    flat.columns = [f"{m}_{s}" for m, s in flat.columns]
    return _ordered(flat, methods)


def ranks(summary: pd.DataFrame, metric: str) -> pd.Series:
    """1 for the highest mean of ``metric`` within each data set; tied rows share the better rank."""
    if f"{metric}_mean" not in summary:  # runs without the metric: no rank
        return pd.Series(pd.NA, index=summary.index, dtype="Int64")
    by_dataset = summary[f"{metric}_mean"].groupby(level="dataset")
    return by_dataset.rank(ascending=False, method="min").astype("Int64")


def benchmark_tables(long: pd.DataFrame, methods: list[str]) -> list[Table]:
    """Every table of the report (those of tasks without runs left out), the summary last."""
    tables = []
    tasks = set(long["task"])
    if "batch_correction" in tasks:
        raw = summarize(long, "batch_correction", methods)
        relative = summarize(relative_to_cohort(long), "batch_correction", methods)
        relative.insert(0, "rank", ranks(relative, "total"))
        tables += [
            Table("batch_correction", "Batch correction, raw scIB metrics",
                  "Mean ± std over seeds of scib-metrics' unscaled scores. Bio, Batch: means of the bio and batch "
                  "metrics; Total = 0.6 Bio + 0.4 Batch.", raw, _headers(raw, SCIB_HEADERS)),
            Table("batch_correction_relative", "Batch correction, relative to the cohort", RELATIVE_NOTE,
                  relative, [("rank", "Rank")] + _headers(relative, SCIB_HEADERS)),
        ]
    for name, task in TASKS.items():
        if task.table is not None and name in tasks:
            numbers = summarize(long, name, methods)
            numbers.insert(0, "rank", ranks(numbers, task.table.rank_by))
            tables.append(Table(name, task.table.title, task.table.note, numbers,
                                [("rank", "Rank")] + _headers(numbers, task.headers)))
    if tables:
        tables.append(_summary(tables, methods, long["seed"].nunique()))
    return tables


def label(method: str, variant: str) -> str:
    """A row's name in figures: ``method`` or ``method (variant)``."""
    return f"{method} ({variant})" if variant else method


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without its variant (column or index level) when no row has one."""
    if "variant" in frame.columns:
        return frame.drop(columns="variant") if (frame["variant"] == "").all() else frame
    if (frame.index.get_level_values("variant") == "").all():
        return frame.droplevel("variant")
    return frame


def _summary(tables: list[Table], methods: list[str], seeds: int) -> Table:
    """The headline: unscaled and relative Bio / Batch / Total, query macro-F1 and accuracy, and both ranks."""
    by_name = {t.name: t.numbers for t in tables}
    parts, columns = [], []
    for table, prefix, key, header in HEADLINE:
        names = [key] if key == "rank" else [f"{key}_{s}" for s in STATS]
        if table in by_name and names[0] in by_name[table]:
            parts.append(by_name[table][names].add_prefix(prefix))
            columns.append((prefix + key, header))
    note = (f"Mean ± std over {seeds} seed(s). Bio, Batch, Total: unscaled scIB aggregates "
            "(Total = 0.6 Bio + 0.4 Batch). rel.: relative to the cohort, each metric min-max scaled across the "
            "rows of this table per data set and seed (see the table relative to the cohort). Query metrics: kNN "
            "(k = 11) on query cells of types seen in the reference. Fine-tuned: a classifier head on the pretrained "
            "encoder, fine-tuned; from scratch: the same network trained on the labels alone. Reconstruction: MSE "
            "on the query cells (masked: the entries hidden from the method). Modality prediction r: Pearson r per "
            "query cell between its second modality and the mean of its 5 nearest reference cells' (RNA embedding). "
            "A tuned method retrains the trial with the best last validation objective among those that trained the "
            "most epochs (ASHA's survivors), never one that ASHA stopped early.")
    return Table("summary", "Summary", note, _ordered(pd.concat(parts, axis=1), methods), columns)


def _headers(summary: pd.DataFrame, headers: dict[str, str]) -> list[tuple[str, str]]:
    metrics = dict.fromkeys(c.rsplit("_", 1)[0] for c in summary.columns if c.endswith("_mean"))
    return [(m, headers.get(m, m)) for m in metrics]


def _ordered(frame: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    position = {m: i for i, m in enumerate(methods)}
    rows = sorted(frame.index, key=lambda r: (r[0], position.get(r[1], len(position)), r[1], _natural(r[2])))
    return frame.loc[rows] if rows else frame


def _natural(text: str) -> list:
    """Sort key in which the numbers of a variant label compare as numbers ("t=2" before "t=10")."""
    return [float(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]

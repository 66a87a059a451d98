"""Benchmark tables from the retrain runs in MLflow, as each task declares them (``Task.tables``): one row per
data set, method and variant, each metric mean +- std over seeds; then the summary of their headline columns."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scssl.evaluate.tasks import TASKS, TaskTable
from scssl.report.formats import cell, latex, markdown
from scssl.tune.tracking import DATASET, JOB_KEY, METHOD, SEED, TASK, VARIANT, Tracker

ROW = ["dataset", "method", "variant"]
LONG = ROW + ["task", "seed", "metric", "value"]
STATS = ("mean", "std", "count")


@dataclass(frozen=True)
class Table:
    """One benchmark table: ``numbers`` (rows indexed by ``ROW``, columns ``<metric>_<stat>`` and ``rank``) is
    written as CSV; ``columns`` (column of ``numbers`` without the stat, header) is what the text versions show."""

    name: str
    title: str
    note: str
    numbers: pd.DataFrame
    columns: list[tuple[str, str]]
    task: str = ""  # the task whose table it is ("": the summary)
    spec: TaskTable | None = None  # that table as the task declares it

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


def summarize(scores: pd.DataFrame, metrics: list[str], methods: list[str]) -> pd.DataFrame:
    """Mean, std and number of seeds of each of ``metrics`` in ``scores`` (long) as columns ``<metric>_<stat>``;
    rows by data set, then in ``methods`` order (others after them), then variant."""
    stats = scores.groupby(ROW + ["metric"])["value"].agg(list(STATS)).unstack("metric")
    present = set(stats.columns.get_level_values("metric"))
    flat = stats.swaplevel(axis=1)[[(m, s) for m in metrics if m in present for s in STATS]]
    flat.columns = [f"{m}_{s}" for m, s in flat.columns]
    return _ordered(flat, methods)


def ranks(summary: pd.DataFrame, metric: str) -> pd.Series:
    """1 for the highest mean of ``metric`` within each data set; tied rows share the better rank."""
    if f"{metric}_mean" not in summary:  # runs without the metric: no rank
        return pd.Series(pd.NA, index=summary.index, dtype="Int64")
    by_dataset = summary[f"{metric}_mean"].groupby(level="dataset")
    return by_dataset.rank(ascending=False, method="min").astype("Int64")


def benchmark_tables(long: pd.DataFrame, methods: list[str]) -> list[Table]:
    """Every table the tasks declare (those of tasks without runs left out), in registry order, the summary last."""
    tables = []
    for name, task in TASKS.items():
        scores = long[long["task"] == name]
        if scores.empty:
            continue
        for spec in task.tables:
            numbers = summarize(spec.derive(scores) if spec.derive else scores, task.metrics, methods)
            columns = _headers(numbers, task.headers)
            if spec.rank_by is not None:
                numbers.insert(0, "rank", ranks(numbers, spec.rank_by))
                columns.insert(0, ("rank", "Rank"))
            tables.append(Table(spec.name or name, spec.title, spec.note + task.table_note(scores), numbers, columns,
                                name, spec))
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
    """The headline: the columns each task's tables give the summary (unscaled and relative Bio / Batch / Total,
    query macro-F1 and accuracy, the ranks, ...)."""
    parts, columns = [], []
    for table in tables:
        for key, header in table.spec.summary:
            names = [key] if key == "rank" else [f"{key}_{s}" for s in STATS]
            if names[0] in table.numbers:
                parts.append(table.numbers[names].add_prefix(table.spec.prefix))
                columns.append((table.spec.prefix + key, header))
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

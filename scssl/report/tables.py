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
HEADERS = {
    "bio_conservation": "Bio", "batch_correction": "Batch", "total": "Total",
    "isolated_labels": "Isolated labels", "leiden_nmi": "Leiden NMI", "leiden_ari": "Leiden ARI",
    "silhouette_label": "Silhouette label", "clisi": "cLISI", "silhouette_batch": "Silhouette batch",
    "ilisi": "iLISI", "kbet": "kBET", "graph_connectivity": "Graph connectivity", "pcr_comparison": "PCR comparison",
    "macro_f1": "Query macro-F1", "accuracy": "Query accuracy",
    "macro_f1_all": "Query macro-F1 (all types)", "accuracy_all": "Query accuracy (all types)",
    "scratch_macro_f1": "From scratch: macro-F1", "scratch_accuracy": "From scratch: accuracy",
    "scratch_macro_f1_all": "From scratch: macro-F1 (all types)",
    "scratch_accuracy_all": "From scratch: accuracy (all types)",
    "masked_mse": "MSE (masked)", "masked_explained_variance": "EV (masked)",
    "masked_explained_variance_weighted": "EV weighted (masked)", "mse": "MSE (all)",
    "explained_variance": "EV (all)", "explained_variance_weighted": "EV weighted (all)",
    "mean_floor_masked_mse": "Mean floor: MSE (masked)", "mean_floor_mse": "Mean floor: MSE (all)",
    "pca_floor_masked_mse": "PCA floor: MSE (masked)", "pca_floor_mse": "PCA floor: MSE (all)",
    "pearson": "Pearson r per cell", "feature_pearson": "Pearson r per feature", "rmse": "RMSE",
    "auroc": "AUROC", "pearson_min": "Pearson r per cell (min)", "pearson_max": "Pearson r per cell (max)",
    "spearman": "Spearman per cell", "head_pearson": "Frozen: Pearson r per cell",
    "head_spearman": "Frozen: Spearman per cell", "head_mse": "Frozen: MSE",
    "rna_macro_f1": "RNA only: query macro-F1", "rna_accuracy": "RNA only: query accuracy",
    "model_pearson": "Model's own: Pearson r per cell", "model_feature_pearson": "Model's own: Pearson r per feature",
    "model_rmse": "Model's own: RMSE", "model_auroc": "Model's own: AUROC",
}
# The summary's columns: (table, prefix of its columns in the summary, metric or rank, header).
HEADLINE = [("batch_correction", "", m, HEADERS[m]) for m in AGGREGATES]
HEADLINE += [("batch_correction_relative", "relative_", m, f"{HEADERS[m]} rel.") for m in AGGREGATES]
HEADLINE += [("batch_correction_relative", "relative_", "rank", "Rank (Total rel.)"),
             ("cell_typing", "query_", "macro_f1", "Query macro-F1"),
             ("cell_typing", "query_", "accuracy", "Query accuracy"),
             ("cell_typing", "query_", "rank", "Rank (macro-F1)"),
             ("fine_tuned_cell_typing", "fine_tuned_", "macro_f1", "Fine-tuned macro-F1"),
             ("fine_tuned_cell_typing", "fine_tuned_", "scratch_macro_f1", "From scratch macro-F1"),
             ("reconstruction", "reconstruction_", "masked_mse", "Reconstruction MSE (masked)"),
             ("reconstruction", "reconstruction_", "mse", "Reconstruction MSE (all)"),
             ("modality_prediction", "modality_", "pearson", "Modality prediction r")]
# The tables of the tasks scored on query cells: (task, title, note, metric ranked by).
QUERY_TABLES = [
    ("cell_typing", "Cell typing, query to reference",
     "Mean ± std over seeds. kNN (k = 11) fitted on the reference embedding predicts the query cells; "
     "macro-F1 and accuracy count query cells of types seen in the reference, the 'all types' columns "
     "every query cell. On multimodal data the embedding is the method's joint one and 'RNA only' the RNA "
     "embedding alone. Rank: by query macro-F1 (1 = best; tied rows share the better rank).", "macro_f1"),
    ("fine_tuned_cell_typing", "Cell typing by a fine-tuned classifier, query to reference",
     "Mean ± std over seeds. A linear head on the pretrained encoder, encoder and head fine-tuned on the "
     "reference labels (Richter et al.'s cell-type prediction); 'From scratch': the same network from the "
     "same initial weights, trained on the labels alone (the supervised baseline). Metrics as in kNN cell "
     "typing. Rank: by fine-tuned query macro-F1.", "macro_f1"),
    ("modality_prediction", "Missing-modality prediction, query from reference",
     "Mean ± std over seeds. Each query cell's second modality (protein, or ATAC's binary accessibility) "
     "predicted as the mean over its 5 cosine-nearest reference cells in the RNA embedding (scSSL-Bench). "
     "Pearson r per cell across features (the paper's score; min and max over cells), per feature across "
     "cells, RMSE over all entries, AUROC for ATAC. 'Model's own': the prediction of a generative model "
     "(totalVI, MultiVI) from the query's RNA. Rank: by Pearson r per cell (kNN).", "pearson"),
    ("cross_modality_prediction", "Cross-modality prediction by a regression head, query from reference",
     "Mean ± std over seeds. A linear head (MSE) from the pretrained RNA encoder onto the second modality, "
     "trained on the reference cells with the encoder fine-tuned, and ('Frozen') with the encoder fixed "
     "(Richter et al.). Pearson r and Spearman per query cell across features, MSE over all entries. Rank: by "
     "Pearson r per cell (fine-tuned).", "pearson"),
    ("reconstruction", "Gene-expression reconstruction of the query cells",
     "Mean ± std over seeds, on the log-normalised expression of the query cells. 'masked': the entries its "
     "encoder did not see under its training-time masking (the same kind of entries for every strategy; an "
     "isolated strategy's shown programme is not among them), per gene over its masked cells; 'all': every "
     "entry. EV: explained variance, uniform over genes or "
     "weighted by their variance. Floors from the same inputs: the reference's per-gene mean, and a PCA of "
     "the reference with as many components as the embedding. Rank: by EV (all).", "explained_variance"),
]
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
                  "metrics; Total = 0.6 Bio + 0.4 Batch.", raw, _headers(raw)),
            Table("batch_correction_relative", "Batch correction, relative to the cohort", RELATIVE_NOTE,
                  relative, [("rank", "Rank")] + _headers(relative)),
        ]
    for task, title, note, rank_by in QUERY_TABLES:
        if task in tasks:
            numbers = summarize(long, task, methods)
            numbers.insert(0, "rank", ranks(numbers, rank_by))
            tables.append(Table(task, title, note, numbers, [("rank", "Rank")] + _headers(numbers)))
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


def _headers(summary: pd.DataFrame) -> list[tuple[str, str]]:
    metrics = dict.fromkeys(c.rsplit("_", 1)[0] for c in summary.columns if c.endswith("_mean"))
    return [(m, HEADERS.get(m, m)) for m in metrics]


def _ordered(frame: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    position = {m: i for i, m in enumerate(methods)}
    rows = sorted(frame.index, key=lambda r: (r[0], position.get(r[1], len(position)), r[1], _natural(r[2])))
    return frame.loc[rows] if rows else frame


def _natural(text: str) -> list:
    """Sort key in which the numbers of a variant label compare as numbers ("t=2" before "t=10")."""
    return [float(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+(?:\.\d+)?)", text))]

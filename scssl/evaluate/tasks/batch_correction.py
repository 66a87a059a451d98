"""Batch correction (scSSL-Bench): train on all cells, the scIB metrics of the embedding (scib-metrics, through
``scssl.evaluate.batch_correction``). Its tuning objective is a cheap proxy on the reference's validation
cells: 0.6 x their cell-type kNN accuracy + 0.4 x their batch mixing (1 - the kNN accuracy of their batch;
scIB's weights), not scIB itself, which costs minutes per embedding."""

from __future__ import annotations

from scssl.evaluate.tasks.base import SCORE, TableFigure, Task, TaskTable, Validation, batch_mixing

BIO_METRICS = ["isolated_labels", "leiden_nmi", "leiden_ari", "silhouette_label", "clisi"]
BATCH_METRICS = ["silhouette_batch", "ilisi", "kbet", "graph_connectivity", "pcr_comparison"]
AGGREGATES = ["bio_conservation", "batch_correction", "total"]
RELATIVE_NOTE = (
    "Relative to the cohort: per data set and seed, each scIB metric is min-max scaled across the rows of this "
    "table (a metric equal in every row scales to 0), then Bio and Batch are the means of the scaled bio and "
    "batch metrics and Total = 0.6 Bio + 0.4 Batch; mean ± std over seeds. Adding or removing a row changes "
    "every number. Rank: by Total (1 = best; tied rows share the better rank)."
)


def _relative_to_cohort(scores):
    from scssl.evaluate.batch_correction import relative_to_cohort  # pandas: not when an experiment is checked

    return relative_to_cohort(scores)


class BatchCorrection(Task):
    name = "batch_correction"
    metrics = AGGREGATES + BIO_METRICS + BATCH_METRICS
    headline = "total"
    headers = {
        "bio_conservation": "Bio", "batch_correction": "Batch", "total": "Total",
        "isolated_labels": "Isolated labels", "leiden_nmi": "Leiden NMI", "leiden_ari": "Leiden ARI",
        "silhouette_label": "Silhouette label", "clisi": "cLISI", "silhouette_batch": "Silhouette batch",
        "ilisi": "iLISI", "kbet": "kBET", "graph_connectivity": "Graph connectivity",
        "pcr_comparison": "PCR comparison",
    }
    tables = (
        TaskTable("Batch correction, raw scIB metrics",
                  "Mean ± std over seeds of scib-metrics' unscaled scores. Bio, Batch: means of the bio and batch "
                  "metrics; Total = 0.6 Bio + 0.4 Batch.", None, "",
                  (("bio_conservation", "Bio"), ("batch_correction", "Batch"), ("total", "Total"))),
        TaskTable("Batch correction, relative to the cohort", RELATIVE_NOTE, "total", "relative_",
                  (("bio_conservation", "Bio rel."), ("batch_correction", "Batch rel."), ("total", "Total rel."),
                   ("rank", "Rank (Total rel.)")),
                  name="batch_correction_relative", derive=_relative_to_cohort,
                  figure=TableFigure("scIB metrics relative to the cohort, means over seeds", "scib_table",
                                     (("Bio conservation", tuple(BIO_METRICS)),
                                      ("Batch correction", tuple(BATCH_METRICS)),
                                      ("Aggregate score", tuple(AGGREGATES))), tuple(AGGREGATES))),
    )
    trains_on = "all"
    evaluation = {"scib": BIO_METRICS + BATCH_METRICS}
    objective = SCORE
    min_cells = 90  # scib-metrics scores each cell's 15, 50 and 90 nearest neighbours (itself included)
    scib = True
    shows_embedding = True

    def run(self, shared, inputs):
        from scssl.evaluate.batch_correction import scib_scores
        from scssl.evaluate.shared import fit_method

        ds = shared.dataset
        embedding = fit_method(shared, inputs, self.trains_on).embed(shared.cells())
        settings = inputs.evaluation
        return scib_scores(embedding, ds.obs["batch"].to_numpy(), ds.labels, shared.pre_integration,
                           n_jobs=inputs.threads, max_cells=settings.scib_max_cells,
                           seed=settings.subsample_seed), embedding

    def settings_key(self, fine_tuning, evaluation) -> dict:
        from scssl.settings import as_dict

        return {"evaluation": as_dict(evaluation)}

    def validation_scores(self, validation: Validation) -> dict[str, float]:
        return batch_mixing(validation)

    def table_note(self, scores) -> str:
        counts = scores[scores["metric"].isin(["scib_cells", "embedded_cells"])]
        counts = counts.groupby(["dataset", "metric"])["value"].max().unstack("metric")
        if "scib_cells" not in counts:
            return ""
        subsampled = counts[counts["scib_cells"] < counts["embedded_cells"]]
        if subsampled.empty:
            return ""
        return (" The scIB metrics of " + "; ".join(f"{name}: {int(row.scib_cells):,} of its {int(row.embedded_cells):,}"
                                                   for name, row in subsampled.iterrows())
                + " cells, a subsample stratified by batch x cell type, the same for every row (evaluation: "
                "scib_max_cells).")

    def check(self, dataset, source: str) -> None:
        from scssl.data.spec import DataError

        name, obs = dataset.id, dataset.obs
        if dataset.n_cells < self.min_cells:
            raise DataError(f"{source}: {self.name} needs at least {self.min_cells} cells, data set {name!r} has "
                            f"{dataset.n_cells}", "path")
        batches = sorted(obs["batch"].unique())
        if len(batches) < 2:
            raise DataError(f"{source}: {self.name} needs at least 2 batches in obs[{dataset.batch_key!r}], data set "
                            f"{name!r} has 1 ({batches[0]!r})", "batch_key")
        types = sorted(obs["label"].unique())
        if len(types) < 2:  # measured: cLISI, and so Bio and Total, come out as -inf
            raise DataError(f"{source}: {self.name} needs at least 2 cell types in obs[{dataset.labels_key!r}], data "
                            f"set {name!r} has 1 ({types[0]!r})", "labels_key")
        if (obs.groupby("label", observed=True)["batch"].nunique() < 2).all():  # scib-metrics 0.6 raises then
            raise DataError(f"{source}: {self.name} needs a cell type found in at least 2 batches (silhouette batch and "
                            f"kBET compare the batches within each type); in data set {name!r} every type of "
                            f"obs[{dataset.labels_key!r}] sits in one batch of obs[{dataset.batch_key!r}]", "labels_key")

"""Cell typing, query to reference (scSSL-Bench; Richter et al.'s zero-shot row): train on the reference cells,
kNN label transfer (k = 11) to the query. On multimodal data also from the RNA embedding alone (``rna_``
metrics). Its tuning objective is the same kNN vote, on the reference's validation cells by the others."""

from __future__ import annotations

from scssl.evaluate.tasks.base import METRIC, Task, TaskTable, Validation

CELL_TYPING_METRICS = ["macro_f1", "accuracy", "macro_f1_all", "accuracy_all"]
CELL_TYPING_HEADERS = {"macro_f1": "Query macro-F1", "accuracy": "Query accuracy",
                       "macro_f1_all": "Query macro-F1 (all types)", "accuracy_all": "Query accuracy (all types)"}


class CellTyping(Task):
    name = "cell_typing"
    metrics = CELL_TYPING_METRICS + [f"rna_{m}" for m in CELL_TYPING_METRICS[:2]]
    headline = "macro_f1"
    headers = {**CELL_TYPING_HEADERS, "rna_macro_f1": "RNA only: query macro-F1",
               "rna_accuracy": "RNA only: query accuracy"}
    table = TaskTable(
        "Cell typing, query to reference",
        "Mean ± std over seeds. kNN (k = 11) fitted on the reference embedding predicts the query cells; "
        "macro-F1 and accuracy count query cells of types seen in the reference, the 'all types' columns "
        "every query cell. On multimodal data the embedding is the method's joint one and 'RNA only' the RNA "
        "embedding alone. Rank: by query macro-F1 (1 = best; tied rows share the better rank).", "macro_f1",
        "query_", (("macro_f1", "Query macro-F1"), ("accuracy", "Query accuracy"), ("rank", "Rank (macro-F1)")))
    scores_labels = True
    objective = METRIC

    @property
    def evaluation(self):
        from scssl.evaluate.cell_typing import K_NEIGHBORS

        return {"knn_k": K_NEIGHBORS}

    def run(self, shared, inputs):
        from scssl.evaluate.cell_typing import knn_cell_typing
        from scssl.evaluate.shared import fit_method, rna_only

        ds = shared.dataset
        model = fit_method(shared, inputs, self.trains_on)
        embedding = model.embed(shared.cells())
        labels, ref, query = ds.labels, ds.reference_index, ds.query_index
        metrics = knn_cell_typing(embedding[ref], labels[ref], embedding[query], labels[query])
        if ds.other is not None:  # multimodal: the same from the RNA alone
            rna = model.embed(rna_only(shared.cells()))
            scores = knn_cell_typing(rna[ref], labels[ref], rna[query], labels[query])
            metrics.update({f"rna_{k}": v for k, v in scores.items()})
        return metrics, embedding

    def validation_scores(self, validation: Validation) -> dict[str, float]:
        return {METRIC: validation.accuracy}

"""Missing-modality prediction (scSSL-Bench; multimodal data): train on the reference, predict each query cell's
second modality (protein, or ATAC's binary accessibility) as the mean over its 5 cosine-nearest reference cells
in the RNA embedding; per-cell Pearson r, per-feature r, RMSE (and AUROC for ATAC). A method that predicts the
modality itself (totalVI, MultiVI) adds its own prediction from the query's RNA (``model_`` metrics). Its
tuning objective is the same prediction for the reference's validation cells from the others."""

from __future__ import annotations

import numpy as np

from scssl.evaluate.tasks.base import Task, TaskTable, Validation

MODALITY_PREDICTION_METRICS = ["pearson", "feature_pearson", "rmse", "auroc", "pearson_min", "pearson_max"]
OBJECTIVE = "val_modality_pearson"


class ModalityPrediction(Task):
    name = "modality_prediction"
    metrics = MODALITY_PREDICTION_METRICS + [f"model_{m}" for m in MODALITY_PREDICTION_METRICS[:4]]
    headline = "pearson"
    headers = {
        "pearson": "Pearson r per cell", "feature_pearson": "Pearson r per feature", "rmse": "RMSE",
        "auroc": "AUROC", "pearson_min": "Pearson r per cell (min)", "pearson_max": "Pearson r per cell (max)",
        "model_pearson": "Model's own: Pearson r per cell", "model_feature_pearson": "Model's own: Pearson r per feature",
        "model_rmse": "Model's own: RMSE", "model_auroc": "Model's own: AUROC",
    }
    table = TaskTable(
        "Missing-modality prediction, query from reference",
        "Mean ± std over seeds. Each query cell's second modality (protein, or ATAC's binary accessibility) "
        "predicted as the mean over its 5 cosine-nearest reference cells in the RNA embedding (scSSL-Bench). "
        "Pearson r per cell across features (the paper's score; min and max over cells), per feature across "
        "cells, RMSE over all entries, AUROC for ATAC. 'Model's own': the prediction of a generative model "
        "(totalVI, MultiVI) from the query's RNA. Rank: by Pearson r per cell (kNN).", "pearson",
        "modality_", (("pearson", "Modality prediction r"),))
    needs_modality = True
    evaluation = {"knn_k": 5, "metric": "cosine"}
    objective = OBJECTIVE

    def run(self, shared, inputs):
        from scssl.evaluate.modality_prediction import knn_modality_prediction, modality_prediction_scores
        from scssl.evaluate.shared import fit_method, rna_only
        from scssl.methods.base import PredictsOther

        ds = shared.dataset
        ref, query = ds.reference_index, ds.query_index
        model = fit_method(shared, inputs, self.trains_on)
        embedding = model.embed(rna_only(shared.cells()))  # the RNA embedding
        target, binary = ds.other.target, ds.other.kind == "atac"
        predicted = knn_modality_prediction(embedding[ref], target[ref], embedding[query])
        truth = np.asarray(target[query].todense(), dtype=np.float32)
        metrics = modality_prediction_scores(truth, predicted, binary=binary)
        if isinstance(model, PredictsOther):  # the model's own prediction from the query's RNA
            own = model.predict_other(rna_only(shared.cells(query)))
            scores = modality_prediction_scores(truth, own, binary=binary)
            metrics.update({f"model_{k}": v for k, v in scores.items()})
        return metrics, embedding

    def validation_scores(self, validation: Validation) -> dict[str, float]:
        """Each validation cell's second modality from its 5 cosine-nearest other reference cells in the RNA
        embedding; the mean per-cell Pearson r."""
        from scssl.evaluate.modality_prediction import knn_modality_prediction, modality_prediction_scores
        from scssl.evaluate.shared import rna_only

        other, val = validation.shared.dataset.other, validation.is_validation
        target = other.target[validation.shared.dataset.reference_index]
        embedding = validation.model.embed(rna_only(validation.cells))
        predicted = knn_modality_prediction(embedding[~val], target[~val], embedding[val])
        truth = np.asarray(target[val].todense(), dtype=np.float32)
        return {OBJECTIVE: modality_prediction_scores(truth, predicted, binary=other.kind == "atac")["pearson"]}

    def check_objective(self, methods, datasets, source: str) -> None:
        from scssl.settings import ConfigError

        for i, spec in enumerate(datasets):
            if spec.modality is None:
                raise ConfigError(f"{source}: tune.objective: modality_prediction needs a second modality, and "
                                  f"datasets.{i} ({spec.label!r}) has RNA only")

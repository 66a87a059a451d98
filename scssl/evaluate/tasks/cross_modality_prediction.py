"""Cross-modality prediction (Richter et al.; multimodal data, methods with a network): a linear regression
head (MSE) from the RNA encoder pretrained on the reference onto the second modality, trained on the reference
with the encoder frozen (``head_`` metrics) and fine-tuned with it; per-cell Pearson and Spearman, MSE."""

from __future__ import annotations

import numpy as np

from scssl.evaluate.tasks.base import HeadTask, TaskTable

CROSS_MODALITY_METRICS = ["pearson", "spearman", "mse"]


class CrossModalityPrediction(HeadTask):
    name = "cross_modality_prediction"
    metrics = CROSS_MODALITY_METRICS + [f"head_{m}" for m in CROSS_MODALITY_METRICS]
    headline = "pearson"
    headers = {"pearson": "Pearson r per cell", "spearman": "Spearman per cell", "mse": "MSE (all)",
               "head_pearson": "Frozen: Pearson r per cell", "head_spearman": "Frozen: Spearman per cell",
               "head_mse": "Frozen: MSE"}
    table = TaskTable(
        "Cross-modality prediction by a regression head, query from reference",
        "Mean ± std over seeds. A linear head (MSE) from the pretrained RNA encoder onto the second modality, "
        "trained on the reference cells with the encoder fine-tuned, and ('Frozen') with the encoder fixed "
        "(Richter et al.). Pearson r and Spearman per query cell across features, MSE over all entries. Rank: by "
        "Pearson r per cell (fine-tuned).", "pearson", "cross_modality_")
    needs_modality = True

    def run(self, shared, inputs):
        from scssl.evaluate.fine_tuning import regress
        from scssl.evaluate.modality_prediction import modality_prediction_scores

        ds = shared.dataset
        ref, query = ds.reference_index, ds.query_index
        model, network, device, codes = self.pretrained(shared, inputs)
        truth = np.asarray(ds.other.X[query].todense(), dtype=np.float32)
        metrics = {}
        for prefix, freeze in (("head_", True), ("", False)):
            predicted = regress(network.rna_encoder, inputs.trial.params.embedding_dim, ds.X[ref], ds.other.X[ref],
                                ds.X[query], inputs.fine_tuning, inputs.seed, device, freeze, codes[ref], codes[query])
            scores = modality_prediction_scores(truth, predicted)
            metrics.update({f"{prefix}{k}": scores[k] for k in CROSS_MODALITY_METRICS})
        return metrics, model.embed(shared.cells())

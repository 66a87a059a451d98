"""Fine-tuned cell typing (Richter et al.'s cell-type prediction): pretrain on the reference, fine-tune the
encoder and a classifier head on the reference labels, score the query; the same network trained from
scratch is the ``scratch_`` twin. Methods with a network only."""

from __future__ import annotations

from scssl.evaluate.tasks.base import HeadTask, TaskTable
from scssl.evaluate.tasks.cell_typing import CELL_TYPING_HEADERS, CELL_TYPING_METRICS


class FineTunedCellTyping(HeadTask):
    name = "fine_tuned_cell_typing"
    metrics = CELL_TYPING_METRICS + [f"scratch_{m}" for m in CELL_TYPING_METRICS]
    headline = "macro_f1"
    headers = {**CELL_TYPING_HEADERS, "scratch_macro_f1": "From scratch: macro-F1",
               "scratch_accuracy": "From scratch: accuracy", "scratch_macro_f1_all": "From scratch: macro-F1 (all types)",
               "scratch_accuracy_all": "From scratch: accuracy (all types)"}
    table = TaskTable(
        "Cell typing by a fine-tuned classifier, query to reference",
        "Mean ± std over seeds. A linear head on the pretrained encoder, encoder and head fine-tuned on the "
        "reference labels (Richter et al.'s cell-type prediction); 'From scratch': the same network from the "
        "same initial weights, trained on the labels alone (the supervised baseline). Metrics as in kNN cell "
        "typing. Rank: by fine-tuned query macro-F1.", "macro_f1",
        "fine_tuned_", (("macro_f1", "Fine-tuned macro-F1"), ("scratch_macro_f1", "From scratch macro-F1")))
    scores_labels = True

    def run(self, shared, inputs):
        import torch

        from scssl.evaluate.fine_tuning import fine_tune
        from scssl.methods.domain_norm import configure_domains

        ds = shared.dataset
        ref, query = ds.reference_index, ds.query_index
        labels = ds.labels
        model, network, device, codes = self.pretrained(shared, inputs)
        dim = inputs.trial.params.embedding_dim
        args = (ds.X[ref], labels[ref], ds.X[query], labels[query], inputs.fine_tuning, inputs.seed, device,
                codes[ref], codes[query])
        metrics = fine_tune(network.rna_encoder, dim, *args)
        torch.manual_seed(inputs.seed)  # the twin: the same architecture, initialised as the pretraining started
        scratch = type(network)(ds.X.shape[1], inputs.trial.params, network.n_other).rna_encoder.to(device)
        configure_domains(scratch, codes[ref], device)  # its domain norms (if any): the batches it trains on
        metrics.update({f"scratch_{k}": v for k, v in fine_tune(scratch, dim, *args).items()})
        return metrics, model.embed(shared.cells())

"""Gene-expression reconstruction (Richter et al.): train on the reference, reconstruct the query cells
(masked as in training); MSE and explained variance on the entries the encoder did not see and on all. Floors:
the reference's per-gene mean and a PCA of the reference with as many components as the embedding, from the
same inputs. Its tuning objective is the masked explained variance of the reference's validation cells."""

from __future__ import annotations

import numpy as np

from scssl.evaluate.tasks.base import Task, TaskTable, Validation

RECONSTRUCTION_METRICS = [
    "masked_mse", "masked_explained_variance", "masked_explained_variance_weighted",
    "mse", "explained_variance", "explained_variance_weighted",
]
FLOORS = ("mean_floor", "pca_floor")
OBJECTIVE = "val_masked_explained_variance"


class Reconstruction(Task):
    name = "reconstruction"
    metrics = RECONSTRUCTION_METRICS + [f"{f}_{m}" for f in FLOORS for m in RECONSTRUCTION_METRICS[:4:3]]
    headline = "mse"
    headers = {
        "masked_mse": "MSE (masked)", "masked_explained_variance": "EV (masked)",
        "masked_explained_variance_weighted": "EV weighted (masked)", "mse": "MSE (all)",
        "explained_variance": "EV (all)", "explained_variance_weighted": "EV weighted (all)",
        "mean_floor_masked_mse": "Mean floor: MSE (masked)", "mean_floor_mse": "Mean floor: MSE (all)",
        "pca_floor_masked_mse": "PCA floor: MSE (masked)", "pca_floor_mse": "PCA floor: MSE (all)",
    }
    table = TaskTable(
        "Gene-expression reconstruction of the query cells",
        "Mean ± std over seeds, on the log-normalised expression of the query cells. 'masked': the entries its "
        "encoder did not see under its training-time masking (the same kind of entries for every strategy; an "
        "isolated strategy's shown programme is not among them), per gene over its masked cells; 'all': every "
        "entry. EV: explained variance, uniform over genes or weighted by their variance. Floors from the same "
        "inputs: the reference's per-gene mean, and a PCA of the reference with as many components as the "
        "embedding. Rank: by EV (all).", "explained_variance",
        "reconstruction_", (("masked_mse", "Reconstruction MSE (masked)"), ("mse", "Reconstruction MSE (all)")))
    evaluation = {"metrics": metrics, "masked": "hidden from the encoder"}
    objective = OBJECTIVE

    def serves(self, method: str) -> bool:
        from scssl.methods import get_method
        from scssl.methods.base import Reconstructs

        return issubclass(get_method(method), Reconstructs)

    def run(self, shared, inputs):
        from scssl.evaluate.reconstruction import mean_reconstruction, pca_reconstruction, reconstruction_scores
        from scssl.evaluate.shared import fit_method

        ds = shared.dataset
        ref, query = ds.reference_index, ds.query_index
        model = fit_method(shared, inputs, self.trains_on)
        embedding = model.embed(shared.cells())
        made = model.reconstruct(shared.cells(query, inputs=()), seed=inputs.seed)
        floors = {"mean_floor": mean_reconstruction(ds.X[ref], len(query)),  # PCA: as many components as embedding
                  "pca_floor": pca_reconstruction(ds.X[ref], made.inputs, embedding.shape[1], seed=inputs.seed)}
        genes = slice(None) if ds.missing_genes is None else ~ds.missing_genes  # a gene the data lacks: not scored
        target = np.asarray(ds.X[query].todense(), dtype=np.float32)[:, genes]
        scored = None if made.scored is None else made.scored[:, genes]
        metrics = reconstruction_scores(target, made.x_hat[:, genes], scored)
        for name, x_hat in floors.items():
            scores = reconstruction_scores(target, x_hat[:, genes], scored)
            metrics.update({f"{name}_{k}": v for k, v in scores.items()})
        return metrics, embedding

    def validation_scores(self, validation: Validation) -> dict[str, float]:
        """The explained variance of the validation cells' masked entries, masked as in training."""
        from scssl.evaluate.reconstruction import reconstruction_scores

        cells = validation.cells.subset(np.flatnonzero(validation.is_validation))
        made = validation.model.reconstruct(cells, seed=validation.seed)
        return {OBJECTIVE: reconstruction_scores(made.inputs, made.x_hat, made.scored)["masked_explained_variance"]}

    def check_objective(self, methods, datasets, source: str) -> None:
        from scssl.methods import get_method
        from scssl.settings import ConfigError

        cannot = [m for m in methods if get_method(m).trainable and not self.serves(m)]
        if cannot:
            raise ConfigError(f"{source}: tune.objective: reconstruction scores methods that reconstruct their "
                              f"input, and {cannot} do not; tune them in another experiment")

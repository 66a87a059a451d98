"""totalVI (Gayoso et al. 2021; scvi-tools ``TOTALVI``): a joint variational model of RNA and protein counts.

Partly faithful, and so documented: scvi-tools' own code with its defaults, except that the encoder does not
see the batch (``encode_covariates=False``; totalVI's default is True), so that query donors unseen in
training embed without scArches' query training; the decoders still model each batch. Trained on every
given cell for the experiment's epochs, learning rate, weight decay and batch size, with no validation
split, early stopping or learning-rate schedule (the study tunes and scores on its own split).

Cells without protein (missing-modality prediction embeds and predicts the query from its RNA; mosaic
data's RNA-only cells, which it trains on): totalVI handles a batch whose proteins are all zero as
unmeasured (its ``protein_batch_mask``), so such cells get batches of their own, and the encoder then sees
zeros. With ``learn_rna_only`` (the default) the training cells are also given a second time
with their protein unmeasured, in batches of their own, so that the encoder learns to embed RNA alone (the
recipe of scvi-tools' protein imputation, without the query's own cells); training then takes twice as
long. The model's own protein prediction is its denoised foreground protein (the mean of 25 posterior
samples, drawn from the run's seed), averaged over the training batches, in CLR units (per cell, as the
package's protein preprocessing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field
from typing_extensions import Annotated

from scssl.methods.scvi_base import SAMPLES, ScviMethod, dense, quiet, seeded
from scssl.settings import settings

if TYPE_CHECKING:
    from scssl.data import Cells

RNA_ONLY = "|rna_only"  # suffix of the batches of the cells given again without protein


@settings
class TotalVIParams:
    """scvi-tools' ``TOTALVI`` defaults: 20 latent dimensions, 256 hidden units, 2 encoder layers,
    encoder dropout 0.2, negative-binomial genes."""

    n_latent: Annotated[int, Field(ge=2)] = 20
    n_hidden: Annotated[int, Field(ge=8)] = 256
    n_layers_encoder: Annotated[int, Field(ge=1)] = 2
    dropout_rate_encoder: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    gene_likelihood: str = "nb"
    learn_rna_only: bool = True


class TotalVI(ScviMethod):
    """totalVI's latent mean (RNA and protein counts, batch in the decoders); predicts protein itself."""

    name: ClassVar[str] = "totalvi"
    Params: ClassVar[type] = TotalVIParams
    modality: ClassVar[str | None] = "protein"

    def _data(self, cells: Cells, training: bool):
        import anndata as ad
        import pandas as pd
        import scipy.sparse as sp

        counts = sp.csr_matrix(cells.counts, dtype=np.float32)
        unmeasured = np.zeros((cells.n_cells, self.n_other), np.float32)
        protein = unmeasured if cells.other_counts is None else dense(cells.other_counts)
        if training:  # a cell without protein (mosaic data) in a batch of its own: totalVI masks that batch's
            observed = np.ones(cells.n_cells, bool) if cells.other_observed is None else cells.other_observed
            batch = self._batch_column(cells, training)
            batch = np.where(observed, batch, np.char.add(batch, RNA_ONLY))
            if self.params.learn_rna_only:  # the measured cells again, their protein unmeasured
                counts = sp.vstack([counts, counts[observed]]).tocsr()
                protein = np.vstack([protein, unmeasured[observed]])
                batch = np.concatenate([batch, np.char.add(batch[observed], RNA_ONLY)])
        else:  # the encoder ignores the batch; without protein, like the cells it learnt RNA alone from
            alone = cells.other_counts is None and self.params.learn_rna_only
            batch = np.full(cells.n_cells, self._measured()[0] + (RNA_ONLY if alone else ""))
        categories = sorted(set(batch)) if training else self.model.adata.obs["batch"].cat.categories
        data = ad.AnnData(counts, obs=pd.DataFrame({"batch": pd.Categorical(batch, categories=categories)},
                                                   index=[str(i) for i in range(len(batch))]))
        data.obsm["protein"] = protein
        if training:
            import scvi

            scvi.model.TOTALVI.setup_anndata(data, protein_expression_obsm_key="protein", batch_key="batch")
        return data

    def _model(self, data):
        import scvi

        p = self.params
        return scvi.model.TOTALVI(data, n_latent=p.n_latent, gene_likelihood=p.gene_likelihood,
                                  n_hidden=p.n_hidden, n_layers_encoder=p.n_layers_encoder,
                                  dropout_rate_encoder=p.dropout_rate_encoder, encode_covariates=False)

    def _train_kwargs(self, train) -> dict:
        return {"lr": train.lr, "reduce_lr_on_plateau": False, "plan_kwargs": {"weight_decay": train.weight_decay}}

    def predict_other(self, cells: Cells) -> np.ndarray:
        from scssl.data.modalities import clr

        with self._in_model(cells) as data, quiet(), seeded(self.seed):
            _, protein = self.model.get_normalized_expression(data, transform_batch=self._measured(), n_samples=SAMPLES,
                                                              return_mean=True, return_numpy=True)
        return dense(clr(np.asarray(protein)))

    def _measured(self) -> list[str]:
        """The training batches whose protein was measured."""
        return [b for b in self.model.adata.obs["batch"].cat.categories if not b.endswith(RNA_ONLY)]

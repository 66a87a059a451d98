"""MultiVI (Ashuach et al. 2023; scvi-tools ``MULTIVI``): a joint variational model of RNA counts and
chromatin accessibility, with one encoder per modality.

scvi-tools' own code with its defaults (its encoders do not see the batch: ``encode_covariates=False``),
given the RNA counts and the binarised peaks as a MuData. Trained on every given cell for the experiment's
epochs, learning rate, weight decay and batch size, with no validation split, early stopping or
learning-rate schedule (the study tunes and scores on its own split).

Cells without ATAC (missing-modality prediction embeds and predicts the query from its RNA; mosaic data's
RNA-only cells, which it trains on) are handled as MultiVI handles unpaired cells natively: a cell whose peaks are all zero is an RNA-only cell, embedded by
the RNA encoder alone. The model's own prediction is its accessibility probability of each peak, averaged
over the training batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field
from typing_extensions import Annotated

from scssl.methods.scvi_base import ScviMethod, dense, quiet
from scssl.settings import settings

if TYPE_CHECKING:
    from scssl.data import Cells


@settings
class MultiVIParams:
    """scvi-tools' ``MULTIVI`` defaults: when unset, hidden size min(128, sqrt(peaks)) and latent size
    sqrt(hidden size) (4 on 600 peaks, 11 from 16,384 peaks on); 2 encoder layers, dropout 0.1,
    zero-inflated negative-binomial genes."""

    n_latent: Annotated[int, Field(ge=2)] | None = None
    n_hidden: Annotated[int, Field(ge=8)] | None = None
    n_layers_encoder: Annotated[int, Field(ge=1)] = 2
    dropout_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    gene_likelihood: str = "zinb"


class MultiVI(ScviMethod):
    """MultiVI's joint latent mean (RNA counts and binary peaks, batch in the decoders); predicts
    accessibility itself."""

    name: ClassVar[str] = "multivi"
    Params: ClassVar[type] = MultiVIParams
    modality: ClassVar[str | None] = "atac"

    def _data(self, cells: Cells, training: bool):
        import anndata as ad
        import mudata
        import pandas as pd
        import scipy.sparse as sp

        if cells.other_counts is None:
            peaks = sp.csr_matrix((cells.n_cells, self.n_other), dtype=np.float32)
        else:  # binary, as MultiVI's Bernoulli accessibility expects, and sparse: a real peak matrix is large
            peaks = sp.csr_matrix(cells.other_counts, dtype=np.float32, copy=True)
            peaks.data = (peaks.data > 0).astype(np.float32)
            peaks.eliminate_zeros()
        names = [str(i) for i in range(cells.n_cells)]
        obs = pd.DataFrame({"batch": pd.Categorical(self._batch_column(cells, training), categories=self.batches)},
                           index=names)
        data = mudata.MuData({
            "rna": ad.AnnData(sp.csr_matrix(cells.counts, dtype=np.float32), obs=obs.copy()),
            "atac": ad.AnnData(peaks, obs=obs.copy()),
        })
        data.obs["batch"] = obs["batch"]
        data.obs["_indices"] = np.arange(cells.n_cells)  # MultiVI's setup adds it; cells it embeds need it too
        if training:
            import scvi

            scvi.model.MULTIVI.setup_mudata(data, batch_key="batch", modalities={"rna_layer": "rna",
                                                                                "atac_layer": "atac"})
        return data

    def _model(self, data):
        import scvi

        p = self.params
        return scvi.model.MULTIVI(data, n_latent=p.n_latent, n_hidden=p.n_hidden,
                                  n_layers_encoder=p.n_layers_encoder, dropout_rate=p.dropout_rate,
                                  gene_likelihood=p.gene_likelihood)

    def _train_kwargs(self, train) -> dict:
        return {"lr": train.lr, "weight_decay": train.weight_decay}

    def predict_other(self, cells: Cells) -> np.ndarray:
        with self._in_model(cells) as data, quiet():
            per_batch = [dense(self.model.get_normalized_accessibility(data, transform_batch=b, return_numpy=True))
                         for b in self.batches]
        return np.mean(per_batch, axis=0).astype(np.float32)

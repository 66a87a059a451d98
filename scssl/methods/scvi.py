"""scVI (Lopez et al. 2018; scvi-tools ``SCVI``): a variational autoencoder of the raw counts with the batch
as covariate, evaluated like every embedding (its latent mean).

scSSL-Bench's settings (``utils/run_scVI_bc.py`` / ``run_scVI_qr.py``): 8 layers, 30 latent dimensions,
negative-binomial genes, scvi-tools' defaults otherwise. Trained on every given cell for the experiment's
epochs, learning rate, weight decay and batch size, with no validation split, early stopping or learning-rate
schedule (the study tunes and scores on its own split), where scSSL-Bench used scvi-tools' epoch heuristic.

Cells of a batch it was not trained on (the query of cell typing, a transfer's target) are mapped by scArches
surgery as scvi-tools provides it: ``load_query_data`` adds their batches, then ``query_epochs`` of training on
those cells alone with the reference weights frozen (weight decay 0, the experiment's learning rate and batch
size), as scSSL-Bench's query runs (100 epochs). The encoder sees the batch here (``encode_covariates``, as
scvi-tools' scArches guide): scSSL-Bench's script kept scvi-tools' default (False), under which the encoder
never sees the batch and query training cannot move the embedding; with ``encode_covariates: false`` a
query is embedded directly, as the method then would anyway.

Its query is typed as every method's, by kNN with k = 11 (scSSL-Bench's SSL protocol); scSSL-Bench's own scVI
query script used k = 5, so its published scVI cell-typing numbers are not on the same footing as its SSL ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
from pydantic import Field
from typing_extensions import Annotated

from scssl.methods.scvi_base import ScviMethod, batch_names, quiet, random_state_kept
from scssl.settings import settings

if TYPE_CHECKING:
    from scssl.data import Cells


@settings
class SCVIParams:
    """scSSL-Bench's ``n_layers`` 8, ``n_latent`` 30, NB genes; scvi-tools' 128 hidden units, dropout 0.1."""

    n_latent: Annotated[int, Field(ge=2)] = 30
    n_layers: Annotated[int, Field(ge=1)] = 8
    n_hidden: Annotated[int, Field(ge=8)] = 128
    dropout_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb"
    encode_covariates: bool = True
    query_epochs: Annotated[int, Field(ge=1)] = 100


class SCVI(ScviMethod):
    """scVI's latent mean (RNA counts, batch as covariate); query batches mapped by scArches surgery."""

    name: ClassVar[str] = "scvi"
    Params: ClassVar[type] = SCVIParams
    modality: ClassVar[str | None] = None
    uses_rna_only: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset({"counts"})

    def _obs(self, cells: Cells, training: bool):
        import pandas as pd

        batch = self._batch_column(cells, training)
        categories = sorted(set(batch)) if training else sorted(set(batch) | set(self.batches))
        return pd.DataFrame({"batch": pd.Categorical(batch, categories=categories)},
                            index=[str(i) for i in range(cells.n_cells)])

    def _data(self, cells: Cells, training: bool):
        import anndata as ad
        import scipy.sparse as sp

        data = ad.AnnData(sp.csr_matrix(cells.counts, dtype=np.float32), obs=self._obs(cells, training))
        if training:
            self._setup(data)
        return data

    def _setup(self, data) -> None:
        import scvi

        scvi.model.SCVI.setup_anndata(data, batch_key="batch")

    def _batch_column(self, cells: Cells, training: bool) -> np.ndarray:
        """Each cell's own batch; an encoder that ignores the batch gets a training batch for any cell."""
        if training or self.params.encode_covariates:
            return batch_names(cells)
        return np.full(cells.n_cells, self.batches[0])

    def _model(self, data):
        import scvi

        p = self.params
        return scvi.model.SCVI(data, n_latent=p.n_latent, n_layers=p.n_layers, n_hidden=p.n_hidden,
                               dropout_rate=p.dropout_rate, gene_likelihood=p.gene_likelihood,
                               encode_covariates=p.encode_covariates)

    def _train_kwargs(self, train) -> dict:
        return {"plan_kwargs": {"lr": train.lr, "weight_decay": train.weight_decay}}

    def embed(self, cells: Cells) -> np.ndarray:
        """The latent mean; cells of batches not trained on, after scArches surgery on them."""
        new = ~np.isin(self._batch_column(cells, training=False), self.batches)
        if not new.any():
            return super().embed(cells)
        out = np.empty((cells.n_cells, self.params.n_latent), dtype=np.float32)
        if not new.all():
            out[~new] = super().embed(cells.subset(~new))
        out[new] = self._mapped(cells.subset(new))
        return out

    def _mapped(self, query: Cells) -> np.ndarray:
        """scArches: the model extended to the query's batches, trained on the query with the reference
        weights frozen, then its latent mean of the query (the global random state left as it was)."""
        import scvi

        train = self.train_settings
        with random_state_kept(), quiet(), self._in_model(query) as data:
            scvi.settings.seed = self.seed
            mapped = type(self.model).load_query_data(data, self.model)
            try:
                self._train(mapped, train, self.params.query_epochs, None,
                            **self._query_train_kwargs(train))
                mapped.module.eval()
                return mapped.get_latent_representation(data).astype(np.float32)
            finally:
                self._release(mapped, data)

    def _query_train_kwargs(self, train) -> dict:
        return {"plan_kwargs": {"lr": train.lr, "weight_decay": 0.0}}


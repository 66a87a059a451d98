"""scANVI (Xu et al. 2021; scvi-tools ``SCANVI``): scVI with a cell-type classifier on its latent space,
trained on the labels of the training cells: semi-supervised, not self-supervised, so a row of its own beside
scVI (scSSL-Bench lists no scANVI).

As scvi-tools recommends, an scVI is pretrained first, then scANVI from its weights: of the experiment's epochs
the last quarter, at most 10, are scANVI's (scvi-tools' rule: a third of the scVI epochs, at most 10), so that
epochs are numbered on as for any method. A trial hides its validation cells' labels; batch correction trains
on every cell's label (scIB's protocol for scANVI). Query batches are mapped by scArches surgery as scVI's, on
query cells without labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from scssl.methods.scvi import SCVI, SCVIParams
from scssl.settings import settings

if TYPE_CHECKING:
    from scssl.data import Cells


UNLABELED = "unknown"  # scANVI's category of cells without a label


@settings
class SCANVIParams(SCVIParams):
    """scVI's settings, for the scVI it starts from and for scANVI itself."""


class SCANVI(SCVI):
    """scANVI's latent mean, from an scVI pretrained on the same cells; query batches by scArches surgery."""

    name: ClassVar[str] = "scanvi"
    kind: ClassVar[str] = "semi-supervised generative model (learns from labels), trained by scvi-tools"
    Params: ClassVar[type] = SCANVIParams

    def _obs(self, cells: Cells, training: bool):
        obs = super()._obs(cells, training)
        if training and cells.labels is None:
            raise ValueError("scanvi learns from the training cells' labels, and the cells have none")
        codes = cells.labels if training else np.full(cells.n_cells, -1)  # cells to embed: unlabelled
        obs["label"] = np.where(codes >= 0, np.char.add("type", codes.astype(str)), UNLABELED)
        return obs

    def _setup(self, data) -> None:
        import scvi

        scvi.model.SCVI.setup_anndata(data, batch_key="batch", labels_key="label")

    def _fit(self, data, train, on_epoch) -> None:
        import scvi

        pretraining = train.epochs - semisupervised_epochs(train.epochs)
        self.model = self._owned(self._model(data))
        if pretraining:
            self._train(self.model, train, pretraining, on_epoch, **self._train_kwargs(train))
        self.model.is_trained_ = True  # also when one epoch leaves none to scVI
        self.model = self._owned(scvi.model.SCANVI.from_scvi_model(self.model, UNLABELED))
        self._train(self.model, train, train.epochs - pretraining, on_epoch, first_epoch=pretraining,
                    **self._train_kwargs(train))


def semisupervised_epochs(total: int) -> int:
    """scANVI's share of ``total`` epochs: a quarter, at least 1, at most 10, leaving scVI at least 1 of 2+."""
    return max(1, min(10, round(total / 4), total - 1))

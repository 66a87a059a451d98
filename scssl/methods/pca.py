"""PCA of the preprocessed expression (RNA): the no-training floor every benchmark table carries."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from pydantic import Field
from typing_extensions import Annotated

from scssl.methods.base import FittedMethod, Reconstruction
from scssl.settings import settings

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

    from scssl.data import Cells
    from scssl.train import TrainSettings


@settings
class PCAParams:
    n_components: Annotated[int, Field(ge=1)] = 64


class PCABaseline(FittedMethod):
    """Fits PCA on the training cells and projects any cells onto it (or back: its reconstruction)."""

    name: ClassVar[str] = "pca"
    kind: ClassVar[str] = "baseline, fits by itself"
    Params: ClassVar[type] = PCAParams

    def __init__(self, params: PCAParams, seed: int = 0):
        super().__init__(params, seed)
        self._pca: PCA | None = None

    def fit(self, cells: Cells, train: TrainSettings | None = None, on_epoch=None) -> "PCABaseline":
        """PCA of ``cells.X`` (its RNA only, on multimodal data too); nothing to train or report per epoch."""
        from sklearn.decomposition import PCA  # here: listing the methods needs no sklearn

        X = cells.X
        n_components = min(self.params.n_components, min(X.shape) - 1)
        self._pca = PCA(n_components=n_components, svd_solver="arpack", random_state=self.seed).fit(X)
        return self

    def embed(self, cells: Cells) -> np.ndarray:
        return self._pca.transform(cells.X).astype(np.float32)

    def reconstruct(self, cells: Cells, seed: int = 0) -> Reconstruction:
        """The projection of the cells onto the components, mapped back to genes (every entry seen)."""
        X = cells.X
        x_hat = self._pca.inverse_transform(self._pca.transform(X)).astype(np.float32)
        return Reconstruction(np.asarray(X.todense() if hasattr(X, "todense") else X, dtype=np.float32), x_hat)

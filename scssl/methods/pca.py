"""PCA of the preprocessed expression: the no-training floor every benchmark table carries."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from sklearn.decomposition import PCA
from typing_extensions import Annotated

from scssl.settings import settings


@settings
class PCAParams:
    n_components: Annotated[int, Field(ge=1)] = 64


class PCABaseline:
    """Fits PCA on the training cells and projects any cells onto it; nothing to tune."""

    name: ClassVar[str] = "pca"
    Params: ClassVar[type] = PCAParams
    trainable: ClassVar[bool] = False

    def __init__(self, params: PCAParams, seed: int = 0):
        self.params = params
        self.seed = seed
        self._pca: PCA | None = None

    def fit(self, X: np.ndarray | sp.spmatrix) -> "PCABaseline":
        n_components = min(self.params.n_components, min(X.shape) - 1)
        self._pca = PCA(n_components=n_components, svd_solver="arpack", random_state=self.seed).fit(X)
        return self

    def embed(self, X: np.ndarray | sp.spmatrix) -> np.ndarray:
        return self._pca.transform(X).astype(np.float32)

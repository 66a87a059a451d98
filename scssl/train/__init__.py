"""Train layer: one loop for all SSL methods, and ``fit_embedding`` for any registered method."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from scssl.augment import AugmentationConfig, NeighbourGraph
from scssl.methods import get_method
from scssl.train.loop import EpochReport, NonFiniteLossError, TrainSettings, embed, resolve_device, train


def fit_embedding(
    method: str,
    params,
    X_train: np.ndarray | sp.spmatrix,
    X_embed: dict[str, np.ndarray | sp.spmatrix],
    train_settings: TrainSettings,
    augment: AugmentationConfig,
    seed: int,
    on_epoch: Callable | None = None,
    graph: NeighbourGraph | None = None,
) -> dict[str, np.ndarray]:
    """Fit ``method`` on ``X_train`` and embed each matrix of ``X_embed`` (same keys in the result).

    ``graph`` holds the neighbours of ``X_train``'s rows, for the BBKNN and MNN augmentations.
    """
    cls = get_method(method)
    if not cls.trainable:
        baseline = cls(params, seed=seed).fit(X_train)
        return {key: baseline.embed(X) for key, X in X_embed.items()}
    model = train(cls, params, X_train, train_settings, augment, seed, on_epoch, graph)
    return {key: embed(model, X) for key, X in X_embed.items()}


__all__ = [
    "EpochReport", "NonFiniteLossError", "TrainSettings", "embed", "fit_embedding", "resolve_device", "train",
]

"""Augmentation settings: each augmentation has its strength and a per-view probability ``prob``.

An ``augment`` block may start from a named ``preset`` (scSSL-Bench's ``clear_pipeline``, ``base``,
``our_pipeline``) and override any key; without one, the defaults are ``clear_pipeline``'s.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Literal

from pydantic import Field, model_validator
from typing_extensions import Annotated

from scssl.settings import settings, with_preset

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
MixMode = Literal["int", "exc", "geo"]


@settings
class Masking:
    """Set a ``rate`` fraction of the genes of a cell to zero (CLEAR's semantics; scSSL-Bench's
    code kept ``rate`` and zeroed the rest)."""

    rate: Fraction = 0.2
    prob: Fraction = 0.5


@settings
class GaussianNoise:
    """Add N(0, sigma^2) noise to a ``rate`` fraction of the genes of a cell."""

    sigma: NonNegative = 0.2
    rate: Fraction = 0.8
    prob: Fraction = 0.5


@settings
class InnerSwap:
    """Swap the values of int(rate x genes / 2) random gene pairs within a cell."""

    rate: Fraction = 0.1
    prob: Fraction = 0.5


@settings
class CrossOver:
    """Replace a ``rate`` fraction of a cell's genes with those of another random cell (of the mini-batch)."""

    rate: Fraction = 0.25
    prob: Fraction = 0.5


@settings
class NeighbourMixing:
    """Mix a cell with a neighbour: ``int`` interpolates with weight lambda ~ U(alpha, 1) on the cell,
    ``exc`` takes each gene from the neighbour with probability 1 - alpha, ``geo`` interpolates
    geometrically (x^lambda * y^(1 - lambda)). ``knn`` neighbours per batch are candidates."""

    alpha: Fraction = 0.5
    knn: Annotated[int, Field(ge=1, le=20)] = 5
    mode: MixMode = "int"
    prob: Fraction = 0.0


@settings
class BatchBalancedMixing(NeighbourMixing):
    """Neighbour mixing over the batch-balanced kNN graph (BBKNN); scSSL-Bench's ablation used ``exc``."""

    mode: MixMode = "exc"


@settings
class NegativeBinomialNoise:
    """Richter et al.: add log1p(library-normalised NB(10, p ~ U(0, 1)) counts) x ``intensity``, clamp at 0."""

    intensity: NonNegative = 0.2
    prob: Fraction = 0.0


@settings
class Dropout:
    """Richter et al.: zero each gene with probability ``rate`` and rescale the rest by 1 / (1 - rate)."""

    rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    prob: Fraction = 0.0


# scSSL-Bench's conf/augmentation/*.yaml, with masking in CLEAR's (correct) semantics.
PRESETS: dict[str, dict[str, Any]] = {
    "clear_pipeline": {},  # the defaults above
    "base": {name: {"prob": 0.0} for name in
             ("masking", "gaussian_noise", "inner_swap", "crossover", "bbknn", "mnn", "negbin_noise", "dropout")},
    "our_pipeline": {
        "mnn": {"prob": 0.5, "alpha": 0.5, "knn": 3, "mode": "int"},
        "gaussian_noise": {"prob": 0.5, "sigma": 0.2, "rate": 0.3},
        "masking": {"prob": 0.5, "rate": 0.5},
        "inner_swap": {"prob": 0.5, "rate": 0.3},
        "crossover": {"prob": 0.0},
    },
}


@settings
class ViewAugmentations:
    """The augmentations of each view of one modality, applied in ``ORDER``. Defaults: scSSL-Bench's
    clear_pipeline.

    ``bbknn`` mixes a cell with one of its batch-balanced neighbours (``knn`` nearest in each batch);
    ``mnn`` gives view 1 a mix with a within-batch neighbour and view 2 a mix of one of the cell's
    mutual nearest neighbours in another batch with that partner's own neighbour (CLAIRE-style). The
    neighbours come from the RNA, for either modality.
    """

    preset: Literal["clear_pipeline", "base", "our_pipeline"] | None = None
    bbknn: BatchBalancedMixing = field(default_factory=BatchBalancedMixing)
    mnn: NeighbourMixing = field(default_factory=NeighbourMixing)
    masking: Masking = field(default_factory=Masking)
    gaussian_noise: GaussianNoise = field(default_factory=GaussianNoise)
    inner_swap: InnerSwap = field(default_factory=InnerSwap)
    crossover: CrossOver = field(default_factory=CrossOver)
    negbin_noise: NegativeBinomialNoise = field(default_factory=NegativeBinomialNoise)
    dropout: Dropout = field(default_factory=Dropout)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return with_preset(data, "preset", PRESETS)

    @property
    def uses_neighbours(self) -> bool:
        return self.bbknn.prob > 0 or self.mnn.prob > 0


@settings
class AugmentationConfig(ViewAugmentations):
    """The RNA's augmentations and, on multimodal data, the second modality's own (``other``, with its own
    ``preset`` and keys; unset: the same as the RNA's), each modality augmented independently."""

    other: ViewAugmentations | None = None

    @property
    def uses_neighbours(self) -> bool:
        return super().uses_neighbours or (self.other is not None and self.other.uses_neighbours)


# The order in which a view's augmentations are applied.
ORDER = ("bbknn", "mnn", "masking", "gaussian_noise", "inner_swap", "crossover", "negbin_noise", "dropout")

"""Barlow Twins as in scSSL-Bench: push the views' cross-correlation matrix towards the identity."""

from __future__ import annotations

from pydantic import Field
from typing_extensions import Annotated

from scssl.methods.base import (
    EncoderParams, Positive, PositiveFloat, ProjectorParams, TwoViewMethod, mlp_head, projector_dims,
)
from scssl.methods.losses import barlow_twins
from scssl.settings import settings


@settings
class BarlowTwinsParams(ProjectorParams, EncoderParams):
    """Projector of 3 layers Lin-BN-ReLU-Lin-BN-ReLU-Lin, h -> 4h -> 4h -> 4h (lightly
    ``BarlowTwinsProjectionHead(64, 256, 256)``); off-diagonal weight 5e-3 (lightly's default)."""

    projector_layers: Positive = 3
    projector_hidden_mult: PositiveFloat = 4.0
    projector_out_mult: PositiveFloat = 4.0
    lambda_offdiag: Annotated[float, Field(ge=0.0)] = 5e-3


class BarlowTwins(TwoViewMethod):
    """Redundancy reduction: diagonal of the cross-correlation to 1, off-diagonal to 0."""

    name = "barlow_twins"
    Params = BarlowTwinsParams

    def __init__(self, n_genes: int, params: BarlowTwinsParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.projector = self.head(lambda: mlp_head(projector_dims(params)))

    def loss(self, view1, view2, codes=None):
        z1, z2 = self.projector(self.encoder(view1, codes)), self.projector(self.encoder(view2, codes))
        return barlow_twins(z1, z2, self.params.lambda_offdiag)

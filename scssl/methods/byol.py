"""BYOL with a target network that really follows the online one (both studies' code never updated it)."""

from __future__ import annotations

import torch

from scssl.methods.base import (
    EncoderParams, MomentumParams, MomentumTargets, PositiveFloat, PredictorParams, ProjectorParams, TwoViewMethod,
    mlp_head, predictor_dims, projector_dims,
)
from scssl.methods.losses import negative_cosine
from scssl.methods.mechanics import momentum_copy
from scssl.settings import settings


@settings
class BYOLParams(MomentumParams, PredictorParams, ProjectorParams, EncoderParams):
    """Projector and predictor Lin-BN-ReLU-Lin, h -> 4h -> h (lightly ``BYOLProjectionHead(64, 256, 64)``,
    ``BYOLPredictionHead(64, 256, 64)``); EMA target, cosine schedule 0.996 -> 1 over the run."""

    projector_hidden_mult: PositiveFloat = 4.0
    predictor_hidden_mult: PositiveFloat = 4.0


class BYOL(MomentumTargets, TwoViewMethod):
    """-cos(predictor(online z1), target z2), symmetrised; the target is an EMA of the online network."""

    name = "byol"
    Params = BYOLParams

    def __init__(self, n_genes: int, params: BYOLParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.projector = self.head(lambda: mlp_head(projector_dims(params)))
        self.predictor = mlp_head(predictor_dims(params, self.fused_width(projector_dims(params)[-1])))
        self.target_encoder = momentum_copy(self.encoder)
        self.target_projector = momentum_copy(self.projector)

    def momentum_pairs(self):
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def loss(self, view1, view2, codes=None):
        p1 = self.predictor(self.projector(self.encoder(view1, codes)))
        p2 = self.predictor(self.projector(self.encoder(view2, codes)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(view1, codes))
            t2 = self.target_projector(self.target_encoder(view2, codes))
        return 0.5 * (negative_cosine(p1, t2) + negative_cosine(p2, t1))

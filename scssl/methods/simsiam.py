"""SimSiam as in scSSL-Bench: a predictor on one branch, stop-gradient on the other, no negatives."""

from __future__ import annotations

from scssl.methods.base import (
    EncoderParams, Positive, PositiveFloat, PredictorParams, ProjectorParams, TwoViewMethod, mlp_head, predictor_dims,
    projector_dims,
)
from scssl.methods.losses import negative_cosine
from scssl.settings import settings


@settings
class SimSiamParams(PredictorParams, ProjectorParams, EncoderParams):
    """Projector of 3 layers, BN throughout and an affine-free BN last, h -> h -> h -> h/2; predictor
    h/2 -> h/4 -> h/2 (lightly ``SimSiamProjectionHead(64, 64, 32)``, ``SimSiamPredictionHead(32, 16, 32)``)."""

    projector_layers: Positive = 3
    projector_out_mult: PositiveFloat = 0.5
    predictor_hidden_mult: PositiveFloat = 0.25


class SimSiam(TwoViewMethod):
    """-cos(predictor(z1), stopgrad(z2)), symmetrised."""

    name = "simsiam"
    Params = SimSiamParams

    def __init__(self, n_genes: int, params: SimSiamParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.projector = self.head(lambda: mlp_head(projector_dims(params), last_norm=True, last_norm_affine=False))
        self.predictor = mlp_head(predictor_dims(params, self.fused_width(projector_dims(params)[-1])))

    def loss(self, view1, view2, codes=None):
        z1, z2 = self.projector(self.encoder(view1, codes)), self.projector(self.encoder(view2, codes))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1))

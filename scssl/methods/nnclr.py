"""NNCLR as in scSSL-Bench: NT-Xent between a view's nearest neighbour in a support set and the
other view's prediction."""

from __future__ import annotations

from scssl.methods.base import (
    EncoderParams, Positive, PositiveFloat, PredictorParams, ProjectorParams, QueueParams, TwoViewMethod, mlp_head,
    predictor_dims, projector_dims,
)
from scssl.methods.losses import nt_xent
from scssl.methods.mechanics import MemoryQueue, nearest_neighbour
from scssl.settings import settings


@settings
class NNCLRParams(QueueParams, PredictorParams, ProjectorParams, EncoderParams):
    """Projector of 3 layers with BN throughout, h -> h -> h -> h; predictor h -> h -> h (lightly
    ``NNCLRProjectionHead(64, 64, 64)``, ``NNCLRPredictionHead(64, 64, 64)``); support set of 2048."""

    projector_layers: Positive = 3
    temperature: PositiveFloat = 0.5


class NNCLR(TwoViewMethod):
    """0.5 [NT-Xent(NN(z1), p2) + NT-Xent(NN(z2), p1)]; only view 2's projections enter the support set."""

    name = "nnclr"
    Params = NNCLRParams

    def __init__(self, n_genes: int, params: NNCLRParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        dims = projector_dims(params)
        width = self.fused_width(dims[-1])
        self.projector = self.head(lambda: mlp_head(dims, last_norm=True))
        self.predictor = mlp_head(predictor_dims(params, width))
        self.support = MemoryQueue(params.memory_size, width)

    def loss(self, view1, view2, codes=None):
        z1, z2 = self.projector(self.encoder(view1, codes)), self.projector(self.encoder(view2, codes))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        support = self.support.bank.clone()
        nn1, nn2 = nearest_neighbour(z1.detach(), support), nearest_neighbour(z2.detach(), support)
        self.support.enqueue(z2)
        t = self.params.temperature
        return 0.5 * (nt_xent(nn1, p2, t) + nt_xent(nn2, p1, t))

"""MoCo v2 as in scSSL-Bench: a query network, a momentum key network and a queue of past keys."""

from __future__ import annotations

from scssl.methods.base import (
    EncoderParams, MomentumParams, MomentumTargets, PositiveFloat, ProjectorParams, QueueParams, TwoViewMethod,
    mlp_head, projector_dims,
)
from scssl.methods.losses import nt_xent_with_queue
from scssl.methods.mechanics import MemoryQueue, momentum_copy
from scssl.settings import settings


@settings
class MoCoParams(MomentumParams, QueueParams, ProjectorParams, EncoderParams):
    """Projector Lin-ReLU-Lin without BatchNorm, h -> h -> h (lightly ``MoCoProjectionHead(64, 64, 64)``).

    The key network's momentum follows its schedule over the run's own number of steps (the study's code
    always assumed 200 epochs).
    """

    temperature: PositiveFloat = 0.5


class MoCo(MomentumTargets, TwoViewMethod):
    """Contrastive against a queue: view 1's query must pick view 2's momentum key among queued keys."""

    name = "moco"
    Params = MoCoParams

    def __init__(self, n_genes: int, params: MoCoParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        dims = projector_dims(params)
        self.projector = self.head(lambda: mlp_head(dims, hidden_norm=False))
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)
        self.queue = MemoryQueue(params.memory_size, self.fused_width(dims[-1]))

    def momentum_pairs(self):
        return [(self.encoder, self.key_encoder), (self.projector, self.key_projector)]

    def loss(self, view1, view2, codes=None):
        query = self.projector(self.encoder(view1, codes))
        key = self.key_projector(self.key_encoder(view2, codes)).detach()
        loss = nt_xent_with_queue(query, key, self.queue.bank.clone(), self.params.temperature)
        self.queue.enqueue(key)
        return loss

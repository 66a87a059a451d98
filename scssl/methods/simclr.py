"""SimCLR (Chen et al. 2020) as in scSSL-Bench: NT-Xent on projections of two views."""

from __future__ import annotations

from scssl.methods.base import EncoderParams, PositiveFloat, ProjectorParams, TwoViewMethod, mlp_head, projector_dims
from scssl.methods.losses import nt_xent
from scssl.settings import settings


@settings
class SimCLRParams(ProjectorParams, EncoderParams):
    """Projector Lin-BN-ReLU-Lin-BN, h -> h -> h (lightly ``SimCLRProjectionHead(64, 64, 64)``)."""

    temperature: PositiveFloat = 0.5


class SimCLR(TwoViewMethod):
    """Contrastive: each view must pick its partner among the other 2N - 2 views (NT-Xent, temperature)."""

    name = "simclr"
    Params = SimCLRParams

    def __init__(self, n_genes: int, params: SimCLRParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.projector = self.head(lambda: mlp_head(projector_dims(params), last_norm=True))

    def loss(self, view1, view2, codes=None):
        z1 = self.projector(self.encoder(view1, codes))
        z2 = self.projector(self.encoder(view2, codes))
        return nt_xent(z1, z2, self.params.temperature)

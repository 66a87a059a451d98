"""VICReg (Bardes et al. 2022) as in scSSL-Bench: invariance, variance and covariance terms 5 / 5 / 1."""

from __future__ import annotations

from pydantic import Field
from typing_extensions import Annotated

from scssl.methods.base import EncoderParams, PositiveFloat, ProjectorParams, TwoViewMethod, mlp_head, projector_dims
from scssl.methods.losses import vicreg
from scssl.settings import settings

Weight = Annotated[float, Field(ge=0.0)]


@settings
class VICRegParams(ProjectorParams, EncoderParams):
    """Projector Lin-BN-ReLU-Lin, h -> h -> 4h (lightly ``VICRegProjectionHead(64, 64, 256)``).

    The study's code forced var_weight = sim_weight and cov_weight = 1; here all three are settable.
    """

    projector_out_mult: PositiveFloat = 4.0
    sim_weight: Weight = 5.0
    var_weight: Weight = 5.0
    cov_weight: Weight = 1.0


class VICReg(TwoViewMethod):
    """Non-contrastive: invariance between views plus variance and covariance regularisers."""

    name = "vicreg"
    Params = VICRegParams

    def __init__(self, n_genes: int, params: VICRegParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.projector = self.head(lambda: mlp_head(projector_dims(params)))

    def loss(self, view1, view2, codes=None):
        p = self.params
        z1 = self.projector(self.encoder(view1, codes))
        z2 = self.projector(self.encoder(view2, codes))
        return vicreg(z1, z2, p.sim_weight, p.var_weight, p.cov_weight)

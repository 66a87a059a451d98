"""scCLIP: CLIP between the RNA and the other modality of the same cells as the whole objective.

Partly faithful: Xiong et al.'s scCLIP encodes each modality with a transformer over gene / peak tokens; here
each modality has the package's MLP encoder (``EncoderParams``) and a linear projection, so the method is the
objective (cross-modal contrast, learnable temperature) on the benchmark's common architecture. scSSL-Bench
ran scCLIP with external code that is not public, so its settings are unknown.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scssl.methods.base import Batch, EncoderParams, Positive, SSLMethod
from scssl.methods.losses import clip_loss
from scssl.settings import settings


@settings
class SCCLIPParams(EncoderParams):
    """``projection_dim``: each modality's linear projection, where the two meet; the logit scale starts at
    log(1 / 0.07), as CLIP."""

    projection_dim: Positive = 64


class SCCLIP(SSLMethod):
    """Each cell's RNA projection must pick the same cell's other-modality projection among the batch's, and
    vice versa (CLIP loss); no augmentation. The embedding is both encoders' outputs (or the RNA's)."""

    name = "scclip"
    Params = SCCLIPParams
    modality = "any"

    def __init__(self, n_genes: int, params: SCCLIPParams, n_other: int = 0):
        if not n_other:
            raise ValueError("scclip needs multimodal data (RNA and a second modality); this data set has RNA only")
        super().__init__(n_genes, params, n_other)
        self.projector = nn.ModuleDict({m: nn.Linear(params.embedding_dim, params.projection_dim)
                                        for m in ("rna", "other")})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def training_loss(self, batch: Batch) -> torch.Tensor:
        rna, other = self.encoder((batch.x, batch.other), batch.batch_codes)
        return clip_loss(self.projector["rna"](rna), self.projector["other"](other), self.logit_scale)

"""What every SSL method shares: the scSSL-Bench encoder, projector heads, and the method contract."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn
from typing_extensions import Annotated

from scssl.methods.mechanics import cosine_schedule, ema_update
from scssl.settings import settings

Positive = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Momentum = Annotated[float, Field(ge=0.0, le=1.0)]


@settings
class EncoderParams:
    """Encoder and projector settings every SSL method has.

    The encoder is genes -> ``hidden_dim`` -> ``embedding_dim`` (scSSL-Bench: 128 -> 64); its output is
    the embedding. The projector has ``projector_layers`` linear layers of width
    ``projector_hidden_mult`` x embedding_dim and output ``projector_out_mult`` x embedding_dim.
    """

    embedding_dim: Annotated[int, Field(ge=2)] = 64
    hidden_dim: Positive = 128
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    projector_layers: Positive = 2
    projector_hidden_mult: PositiveFloat = 1.0
    projector_out_mult: PositiveFloat = 1.0


class Encoder(nn.Sequential):
    """Linear -> BN -> ReLU -> Linear -> BN -> Dropout, as scSSL-Bench's ``get_backbone_deep``."""

    def __init__(self, n_genes: int, params: EncoderParams):
        super().__init__(
            nn.Linear(n_genes, params.hidden_dim),
            nn.BatchNorm1d(params.hidden_dim),
            nn.ReLU(),
            nn.Linear(params.hidden_dim, params.embedding_dim),
            nn.BatchNorm1d(params.embedding_dim),
            nn.Dropout(params.dropout),
        )


def mlp_head(dims: list[int], hidden_norm: bool = True, last_norm: bool = False,
             last_norm_affine: bool = True) -> nn.Sequential:
    """Linear layers through ``dims``: (BN) + ReLU between them, optionally BN after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(d_out)] if hidden_norm else []
            layers.append(nn.ReLU())
        elif last_norm:
            layers.append(nn.BatchNorm1d(d_out, affine=last_norm_affine))
    return nn.Sequential(*layers)


def projector_dims(params: EncoderParams) -> list[int]:
    h = params.embedding_dim
    hidden = max(1, round(params.projector_hidden_mult * h))
    out = max(1, round(params.projector_out_mult * h))
    return [h] + [hidden] * (params.projector_layers - 1) + [out]


def predictor_dims(params) -> list[int]:
    """Predictor of SimSiam, NNCLR and BYOL: projector output -> mult x embedding_dim -> projector output."""
    out = projector_dims(params)[-1]
    return [out, max(1, round(params.predictor_hidden_mult * params.embedding_dim)), out]


class SSLMethod(nn.Module):
    """An SSL method: an encoder (the embedding), its heads, and its loss on two views.

    Subclasses set ``name`` and ``Params`` (a settings dataclass derived from ``EncoderParams``,
    holding every tunable hyper-parameter with the paper's default) and implement ``loss``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[EncoderParams]]
    trainable: ClassVar[bool] = True

    def __init__(self, n_genes: int, params: EncoderParams):
        super().__init__()
        self.params = params
        self.encoder = Encoder(n_genes, params)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def loss(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, target) modules whose target follows the online one by EMA; none by default."""
        return []

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step: moves momentum targets along the cosine EMA schedule."""
        pairs = self.momentum_pairs()
        if pairs:
            momentum = cosine_schedule(step, total_steps, self.params.momentum_start, self.params.momentum_end)
            for online, target in pairs:
                ema_update(online, target, momentum)

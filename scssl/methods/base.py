"""The method contract, and the pieces network methods are built from.

Every method is one of two kinds, behind the same registry:

- ``SSLMethod``: a network trained by the shared loop (``scssl.train``). It owns its training step: given a
  ``Batch`` (clean rows, their indices, batch codes) it makes its own views or masks and returns its loss.
  ``TwoViewMethod`` is the base of the contrastive and redundancy-reduction methods.
- ``FittedMethod``: a method that fits by itself (PCA today); ``fit`` then ``embed``.

``sections`` says which experiment / search-space sections a method reads besides ``method``, so that a
section it would ignore is an error at load time. What a model can do besides embedding is a protocol it
implements (``Reconstructs``, ``PredictsOther``; a network's encoder carries heads: ``carries_heads``), which
the tasks ask for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Protocol, runtime_checkable

import math

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from typing_extensions import Annotated

from scssl.methods.domain_norm import DomainBatchNorm
from scssl.methods.losses import clip_loss
from scssl.methods.mechanics import cosine_schedule, ema_update
from scssl.settings import settings, with_preset

if TYPE_CHECKING:
    from scssl.augment import AugmentationConfig, NeighbourGraph
    from scssl.data import Cells
    from scssl.train import TrainSettings

Positive = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
Momentum = Annotated[float, Field(ge=0.0, le=1.0)]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0)]
EmbeddingDim = Annotated[int, Field(ge=2)]
HiddenDims = Annotated[tuple[Positive, ...], Field(min_length=1)]
Norm = Literal["batch", "layer", "none"]

# Named encoder architectures: scSSL-Bench's get_backbone_deep (the defaults below) and Richter et al.'s MLP.
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "scssl_bench": {},
    "richter": {"hidden_dims": [512, 512, 256, 256], "embedding_dim": 64, "activation": "selu", "norm": "none",
                "hidden_dropout": 0.1, "dropout": 0.0},
}
ACTIVATIONS = {"relu": nn.ReLU, "selu": nn.SELU, "gelu": nn.GELU}


@settings
class EncoderParams:
    """The encoder every network method has: genes -> ``hidden_dims`` -> ``embedding_dim`` (the embedding).

    Each hidden layer is Linear -> norm -> activation (-> Dropout(``hidden_dropout``)); the output layer is
    Linear -> norm (-> Dropout(``dropout``)). The defaults are scSSL-Bench's 128 -> 64 with BatchNorm;
    ``encoder_preset: richter`` is Richter et al.'s 512-512-256-256-64, SELU, dropout 0.1, no norm. Keys
    given beside a preset override it.

    On multimodal data a method has one such encoder per modality; ``embedding`` says what the tasks score:
    ``joint`` (the concatenation of both encoders' outputs, as scSSL-Bench) or ``rna`` (the RNA encoder alone).

    ``domain_batchnorm`` (scSSL-Bench's RQ3) gives the first layer one BatchNorm per training batch
    (``domain_norm.py``).
    """

    encoder_preset: Literal["scssl_bench", "richter"] | None = None
    embedding_dim: EmbeddingDim = 64
    hidden_dims: HiddenDims = (128,)
    activation: Literal["relu", "selu", "gelu"] = "relu"
    norm: Norm = "batch"
    hidden_dropout: DropoutRate = 0.0
    dropout: DropoutRate = 0.0
    embedding: Literal["joint", "rna"] = "joint"
    domain_batchnorm: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        return with_preset(data, "encoder_preset", ENCODER_PRESETS)


@settings
class ProjectorParams:
    """The projector of the two-view methods: ``projector_layers`` linear layers of width
    ``projector_hidden_mult`` x embedding_dim and output ``projector_out_mult`` x embedding_dim.

    ``predict_projection`` scores the projector's output instead of the encoder's (scSSL-Bench's switch of
    that name). On multimodal data each modality has its own projector and ``fusion`` joins their outputs
    into the projection the loss sees: ``add``, ``mean``, ``concat``, or ``clip`` (concat, plus a CLIP loss
    between the modalities of each view).
    """

    projector_layers: Positive = 2
    projector_hidden_mult: PositiveFloat = 1.0
    projector_out_mult: PositiveFloat = 1.0
    predict_projection: bool = False
    fusion: Literal["add", "mean", "concat", "clip"] = "concat"


@settings
class PredictorParams:
    """Predictor of SimSiam, NNCLR and BYOL: projector output -> mult x embedding_dim -> projector output."""

    predictor_hidden_mult: PositiveFloat = 1.0


@settings
class MomentumParams:
    """A target network that follows the online one by EMA, its momentum rising along a cosine schedule
    from ``momentum_start`` to ``momentum_end`` over the run's own number of steps."""

    momentum_start: Momentum = 0.996
    momentum_end: Momentum = 1.0


@settings
class QueueParams:
    """A FIFO memory of the ``memory_size`` most recent projections (MoCo's negatives, NNCLR's support set)."""

    memory_size: Positive = 2048


def _norm(kind: str, width: int) -> list[nn.Module]:
    return {"batch": [nn.BatchNorm1d(width)], "layer": [nn.LayerNorm(width)], "none": []}[kind]


def mlp(dims: list[int], params: EncoderParams, last_dropout: float | None,
        domain_norm: bool = False) -> nn.Sequential:
    """Linear layers through ``dims`` with the norm, activation and dropout of ``params``; the last layer
    has the norm (but no activation) and ``last_dropout``, or with ``last_dropout=None`` is a plain Linear
    (a decoder's output). Dropout(0) is left out after hidden layers. ``domain_norm``: the first hidden
    layer's norm is a BatchNorm per batch (``DomainBatchNorm``)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            norm = [DomainBatchNorm(d_out)] if domain_norm and i == 0 else _norm(params.norm, d_out)
            layers += [*norm, ACTIVATIONS[params.activation]()]
            layers += [nn.Dropout(params.hidden_dropout)] if params.hidden_dropout > 0 else []
        elif last_dropout is not None:
            layers += [*_norm(params.norm, d_out), nn.Dropout(last_dropout)]
    return nn.Sequential(*layers)


class Encoder(nn.Sequential):
    """The embedding network of ``EncoderParams`` (by default exactly scSSL-Bench's ``get_backbone_deep``:
    Linear -> BN -> ReLU -> Linear -> BN -> Dropout). ``output_activation`` ends it in the activation too, as
    CLEAR's and CLAIRE's encoders (after the dropout: the two commute). Its input is the rows and their batch
    codes, which only a domain-specific BatchNorm reads."""

    def __init__(self, n_genes: int, params: EncoderParams, output_activation: bool = False):
        super().__init__(*mlp([n_genes, *params.hidden_dims, params.embedding_dim], params, params.dropout,
                              params.domain_batchnorm))
        if output_activation:
            self.append(ACTIVATIONS[params.activation]())

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = layer(x, codes) if isinstance(layer, DomainBatchNorm) else layer(x)
        return x


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


class PairedEncoder(nn.Module):
    """One encoder per modality: (RNA, other) -> (RNA embedding, other embedding)."""

    def __init__(self, n_genes: int, n_other: int, params: EncoderParams, output_activation: bool = False):
        super().__init__()
        self.rna = Encoder(n_genes, params, output_activation)
        self.other = Encoder(n_other, params, output_activation)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor],
                codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rna(x[0], codes), self.other(x[1], codes)


def fuse(rna: torch.Tensor, other: torch.Tensor, fusion: str) -> torch.Tensor:
    if fusion == "add":
        return rna + other
    if fusion == "mean":
        return (rna + other) / 2
    return torch.cat([rna, other], dim=1)  # concat, and clip


class FusedHead(nn.Module):
    """One head per modality (two fresh copies of the method's own head), outputs fused by ``fusion``.

    In training mode it records each call's two modality outputs in ``recorded``, so that the method can add
    the CLIP loss between the modalities of each view (``fusion: clip``) without computing them twice.
    """

    def __init__(self, make: Callable[[], nn.Module], fusion: str):
        super().__init__()
        self.rna, self.other = make(), make()
        self.fusion = fusion
        self.recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, h: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        rna, other = self.rna(h[0]), self.other(h[1])
        if self.training:
            self.recorded.append((rna, other))
        return fuse(rna, other, self.fusion)


def projector_dims(params: ProjectorParams) -> list[int]:
    h = params.embedding_dim
    hidden = max(1, round(params.projector_hidden_mult * h))
    out = max(1, round(params.projector_out_mult * h))
    return [h] + [hidden] * (params.projector_layers - 1) + [out]


def predictor_dims(params: PredictorParams, width: int) -> list[int]:
    """width -> mult x embedding_dim -> width, ``width`` the (fused) projection's."""
    return [width, max(1, round(params.predictor_hidden_mult * params.embedding_dim)), width]


@dataclass
class Batch:
    """A mini-batch as a method's training step sees it: the clean (log-normalised) rows on the device,
    their rows in the training matrix, their batch codes (None when the caller has none) and, on multimodal
    data, the same cells' second modality (``other``)."""

    x: torch.Tensor
    index: torch.Tensor
    batch_codes: torch.Tensor | None = None
    other: torch.Tensor | None = None


@dataclass
class TrainingContext:
    """What a method may need before training besides its settings: the training cells' row lookup, gene
    names, neighbour graph (BBKNN / MNN augmentations), augmentations, seed and device, on multimodal
    data the row lookup of the second modality (``other_rows``), and every training cell's batch code on the
    device (``batch_codes``; None when the cells have none)."""

    rows: Callable[[torch.Tensor], torch.Tensor]
    genes: np.ndarray | None
    graph: NeighbourGraph | None
    augment: AugmentationConfig | None
    seed: int
    device: torch.device
    other_rows: Callable[[torch.Tensor], torch.Tensor] | None = None
    batch_codes: torch.Tensor | None = None


class SSLMethod(nn.Module):
    """A network method: an encoder (the embedding), its heads, and its own training step.

    Subclasses set ``name`` and ``Params`` (a settings dataclass derived from ``EncoderParams`` unless the method
    builds its own encoder, holding every tunable hyper-parameter with the paper's default) and implement
    ``training_loss``. Built with ``n_other`` features of a second modality (multimodal data), ``encoder`` is a
    ``PairedEncoder`` and the method's heads come from ``head`` (one per modality, fused); ``uses_other`` False
    methods (the MAE, Concerto) train on RNA alone.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "SSL method"  # what ``scssl methods`` calls it
    Params: ClassVar[type[EncoderParams]]
    trainable: ClassVar[bool] = True  # trained by the shared loop, tuned over a search space
    sections: ClassVar[frozenset[str]] = frozenset({"train"})
    uses_other: ClassVar[bool] = True  # trains on a second modality when the data has one
    modality: ClassVar[str | None] = None  # the second modality it needs: "any", "protein", "atac" or None
    uses_rna_only: ClassVar[bool] = False  # trains on mosaic data's RNA-only cells too
    needs_neighbours: ClassVar[bool] = False  # trains on the cells' NeighbourGraph whatever its augmentations
    inputs: ClassVar[frozenset[str]] = frozenset()  # what it reads besides the normalised data (``INPUTS``)
    encoder_output_activation: ClassVar[bool] = False  # the encoder ends in its activation (CLEAR, CLAIRE)
    # reads its cells a mini-batch of rows at a time (``CellMatrix``), so a trial's cells may be rows of the data
    # set's matrices held once per node (``RowsOf``) rather than a copy
    gathers_rows: ClassVar[bool] = True

    def __init__(self, n_genes: int, params: EncoderParams, n_other: int = 0):
        super().__init__()
        self.params = params
        self.n_other = n_other if self.uses_other else 0
        self.encoder = self.build_encoder(n_genes, params)

    def build_encoder(self, n_genes: int, params) -> nn.Module:
        """The embedding network: the MLP of ``EncoderParams``, one per modality on multimodal data."""
        if self.n_other:
            return PairedEncoder(n_genes, self.n_other, params, self.encoder_output_activation)
        return Encoder(n_genes, params, self.encoder_output_activation)

    @property
    def rna_encoder(self) -> nn.Module:
        return self.encoder.rna if self.n_other else self.encoder

    def head(self, make: Callable[[], nn.Module]) -> nn.Module:
        """The head ``make`` builds, or on multimodal data one per modality, fused (``FusedHead``)."""
        return FusedHead(make, self.params.fusion) if self.n_other else make()

    def fused_width(self, width: int) -> int:
        """The width of a fused head's output when each modality's head gives ``width``."""
        return 2 * width if self.n_other and self.params.fusion in ("concat", "clip") else width

    def joint(self, other: torch.Tensor | None) -> bool:
        """Whether the embedding of cells with ``other`` joins both modalities."""
        return self.n_other > 0 and other is not None and self.params.embedding == "joint"

    def setup(self, context: TrainingContext) -> None:
        """Called once, on the device, before the first step."""

    def training_loss(self, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, x: torch.Tensor, other: torch.Tensor | None = None,
              codes: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding the tasks score: both encoders' outputs concatenated (``joint``), else the RNA's;
        ``codes``: the rows' batches (for domain-specific BatchNorm)."""
        if self.joint(other):
            return torch.cat(self.encoder((x, other), codes), dim=1)
        return self.rna_encoder(x, codes)

    def before_epoch(self, epoch: int) -> None:
        """Called in training mode before each epoch (``epoch`` 1-based): CLAIRE filters its anchors here."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimiser step (momentum targets move here)."""


class TwoViewMethod(SSLMethod):
    """A method whose step is a loss on two augmented views of the batch (the seven generic methods).

    On multimodal data a view is the pair (RNA view, other view), each modality augmented independently with
    its own settings (``augment.other``, else RNA's), as scSSL-Bench's multimodal variants; the encoder and
    the heads take the pair, so the method's ``loss`` is the same code.
    """

    sections = frozenset({"train", "augment"})

    def __init__(self, n_genes: int, params: EncoderParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        if self.n_other and params.fusion == "clip":  # CLIP's learnable temperature, initialised at 1 / 0.07
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def setup(self, context: TrainingContext) -> None:
        from scssl.augment import Augmenter  # the augment layer loads numba; a method class alone needs it not

        augment = context.augment
        self.augmenter = Augmenter(augment, context.device, context.seed, rows=context.rows, graph=context.graph)
        if self.n_other:
            self.other_augmenter = Augmenter(augment.other or augment, context.device, context.seed + 1,
                                             rows=context.other_rows, graph=context.graph)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        if not self.n_other:
            return self.loss(*self.augmenter(batch.x, batch.index), batch.batch_codes)
        rna1, rna2 = self.augmenter(batch.x, batch.index)
        other1, other2 = self.other_augmenter(batch.other, batch.index)
        loss = self.loss((rna1, other1), (rna2, other2), batch.batch_codes)
        if self.params.fusion == "clip":  # each call of the online projector: one per view it projected
            loss = loss + sum(clip_loss(rna, other, self.logit_scale) for rna, other in self.projector.recorded)
        for head in self.modules():
            if isinstance(head, FusedHead):
                head.recorded.clear()
        return loss

    def embed(self, x: torch.Tensor, other: torch.Tensor | None = None,
              codes: torch.Tensor | None = None) -> torch.Tensor:
        """With ``predict_projection``, the (fused) projection; else the encoder's embedding."""
        if not self.params.predict_projection:
            return super().embed(x, other, codes)
        if self.joint(other):
            return self.projector(self.encoder((x, other), codes))
        return (self.projector.rna if self.n_other else self.projector)(self.rna_encoder(x, codes))

    def loss(self, view1: torch.Tensor, view2: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """The method's loss on two views of the same cells, whose batches are ``codes``."""
        raise NotImplementedError


class MomentumTargets:
    """Mixin of methods with EMA targets: ``momentum_pairs`` lists (online, target) modules, moved after
    each step along the cosine schedule of ``MomentumParams``."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        momentum = cosine_schedule(step, total_steps, self.params.momentum_start, self.params.momentum_end)
        for online, target in self.momentum_pairs():
            ema_update(online, target, momentum)


@dataclass
class Reconstruction:
    """A method's reconstruction ``x_hat`` of cells from the ``inputs`` it was given; ``scored`` marks the
    entries its encoder did not see, whatever its loss counted (None: it saw every entry), so that every
    masking is scored on the same kind of entries."""

    inputs: np.ndarray
    x_hat: np.ndarray
    scored: np.ndarray | None = None


@settings
class NoParams:
    """No settings."""


class FittedMethod:
    """The base of a method that fits by itself, not by the shared loop (PCA; scVI, scANVI, totalVI and MultiVI by
    scvi-tools; scGPT from a checkpoint), with the defaults of its declarations: ``fit`` then ``embed``, and
    where it can, ``reconstruct`` (``Reconstructs``) or ``predict_other`` (``PredictsOther``).

    ``modality`` is the second modality it needs (None: any data); ``uses_rna_only``: it trains on mosaic data's
    RNA-only cells too (their ``Cells.other_observed`` False); ``inputs``: what it reads besides the normalised
    data (``scssl.data.prepare.INPUTS``: "counts", "other_counts"), which its results' identity covers.
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "fits by itself"
    Params: ClassVar[type] = NoParams
    trainable: ClassVar[bool] = False  # trained in epochs, tuned over a search space
    sections: ClassVar[frozenset[str]] = frozenset()
    modality: ClassVar[str | None] = None
    uses_rna_only: ClassVar[bool] = False
    needs_neighbours: ClassVar[bool] = False
    inputs: ClassVar[frozenset[str]] = frozenset()
    gathers_rows: ClassVar[bool] = False  # reads whole matrices: its cells are copies of their own

    def __init__(self, params: Any = None, seed: int = 0):
        self.params = params
        self.seed = seed

    def fit(self, cells: Cells, train: TrainSettings | None, on_epoch: Callable | None = None) -> FittedMethod:
        """Fit on ``cells``; a method trained in epochs calls ``on_epoch(self, EpochReport)`` after each."""
        raise NotImplementedError

    def embed(self, cells: Cells) -> np.ndarray:
        raise NotImplementedError


class UnavailableMethod(FittedMethod):
    """A method of the studies that cannot run here (its code does not install from PyPI): registered, so that
    ``scssl methods`` lists it and an experiment naming it is a load error saying what it ``needs``, never a
    stand-in embedding."""

    kind: ClassVar[str] = "not installable here"
    needs: ClassVar[str]

    def __init__(self, params: Any = None, seed: int = 0):
        raise RuntimeError(self.needs)


@runtime_checkable
class Reconstructs(Protocol):
    """A model that reconstructs cells from its training-time masking (the reconstruction task): the MAE's
    network, or a method that fits by itself (PCA). ``seed`` draws the masks."""

    def reconstruct(self, cells: Cells, seed: int) -> Reconstruction: ...


@runtime_checkable
class PredictsOther(Protocol):
    """A fitted model that predicts cells' second modality from their RNA (totalVI, MultiVI), besides the kNN
    protocol every method gets."""

    def predict_other(self, cells: Cells) -> np.ndarray: ...


def carries_heads(method: type) -> bool:
    """Whether ``method`` trains a network whose encoder a head can be fine-tuned on (the head tasks)."""
    return isinstance(method, type) and issubclass(method, SSLMethod)

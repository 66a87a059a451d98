"""CLEAR (Han et al. 2022, Briefings in Bioinformatics): MoCo instance contrast on expression profiles, with
no projection head, and the momentum encoder as the embedding.

From the authors' code (ml4bio/CLEAR: ``pcl/builder.py`` MoCo and MLPEncoder, ``CLEAR.py``): the encoder is
genes -> 1024 -> 128, each layer Linear -> ReLU (-> Dropout(0)), no normalisation; the InfoNCE of each query
(view 1, query encoder) against its key (view 2, key encoder) among a queue of 1024 past keys, temperature
0.2; the key encoder follows the query encoder with a constant momentum of 0.999; a cell's embedding is the
key encoder's output, L2-normalised. The views come from the ``augment`` block, whose defaults are
scSSL-Bench's ``clear_pipeline`` (masking, Gaussian noise, InnerSwap, CrossOver, each with probability 0.5).

Departures from the authors' code:

- Augmentations: CLEAR also replaces 25 % of the genes with those of random cells (its "cross over with
  many", probability 0.5), which ``clear_pipeline`` lacks; its Gaussian noise has standard deviation 0.5
  whatever ``sigma`` says (here ``sigma``, 0.2); it masks and crosses over an exact fraction of the genes
  (here each gene with that probability) and crosses over with any cell of the data set (here one of the
  mini-batch).
- Training settings are the ``train`` block's (CLEAR: SGD with momentum 0.9, lr 5e-3, weight decay 1e-6, batch
  512, 100 epochs; on fewer than 512 cells it shrinks the queue and the batch to the number of cells).
- The key encoder moves after each optimiser step, CLEAR's at the start of the next forward pass: the same
  sequence of networks.
- RNA only (``uses_other`` False): CLEAR has no multimodal form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scssl.methods.base import (
    EmbeddingDim, EncoderParams, HiddenDims, Momentum, MomentumParams, MomentumTargets, Norm, Positive, PositiveFloat,
    QueueParams, TwoViewMethod,
)
from scssl.methods.losses import nt_xent_with_queue
from scssl.methods.mechanics import MemoryQueue, momentum_copy
from scssl.settings import settings


@settings
class CLEARParams(MomentumParams, QueueParams, EncoderParams):
    """CLEAR's defaults: encoder genes -> 1024 -> 128 without normalisation, queue 1024, momentum 0.999
    throughout (``momentum_start`` = ``momentum_end``), temperature 0.2."""

    embedding_dim: EmbeddingDim = 128
    hidden_dims: HiddenDims = (1024,)
    norm: Norm = "none"
    memory_size: Positive = 1024
    momentum_start: Momentum = 0.999
    momentum_end: Momentum = 0.999
    temperature: PositiveFloat = 0.2


class CLEAR(MomentumTargets, TwoViewMethod):
    """View 1's query must pick view 2's momentum key among the queued keys; no projector."""

    name = "clear"
    Params = CLEARParams
    uses_other = False
    encoder_output_activation = True

    def __init__(self, n_genes: int, params: CLEARParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.key_encoder = momentum_copy(self.encoder)
        self.queue = MemoryQueue(params.memory_size, params.embedding_dim)

    def momentum_pairs(self):
        return [(self.encoder, self.key_encoder)]

    def contrast(self, view1: torch.Tensor, view2: torch.Tensor, codes1: torch.Tensor | None = None,
                 codes2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MoCo's InfoNCE of view 1's queries against view 2's keys and the queue, and those keys (not yet
        queued, so that a symmetric loss sees the same queue in both directions)."""
        key = self.key_encoder(view2, codes2).detach()
        return nt_xent_with_queue(self.encoder(view1, codes1), key, self.queue.bank.clone(),
                                  self.params.temperature), key

    def loss(self, view1, view2, codes=None):
        loss, key = self.contrast(view1, view2, codes, codes)
        self.queue.enqueue(key)
        return loss

    def embed(self, x: torch.Tensor, other: torch.Tensor | None = None,
              codes: torch.Tensor | None = None) -> torch.Tensor:
        """The key encoder's output, L2-normalised (CLEAR's ``is_eval``)."""
        return F.normalize(self.key_encoder(x, codes), dim=1)

"""Concerto (Yang et al. 2022, Nature Machine Intelligence): self-distillation between two different networks
that read the same cell, with dropout as the only noise.

The teacher reads a cell as tokens, one per gene: the gene's embedding times its value (all values of a
batch normalised by one BatchNorm), pooled over all genes by attention (score u . tanh(W h + b), softmax over
genes), then tanh -> BN -> Dropout -> Linear -> ReLU. The student is a dense network on the values:
BN -> Linear -> ReLU -> BN -> Dropout -> Linear -> ReLU. NT-Xent makes each cell's teacher output pick the
same cell's student output among the batch. A cell's embedding is the teacher's output, L2-normalised (eval
mode: no dropout); query cells are embedded by the reference-trained teacher, without retraining.

This is the authors' TensorFlow code (melobio/Concerto-reproducibility: ``multi_embedding_attention_transfer``,
``concerto_train_ref``, ``concerto_test_*``), RNA only (its multimodal variant is not here). Departures:

- Defaults are scSSL-Bench's: temperature 0.2 and dropout 0.2 (the authors': 0.1 and 0.1). The authors' loss
  is twice NT-Xent (both directions summed, averaged over cells): the same optimum.
- The attention's softmax is exact (the authors' divides by the sum plus 1e-7), and it is computed a chunk of
  genes at a time, recomputed in the backward pass, and pooled as (weights @ token embeddings), so no
  batch x genes x width tensor is kept: the same function, in memory that does not grow with the genes.
- Query mapping: the authors' pancreas tutorial (Fig. 4) also trains both networks one more unsupervised
  epoch on the query before embedding it; their COVID-19 mapping (Fig. 5), as here, embeds the query directly.
- ``value_bins: N`` swaps in scSSL-Bench's tokens (``models/concerto.py``): one token per value,
  int(ReLU(BN(x))) with a BatchNorm per gene, into N embeddings, so that the teacher no longer knows which gene
  a token comes from (it sees a histogram of binned values). Values past the last bin take the last token
  (scSSL-Bench's raise an index error). Only the tokens: scSSL-Bench also embeds before the teacher's head, has
  lightly's SimCLR heads in place of the final Linear -> ReLU, and trains on augmented views when augmentations
  are set. On the built-in BMMC data these tokens barely learn (tests/methods/test_concerto.py shows the blindness).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint
from typing_extensions import Annotated

from scssl.methods.base import Batch, DropoutRate, PositiveFloat, SSLMethod
from scssl.methods.losses import nt_xent
from scssl.settings import settings

# Floats in one chunk's cells x genes x width attention tensors, whatever the number of genes: 32 MiB, the size
# from which glibc always memory-maps an allocation, so that a freed chunk is handed back and not kept.
CHUNK_ELEMENTS = 2**23


@settings
class ConcertoParams:
    """``embedding_dim``: the width of the token embeddings, of the attention and of both networks' outputs
    (the embedding), 128 in both codes. ``value_bins``: None, the authors' gene tokens; a number, scSSL-Bench's
    value tokens with that many bins (its 10)."""

    embedding_dim: Annotated[int, Field(ge=2)] = 128
    dropout: DropoutRate = 0.2
    temperature: PositiveFloat = 0.2
    value_bins: Annotated[int, Field(ge=2)] | None = None


class GeneAttentionTeacher(nn.Module):
    """Cells -> attention-pooled gene tokens -> ``embedding_dim`` outputs."""

    def __init__(self, n_genes: int, params: ConcertoParams):
        super().__init__()
        width = params.embedding_dim
        self.value_bins = params.value_bins
        gene_tokens = params.value_bins is None
        self.value_norm = nn.BatchNorm1d(1 if gene_tokens else n_genes)
        self.token_embedding = nn.Embedding(n_genes if gene_tokens else params.value_bins, width)
        self.attention = nn.Linear(width, width)  # W and b of the score u . tanh(W h + b)
        limit = math.sqrt(3 / width)  # Glorot-uniform of a vector, as the authors' Keras layer
        self.context = nn.Parameter(torch.empty(width).uniform_(-limit, limit))  # u
        self.head = nn.Sequential(nn.Tanh(), nn.BatchNorm1d(width), nn.Dropout(params.dropout),
                                  nn.Linear(width, width), nn.ReLU())

    def tokenise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token id of each gene of each cell, the factor its embedding is multiplied by)."""
        if self.value_bins is None:  # one mean and variance over every value of the batch, as the authors
            ids = torch.arange(x.shape[1], device=x.device).expand_as(x)
            return ids, self.value_norm(x.unsqueeze(1)).squeeze(1)
        bins = F.relu(self.value_norm(x)).long().clamp(max=self.value_bins - 1)
        return bins, torch.ones_like(x)

    def forward(self, x: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding of rows ``x`` (their batch ``codes`` unused: the teacher has no domain norms)."""
        ids, scale = self.tokenise(x)
        # h = scale * e_token, so W h = scale * (W e_token): the keys of every token are computed once
        keys = F.linear(self.token_embedding.weight, self.attention.weight)
        chunk = max(1, CHUNK_ELEMENTS // (len(x) * keys.shape[1]))
        scores = torch.cat([self._checkpointed_scores(keys, chunk_ids, chunk_scale)
                            for chunk_ids, chunk_scale in zip(ids.split(chunk, 1), scale.split(chunk, 1))], dim=1)
        weights = torch.softmax(scores, dim=1) * scale
        # sum_g a_g h_g = sum over tokens of (the weights of that token) x its embedding
        per_token = torch.zeros(len(x), len(keys), device=x.device, dtype=weights.dtype)
        pooled = per_token.scatter_add(1, ids, weights) @ self.token_embedding.weight
        return self.head(pooled)

    def _checkpointed_scores(self, keys: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._scores(keys, ids, scale)
        return checkpoint(self._scores, keys, ids, scale, use_reentrant=False)

    def _scores(self, keys: torch.Tensor, ids: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.tanh(scale.unsqueeze(-1) * keys[ids] + self.attention.bias) @ self.context


def student_network(n_genes: int, params: ConcertoParams) -> nn.Sequential:
    width = params.embedding_dim
    return nn.Sequential(nn.BatchNorm1d(n_genes), nn.Linear(n_genes, width), nn.ReLU(), nn.BatchNorm1d(width),
                         nn.Dropout(params.dropout), nn.Linear(width, width), nn.ReLU())


class Concerto(SSLMethod):
    """Teacher (attention over gene tokens) vs student (dense) on the same cell, NT-Xent; embeds by the teacher."""

    name = "concerto"
    Params = ConcertoParams
    uses_other = False  # the authors' multimodal Concerto is not implemented: it trains on the RNA

    def __init__(self, n_genes: int, params: ConcertoParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.student = student_network(n_genes, params)

    def build_encoder(self, n_genes: int, params: ConcertoParams) -> nn.Module:
        return GeneAttentionTeacher(n_genes, params)  # what embeds: the teacher

    def training_loss(self, batch: Batch) -> torch.Tensor:
        return nt_xent(self.encoder(batch.x), self.student(batch.x), self.params.temperature)

    def embed(self, x: torch.Tensor, other: torch.Tensor | None = None,
              codes: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.encoder(x, codes), dim=1)

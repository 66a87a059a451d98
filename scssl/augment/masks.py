"""Masks of the masked autoencoder (Richter et al. 2024), as tensor operations on a whole mini-batch.

Each strategy turns clean rows ``x`` (cells x genes) into what the encoder sees, what the decoder must
reproduce and which entries the loss counts:

- ``random``: every entry hidden with probability ``rate``; the others scaled by 1 / (1 - rate), as
  dropout does, so that the input's expected sum stays that of the cell.
- ``gene_program``: all genes of max(1, round(rate x programmes)) programmes hidden, the same programmes
  for the whole mini-batch (as the study's code draws them); the others scaled by 1 / (1 - hidden share).
- ``isolated_gp_to_gp``: each cell shows only the genes of one programme of its own, unscaled, and the
  loss counts that programme's genes.
- ``isolated_gp_to_tf``: likewise, with TF-target programmes (``tf_programs``); the loss counts only the
  column of the programme's transcription factor, which the input does not hold.

The study's code cannot run its isolated branches as committed, so those follow the paper's definitions.
Every random number comes from the caller's ``torch.Generator`` on the batch's device: the same seed
gives the same masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from scssl.data.gene_programs import GenePrograms

STRATEGIES = ("random", "gene_program", "isolated_gp_to_gp", "isolated_gp_to_tf")
PROGRAMME_STRATEGIES = STRATEGIES[1:]


@dataclass(frozen=True)
class MaskedBatch:
    """``inputs`` for the encoder, ``target`` for the decoder, ``loss_mask`` (bool, as ``target``) for the
    loss; ``hidden`` (bool) marks the entries the encoder did not see, and ``programs`` the programme
    indices drawn: the batch's (``gene_program``) or one per cell (isolated strategies)."""

    inputs: torch.Tensor
    target: torch.Tensor
    loss_mask: torch.Tensor
    hidden: torch.Tensor
    programs: torch.Tensor | None = None

    @property
    def fraction_masked(self) -> float:
        """Share of the entries hidden from the encoder (waits for the device)."""
        return self.hidden.float().mean().item()


class Masker:
    """Masks mini-batches by one strategy; the programme membership lives on ``device``, built once.
    ``rate`` is the share of genes (``random``) or of programmes (``gene_program``) to hide; the isolated
    strategies ignore it."""

    def __init__(self, strategy: str, rate: float, programs: GenePrograms | None = None,
                 device: torch.device | str = "cpu"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown masking strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        if strategy in ("random", "gene_program") and not 0.0 < rate < 1.0:
            raise ValueError(f"masking {strategy!r} needs 0 < rate < 1, got {rate}")
        if strategy in PROGRAMME_STRATEGIES and programs is None:
            raise ValueError(f"masking {strategy!r} needs gene programmes (a GMT file matched to the data's genes)")
        self.strategy, self.rate = strategy, rate
        self.device = torch.device(device)
        self.membership = None
        if strategy in PROGRAMME_STRATEGIES:
            self.membership = torch.tensor(programs.membership, dtype=torch.bool, device=self.device)
        self.tf_columns = None
        if strategy == "isolated_gp_to_tf":
            if programs.tf_columns is None:
                raise ValueError("masking 'isolated_gp_to_tf' needs each programme's transcription factor: "
                                 "build the programmes with scssl.data.gene_programs.tf_programs")
            self.tf_columns = torch.tensor(programs.tf_columns, dtype=torch.long, device=self.device)
            if self.membership[torch.arange(len(self.tf_columns), device=self.device), self.tf_columns].any():
                raise ValueError("a programme holds its own transcription factor: the input would hold the target")

    @property
    def n_programs(self) -> int:
        return 0 if self.membership is None else self.membership.shape[0]

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> MaskedBatch:
        """The masked batch of clean rows ``x``; ``generator`` is on ``x``'s device."""
        if self.membership is not None and (x.dim() != 2 or x.shape[1] != self.membership.shape[1]):
            raise ValueError(f"a batch of shape {tuple(x.shape)} for programmes over {self.membership.shape[1]} genes")
        if self.strategy == "random":
            hidden = torch.rand(x.shape, generator=generator, device=x.device) < self.rate
            return MaskedBatch(x.div(1.0 - self.rate).masked_fill_(hidden, 0.0), x, hidden, hidden)
        if self.strategy == "gene_program":
            return self._gene_program(x, generator)
        return self._isolated(x, generator)

    def _gene_program(self, x: torch.Tensor, generator: torch.Generator) -> MaskedBatch:
        k = max(1, round(self.n_programs * self.rate))
        chosen = torch.randperm(self.n_programs, generator=generator, device=x.device)[:k]
        genes = self.membership[chosen].any(dim=0)
        scale = genes.numel() / (~genes).sum().clamp(min=1)  # 1 / (1 - hidden share), on the device: no sync
        hidden = genes.expand_as(x).clone()
        return MaskedBatch((x * scale).masked_fill_(hidden, 0.0), x, hidden, hidden, chosen)

    def _isolated(self, x: torch.Tensor, generator: torch.Generator) -> MaskedBatch:
        choice = torch.randint(self.n_programs, (x.shape[0],), generator=generator, device=x.device)
        shown = self.membership[choice]
        hidden = ~shown
        if self.strategy == "isolated_gp_to_gp":
            loss_mask = shown
        else:
            loss_mask = torch.zeros_like(shown)
            loss_mask[torch.arange(x.shape[0], device=x.device), self.tf_columns[choice]] = True
        return MaskedBatch(x.masked_fill(hidden, 0.0), x, loss_mask, hidden, choice)

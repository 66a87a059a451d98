"""Masked autoencoder of Richter et al. 2024: the encoder sees a cell with some genes hidden and a
decoder mirroring it reconstructs them.

``masking`` (the paper's definitions, see ``scssl.augment.masks``): ``random`` genes at ``mask_rate``;
``gene_program``, every gene of a ``mask_rate`` fraction of the programmes of a GMT file;
``isolated_gp_to_gp``, the input holds one programme and the target is that programme;
``isolated_gp_to_tf``, the input holds one TF-target programme and the target is the TF's expression.
Partly faithful, and so named: the study's code cannot run its isolated branches as committed (a variable
used before it is assigned) and as released would train a plain autoencoder there, so these follow the
paper's text; its decoder ends in a Sigmoid, which caps log-normalised values at 1, so ours is linear; and
its loss averages over all entries (``loss_average: all_entries``, an option) where the paper describes a
loss on the masked entries (``masked``, the default).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from typing_extensions import Annotated

from scssl.augment.masks import PROGRAMME_STRATEGIES, Masker
from scssl.data.gene_programs import load_gene_programs, resolve_gene_programs, tf_programs
from scssl.methods.base import Batch, EncoderParams, SSLMethod, TrainingContext, mlp
from scssl.methods.losses import masked_mse
from scssl.settings import settings

@settings
class MAEParams(EncoderParams):
    """``gene_programs``: a built-in collection's name or a GMT file's path, for the programme strategies
    (symbols matched case-insensitively to the data's genes). MSE loss."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = ("gene_programs",)  # relative to the search space that names it

    masking: Literal["random", "gene_program", "isolated_gp_to_gp", "isolated_gp_to_tf"] = "random"
    mask_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    gene_programs: str | None = None
    loss_average: Literal["masked", "all_entries"] = "masked"

    def __post_init__(self) -> None:
        if self.masking in PROGRAMME_STRATEGIES and not self.gene_programs:
            raise ValueError(f"masking {self.masking!r} needs gene_programs: a GMT file or a built-in collection")
        if self.gene_programs:
            resolve_gene_programs(self.gene_programs)  # a missing file fails here, before any training


class MAE(SSLMethod):
    """Encoder -> mirrored decoder; the loss is the squared error on the entries the mask says."""

    name = "mae"
    Params = MAEParams
    uses_other = False  # Richter et al.'s MAE is uni-modal: on multimodal data it trains on the RNA

    def __init__(self, n_genes: int, params: MAEParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.decoder = mlp([params.embedding_dim, *reversed(params.hidden_dims), n_genes], params, None)

    def setup(self, context: TrainingContext) -> None:
        self.masker = Masker(self.params.masking, self.params.mask_rate, self._programmes(context.genes),
                             context.device)
        self.generator = torch.Generator(device=context.device).manual_seed(context.seed)

    def _programmes(self, genes: np.ndarray | None):
        p = self.params
        if p.masking not in PROGRAMME_STRATEGIES:
            return None
        if genes is None:
            raise ValueError(f"masking {p.masking!r} needs the data's gene names")
        programmes = load_gene_programs(resolve_gene_programs(p.gene_programs), genes)
        note = ""
        if p.masking == "isolated_gp_to_tf":
            programmes, skipped = tf_programs(programmes, genes)
            note = f"; {skipped} skipped (their TF is not among the genes, or no other gene is)"
        print(f"[mae] {p.gene_programs}: {programmes.n_programs} programmes over {programmes.n_genes_matched} of "
              f"{len(genes)} genes{note}", flush=True)
        return programmes

    def training_loss(self, batch: Batch) -> torch.Tensor:
        masked = self.masker(batch.x, self.generator)
        reconstruction = self.decoder(self.encoder(masked.inputs, batch.batch_codes))
        return masked_mse(reconstruction, masked.target, masked.loss_mask, self.params.loss_average)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator,
                    codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, entries hidden from the encoder) of clean rows ``x`` of batches ``codes``, masked as in
        training; ``generator`` draws the masks. The hidden entries, not the loss's: an isolated strategy's loss
        counts the programme it shows (GP->GP), which the reconstruction task must not score as unseen."""
        masked = self.masker(x, generator)
        return self.decoder(self.encoder(masked.inputs, codes)), masked.hidden

"""CLAIRE (Yan et al. 2023, Briefings in Bioinformatics): MoCo whose positives are mutual nearest neighbours
(MNN) across batches, so that the contrast pulls the two batches' versions of a cell state together.

From the authors' code (CSUBioGroup/CLAIRE-release: ``moco/builder.py`` ClaireNet, ``moco/dataset.py``
ClaireDataset, ``moco/base_encoder.py``, ``main.py`` and the README's command): an anchor is a cell with an
MNN partner in another batch. View 1 mixes the anchor with one of its ``knn`` nearest cells of its own batch;
view 2 mixes one of the anchor's MNN partners with one of the partner's own ``knn`` nearest cells (mix
``int``: lambda x + (1 - lambda) y with lambda ~ U(``alpha``, 1); ``geo``: x^lambda y^(1 - lambda); ``exc``:
each gene from the neighbour with probability 1 - ``alpha``). The loss is MoCo's InfoNCE made symmetric
(each view's queries against the other view's momentum keys and a queue of 2048 past keys, temperature 0.07,
the two directions averaged; then both views' keys are queued), on the encoder's output itself (no
projector): genes -> genes/4 -> genes/8 -> 128, each layer Linear -> ReLU, Dropout(0.3) after the two hidden
ones. The key encoder follows with a constant momentum of 0.999; the queue starts at zero. After
``filter_epoch`` epochs (the README's ``--anchor_schedule 4``) the anchors are filtered: a 2-component GMM
on the cosine similarities of the MNN pairs in the embedding keeps the pairs whose posterior probability of
the more populous component is at least ``yita`` (0.5). A cell's embedding is the query encoder's output,
L2-normalised. Other CLAIRE defaults belong to the ``train`` block: Adam, lr 1e-4, weight decay 1e-5,
batch 256, 120 epochs.

Departures from the authors' code:

- Neighbours come from the data set's ``NeighbourGraph`` (``scssl.augment.neighbours``): MNN pairs with 5
  neighbours on L2-normalised 50-component PCA, at most 10 partners per cell, and exact Euclidean kNN in that
  PCA within each batch. CLAIRE used Seurat's CCA anchors (``find_anchors.R``: k.anchor 5, k.filter 200,
  scored and filtered) and Annoy (Manhattan) kNN on L2-normalised PCA.
- Mini-batches: CLAIRE's loader iterates over the cells that have an MNN partner only. The shared loop
  iterates over all cells, so each cell of a mini-batch that has a (kept) partner is an anchor and each cell
  without one is replaced by an anchor drawn uniformly at random: every pair is an MNN pair and every anchor
  is drawn equally often on average, but an epoch is one pass over all cells (more steps per epoch than
  CLAIRE's, so the filter comes after more steps).
- One mix mode (CLAIRE can draw one per view from a set of modes; its README uses ``int`` alone), and one
  filtering epoch (CLAIRE takes a list).
- The filter always keeps the more populous component (CLAIRE's ``np.unique`` counts misname it when every
  pair falls in one component); with fewer than two pairs there is nothing to filter.
- The key encoder moves after each optimiser step, CLAIRE's at the start of the next forward pass: the same
  sequence of networks. RNA only (``uses_other`` False).
- Training cells of one batch (a single-donor reference) have no MNN pair: then, as an option of CLAIRE's code
  (off by default there) and with a printed note, each cell is its own positive, both views mixed with its own
  neighbours; CLAIRE then contrasts augmented views and no longer aligns batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from typing_extensions import Annotated

from scssl.augment.config import Fraction, MixMode, ViewAugmentations
from scssl.augment.neighbours import MAX_KNN
from scssl.methods.base import (
    Batch, DropoutRate, EmbeddingDim, EncoderParams, HiddenDims, Momentum, MomentumParams, Norm, Positive,
    PositiveFloat, QueueParams, TrainingContext,
)
from scssl.methods.clear import CLEAR
from scssl.settings import settings

EMBED_CHUNK = 1024  # cells per forward pass when the filter embeds every cell


@settings
class CLAIREParams(MomentumParams, QueueParams, EncoderParams):
    """CLAIRE's defaults. ``hidden_dims`` None: genes/4 -> genes/8, as CLAIRE. ``knn``: within-batch neighbours
    a view is mixed with; ``alpha`` and ``mix``: how (see the module). ``filter_epoch``: the number of epochs
    after which the GMM filters the anchors (None: never); ``yita``: the posterior a pair needs to stay."""

    embedding_dim: EmbeddingDim = 128
    hidden_dims: HiddenDims | None = None
    norm: Norm = "none"
    hidden_dropout: DropoutRate = 0.3
    memory_size: Positive = 2048
    momentum_start: Momentum = 0.999
    momentum_end: Momentum = 0.999
    temperature: PositiveFloat = 0.07
    knn: Annotated[int, Field(ge=1, le=MAX_KNN)] = 10
    alpha: Fraction = 0.5
    mix: MixMode = "int"
    filter_epoch: Annotated[int, Field(ge=0)] | None = 4
    yita: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5


class CLAIRE(CLEAR):
    """CLEAR's projector-free MoCo, trained symmetrically on views of MNN pairs instead of augmentations."""

    name = "claire"
    Params = CLAIREParams
    sections = frozenset({"train"})  # its views are its own: no augment block
    needs_neighbours = True

    def __init__(self, n_genes: int, params: CLAIREParams, n_other: int = 0):
        super().__init__(n_genes, params, n_other)
        self.queue.bank.zero_()  # CLAIRE's queue starts empty: each negative's logit 0 until keys replace it

    def build_encoder(self, n_genes: int, params: CLAIREParams):
        """CLAIRE's hidden widths follow the number of genes, unless ``hidden_dims`` is set."""
        widths = params.hidden_dims or (max(1, n_genes // 4), max(1, n_genes // 8))
        return super().build_encoder(n_genes, dataclasses.replace(params, hidden_dims=widths))

    def setup(self, context: TrainingContext) -> None:
        if context.graph is None:
            raise ValueError("claire trains on mutual nearest neighbours across batches: it needs the cells' "
                             "NeighbourGraph (Cells.graph, from build_neighbour_graph)")
        self.rows, self.graph, self.device, self.seed = context.rows, context.graph, context.device, context.seed
        self.codes = context.batch_codes  # both views of an anchor are normalised as its batch (domain norms)
        partners = context.graph.mnn
        if (partners < 0).all():  # one batch (a single-donor reference): CLAIRE's code's option, off by default
            print("[claire] no training cell has a mutual nearest neighbour in another batch (one batch?): each cell "
                  "is its own positive, mixed with its own neighbours", flush=True)
            partners = np.arange(len(partners))[:, None]
        self.use_partners(partners, context.seed)

    def use_partners(self, partners: np.ndarray, seed: int) -> None:
        """Train on the MNN ``partners`` (per cell, padded with -1, partners first): the views are the MNN
        augmentation of ``scssl.augment`` with CLAIRE's mixing, on every cell, and no other augmentation."""
        from scssl.augment import Augmenter  # the augment layer loads numba; a method class alone needs it not

        p = self.params
        mixing = ViewAugmentations(preset="base", mnn={"prob": 1.0, "alpha": p.alpha, "knn": p.knn, "mode": p.mix})
        self.augmenter = Augmenter(mixing, self.device, seed, rows=self.rows,
                                   graph=dataclasses.replace(self.graph, mnn=partners))
        self.anchors = torch.as_tensor(np.flatnonzero((partners >= 0).any(axis=1)), device=self.device)
        if len(self.anchors) == 0:
            raise ValueError("claire: no cell has a mutual nearest neighbour in another batch left to train on")

    def views(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The anchors of the mini-batch's cells ``index`` (a cell without a partner replaced by a random
        anchor) and their two views."""
        drawn = self.anchors[self.augmenter.random.integers(0, len(self.anchors), len(index)).to(self.device)]
        cells = torch.where(self.augmenter.mnn_count[index] > 0, index, drawn)
        return cells, *self.augmenter(self.rows(cells), cells)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        cells, view1, view2 = self.views(batch.index)
        return self.loss(view1, view2, None if self.codes is None else self.codes[cells])

    def loss(self, view1, view2, codes=None):
        loss12, key2 = self.contrast(view1, view2, codes, codes)
        loss21, key1 = self.contrast(view2, view1, codes, codes)
        self.queue.enqueue(key1)
        self.queue.enqueue(key2)
        return (loss12 + loss21) / 2

    def embed(self, x: torch.Tensor, other: torch.Tensor | None = None,
              codes: torch.Tensor | None = None) -> torch.Tensor:
        """The query encoder's output, L2-normalised (CLAIRE's ``EncoderL2``)."""
        return F.normalize(self.encoder(x, codes), dim=1)

    def before_epoch(self, epoch: int) -> None:
        if self.params.filter_epoch is not None and epoch == self.params.filter_epoch + 1:
            self.filter_anchors(seed=self.seed + epoch)

    @torch.no_grad()
    def filter_anchors(self, seed: int) -> None:
        """Drop the MNN pairs that ``gmm_keep`` rejects, judged in the current embedding (eval mode)."""
        self.eval()
        cells = torch.arange(len(self.graph.within), device=self.device)
        embedding = torch.cat([self.embed(self.rows(chunk), None, None if self.codes is None else self.codes[chunk])
                               for chunk in cells.split(EMBED_CHUNK)])
        self.train()
        partners = filter_partners(self.augmenter.mnn.cpu().numpy(), embedding.cpu().numpy(), self.params.yita)
        self.use_partners(partners, seed)


def gmm_keep(similarity: np.ndarray, yita: float) -> np.ndarray:
    """CLAIRE's GMM filter (``ClaireDataset.filter_anchors``): a 2-component Gaussian mixture on the pairs'
    similarities; a pair stays when its posterior probability of the more populous component is >= ``yita``."""
    from sklearn.mixture import GaussianMixture  # sklearn here: the method class alone needs it not

    values = np.asarray(similarity, dtype=np.float64).reshape(-1, 1)
    if len(values) < 2:
        return np.ones(len(values), dtype=bool)
    gmm = GaussianMixture(n_components=2, random_state=0).fit(values)
    major = np.argmax(np.bincount(gmm.predict(values), minlength=2))
    return gmm.predict_proba(values)[:, major] >= yita


def filter_partners(partners: np.ndarray, embedding: np.ndarray, yita: float) -> np.ndarray:
    """The MNN table ``partners`` (per cell, padded with -1) without the pairs ``gmm_keep`` drops, each pair
    judged once by the cosine similarity of its two cells' rows of ``embedding`` (L2-normalised); each row's
    kept partners first."""
    cells, slots = np.nonzero(partners >= 0)
    mates = partners[cells, slots]
    pairs, entry_pair = np.unique(np.stack([np.minimum(cells, mates), np.maximum(cells, mates)], axis=1), axis=0,
                                  return_inverse=True)
    similarity = (embedding[pairs[:, 0]] * embedding[pairs[:, 1]]).sum(axis=1)
    keep = gmm_keep(similarity, yita)[entry_pair.ravel()]
    kept = np.zeros(partners.shape, dtype=bool)
    kept[cells[keep], slots[keep]] = True
    order = np.argsort(~kept, axis=1, kind="stable")
    return np.take_along_axis(np.where(kept, partners, -1), order, axis=1)

"""scGPT (Cui et al. 2024) from a local checkpoint: scSSL-Bench's two scGPT rows, one implementation.

- ``scgpt_zero_shot`` (``scgpt_zero_shot.py``): the pretrained model's cell embedding, as scGPT's ``embed_data``
  (``scgpt/tasks/cell_emb.py``): each cell's expressed genes of the vocabulary, their values binned per cell into
  ``n_bins`` - 1 bins, <cls> first (its value ``pad_value``), at most ``max_length`` tokens (a random subset
  beyond), and the <cls> token's output, L2-normalised. No training.
- ``scgpt``: fine-tuned as scGPT's integration tutorial (``tutorials/Tutorial_Integration.ipynb``): every matched
  gene, expressed or not, binned the same way, <cls> first (value 0); ``mask_ratio`` of each cell's tokens masked
  (<cls> and unexpressed genes among them, as scGPT's ``random_mask_value``); GEP (masked-value MSE) and GEPC
  (the same from the cell embedding, ``gepc``), each with the tutorial's Bernoulli loss on the masked values'
  being non-zero (``explicit_zero_prob``), ECS at ``ecs_threshold`` weighted 10, DAB (a batch classifier behind
  gradient reversal) weighted ``dab_weight``; batch labels to the decoders and a BatchNorm per batch (DSBN,
  ``domain_batchnorm``); mini-batches within one batch, shuffled within it, the batches in turn; gradient norm
  clipped at 1 (or ``train.grad_clip``); the learning rate times ``lr_decay`` after each epoch. Then embedded as
  the tutorial's ``eval_testdata``: every matched gene's token, each cell with its batch's BatchNorm.

The checkpoint is a folder in scGPT's layout: ``best_model.pt`` (a state dict), ``args.json`` (the model's
settings), ``vocab.json`` (gene symbol -> token id; "<pad>", "<cls>", "<eoc>" appended where missing, as scGPT
does). The model is scGPT's own ``TransformerModel`` built from ``args.json`` as ``embed_data`` builds it; the
checkpoint's tensors that fit it by name and shape are loaded (the tutorials' rule) and the rest reported.
Nothing is downloaded.

scGPT's package (0.2.4) pins scvi-tools < 1.0 and torchtext, so it is an optional extra installed without its
dependencies (``pip install --no-deps scgpt==0.2.4``), and only its model code is loaded (``scgpt/model/model.py``,
which needs torch, numpy and tqdm), without running ``scgpt/__init__.py`` (torchtext, wandb, its trainer).

Partly faithful, and how:
- scGPT's pretrained models run flash-attention; here PyTorch's attention, with the checkpoint's ``Wqkv``
  tensors renamed as scGPT's ``load_pretrained`` does. No mixed precision (the tutorial's ``amp``), so Adam's
  eps is PyTorch's default where the tutorial's 1e-4 goes with amp. The learning rate, batch size, epochs and
  weight decay are the experiment's ``train`` block (the tutorial: 1e-4, 64, 30, none); dropout is args.json's
  (the tutorial sets 0.2, as the released checkpoints' args.json).
- The genes are the data set's own (its highly variable genes, matched by symbol), where ``embed_data`` takes
  every gene of the AnnData and the tutorial 1,200 HVGs of its own choice with genes of fewer than 3 counts
  dropped. Binning ranks each cell's values, so the log-normalised values bin exactly as the raw counts that
  scGPT's scripts are given would (tested).
- Randomness (binning's ties, masking, the subset of a long cell's genes) comes from the method's seed, not
  numpy's global state: an embedding is the same for the same cells in the same order; fine-tuning draws a new
  subset of a long cell's genes each epoch where the tutorial tokenises once (it never subsamples: 1,200 genes in
  1,201 tokens).
- Fine-tuning trains on every given cell for the experiment's epochs; the tutorial holds out 10% and keeps the
  epoch of the lowest validation loss (scssl holds out its own validation cells).
- A batch not fine-tuned on (a query donor) has no BatchNorm of its own in scGPT; here it is normalised by its
  own statistics gathered over its cells' tokens (AdaBN): scGPT's DSBN slot holds scssl's ``DomainBatchNorm``
  (``TokenDomainNorm``, normalising as scGPT's own), so the SSL methods' adaptation pass serves scGPT too.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from typing_extensions import Annotated

from scssl.methods.base import FittedMethod
from scssl.methods.domain_norm import DomainBatchNorm, adapting, unseen
from scssl.methods.losses import masked_mse
from scssl.settings import settings

if TYPE_CHECKING:
    from scssl.data import Cells
    from scssl.train import TrainSettings

CHECKPOINT_FILES = ("best_model.pt", "args.json", "vocab.json")
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
MODEL_ARGS = ("embsize", "nheads", "d_hid", "nlayers", "n_layers_cls", "dropout", "pad_token", "pad_value")
MASK_VALUE = -1  # the tutorial's mask_value
ECS_WEIGHT = 10.0  # the tutorial's weight on the ECS loss
DSBN_EPS = 6.1e-5  # scGPT's DSBN BatchNorm eps
EMBED_BATCH_SIZE = 64  # embed_data's batch_size
INSTALL = "pip install --no-deps scgpt==0.2.4"


@settings
class ScGPTZeroShotParams:
    """``checkpoint``: the folder of an scGPT checkpoint (best_model.pt, args.json, vocab.json; e.g. the authors'
    scGPT_human), absolute or relative to the search-space file that names it. ``max_length``: the most tokens
    per cell, <cls> included (``embed_data``'s 1200); ``n_bins``: the bins of each cell's values, zero included
    (51)."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = ("checkpoint",)  # relative to the search space that names it
    checkpoint: str | None = None
    max_length: Annotated[int, Field(ge=2)] = 1200
    n_bins: Annotated[int, Field(ge=3)] = 51


@settings
class ScGPTParams(ScGPTZeroShotParams):
    """Fine-tuning as scGPT's integration tutorial: ``max_length`` 1201 (its 1,200 genes and <cls>), ``mask_ratio``
    of each cell's tokens masked, GEPC on (``gepc``), ECS at ``ecs_threshold`` (0: off), DAB weighted
    ``dab_weight`` (0: off), DSBN (``domain_batchnorm``), the learning rate times ``lr_decay`` after each epoch."""

    max_length: Annotated[int, Field(ge=2)] = 1201
    mask_ratio: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.4
    gepc: bool = True
    ecs_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.8
    dab_weight: Annotated[float, Field(ge=0.0)] = 1.0
    domain_batchnorm: bool = True
    lr_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9


def scgpt_model_code() -> types.ModuleType:
    """scGPT's ``scgpt/model/model.py``, loaded without running ``scgpt/__init__.py`` or ``scgpt/model/__init__.py``
    (they import torchtext, wandb and scGPT's trainer, which scGPT's pins would bring): bare package modules stand
    in for both, pointing at the installed folders."""
    if "scgpt" not in sys.modules:
        spec = importlib.util.find_spec("scgpt")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"scgpt needs scGPT's model code, the `scgpt` package: {INSTALL} (without its "
                              "dependencies: its pins conflict with scssl's, and only its model code is used)")
        root = Path(next(iter(spec.submodule_search_locations)))
        for name, folder in (("scgpt", root), ("scgpt.model", root / "model")):
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flash_attn is not installed": PyTorch's attention is used
        return importlib.import_module("scgpt.model.model")


@dataclass(frozen=True)
class Checkpoint:
    """An scGPT checkpoint folder: ``args`` from args.json, ``vocab`` (token -> id) from vocab.json with the
    special tokens appended where missing, as scGPT's scripts do."""

    folder: Path
    args: dict[str, Any]
    vocab: dict[str, int]

    @classmethod
    def read(cls, folder: str) -> "Checkpoint":
        path = Path(folder).expanduser().resolve()
        missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"scgpt checkpoint {path}: no {', '.join(missing)}; an scGPT checkpoint folder "
                                    f"holds {', '.join(CHECKPOINT_FILES)}")
        args = json.loads((path / "args.json").read_text())
        lacking = [key for key in MODEL_ARGS if key not in args]
        if lacking:
            raise ValueError(f"scgpt checkpoint {path / 'args.json'}: lacks the model settings {lacking}")
        vocab = {str(token): int(index) for token, index in json.loads((path / "vocab.json").read_text()).items()}
        for token in SPECIAL_TOKENS:
            vocab.setdefault(token, len(vocab))
        return cls(path, args, vocab)

    @property
    def pad_id(self) -> int:
        return self.vocab[self.args["pad_token"]]

    def model(self, **settings) -> nn.Module:
        """scGPT's ``TransformerModel`` of args.json as ``embed_data`` builds it (an MVC decoder; no batch labels,
        DSBN, DAB or zero probabilities: ``settings`` change those), with PyTorch's attention."""
        a = self.args
        built = {"do_mvc": True, "do_dab": False, "use_batch_labels": False, "domain_spec_batchnorm": False,
                 "explicit_zero_prob": False, **settings}
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its BatchNorm choice
            return scgpt_model_code().TransformerModel(
                ntoken=len(self.vocab), d_model=a["embsize"], nhead=a["nheads"], d_hid=a["d_hid"],
                nlayers=a["nlayers"], nlayers_cls=a["n_layers_cls"], n_cls=1, vocab=self.vocab, dropout=a["dropout"],
                pad_token=a["pad_token"], pad_value=a["pad_value"], use_fast_transformer=False, pre_norm=False,
                **built)

    def load_into(self, model: nn.Module) -> tuple[list[str], list[str]]:
        """Load the checkpoint's tensors that fit ``model`` by name and shape (the tutorials' rule; flash-attention's
        ``Wqkv`` named as PyTorch's ``in_proj_``, as scGPT's ``load_pretrained``). Returns the model's tensors left
        as initialised and the checkpoint's tensors not used."""
        state = torch.load(self.folder / "best_model.pt", map_location="cpu", weights_only=True)
        state = {name.replace("Wqkv.", "in_proj_"): tensor for name, tensor in state.items()}
        own = model.state_dict()
        fitting = {name: tensor for name, tensor in state.items() if name in own and tensor.shape == own[name].shape}
        model.load_state_dict({**own, **fitting})
        return sorted(set(own) - set(fitting)), sorted(set(state) - set(fitting))

    def match(self, genes: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(the data's columns whose gene symbol is in the vocabulary, their token ids)."""
        if genes is None:
            raise ValueError("scgpt matches the data's genes to its vocabulary by symbol, and the cells carry no "
                             "gene names")
        columns = np.flatnonzero([str(gene) in self.vocab for gene in genes])
        if not len(columns):
            examples = [token for token in self.vocab if token not in SPECIAL_TOKENS][:3]
            raise ValueError(f"scgpt: none of the data's {len(genes)} genes (e.g. {[str(g) for g in genes[:3]]}) is in "
                             f"the vocabulary of {self.folder} ({len(self.vocab)} tokens, e.g. {examples}); scGPT "
                             "matches gene symbols")
        return columns, np.asarray([self.vocab[str(genes[c])] for c in columns], dtype=np.int64)


def bin_rows(X: np.ndarray | sp.spmatrix, n_bins: int, rng: np.random.Generator) -> sp.csr_matrix:
    """Each cell's non-zero values in bins 1 .. ``n_bins`` - 1, zeros staying 0, as scGPT's binning: the edges at
    ``n_bins`` - 1 evenly spaced quantiles of the cell's non-zero values, a value on edges sent at random to one of
    the bins they bound. It depends on each cell's ranks alone."""
    binned = sp.csr_matrix(X, dtype=np.float32, copy=True)
    binned.eliminate_zeros()
    levels = np.linspace(0, 1, n_bins - 1)
    for start, end in zip(binned.indptr[:-1], binned.indptr[1:]):
        if start == end:
            continue
        values = binned.data[start:end]
        edges = np.quantile(values, levels)
        left, right = np.digitize(values, edges), np.digitize(values, edges, right=True)
        binned.data[start:end] = np.ceil(rng.random(end - start) * (right - left) + left)
    return binned


def mask_values(values: np.ndarray, pad_value: float, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """``values`` with ``int(ratio * n)`` of each row's ``n`` non-padding tokens (<cls> and unexpressed genes
    included, as scGPT's ``random_mask_value``) set to ``MASK_VALUE``."""
    candidates = values != pad_value
    n_masked = (candidates.sum(axis=1) * ratio).astype(np.int64)
    scores = np.where(candidates, rng.random(values.shape), 2.0)
    ranks = scores.argsort(axis=1).argsort(axis=1)
    return np.where(ranks < n_masked[:, None], np.float32(MASK_VALUE), values)


def masked_bernoulli_nll(probability: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The tutorial's ``criterion_neg_log_bernoulli``: the mean negative log-likelihood, over the masked entries, of
    each target's being non-zero under ``probability``."""
    log_likelihood = torch.distributions.Bernoulli(probs=probability).log_prob((target > 0).float())
    return -(log_likelihood * mask).sum() / mask.sum()


def batches_by_domain(domains: np.ndarray, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Mini-batches of rows of one domain each, shuffled within it, the domains in turn: scGPT's
    ``SubsetsBatchSampler`` as the tutorial sets it (DSBN normalises a mini-batch by its first row's domain)."""
    for domain in np.unique(domains):
        rows = rng.permutation(np.flatnonzero(domains == domain))
        yield from (rows[start:start + batch_size] for start in range(0, len(rows), batch_size))


class PretrainedScGPT(FittedMethod):
    """An scGPT checkpoint that embeds cells (its <cls> output); fitting builds it and matches the genes. The base
    of both rows: ``include_zeros`` and ``cls_value`` say how a cell becomes tokens."""

    sections: ClassVar[frozenset[str]] = frozenset({"train"})
    include_zeros: ClassVar[bool] = False  # a token for every matched gene, or for the expressed ones (embed_data)

    def __init__(self, params, seed: int = 0):
        if params.checkpoint is None:
            raise ValueError(f"{self.name} needs `checkpoint: <folder>` in its method settings: an scGPT checkpoint "
                             f"folder ({', '.join(CHECKPOINT_FILES)}), e.g. the authors' scGPT_human; nothing is "
                             "downloaded")
        self.checkpoint = Checkpoint.read(params.checkpoint)
        super().__init__(params, seed)
        self.model: nn.Module | None = None
        self.device = torch.device("cpu")

    @property
    def cls_value(self) -> float:
        """The value beside the <cls> token: ``embed_data`` gives it ``pad_value``."""
        return self.checkpoint.args["pad_value"]

    def model_settings(self) -> dict[str, Any]:
        """How ``TransformerModel`` is built besides args.json (see ``Checkpoint.model``)."""
        return {}

    def fit(self, cells: Cells, train: TrainSettings | None = None,
            on_epoch: Callable | None = None) -> "PretrainedScGPT":
        """The checkpoint's model on ``train.device``, its genes matched to the cells'; the matches and the
        tensors not loaded are printed."""
        from scssl.train.loop import resolve_device

        columns, _ = self.checkpoint.match(cells.genes)
        print(f"[{self.name}] {len(columns)} of the data's {len(cells.genes)} genes are in the vocabulary of "
              f"{self.checkpoint.folder} ({len(self.checkpoint.vocab)} tokens)", flush=True)
        self.device = resolve_device("auto" if train is None else train.device)
        torch.manual_seed(self.seed)  # the parts the checkpoint lacks start alike in every run
        self.model = self.fit_model()
        fresh, unused = self.checkpoint.load_into(self.model)
        print(f"[{self.name}] loaded {len(self.model.state_dict()) - len(fresh)} tensors; initialised (not in the "
              f"checkpoint, or of another shape): {_listed(fresh)}; not used from the checkpoint: {_listed(unused)}",
              flush=True)
        self.model.to(self.device).eval()
        return self

    def fit_model(self) -> nn.Module:
        """The model to load the checkpoint into."""
        return self.checkpoint.model(**self.model_settings())

    def embed(self, cells: Cells) -> np.ndarray:
        return self.embed_as(cells, None)

    @torch.no_grad()
    def embed_as(self, cells: Cells, domain: int | None) -> np.ndarray:
        """The <cls> output of each cell, L2-normalised (scGPT's cell embedding); ``domain``: the batch label
        given to the model (its DSBN's), None for a model without batch labels."""
        if self.model is None:
            raise RuntimeError(f"{self.name}: fit before embedding")
        out = np.empty((cells.n_cells, self.model.d_model), dtype=np.float32)
        with self.evaluating(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The PyTorch API of nested tensors")  # PyTorch's own eval fast path
            for rows, genes, values in self.token_batches(cells):
                labels = None if domain is None else torch.full((len(genes),), domain, device=self.device)
                encoded = self.model._encode(genes, values, genes.eq(self.checkpoint.pad_id), labels)
                out[rows] = encoded[:, 0].cpu().numpy()
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def token_batches(self, cells: Cells) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """(rows, token ids, values) of ``cells`` in mini-batches on the device; the same for the same cells."""
        rng = np.random.default_rng(self.seed)
        binned, ids = self.binned(cells, rng)
        for start in range(0, cells.n_cells, EMBED_BATCH_SIZE):
            rows = slice(start, start + EMBED_BATCH_SIZE)
            genes, values = self.tokens(binned[rows], ids, rng)
            yield rows, torch.from_numpy(genes).to(self.device), torch.from_numpy(values).to(self.device)

    def binned(self, cells: Cells, rng: np.random.Generator) -> tuple[sp.csr_matrix, np.ndarray]:
        """The cells' binned values of the matched genes, and those genes' token ids."""
        columns, ids = self.checkpoint.match(cells.genes)
        return bin_rows(sp.csr_matrix(cells.X)[:, columns], self.params.n_bins, rng), ids

    def tokens(self, binned: sp.csr_matrix, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, values) of each row: <cls> with ``cls_value``, then a token per gene (``include_zeros``)
        or per expressed gene, at most ``max_length`` in all (a random subset of the genes beyond), padded."""
        dense = binned.toarray() if self.include_zeros else None
        cells = []
        for i in range(binned.shape[0]):
            if dense is not None:
                columns, values = np.arange(binned.shape[1]), dense[i]
            else:
                row = slice(binned.indptr[i], binned.indptr[i + 1])
                columns, values = binned.indices[row], binned.data[row]
            if len(columns) >= self.params.max_length:
                keep = rng.choice(len(columns), self.params.max_length - 1, replace=False)
                columns, values = columns[keep], values[keep]
            cells.append((ids[columns], values))
        length = 1 + max(len(genes) for genes, _ in cells)
        genes = np.full((len(cells), length), self.checkpoint.pad_id, dtype=np.int64)
        values = np.full((len(cells), length), self.checkpoint.args["pad_value"], dtype=np.float32)
        genes[:, 0], values[:, 0] = self.checkpoint.vocab["<cls>"], self.cls_value
        for i, (cell_genes, cell_values) in enumerate(cells):
            genes[i, 1:1 + len(cell_genes)], values[i, 1:1 + len(cell_values)] = cell_genes, cell_values
        return genes, values

    @contextlib.contextmanager
    def evaluating(self):
        """The model in eval mode inside, then back in the mode it was (an embedding in the middle of training)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


class ScGPT(PretrainedScGPT):
    """scGPT fine-tuned on the cells as its integration tutorial (GEP, GEPC, ECS, DAB, DSBN), then its <cls> output."""

    name: ClassVar[str] = "scgpt"
    kind: ClassVar[str] = "foundation model, fine-tuned from a local checkpoint"
    Params: ClassVar[type] = ScGPTParams
    trainable: ClassVar[bool] = True
    include_zeros: ClassVar[bool] = True

    def __init__(self, params: ScGPTParams, seed: int = 0):
        super().__init__(params, seed)
        self.domains: dict[int, int] = {}  # batch code -> the model's batch label (its DSBN and DAB class)

    @property
    def cls_value(self) -> float:
        """The tutorial's tokeniser gives <cls> the value 0."""
        return 0.0

    def model_settings(self) -> dict[str, Any]:
        p = self.params
        return {"do_mvc": p.gepc, "do_dab": p.dab_weight > 0, "use_batch_labels": True,
                "num_batch_labels": len(self.domains), "domain_spec_batchnorm": p.domain_batchnorm,
                "n_input_bins": p.n_bins, "ecs_threshold": p.ecs_threshold, "explicit_zero_prob": True}

    def fit_model(self) -> nn.Module:
        """scGPT's model, its DSBN slot filled with scssl's domain norms (``TokenDomainNorm``)."""
        model = super().fit_model()
        if self.params.domain_batchnorm:
            model.dsbn = TokenDomainNorm(model.d_model, len(self.domains))
        return model

    def fit(self, cells: Cells, train: TrainSettings, on_epoch: Callable | None = None) -> "ScGPT":
        """Fine-tune for ``train.epochs``, calling ``on_epoch(self, EpochReport)`` after each (the model in eval
        mode there)."""
        from scssl.train.epochs import Optimisation, run_epochs

        if train.schedule == "step":
            raise ValueError(f"{self.name}: the learning rate decays by `lr_decay` after each epoch (scGPT's "
                             "tutorial); train.schedule `step` is the SSL methods' and not supported here")
        codes = _batch_codes(cells)
        self.domains = {int(code): label for label, code in enumerate(np.unique(codes))}
        super().fit(cells, train)
        labels = np.asarray([self.domains[int(code)] for code in codes])
        rng = np.random.default_rng(self.seed)
        binned, ids = self.binned(cells, rng)  # once, as the tutorial's preprocessing

        def loss(rows: np.ndarray) -> torch.Tensor:
            genes, values = self.tokens(binned[rows], ids, rng)
            return self.loss(genes, values, torch.as_tensor(labels[rows], device=self.device), rng)

        optimisation = Optimisation(train.lr, train.weight_decay, train.optimizer, train.grad_clip or 1.0,
                                    (1, self.params.lr_decay))
        run_epochs(self.name, list(self.model.parameters()), train.epochs,
                   lambda epoch: batches_by_domain(labels, train.batch_size, rng), loss, optimisation,
                   before_epoch=lambda epoch: self.model.train(),
                   on_epoch=lambda report: self._epoch_done(report, on_epoch))
        return self

    def _epoch_done(self, report, on_epoch: Callable | None) -> None:
        self.model.eval()
        if on_epoch is not None:
            on_epoch(self, report)

    def loss(self, genes: np.ndarray, values: np.ndarray, labels: torch.Tensor,
             rng: np.random.Generator) -> torch.Tensor:
        """The tutorial's loss of one mini-batch, its masks drawn from ``rng``."""
        p = self.params
        masked = torch.from_numpy(mask_values(values, self.checkpoint.args["pad_value"], p.mask_ratio, rng))
        genes_t, target = torch.from_numpy(genes).to(self.device), torch.from_numpy(values).to(self.device)
        masked = masked.to(self.device)
        out = self.model(genes_t, masked, genes_t.eq(self.checkpoint.pad_id), batch_labels=labels, MVC=p.gepc,
                         ECS=p.ecs_threshold > 0)
        positions = masked.eq(MASK_VALUE).float()
        loss = masked_mse(out["mlm_output"], target, positions)
        loss = loss + masked_bernoulli_nll(out["mlm_zero_probs"], target, positions)
        if p.gepc:
            loss = loss + masked_mse(out["mvc_output"], target, positions)
            loss = loss + masked_bernoulli_nll(out["mvc_zero_probs"], target, positions)
        if p.ecs_threshold > 0:
            loss = loss + ECS_WEIGHT * out["loss_ecs"]
        if p.dab_weight > 0:
            loss = loss + p.dab_weight * F.cross_entropy(out["dab_output"], labels)
        return loss

    def embed(self, cells: Cells) -> np.ndarray:
        """Each batch's cells with its batch label; with DSBN, a batch not fine-tuned on by its own statistics over
        all its cells (the adaptation pass of ``domain_norm``, run only when there is such a batch)."""
        codes = _batch_codes(cells)
        found = np.unique(codes)
        labels = {int(code): self.domains.get(int(code), len(self.domains) + i) for i, code in enumerate(found)}
        out = np.empty((cells.n_cells, self.checkpoint.args["embsize"]), dtype=np.float32)

        def passes() -> None:
            for code in found:
                rows = np.flatnonzero(codes == code)
                out[rows] = self.embed_as(cells.subset(rows), labels[int(code)])

        if unseen(self.model, torch.as_tensor(list(labels.values()))):
            with adapting(self.model):
                passes()
        passes()
        return out


class TokenDomainNorm(nn.Module):
    """scGPT's DSBN slot (``model.dsbn``) filled with scssl's ``DomainBatchNorm``: scGPT passes a mini-batch of
    token embeddings (cells x width x tokens) and one batch label, and every token is normalised as scGPT's own
    ``DomainSpecificBatchNorm1d`` does (eps 6.1e-5, no affine parameters, its statistics over cells and tokens),
    so that a batch not fine-tuned on is adapted by the same pass as the SSL methods' domain norms."""

    def __init__(self, width: int, n_batches: int):
        super().__init__()
        self.norm = DomainBatchNorm(width, eps=DSBN_EPS, affine=False)
        self.norm.configure(np.arange(n_batches), torch.device("cpu"))
        self.num_domains = n_batches

    def forward(self, x: torch.Tensor, label: int) -> torch.Tensor:
        cells, width, tokens = x.shape
        rows = x.permute(0, 2, 1).reshape(-1, width)
        codes = torch.full((len(rows),), label, dtype=torch.long, device=x.device)
        return self.norm(rows, codes).reshape(cells, tokens, width).permute(0, 2, 1)


def _batch_codes(cells: Cells) -> np.ndarray:
    """Each cell's batch code (one batch when the cells have none)."""
    return np.zeros(cells.n_cells, dtype=np.int64) if cells.batch_codes is None else np.asarray(cells.batch_codes)


def _listed(names: list[str], shown: int = 8) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more

"""Domain-specific BatchNorm (scSSL-Bench's RQ3, ``DSBNBackbone``; Chang et al. 2019): one BatchNorm per
batch of the training cells in the first encoder layer, so that each batch is normalised by its own
statistics.

The batch of each row (its code) is an input of the encoder's forward pass, beside the rows: a training step
passes its mini-batch's codes, an embedding those of the cells it embeds, a head on the encoder those of its
cells. Rows of a batch not seen in training (a query donor) are normalised by that batch's own statistics,
gathered over all its cells in a first pass (``adapting``, run by ``in_chunks`` only when there are such rows;
AdaBN, Li et al. 2017), with the affine parameters averaged over the training batches; scSSL-Bench does not say
what it did with them. Rows without codes are treated as of one unseen batch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class DomainBatchNorm(nn.Module):
    """A BatchNorm1d per training batch (its code), created by ``configure`` once the codes are known, with ``eps``
    and ``affine`` as BatchNorm1d's."""

    def __init__(self, width: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.width, self.eps, self.affine = width, eps, affine
        self.norms = nn.ModuleDict()
        self.adapted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # unseen batch -> (mean, var)
        self._sums: dict[int, list] | None = None  # gathering unseen batches' statistics (``adapting``)
        self._slot_key, self._slot_lookup = None, None  # ``_slots``

    def configure(self, codes: np.ndarray, device: torch.device) -> None:
        for code in map(str, np.unique(codes)):
            if code not in self.norms:
                self.norms[code] = nn.BatchNorm1d(self.width, self.eps, affine=self.affine).to(device)

    def forward(self, h: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` normalised row by row by the BatchNorm of the row's batch (``codes``; None: one unseen batch)."""
        if not len(self.norms):
            raise RuntimeError("domain_batchnorm: the training batches were never given (configure_domains)")
        codes = torch.full((len(h),), -1, device=h.device) if codes is None else codes
        if len(codes) != len(h):
            raise ValueError(f"domain_batchnorm: {len(h)} rows and the batches of {len(codes)} cells")
        if self.training and self._sums is None:
            return self._training_step(h, codes)
        found = codes.unique().tolist()
        if len(found) == 1:  # one batch (a chunk of one donor): no gather and scatter
            return self._normalise(found[0], h)
        out = torch.empty_like(h)
        for code in found:
            rows = codes == code
            out[rows] = self._normalise(code, h[rows])
        return out

    def _training_step(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Each row by its batch's statistics in this mini-batch, and each BatchNorm's running statistics moved as
        BatchNorm1d moves them (a lone row of its batch: normalised by the running ones, which stay). Every batch's
        statistics come from one pass of sums over the rows, so a training step never waits for the device to learn
        which batches a mini-batch holds. Rows of batches not trained on (none in a training step of scssl's) are
        normalised together, by their own statistics and the averaged affine parameters."""
        norms = list(self.norms.values())
        lookup = self._slots(h.device)
        slot = lookup[codes.clamp(-1, len(lookup) - 2) + 1]
        zeros = h.new_zeros(len(norms) + 1, h.shape[1])  # per batch, the last row the unseen batches'

        def per_batch(values: torch.Tensor) -> torch.Tensor:  # in row order: a matrix product's sums vary by run
            return zeros.index_add(0, slot, values)

        n = per_batch(torch.ones_like(h))[:, :1]
        mean = per_batch(h) / n.clamp(min=1)
        var = per_batch((h - mean.index_select(0, slot)).square()) / n.clamp(min=1)
        running_mean = torch.stack([norm.running_mean for norm in norms])
        running_var = torch.stack([norm.running_var for norm in norms])
        several = n[:-1] > 1
        with torch.no_grad():
            momentum = norms[0].momentum
            unbiased = var[:-1] * n[:-1] / (n[:-1] - 1).clamp(min=1)
            moved_mean = torch.where(several, torch.lerp(running_mean, mean[:-1], momentum), running_mean)
            moved_var = torch.where(several, torch.lerp(running_var, unbiased, momentum), running_var)
            for i, norm in enumerate(norms):
                norm.running_mean.copy_(moved_mean[i])
                norm.running_var.copy_(moved_var[i])
                norm.num_batches_tracked.add_(several[i, 0].long())
        lone = torch.cat([~several, several.new_zeros(1, 1)])
        mean = torch.where(lone, torch.cat([running_mean, mean[-1:]]), mean)
        var = torch.where(lone, torch.cat([running_var, var[-1:]]), var)
        normalised = (h - mean.index_select(0, slot)) / torch.sqrt(var.index_select(0, slot) + self.eps)
        if not self.affine:
            return normalised
        weight = torch.stack([norm.weight for norm in norms])
        bias = torch.stack([norm.bias for norm in norms])
        weight, bias = torch.cat([weight, weight.mean(0, keepdim=True)]), torch.cat([bias, bias.mean(0, keepdim=True)])
        return normalised * weight.index_select(0, slot) + bias.index_select(0, slot)

    def _slots(self, device: torch.device) -> torch.Tensor:
        """A lookup from batch code + 1 to the position of the code's BatchNorm in ``norms`` (code -1 and codes
        without one: the last position, past them), on ``device``; built when the batches change."""
        key = (tuple(self.norms), device)
        if self._slot_key != key:
            codes = [int(code) for code in self.norms]
            lookup = torch.full((max(codes) + 3,), len(codes), dtype=torch.long)
            lookup[torch.tensor(codes) + 1] = torch.arange(len(codes))
            self._slot_key, self._slot_lookup = key, lookup.to(device)
        return self._slot_lookup

    def _normalise(self, code: int, h: torch.Tensor) -> torch.Tensor:
        """Rows ``h``, all of batch ``code``, by that batch's BatchNorm, or as a batch not seen in training."""
        norm = self.norms[str(code)] if str(code) in self.norms else None
        if norm is None:
            return self._unseen(code, h)
        if not self.training or len(h) > 1:
            return norm(h)
        # a lone row of its batch in a training step: the batch's running statistics
        return F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)

    def _unseen(self, code: int, h: torch.Tensor) -> torch.Tensor:
        if self._sums is not None:  # first pass: gather, output unused
            sums = self._sums.setdefault(code, [0, torch.zeros_like(h[0]), torch.zeros_like(h[0])])
            sums[0] += len(h)
            sums[1] += h.sum(0)
            sums[2] += (h * h).sum(0)
            return torch.zeros_like(h)
        adapted = None if self.training else self.adapted.get(code)  # training: the mini-batch's, as BatchNorm
        mean, var = adapted or (h.mean(0), h.var(0, unbiased=False))
        normalised = (h - mean) / torch.sqrt(var + self.eps)
        if not self.affine:
            return normalised
        weight = torch.stack([n.weight for n in self.norms.values()]).mean(0)
        bias = torch.stack([n.bias for n in self.norms.values()]).mean(0)
        return normalised * weight + bias


def _modules(model: nn.Module) -> list[DomainBatchNorm]:
    return [m for m in model.modules() if isinstance(m, DomainBatchNorm)]


def uses_domains(model: nn.Module) -> bool:
    return bool(_modules(model))


def configure_domains(model: nn.Module, codes: np.ndarray | None, device: torch.device) -> None:
    """One BatchNorm per batch of the training cells' ``codes`` on ``device``, before the optimiser is built."""
    for module in _modules(model):
        if codes is None:
            raise ValueError("domain_batchnorm needs the cells' batches, and the training cells have none")
        module.configure(codes, device)


@contextmanager
def adapting(model: nn.Module):
    """Forward passes inside gather the statistics of the rows of unseen batches (their output is
    meaningless); afterwards those batches are normalised by them."""
    modules = _modules(model)
    for module in modules:
        module._sums, module.adapted = {}, {}
    try:
        yield
    finally:
        for module in modules:
            for code, (n, total, squares) in module._sums.items():
                mean = total / n
                module.adapted[code] = mean, (squares / n - mean * mean).clamp_min(0.0)
            module._sums = None


def codes_on(codes: np.ndarray | None, device: torch.device | str) -> torch.Tensor | None:
    """Batch codes as the int64 tensor on ``device`` that ``domains`` and ``in_chunks`` take (None stays None)."""
    return None if codes is None else torch.as_tensor(np.asarray(codes, dtype=np.int64), device=device)


def unseen(model: nn.Module, codes: torch.Tensor | None) -> bool:
    """Whether any row of ``codes`` (None: rows without a batch) is of a batch ``model`` did not train on."""
    modules = _modules(model)
    if not modules or codes is None:
        return bool(modules)
    trained = torch.tensor([int(code) for code in modules[0].norms], dtype=codes.dtype, device=codes.device)
    return bool((~torch.isin(codes, trained)).any())


def in_chunks(model: nn.Module, forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], n_rows: int,
              codes: torch.Tensor | None, chunk: int, device: torch.device) -> list[torch.Tensor]:
    """``forward(rows, their codes)`` over consecutive chunks of ``n_rows`` rows (``codes``: every row's batch),
    a row of a batch the model did not train on normalised by that batch's statistics over all ``n_rows``,
    gathered in a first pass that runs only when there are such rows. Without domain norms, one pass."""
    chunks = [torch.arange(start, min(start + chunk, n_rows), device=device) for start in range(0, n_rows, chunk)]

    def passes() -> list[torch.Tensor]:
        return [forward(rows, None if codes is None else codes[rows]) for rows in chunks]

    if unseen(model, codes):
        with adapting(model):
            passes()
    return passes()

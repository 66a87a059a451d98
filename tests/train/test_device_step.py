"""A training step never waits for its device: every method's step, augmentations and domain norms included.

Each step runs on torch's meta device, which holds shapes but no values: whatever would make a GPU step wait for
the device (``.item()``, ``bool`` or ``int`` of a tensor, ``nonzero``, boolean indexing, ``unique``, a copy to
the host) raises there. Where a GPU is present, the same steps also run under torch's sync debug mode.
"""

import dataclasses
import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scssl.augment import AugmentationConfig, build_neighbour_graph
from scssl.data import Cells
from scssl.methods import METHODS, SSLMethod, SimCLR
from scssl.settings import field_names, parse
from scssl.train import TrainSettings, start_training

NETWORKS = sorted(name for name, cls in METHODS.items() if isinstance(cls, type) and issubclass(cls, SSLMethod))
EVERY_AUGMENTATION = {name: {"prob": 0.5} for name in ("masking", "gaussian_noise", "inner_swap", "crossover",
                                                        "negbin_noise", "dropout", "bbknn", "mnn")}


@pytest.fixture(scope="module")
def cells() -> Cells:
    """96 cells of 3 batches, 40 genes, a second modality of 6 features, and the neighbour graph."""
    rng = np.random.default_rng(0)
    X = sp.random(96, 40, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = np.log1p(X.data * 10)
    batches = np.repeat([0, 1, 2], 32)
    X = X + sp.csr_matrix(np.outer(batches == 1, rng.random(40) > 0.7).astype(np.float32))  # batch 1 shifted
    other = sp.csr_matrix(rng.random((96, 6)).astype(np.float32))
    return Cells(sp.csr_matrix(X), np.array([f"g{i}" for i in range(40)]), batches,
                 build_neighbour_graph(X, batches.astype(str), n_pcs=10), other=other, other_kind="protein")


@pytest.fixture
def meta_generators(monkeypatch):
    """torch has no generator on the meta device: a CPU one stands in (draws on meta make no numbers anyway)."""
    real = torch.Generator

    class Kind(type):
        def __instancecheck__(cls, obj):  # torch's own checks still see its generators
            return isinstance(obj, real)

    class Generator(metaclass=Kind):
        def __new__(cls, device="cpu"):
            return real() if torch.device(device).type == "meta" else real(device=device)

    monkeypatch.setattr(torch, "Generator", Generator)


def _steps(cls: type[SSLMethod], params, cells: Cells, augment: AugmentationConfig, device: str, steps: int = 3):
    training = start_training(cls, params, cells, TrainSettings(batch_size=32, device=device), augment, seed=0)
    model, parameters = training.model.train(), list(training.model.parameters())
    optimizer = torch.optim.Adam(parameters)
    for step, batch in enumerate(itertools.islice(training.batches(1), steps), start=1):
        loss = model.training_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.after_step(step, steps)


def _cases():
    for name in NETWORKS:
        cls = METHODS[name]
        yield pytest.param(name, {}, id=name)
        if "domain_batchnorm" in field_names(cls.Params):
            yield pytest.param(name, {"domain_batchnorm": True}, id=f"{name}-domain_batchnorm")


def _inputs(cls, cells: Cells) -> Cells:
    """The cells as the method trains on them: the second modality only for a method that uses it."""
    return cells if cls.uses_other else dataclasses.replace(cells, other=None, other_kind=None)


@pytest.mark.parametrize("name,params", _cases())
def test_a_training_step_runs_on_the_meta_device(name, params, cells, meta_generators):
    cls = METHODS[name]
    _steps(cls, cls.Params(**params), _inputs(cls, cells), AugmentationConfig(), "meta")


@pytest.mark.parametrize("fusion", ["concat", "clip"])
def test_every_augmentation_on_both_modalities_runs_on_the_meta_device(fusion, cells, meta_generators):
    augment = parse(AugmentationConfig, {"preset": "base", **EVERY_AUGMENTATION}, "test")
    _steps(SimCLR, SimCLR.Params(fusion=fusion), cells, augment, "meta")


def test_the_meta_device_catches_a_step_that_waits_for_the_device(cells, meta_generators):
    class Waiting(SimCLR):
        def training_loss(self, batch):
            loss = super().training_loss(batch)
            return loss * 2 if loss > 1 else loss  # the comparison's value must come back to the host

    with pytest.raises(RuntimeError, match="meta"):
        _steps(Waiting, SimCLR.Params(), _inputs(SimCLR, cells), AugmentationConfig(), "meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name,params", _cases())
def test_a_training_step_on_a_gpu_never_synchronises(name, params, cells):
    cls = METHODS[name]
    _steps(cls, cls.Params(**params), _inputs(cls, cells), AugmentationConfig(), "cuda", steps=1)  # warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(cls, cls.Params(**params), _inputs(cls, cells), AugmentationConfig(), "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")

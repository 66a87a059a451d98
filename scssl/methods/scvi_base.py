"""What totalVI and MultiVI share: an scvi-tools model fitted on ``Cells``, trained for the experiment's
epochs with its learning rate, weight decay and batch size, reporting each epoch like the shared loop.

scvi-tools (and Lightning with it) is imported on the first fit, so that listing the methods needs neither.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import anndata as ad

    from scssl.data import Cells
    from scssl.train import TrainSettings


@contextmanager
def quiet():
    """scvi-tools and Lightning without their banners and warnings about settings chosen on purpose (no
    validation split, no GPU), which would flood a study's output once per trial."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "scvi")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _accelerator(device: str) -> tuple[str, Any]:
    if device == "auto":
        import torch

        return ("gpu", 1) if torch.cuda.is_available() else ("cpu", 1)
    if device.startswith("cuda"):
        index = device.partition(":")[2]
        return "gpu", [int(index)] if index else 1
    return device, 1


SAMPLES = 25  # posterior samples averaged in a model's own prediction


@contextmanager
def seeded(seed: int):
    """Torch's random draws from ``seed`` inside, the global state untouched outside: a prediction that samples
    the posterior is the same each time it is asked for."""
    import torch

    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(seed)
        yield


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix, dtype=np.float32)


class ScviMethod:
    """Base of the methods scvi-tools trains: ``_data`` builds its AnnData / MuData from ``Cells``,
    ``_model`` the model on it; ``fit`` trains on every given cell (no validation split, no early stopping,
    no learning-rate schedule: the caller holds out its own validation cells) and calls ``on_epoch`` after
    each epoch. The batch covariate is each cell's batch; the encoders do not see it (the models'
    ``encode_covariates=False``), so cells of batches not seen in training (query donors, a transfer target)
    embed exactly as any other."""

    kind: ClassVar[str] = "generative model, trained by scvi-tools"
    Params: ClassVar[type]
    trainable: ClassVar[bool] = True
    sections: ClassVar[frozenset[str]] = frozenset({"train"})
    reconstructs: ClassVar[bool] = False
    fine_tunable: ClassVar[bool] = False
    predicts_other: ClassVar[bool] = True
    uses_rna_only: ClassVar[bool] = True
    modality: ClassVar[str | None]

    def __init__(self, params, seed: int = 0):
        self.params = params
        self.seed = seed
        self.model = None
        self.batches: list[str] = []  # the batches of the training cells
        self.n_other = 0  # the second modality's features

    def _data(self, cells: Cells, training: bool):
        """The model's AnnData / MuData of ``cells``: set up for the model when ``training``, else for
        embedding and prediction (without ``other_counts``: the second modality unmeasured)."""
        raise NotImplementedError

    def _model(self, data):
        raise NotImplementedError

    def _train_kwargs(self, train: TrainSettings) -> dict:
        """The model's own ``train`` arguments for the weight decay (and its schedule, turned off)."""
        raise NotImplementedError

    def _batch_column(self, cells: Cells, training: bool) -> np.ndarray:
        """Training: each cell's batch; otherwise a training batch for every cell (the encoder ignores it)."""
        if training:
            codes = np.zeros(cells.n_cells, dtype=np.int64) if cells.batch_codes is None else cells.batch_codes
            return np.asarray([f"batch{c}" for c in codes])
        return np.full(cells.n_cells, self.batches[0])

    def fit(self, cells: Cells, train: TrainSettings,
            on_epoch: Callable[[Any, Any], None] | None = None) -> "ScviMethod":
        import scvi
        from lightning.pytorch import Callback

        from scssl.train.loop import EpochReport

        if cells.counts is None or cells.other_counts is None:
            raise ValueError(f"{self.name} needs the raw counts of both modalities")
        owner = self

        class Epochs(Callback):
            def on_train_epoch_start(self, trainer, module):
                self.started = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                metrics = trainer.callback_metrics
                loss = next(float(metrics[k]) for k in ("train_loss_epoch", "train_loss") if k in metrics)
                with owner._evaluating():
                    on_epoch(owner, EpochReport(trainer.current_epoch + 1, loss, time.perf_counter() - self.started))

        with quiet():
            scvi.settings.seed = self.seed
            self.batches = sorted(set(self._batch_column(cells, training=True)))
            self.n_other = cells.other_counts.shape[1]
            data = self._data(cells, training=True)
            self.model = self._model(data)
            accelerator, devices = _accelerator(train.device)
            self.model.train(
                max_epochs=train.epochs, lr=train.lr, batch_size=train.batch_size, train_size=1.0,
                early_stopping=False, accelerator=accelerator, devices=devices, **self._train_kwargs(train),
                enable_progress_bar=False, logger=False,
                enable_checkpointing=False, enable_model_summary=False,
                callbacks=[Epochs()] if on_epoch is not None else [],
            )
        return self

    @contextmanager
    def _evaluating(self):
        """The model usable for embedding in the middle of training (scvi-tools refuses an untrained model), in
        eval mode, then back in training mode and the random state as it was (a data loader draws from it),
        so that a trial that evaluates each epoch trains exactly as a run that does not."""
        import torch

        module, trained = self.model.module, self.model.is_trained_
        was_training = module.training
        state = torch.get_rng_state(), np.random.get_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.model.is_trained_ = True
        module.eval()  # scvi-tools embeds in the module's current mode: BatchNorm would use and move batch statistics
        try:
            yield
        finally:
            self.model.is_trained_ = trained
            module.train(was_training)
            torch.set_rng_state(state[0])
            np.random.set_state(state[1])
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def embed(self, cells: Cells) -> np.ndarray:
        """The latent mean of each cell."""
        data = self._in_model(cells)
        with quiet():
            return self.model.get_latent_representation(data).astype(np.float32)

    def _in_model(self, cells: Cells) -> ad.AnnData:
        with quiet():
            return self._data(cells, training=False)

"""What the methods scvi-tools trains (scVI, scANVI, totalVI, MultiVI) share: a model fitted on ``Cells``,
trained for the experiment's epochs with its learning rate, weight decay and batch size, reporting each epoch
like the shared loop.

scvi-tools registers every AnnData a model is given, with the model and in class-wide stores that outlive
it: each trial and each embedding would stay in memory until the worker exits. ``ScviMethod`` drops each
registration when it is done with the data (``_release``) and the model's own when the model goes.

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

from scssl.methods.base import FittedMethod

if TYPE_CHECKING:
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


@contextmanager
def random_state_kept():
    """Torch's and NumPy's global random state as it was after the block (scvi-tools reseeds them both)."""
    import torch

    state = torch.get_rng_state(), np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.todense() if hasattr(matrix, "todense") else matrix, dtype=np.float32)


class ScviMethod(FittedMethod):
    """Base of the methods scvi-tools trains: ``_data`` builds its AnnData / MuData from ``Cells``,
    ``_model`` the model on it; ``fit`` trains on every given cell (no validation split, no early stopping,
    no learning-rate schedule: the caller holds out its own validation cells) and calls ``on_epoch`` after
    each epoch. The batch covariate is each cell's batch."""

    kind: ClassVar[str] = "generative model, trained by scvi-tools"
    trainable: ClassVar[bool] = True
    sections: ClassVar[frozenset[str]] = frozenset({"train"})
    uses_rna_only: ClassVar[bool] = True
    inputs: ClassVar[frozenset[str]] = frozenset({"counts", "other_counts"})  # count likelihoods

    def __init__(self, params, seed: int = 0):
        super().__init__(params, seed)
        self.model = None
        self.train_settings: TrainSettings | None = None
        self.batches: list[str] = []  # the batches of the training cells
        self.n_other = 0  # the second modality's features

    def _data(self, cells: Cells, training: bool):
        """The model's AnnData / MuData of ``cells``: set up for the model when ``training``, else for
        embedding and prediction (without ``other_counts``: the second modality unmeasured)."""
        raise NotImplementedError

    def _model(self, data):
        raise NotImplementedError

    def _train_kwargs(self, train: TrainSettings) -> dict:
        """The model's own ``train`` arguments for the learning rate and weight decay (and its schedule, off)."""
        raise NotImplementedError

    def _batch_column(self, cells: Cells, training: bool) -> np.ndarray:
        """Training: each cell's batch; otherwise a training batch for every cell (the encoder ignores it)."""
        if training:
            return batch_names(cells)
        return np.full(cells.n_cells, self.batches[0])

    def fit(self, cells: Cells, train: TrainSettings,
            on_epoch: Callable[[Any, Any], None] | None = None) -> "ScviMethod":
        import scvi

        if cells.counts is None or (self.modality is not None and cells.other_counts is None):
            raise ValueError(f"{self.name} needs the raw counts" + (" of both modalities" if self.modality else ""))
        with quiet():
            scvi.settings.seed = self.seed
            self.train_settings = train
            self.batches = sorted(set(self._batch_column(cells, training=True)))
            self.n_other = 0 if cells.other_counts is None else cells.other_counts.shape[1]
            self._fit(self._data(cells, training=True), train, on_epoch)
        return self

    def _fit(self, data, train: TrainSettings, on_epoch: Callable | None) -> None:
        """Build the model on ``data`` and train it for the experiment's epochs."""
        self.model = self._owned(self._model(data))
        self._train(self.model, train, train.epochs, on_epoch, **self._train_kwargs(train))

    def _owned(self, model):
        """``model``, its training data's class-wide registration dropped (the model keeps its own) and its
        instance registrations dropped when it goes."""
        import weakref

        type(model)._setup_adata_manager_store.pop(model.adata_manager.adata_uuid, None)
        weakref.finalize(model, type(model)._per_instance_manager_store.pop, model.id, None)
        return model

    def _train(self, model, train: TrainSettings, epochs: int, on_epoch: Callable | None, first_epoch: int = 0,
               **kwargs) -> None:
        """``model.train`` for ``epochs`` on every cell, ``on_epoch`` told each epoch (numbered from
        ``first_epoch`` + 1)."""
        accelerator, devices = _accelerator(train.device)
        model.train(max_epochs=epochs, batch_size=train.batch_size, train_size=1.0, early_stopping=False,
                    accelerator=accelerator, devices=devices, enable_progress_bar=False, logger=False,
                    enable_checkpointing=False, enable_model_summary=False,
                    callbacks=[] if on_epoch is None else [self._epoch_reports(on_epoch, first_epoch)], **kwargs)

    def _epoch_reports(self, on_epoch: Callable, first_epoch: int):
        """A Lightning callback that calls ``on_epoch(self, EpochReport)`` after each training epoch, the
        model in eval mode (``_evaluating``)."""
        from lightning.pytorch import Callback

        from scssl.train.epochs import EpochReport

        owner = self

        class EpochReports(Callback):
            def on_train_epoch_start(self, trainer, module):
                self.started = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                metrics = trainer.callback_metrics
                loss = next(float(metrics[k]) for k in ("train_loss_epoch", "train_loss") if k in metrics)
                report = EpochReport(first_epoch + trainer.current_epoch + 1, loss, time.perf_counter() - self.started)
                with owner._evaluating():
                    on_epoch(owner, report)

        return EpochReports()

    @contextmanager
    def _evaluating(self):
        """The model usable for embedding in the middle of training (scvi-tools refuses an untrained model), in
        eval mode, then back in training mode and the random state as it was (a data loader draws from it),
        so that a trial that evaluates each epoch trains exactly as a run that does not."""
        module, trained = self.model.module, self.model.is_trained_
        was_training = module.training
        self.model.is_trained_ = True
        module.eval()  # scvi-tools embeds in the module's current mode: BatchNorm would use and move batch statistics
        try:
            with random_state_kept():
                yield
        finally:
            self.model.is_trained_ = trained
            module.train(was_training)

    def embed(self, cells: Cells) -> np.ndarray:
        """The latent mean of each cell."""
        with self._in_model(cells) as data, quiet():
            return self.model.get_latent_representation(data).astype(np.float32)

    @contextmanager
    def _in_model(self, cells: Cells, model=None):
        """``cells`` as the data of ``model`` (by default the fitted one) to embed or predict, registered with it
        only inside the block."""
        model = self.model if model is None else model
        with quiet():
            data = self._data(cells, training=False)
        try:
            yield data
        finally:
            self._release(model, data)

    @staticmethod
    def _release(model, data) -> None:
        """Drop ``model``'s registration of ``data`` (scvi-tools would keep it as long as the model)."""
        from scvi.data._constants import _SCVI_UUID_KEY

        uuid = data.uns.get(_SCVI_UUID_KEY)
        type(model)._per_instance_manager_store.get(model.id, {}).pop(uuid, None)
        type(model)._setup_adata_manager_store.pop(uuid, None)


def batch_names(cells: Cells) -> np.ndarray:
    """Each cell's batch as the models' covariate names it (one batch when the cells have none)."""
    codes = np.zeros(cells.n_cells, dtype=np.int64) if cells.batch_codes is None else cells.batch_codes
    return np.asarray([f"batch{c}" for c in codes])

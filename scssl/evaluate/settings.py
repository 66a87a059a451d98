"""The evaluation settings, apart from the code that runs them so that experiment files are checked
without torch."""

from __future__ import annotations

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import settings


@settings
class FineTuneSettings:
    """Fine-tuning a classifier head and its pretrained encoder on the reference cell types.

    Richter et al.'s classifier settings (AdamW, lr 9e-4, weight decay 0.05, cross-entropy weighted by
    inverse class frequency) scaled to small data: a few epochs of mini-batches rather than their
    long run over tens of millions of cells. ``class_weighted`` keeps rare types from being ignored.
    """

    epochs: Annotated[int, Field(ge=1)] = 20
    batch_size: Annotated[int, Field(ge=2)] = 256
    lr: Annotated[float, Field(gt=0.0)] = 9e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.05
    class_weighted: bool = True


@settings
class EvaluationSettings:
    """How the tasks score large data. Beyond ``scib_max_cells`` cells, batch correction's scIB metrics score a
    subsample stratified by batch x cell type (each group keeps its share, at least one cell), drawn with
    ``subsample_seed``: the same cells for every method and seed of a data set, and the table says so. scIB's
    silhouettes grow with the square of the cells: measured on 2 cores, 50,000 cells take 111 s (JAX compiling on
    the way), 100,000 take 247 s (``benchmarks/evaluation.py``). The kNN tasks always score every query cell."""

    scib_max_cells: Annotated[int, Field(ge=1000)] = 50_000
    subsample_seed: int = 0

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

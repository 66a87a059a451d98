"""The training settings, apart from the loop so that experiment files are checked without torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import settings


@settings
class TrainSettings:
    """Optimiser and schedule (scSSL-Bench: Adam 1e-4, weight decay 1e-6, batch 256).

    ``schedule: step`` reproduces the study's StepLR(10, 0.1) per epoch; ``constant`` keeps the
    learning rate. ``optimizer: adamw`` and ``grad_clip`` (gradient norm) are Richter et al.'s MAE settings
    (AdamW, clip 1.0). ``device: auto`` takes a GPU when there is one. ``precision: bf16`` runs each training
    step's forward pass under bfloat16 autocast (weights and optimiser stay float32); ``compile`` compiles the
    network's modules with ``torch.compile`` (minutes of compiling first, worth it on a GPU for long training).
    """

    epochs: Annotated[int, Field(ge=1)] = 50
    batch_size: Annotated[int, Field(ge=2)] = 256
    lr: Annotated[float, Field(gt=0.0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-6
    schedule: Literal["constant", "step"] = "constant"
    optimizer: Literal["adam", "adamw"] = "adam"
    grad_clip: Annotated[float, Field(gt=0.0)] | None = None
    device: str = "auto"
    precision: Literal["32", "bf16"] = "32"
    compile: bool = False

"""scGPT zero-shot (scSSL-Bench's zero-shot scGPT row): the pretrained checkpoint's cell embedding, untrained. The
implementation, shared with the fine-tuned row, and how it follows scGPT are in ``scgpt.py``."""

from __future__ import annotations

from typing import ClassVar

from scssl.methods.scgpt import PretrainedScGPT, ScGPTZeroShotParams


class ScGPTZeroShot(PretrainedScGPT):
    """The pretrained checkpoint's <cls> output of each cell (scGPT's embed_data), with no training."""

    name: ClassVar[str] = "scgpt_zero_shot"
    kind: ClassVar[str] = "foundation model, zero-shot from a local checkpoint"
    Params: ClassVar[type] = ScGPTZeroShotParams
    trainable: ClassVar[bool] = False

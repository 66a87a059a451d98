"""Train layer: one loop for all SSL methods, and ``fit_embedding`` for any registered method.

``TrainSettings`` loads at once; the loop (torch) on first use.
"""

from scssl import lazy_exports
from scssl.train.settings import TrainSettings

__getattr__ = lazy_exports(__name__, {
    "loop": ["EpochReport", "NonFiniteLossError", "embed", "fit_embedding", "resolve_device", "train"],
})

__all__ = [
    "EpochReport", "NonFiniteLossError", "TrainSettings", "embed", "fit_embedding", "resolve_device", "train",
]

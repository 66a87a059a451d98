"""Train layer: one loop for every network method, and ``fit`` for any registered method.

``TrainSettings`` loads at once; the loop (torch) on first use.
"""

from scssl import lazy_exports
from scssl.train.settings import TrainSettings

__getattr__ = lazy_exports(__name__, {
    "loop": ["EpochReport", "NonFiniteLossError", "TrainedNetwork", "embed", "fit", "resolve_device", "train"],
})

__all__ = [
    "EpochReport", "NonFiniteLossError", "TrainSettings", "TrainedNetwork", "embed", "fit", "resolve_device",
    "train",
]

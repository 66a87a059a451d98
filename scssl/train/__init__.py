"""Train layer: one epoch loop for every network that trains (``run_epochs``), the SSL methods' training on
it, and ``fit`` for any registered method.

``TrainSettings`` loads at once; the loop (torch) on first use.
"""

from scssl import lazy_exports
from scssl.train.settings import TrainSettings

__getattr__ = lazy_exports(__name__, {
    "epochs": ["EpochReport", "NonFiniteLossError", "Optimisation", "run_epochs"],
    "loop": ["Training", "TrainedNetwork", "embed", "fit", "resolve_device", "run_training", "start_training", "train"],
})

__all__ = [
    "EpochReport", "NonFiniteLossError", "Optimisation", "TrainSettings", "TrainedNetwork", "embed", "fit",
    "resolve_device", "run_epochs", "run_training", "start_training", "train", "Training",
]

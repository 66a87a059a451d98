"""Settings of the tuning stage and of the final (retrain) stage."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import settings


@settings
class TuneSettings:
    """Budget and resources of the search.

    ``num_samples`` trials per method and data set, proposed by ``search``: ``tpe`` (Optuna's TPE,
    seeded by ``seed``), ``random`` (seeded), or ``grid`` (every combination of the search space's
    ``choice`` values, ``num_samples`` times). ASHA stops the weak trials after ``grace_period``
    epochs, keeping 1 / ``reduction_factor`` at each rung.
    The objective is the kNN accuracy (k = 11) of a fixed ``validation_fraction`` of reference cells
    (at most ``validation_max_cells``), classified by the other reference cells, after each epoch.
    """

    num_samples: Annotated[int, Field(ge=1)] = 8
    search: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0
    grace_period: Annotated[int, Field(ge=1)] = 2
    reduction_factor: Annotated[int, Field(ge=2)] = 2
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0
    max_concurrent_trials: Annotated[int, Field(ge=0)] = 0
    validation_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    validation_max_cells: Annotated[int, Field(ge=10)] = 2000


@settings
class FinalSettings:
    """The final stage retrains each method's best configuration once per seed."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

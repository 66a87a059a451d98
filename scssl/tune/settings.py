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
    seeded by ``seed``; MOTPE when ``multi_objective``), ``nsga2`` (Optuna's NSGA-II), ``random``
    (seeded), or ``grid`` (every combination of the search space's ``choice`` values, ``num_samples``
    times). ASHA stops the weak trials after ``grace_period`` epochs, keeping 1 / ``reduction_factor``
    at each rung.
    The objective is the kNN accuracy (k = 11) of the cell types of a fixed ``validation_fraction`` of
    reference cells (at most ``validation_max_cells``), classified by the other reference cells, after
    each epoch. With ``multi_objective`` the search also maximises the batch mixing of those cells (1 -
    kNN accuracy of their batch) and the study reports the Pareto front of the two; ASHA then stops
    trials on 0.6 x cell-type accuracy + 0.4 x batch mixing (scIB's weights).
    A crashing trial is retried up to ``max_retries`` times; a trial whose loss is NaN is not.
    With ``reuse_actors`` a finished trial's worker process runs the next trial, which saves the seconds
    a new worker spends importing torch and scssl; a worker that starts first then takes more of a
    short trials' study than the others. A configuration trains to the same curve in a new worker and
    in a reused one.
    """

    num_samples: Annotated[int, Field(ge=1)] = 8
    search: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    multi_objective: bool = False
    seed: int = 0
    max_retries: Annotated[int, Field(ge=0)] = 1
    grace_period: Annotated[int, Field(ge=1)] = 2
    reduction_factor: Annotated[int, Field(ge=2)] = 2
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0
    max_concurrent_trials: Annotated[int, Field(ge=0)] = 0
    reuse_actors: bool = True
    validation_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    validation_max_cells: Annotated[int, Field(ge=10)] = 2000


@settings
class FinalSettings:
    """The final stage retrains each method's best configuration once per seed (``retrain: best``;
    with ``multi_objective``, the best of each objective), or every point of its grid (``retrain:
    grid``: the paper's sweeps and ablations, which need no tuning stage)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    retrain: Literal["best", "grid"] = "best"

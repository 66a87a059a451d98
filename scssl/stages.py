"""Settings of the tuning stage and of the final (retrain) stage."""

from __future__ import annotations

from dataclasses import field
from typing import Literal, Union

from pydantic import AfterValidator, Discriminator, Field, Tag
from typing_extensions import Annotated

from scssl.evaluate.tasks import DEFAULT_OBJECTIVE, OBJECTIVES, TASKS
from scssl.settings import ConfigError, settings

Task = Literal[tuple(TASKS)]  # a task's name, of the registry
Objective = Literal[tuple(OBJECTIVES)]  # a task that can be the tuning objective


@settings
class TuneSettings:
    """Budget and resources of the search.

    ``num_samples`` trials per method and data set, proposed by ``search``: ``tpe`` (Optuna's TPE,
    seeded by ``seed``; MOTPE when ``multi_objective``), ``nsga2`` (Optuna's NSGA-II), ``random``
    (seeded), or ``grid`` (every combination of the search space's ``choice`` values, ``num_samples``
    times). ASHA stops the weak trials after ``grace_period`` epochs, keeping 1 / ``reduction_factor``
    at each rung.
    The ``objective`` (a task that has one: ``Task.objective``; each task's file says what it scores) is
    scored after each epoch on a fixed ``validation_fraction`` of reference cells (at most
    ``validation_max_cells``), by the other reference cells. With ``multi_objective`` (the objective that
    maximises cell-type kNN accuracy) the search maximises that and batch mixing and the study reports the
    Pareto front of the two; ASHA then stops trials on the 0.6 / 0.4 score.
    Each trial and job asks Ray for ``cpus_per_trial`` CPUs, ``gpus_per_trial`` GPUs (a fraction shares one) and
    ``memory_per_trial_gb`` GiB of memory (unset: estimated for the method and data set, ``trial_memory``), so a
    node runs only as many as its memory holds.
    With ``workers_per_trial`` above 1 a trial trains data-parallel on that many Ray Train workers (PyTorch DDP:
    each worker asks for the CPUs, GPUs and memory above and trains on its own share of the cells; gradients are
    averaged each step), for a network too large to train fast enough on one device; retraining stays on one.
    A crashing trial is retried up to ``max_retries`` times; a trial whose loss is NaN is not.
    With ``reuse_actors`` a finished trial's worker process runs the next trial, which saves the seconds
    a new worker spends importing torch and scssl; a worker that starts first then takes more of a
    short trials' study than the others. A configuration trains to the same curve in a new worker and
    in a reused one.
    """

    num_samples: Annotated[int, Field(ge=1)] = 8
    search: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    objective: Objective = DEFAULT_OBJECTIVE
    multi_objective: bool = False
    seed: int = 0
    max_retries: Annotated[int, Field(ge=0)] = 1
    grace_period: Annotated[int, Field(ge=1)] = 2
    reduction_factor: Annotated[int, Field(ge=2)] = 2
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0
    memory_per_trial_gb: Annotated[float, Field(gt=0)] | None = None
    workers_per_trial: Annotated[int, Field(ge=1)] = 1
    max_concurrent_trials: Annotated[int, Field(ge=0)] = 0
    reuse_actors: bool = True
    validation_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    validation_max_cells: Annotated[int, Field(ge=10)] = 2000

    def __post_init__(self) -> None:
        if self.multi_objective and self.objective != DEFAULT_OBJECTIVE:
            raise ValueError("multi_objective pairs cell-type accuracy with batch mixing: it needs objective: "
                             f"{DEFAULT_OBJECTIVE}, not {self.objective}")


def _seed_list(seeds: list[int]) -> list[int]:
    if not seeds:
        raise ValueError("expected at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError("each seed may appear once")  # the same job would run twice
    return seeds


Seeds = Annotated[list[int], AfterValidator(_seed_list)]
# one list for every task, or a mapping task -> list; errors name the form given ("seeds.per_task.<key>")
SeedsSetting = Annotated[
    Union[Annotated[Seeds, Tag("list")], Annotated[dict[Task, Seeds], Field(min_length=1), Tag("per_task")]],
    Discriminator(lambda value: "per_task" if isinstance(value, dict) else "list"),
]


@settings
class FinalSettings:
    """The final stage retrains each method's best configuration once per seed (``retrain: best``;
    with ``multi_objective``, the best of each objective), every point of its grid (``retrain:
    grid``: the paper's sweeps and ablations, which need no tuning stage), or its declared defaults
    (``retrain: defaults``: the method's ``Params()``, the experiment's ``train`` and ``augment``).

    ``seeds`` is one list for every task, or a list per task (``{cell_typing: [0, 1, 2],
    batch_correction: [0]}``), since the tasks differ in cost."""

    seeds: SeedsSetting = field(default_factory=lambda: [0, 1, 2])
    retrain: Literal["best", "grid", "defaults"] = "best"

    def seeds_for(self, task: str) -> list[int]:
        """The seeds ``task`` is retrained with."""
        return list(self.seeds if isinstance(self.seeds, list) else self.seeds[task])

    def check_tasks(self, tasks: list[str], source: str) -> None:
        """Raise a ConfigError naming ``source`` when a mapping of ``seeds`` leaves out one of ``tasks``."""
        missing = [t for t in tasks if isinstance(self.seeds, dict) and t not in self.seeds]
        if missing:
            raise ConfigError(f"{source}: final.seeds: no seeds for task(s) {missing}; give a list for each "
                              f"of {list(tasks)}, or one list for all")

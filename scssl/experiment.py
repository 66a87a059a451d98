"""An experiment file (``experiments/<study>.yaml``), read once into a validated ``Experiment``.

Relative paths in the file (``output_dir``, ``search_spaces``, a data set's ``path``) are relative
to the file's own folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scssl.augment import AugmentationConfig
from scssl.data import DatasetSpec, resolve
from scssl.methods import METHODS
from scssl.settings import ConfigError, parse, read_yaml, settings
from scssl.train import TrainSettings
from scssl.tune.search_space import SearchSpace, load_search_space, parse_search_space
from scssl.tune.settings import FinalSettings, TuneSettings

Task = Literal["batch_correction", "cell_typing"]


@settings
class ExperimentConfig:
    name: str
    datasets: list[DatasetSpec]
    methods: list[str]
    tasks: list[Task] = field(default_factory=lambda: ["batch_correction", "cell_typing"])
    train: TrainSettings = field(default_factory=TrainSettings)
    augment: AugmentationConfig = field(default_factory=AugmentationConfig)
    tune: TuneSettings = field(default_factory=TuneSettings)
    final: FinalSettings = field(default_factory=FinalSettings)
    search_spaces: str = "../search_spaces"
    search_space: dict[str, Any] | None = None
    output_dir: str | None = None
    tracking_uri: str | None = None


@dataclass(frozen=True)
class Experiment:
    """A loaded experiment: its config, resolved data sets, study folder, search spaces, MLflow URI."""

    config: ExperimentConfig
    source: Path
    datasets: list[DatasetSpec]
    study_dir: Path
    search_spaces: dict[str, SearchSpace]
    tracking_uri: str

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def results_dir(self) -> Path:
        return self.study_dir / "results"

    @property
    def uses_neighbours(self) -> bool:
        """Whether any run may use a BBKNN or MNN augmentation, so that neighbour graphs are needed."""
        if self.config.augment.uses_neighbours:
            return True
        return any(space.may_exceed_zero(("augment", name, "prob"))
                   for space in self.search_spaces.values() for name in ("bbknn", "mnn"))


def load_experiment(path: str | Path, output_dir: str | None = None, tracking_uri: str | None = None) -> Experiment:
    """Read and check ``path``; ``output_dir`` and ``tracking_uri`` override the file's values.

    The MLflow URI is, in order: ``tracking_uri``, the file's ``tracking_uri``, ``$MLFLOW_TRACKING_URI``,
    else a SQLite database in the study folder.
    """
    path = Path(path).resolve()
    config = parse(ExperimentConfig, read_yaml(path), str(path))
    base = path.parent

    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"{path}: methods: unknown {unknown}; known methods are {list(METHODS)}")
    if len(set(config.methods)) != len(config.methods):
        raise ConfigError(f"{path}: methods: each method may appear once, got {config.methods}")

    datasets = [resolve(spec, base) for spec in config.datasets]
    labels = [d.label for d in datasets]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: datasets: give each data set a distinct `id`, got {labels}")
    if "cell_typing" in config.tasks:
        for i, spec in enumerate(datasets):
            if not spec.query_batches:
                raise ConfigError(
                    f"{path}: datasets.{i}.query_batches: the cell_typing task needs query batches "
                    f"for data set {spec.label!r}"
                )

    spaces = _search_spaces(config, path)

    if output_dir is not None:
        study_dir = Path(output_dir).resolve()
    else:
        study_dir = _under(base, config.output_dir or f"studies/{config.name}")
    uri = (
        tracking_uri
        or config.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{study_dir / 'mlflow.db'}"
    )
    return Experiment(config, path, datasets, study_dir, spaces, uri)


def _search_spaces(config: ExperimentConfig, path: Path) -> dict[str, SearchSpace]:
    """Each trainable method's space: the experiment's inline ``search_space`` (the same for every
    method), else ``<search_spaces>/<method>.yaml``."""
    grid = config.tune.search == "grid" or config.final.retrain == "grid"
    spaces = {}
    for name in config.methods:
        cls = METHODS[name]
        if not cls.trainable:
            continue
        if config.search_space is not None:
            space = parse_search_space(config.search_space, cls, f"{path}: search_space [{name}]")
        else:
            file = _under(path.parent, config.search_spaces) / f"{name}.yaml"
            if not file.is_file():
                raise ConfigError(f"{path}: search_spaces: no search space {file} for method {name!r}")
            space = load_search_space(file, cls)
        if grid:
            space.check_grid()
        elif any(len(p) == 1 for p in space.domains):
            raise ConfigError(f"{space.source}: a choice among whole blocks needs tune.search: grid "
                              "or final.retrain: grid")
        spaces[name] = space
    return spaces


def _under(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()

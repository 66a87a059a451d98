"""An experiment file (``experiments/<study>.yaml``), read once into a validated ``Experiment``.

Relative paths in the file (``output_dir``, ``search_spaces``, a data set's ``path``) are relative
to the file's own folder.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field
from typing_extensions import Annotated

from scssl.augment import AugmentationConfig
from scssl.data import DatasetSpec, resolve
from scssl.data.spec import DataError
from scssl.evaluate.settings import EvaluationSettings, FineTuneSettings
from scssl.methods import METHODS
from scssl.search_space import SearchSpace, load_search_space, parse_search_space
from scssl.settings import SAFE_NAME, SAFE_NAME_TEXT, ConfigError, Name, parse, read_yaml, settings
from scssl.evaluate.tasks import DEFAULT_TASKS, TASKS
from scssl.stages import FinalSettings, Task, TuneSettings
from scssl.train import TrainSettings


@settings
class ExperimentConfig:
    name: Name
    datasets: Annotated[list[DatasetSpec], Field(min_length=1)]
    methods: Annotated[list[str], Field(min_length=1)]
    tasks: Annotated[list[Task], Field(min_length=1)] = field(
        default_factory=lambda: list(DEFAULT_TASKS))
    train: TrainSettings = field(default_factory=TrainSettings)
    augment: AugmentationConfig = field(default_factory=AugmentationConfig)
    fine_tuning: FineTuneSettings = field(default_factory=FineTuneSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    final: FinalSettings = field(default_factory=FinalSettings)
    search_spaces: str = "../search_spaces"
    search_space: dict[str, Any] | None = None
    output_dir: str | None = None
    tracking_uri: str | None = None
    tracking_wait: Annotated[float, Field(gt=0)] = 60.0  # seconds to wait for a store that stops answering
    store_dir: str | None = None  # where data sets prepared to disk go: shared by the studies that name the same


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
    def store_dir(self) -> Path:
        """Where data sets too large for memory are prepared to disk (``DatasetSpec.store_from_cells``), each in a
        folder named by its file and settings, which later studies reuse: ``studies/stores`` beside the file."""
        return _under(self.source.parent, self.config.store_dir or "studies/stores")

    def relocated(self) -> dict:
        """The experiment file's content with its paths made absolute and ``output_dir`` the study folder
        itself: the study folder's copy, which runs (or reports) the same study from there."""
        raw = read_yaml(self.source)
        raw["output_dir"] = "."
        raw["store_dir"] = str(self.store_dir)
        raw["search_spaces"] = str(_under(self.source.parent, self.config.search_spaces))
        raw["datasets"] = [_relocated(entry, spec) for entry, spec in zip(raw["datasets"], self.datasets)]
        return raw

    def tunes(self, method: str) -> bool:
        """Whether the tuning stage searches ``method``: a trained method, ``final.retrain: best``, and a search space
        with something to sample (one that fixes every value is trained as that configuration)."""
        return (self.config.final.retrain == "best" and METHODS[method].trainable
                and bool(self.search_spaces[method].domains))

    @property
    def uses_neighbours(self) -> bool:
        """Whether any run may use a BBKNN or MNN augmentation, or a method that trains on the neighbour graph
        (CLAIRE), so that neighbour graphs are needed."""
        if self.config.augment.uses_neighbours or any(METHODS[m].needs_neighbours for m in self.config.methods):
            return True
        return any(space.may_exceed_zero(("augment", name, "prob"))
                   for space in self.search_spaces.values() for name in ("bbknn", "mnn"))


def _relocated(entry: dict, spec: DatasetSpec) -> dict:
    """A data set entry with its file paths (and its second modality's) absolute, as ``spec`` resolved them."""
    if entry.get("path") is not None:
        entry = {**entry, "path": spec.path}
    if isinstance(entry.get("modality"), dict) and entry["modality"].get("path") is not None:
        entry = {**entry, "modality": {**entry["modality"], "path": spec.modality.path}}
    return entry


def load_experiment(path: str | Path, output_dir: str | None = None, tracking_uri: str | None = None) -> Experiment:
    """Read and check ``path``; ``output_dir`` and ``tracking_uri`` override the file's values.

    The MLflow URI is, in order: ``tracking_uri``, the file's ``tracking_uri``, ``$MLFLOW_TRACKING_URI``,
    else a SQLite database in the study folder.
    """
    path = Path(path).resolve()
    raw = read_yaml(path)
    config = parse(ExperimentConfig, raw, str(path))
    base = path.parent

    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"{path}: methods: unknown {unknown}; known methods are {list(METHODS)}")
    if len(set(config.methods)) != len(config.methods):
        raise ConfigError(f"{path}: methods: each method may appear once, got {config.methods}")
    from scssl.methods.base import UnavailableMethod  # the method classes load torch: only now

    unavailable = [METHODS[m].needs for m in config.methods if issubclass(METHODS[m], UnavailableMethod)]
    if unavailable:
        raise ConfigError(f"{path}: methods: " + "; ".join(unavailable))
    _check_sections_used(raw, config, path)

    datasets = []
    for i, spec in enumerate(config.datasets):
        try:
            datasets.append(resolve(spec, base))
        except ConfigError as err:
            key = err.key if isinstance(err, DataError) else "name"
            raise ConfigError(f"{path}: datasets.{i}.{key}: {err}") from None
        if not re.match(SAFE_NAME, datasets[-1].label):
            raise ConfigError(f"{path}: datasets.{i}.id: {datasets[-1].label!r} names files and MLflow runs, so it "
                              f"may hold only {SAFE_NAME_TEXT}; set `id` to such a name")
    labels = [d.label for d in datasets]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: datasets: give each data set a distinct `id`, got {labels}")
    _check_pretraining(datasets, path)
    _check_modalities(config.methods, datasets, path)
    TASKS[config.tune.objective].check_objective(config.methods, datasets, str(path))
    for task in [t for t in config.tasks if TASKS[t].scores_query]:
        for i, spec in enumerate(datasets):
            if not spec.query_batches:
                raise ConfigError(
                    f"{path}: datasets.{i}.query_batches: the {task} task needs query batches "
                    f"for data set {spec.label!r}"
                )

    config.final.check_tasks(config.tasks, str(path))
    _check_device(config, path)
    spaces = _search_spaces(config, path) if config.final.retrain != "defaults" else {}

    if output_dir is not None:
        study_dir = Path(output_dir).resolve()
    else:
        study_dir = _under(base, config.output_dir or f"studies/{config.name}")
    where = "--output-dir" if output_dir is not None else f"{path}: output_dir"
    _check_writable(study_dir, where)
    _check_owner(study_dir, config.name, where)
    uri = (
        tracking_uri
        or config.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or f"sqlite:///{study_dir / 'mlflow.db'}"
    )
    return Experiment(config, path, datasets, study_dir, spaces, uri)


def _check_pretraining(datasets: list[DatasetSpec], path: Path) -> None:
    """Each ``pretrain`` names another data set of the experiment, one that is not itself a transfer target."""
    by_label = {spec.label: spec for spec in datasets}
    for i, spec in enumerate(datasets):
        if spec.pretrain is None:
            continue
        where = f"{path}: datasets.{i}.pretrain"
        if spec.pretrain == spec.label:
            raise ConfigError(f"{where}: a data set cannot pretrain itself ({spec.label!r})")
        if spec.pretrain not in by_label:
            raise ConfigError(f"{where}: {spec.pretrain!r} is not the id of a data set of this experiment; "
                              f"ids are {list(by_label)}")
        if by_label[spec.pretrain].pretrain is not None:
            raise ConfigError(f"{where}: {spec.pretrain!r} is itself pretrained on another data set; "
                              "pretrain on a data set of its own cells")


def _check_modalities(methods: list[str], datasets: list[DatasetSpec], path: Path) -> None:
    """A method that needs a second modality (scCLIP, totalVI, MultiVI) needs it in every data set."""
    for name in methods:
        needs = METHODS[name].modality
        for i, spec in enumerate(datasets):
            has = None if spec.modality is None else spec.modality.kind
            if needs is not None and (has is None or needs not in ("any", has)):
                what = "a second modality (protein or ATAC)" if needs == "any" else f"{needs} data beside the RNA"
                raise ConfigError(f"{path}: methods: {name} needs {what}, and datasets.{i} ({spec.label!r}) has "
                                  f"{'RNA only' if has is None else f'RNA and {has}'}; leave {name} out or give "
                                  "the data set a `modality`")


def _check_sections_used(raw: dict, config: ExperimentConfig, path: Path) -> None:
    """A settings block no method or task of the experiment reads is an error, not silently ignored. (``train``
    stays allowed beside baselines alone: its ``device`` and the tuning resources go with it.)"""
    if "augment" in raw and not any("augment" in METHODS[m].sections for m in config.methods):
        raise ConfigError(f"{path}: augment: none of the methods {config.methods} makes augmented views, so none "
                          "would use this block; remove it")
    for section in ("fine_tuning", "evaluation"):
        readers = [name for name, task in TASKS.items()
                   if section in task.settings_key(FineTuneSettings(), EvaluationSettings())]
        if section in raw and not set(readers) & set(config.tasks):
            who = f"the {' and '.join(readers)} task" + (" uses" if len(readers) == 1 else "s use")
            raise ConfigError(f"{path}: {section}: only {who} it, and tasks are {config.tasks}; add one or remove "
                              "the block")


DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _check_device(config: ExperimentConfig, path: Path) -> None:
    """A device name torch knows, and a GPU device only for trials that are given a GPU: Ray hides every
    GPU from a trial that asks for none, so ``cuda`` there fails in each trial."""
    device, gpus = config.train.device, config.tune.gpus_per_trial
    if not DEVICE.match(device):
        raise ConfigError(f"{path}: train.device: {device!r} is not a device; expected auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        index, visible = int(device.partition(":")[2] or 0), max(1, math.ceil(gpus))
        if gpus == 0:
            raise ConfigError(f"{path}: train.device: {device!r} needs tune.gpus_per_trial > 0 (it is 0, so Ray gives "
                              "trials no GPU); set tune.gpus_per_trial, or use device auto")
        if index >= visible:
            raise ConfigError(f"{path}: train.device: {device!r}: a trial sees only the {visible} "
                              f"GPU(s) Ray gives it (tune.gpus_per_trial {gpus:g}), numbered from cuda:0")


def _check_writable(folder: Path, key: str) -> None:
    """The study folder can be made: no regular file on its path, the nearest existing folder writable."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: the study folder {folder} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: the study folder {folder} cannot be made: {existing} is not writable")


def _check_owner(folder: Path, name: str, key: str) -> None:
    """A study folder belongs to one study: one whose ``experiment.yaml`` names another study is not this one's."""
    copy = folder / "experiment.yaml"
    if not copy.is_file():
        return
    try:
        owner = (read_yaml(copy) or {}).get("name")
    except ConfigError:
        owner = "(unreadable)"
    if owner != name:
        raise ConfigError(f"{key}: the study folder {folder} holds the study {owner!r} (its experiment.yaml), not "
                          f"{name!r}; give {name!r} a folder of its own, or remove {folder} to replace that study")


def _search_spaces(config: ExperimentConfig, path: Path) -> dict[str, SearchSpace]:
    """Each trainable method's space: the experiment's inline ``search_space`` (the same for every
    method), else ``<search_spaces>/<method>.yaml``; a method that is not tuned has only its file's fixed
    values, if it has a file."""
    grid = config.tune.search == "grid" or config.final.retrain == "grid"
    spaces = {}
    for name in config.methods:
        cls = METHODS[name]
        if not cls.trainable:  # its file, if any, fixes settings (a checkpoint): nothing to tune
            file = _under(path.parent, config.search_spaces) / f"{name}.yaml"
            if file.is_file():
                spaces[name] = load_search_space(file, cls)
                if spaces[name].domains:
                    raise ConfigError(f"{file}: {name} is not tuned, so its file may only fix values; it has domains "
                                      f"for {['.'.join(p) for p in spaces[name].domains]}")
            continue
        if config.search_space is not None:
            space = parse_search_space(config.search_space, cls, f"{path}: search_space [{name}]", path.parent)
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

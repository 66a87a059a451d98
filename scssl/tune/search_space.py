"""Search spaces: ``search_spaces/<method>.yaml`` read into Ray Tune domains, checked against the
settings classes they tune.

A file has up to three sections, each mapping a settings key to a domain or a fixed value::

    method:   {temperature: {loguniform: [0.1, 10.0]}, embedding_dim: {choice: [32, 64, 128]}}
    train:    {lr: {loguniform: [1.0e-4, 1.0e-2]}}
    augment:  {masking: {rate: {uniform: [0.1, 0.9]}}}

``method`` keys are the method's ``Params``, ``train`` keys ``TrainSettings``, ``augment`` keys
``AugmentationConfig`` (nested). Domains: ``uniform``, ``loguniform`` ([low, high]), ``int``
([low, high], inclusive) and ``choice`` ([values...]).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from scssl.augment import AugmentationConfig
from scssl.settings import ConfigError, as_dict, parse, read_yaml
from scssl.train import TrainSettings

DOMAINS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Domain:
    kind: str
    args: tuple

    def to_tune(self, grid: bool = False):
        if grid:
            return tune.grid_search(list(self.args))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "int":
            return tune.randint(self.args[0], self.args[1] + 1)  # randint's upper bound is exclusive
        return tune.choice(list(self.args))

    def extremes(self) -> list:
        """The values a trial can reach at the edges, to check them against the settings class."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    """A method's tunable keys: ``entries`` maps a path such as ("augment", "masking", "rate") to a Domain
    or a fixed value."""

    method: str
    source: Path
    entries: dict[tuple[str, ...], Any]

    def may_exceed_zero(self, path: tuple[str, ...]) -> bool:
        """Whether a trial may set ``path`` above zero (e.g. switch an augmentation on)."""
        value = self.entries.get(path)
        if value is None:
            return False
        return max(value.extremes() if isinstance(value, Domain) else [value]) > 0

    def param_space(self, grid: bool = False) -> dict:
        """Nested dict of Ray Tune domains, the ``param_space`` of a Tuner; with ``grid``, every
        ``choice`` becomes a grid axis (other domains are refused: see ``check_grid``)."""
        if grid:
            self.check_grid()
        space: dict = {}
        for path, value in self.entries.items():
            node = space
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value.to_tune(grid) if isinstance(value, Domain) else value
        return space

    def check_grid(self) -> None:
        for path, value in self.entries.items():
            if isinstance(value, Domain) and value.kind != "choice":
                raise ConfigError(f"{self.source}: {'.'.join(path)}: grid search needs `choice` values, "
                                  f"got {value.kind}")

    def grid_size(self) -> int:
        size = 1
        for value in self.entries.values():
            if isinstance(value, Domain):
                size *= len(value.args)
        return size


def section_classes(method_cls: type) -> dict[str, type]:
    return {"method": method_cls.Params, "train": TrainSettings, "augment": AugmentationConfig}


def load_search_space(path: Path, method_cls: type) -> SearchSpace:
    """Read and validate ``path``: unknown sections or keys and out-of-range bounds name file and key."""
    raw = read_yaml(path)
    sections = section_classes(method_cls)
    entries: dict[tuple[str, ...], Any] = {}
    for section, body in raw.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section {section!r}; expected one of {list(sections)}")
        _collect(body, (section,), sections[section], path, entries)
    for key, value in entries.items():
        candidates = value.extremes() if isinstance(value, Domain) else [value]
        for candidate in candidates:
            parse(sections[key[0]], _nest(key[1:], candidate), f"{path}: {'.'.join(key)} = {candidate!r}")
    return SearchSpace(method_cls.name, path, entries)


def _collect(body: Any, prefix: tuple[str, ...], cls: type, path: Path, out: dict) -> None:
    where = ".".join(prefix)
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping of keys")
    types = typing.get_type_hints(cls)
    for key, value in body.items():
        if key not in types:
            raise ConfigError(
                f"{path}: {where}.{key}: {key!r} is not a parameter of {cls.__name__}; "
                f"parameters are {sorted(types)}"
            )
        if dataclasses.is_dataclass(types[key]):
            _collect(value, prefix + (key,), types[key], path, out)
        else:
            out[prefix + (key,)] = _domain(value, f"{path}: {where}.{key}")


def _domain(value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        return value  # a fixed value
    if len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise ConfigError(f"{where}: expected one of {list(DOMAINS)} as the only key, got {list(value)}")
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} needs a list of values")
    if kind != "choice":
        if len(args) != 2:
            raise ConfigError(f"{where}: {kind} needs [low, high], got {args}")
        try:
            low, high = (int(a) for a in args) if kind == "int" else (float(a) for a in args)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {kind} bounds must be numbers, got {args}") from None
        if not low < high if kind != "int" else not low <= high:
            raise ConfigError(f"{where}: {kind} needs low < high, got {args}")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0, got {args}")
        args = [low, high]
    return Domain(kind, tuple(args))


def _nest(path: tuple[str, ...], value: Any) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


@dataclass(frozen=True)
class TrialSettings:
    """Everything one training run needs besides data and seed: the experiment's defaults with a
    trial's sampled values laid over them."""

    params: Any
    train: TrainSettings
    augment: AugmentationConfig

    def as_dict(self) -> dict:
        """The full resolved configuration, as logged to MLflow (``config.json``)."""
        return {"method": as_dict(self.params), "train": as_dict(self.train), "augment": as_dict(self.augment)}


def trial_settings(
    method_cls: type, train: TrainSettings, augment: AugmentationConfig, config: dict, source: str = "trial config"
) -> TrialSettings:
    """Resolve a nested trial ``config`` (as sampled by Tune, or read back from MLflow)."""
    sections = section_classes(method_cls)
    bases = {"method": {}, "train": as_dict(train), "augment": as_dict(augment)}
    resolved = {
        name: parse(cls, _merge(bases[name], _plain(config.get(name, {}))), f"{source} [{name}]")
        for name, cls in sections.items()
    }
    return TrialSettings(resolved["method"], resolved["train"], resolved["augment"])


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _plain(value: Any) -> Any:
    """numpy scalars (as samplers return them) to Python values, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value.item() if hasattr(value, "item") else value

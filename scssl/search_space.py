"""Search spaces: ``search_spaces/<method>.yaml`` read into typed domains, checked against the settings
classes they tune (``scssl.tune.domains`` turns them into Ray Tune's).

A file has up to three sections, each mapping a settings key to a domain or a fixed value::

    method:   {temperature: {loguniform: [0.1, 10.0]}, embedding_dim: {choice: [32, 64, 128]}}
    train:    {lr: {loguniform: [1.0e-4, 1.0e-2]}}
    augment:  {masking: {rate: {uniform: [0.1, 0.9]}}}

``method`` keys are the method's ``Params``, ``train`` keys ``TrainSettings``, ``augment`` keys
``AugmentationConfig`` (nested). Domains: ``uniform``, ``loguniform`` ([low, high]), ``int``
([low, high], inclusive) and ``choice`` ([values...]). A section may also be one ``choice`` among
whole blocks, which grid search takes in turn (the augmentation ablation)::

    augment: {choice: [{masking: {prob: 0.5}}, {masking: {prob: 0.5}, gaussian_noise: {prob: 0.5}}]}
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scssl.augment import AugmentationConfig
from scssl.settings import ConfigError, as_dict, flatten, parse, read_yaml
from scssl.train import TrainSettings

DOMAINS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Domain:
    kind: str
    args: tuple

    def extremes(self) -> list:
        """The values a trial can reach at the edges, to check them against the settings class."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]


@dataclass(frozen=True)
class SearchSpace:
    """A method's tunable keys: ``entries`` maps a path such as ("augment", "masking", "rate") to a Domain
    or a fixed value. A path of one element (("augment",)) is a choice among whole blocks."""

    method: str
    source: str
    entries: dict[tuple[str, ...], Any]

    @property
    def domains(self) -> dict[tuple[str, ...], Domain]:
        return {path: value for path, value in self.entries.items() if isinstance(value, Domain)}

    def may_exceed_zero(self, path: tuple[str, ...]) -> bool:
        """Whether a trial may set ``path`` above zero (e.g. switch an augmentation on)."""
        candidates = []
        for key, value in self.entries.items():
            for candidate in value.extremes() if isinstance(value, Domain) else [value]:
                node = _nest(key, candidate)
                for part in path:
                    node = node.get(part) if isinstance(node, dict) else None
                if node is not None:
                    candidates.append(node)
        return max(candidates, default=0) > 0

    def check_grid(self) -> None:
        for path, value in self.domains.items():
            if value.kind != "choice":
                raise ConfigError(f"{self.source}: {'.'.join(path)}: grid search needs `choice` values, "
                                  f"got {value.kind}")

    def grid_points(self) -> list[dict]:
        """Every combination of the ``choice`` values, as nested trial configs (fixed values included)."""
        self.check_grid()
        domains = self.domains
        points = []
        for values in itertools.product(*(d.args for d in domains.values())):
            points.append(nested({**self.entries, **dict(zip(domains, values))}))
        return points

    def fixed(self) -> dict:
        """The values the space fixes (a checkpoint folder), as a nested config: what an untuned run takes."""
        return nested({path: value for path, value in self.entries.items() if not isinstance(value, Domain)})

    def optuna_point(self, config: dict) -> dict:
        """A trial config as Ray's OptunaSearch names its parameters ("method/temperature": 0.5)."""
        return {"/".join(path): _get(config, path) for path in self.domains}

    def label(self, config: dict) -> str:
        """A short name of a config's sampled values, e.g. "temperature=0.5" or "masking.prob=0.5"."""
        parts = []
        for path in self.domains:
            value = _get(config, path)
            if isinstance(value, dict):
                parts.extend([f"{k}={v}" for k, v in flatten(value).items()] or [f"{path[0]}={{}}"])
            else:
                parts.append(f"{'.'.join(path[1:])}={value}")
        return ", ".join(parts)


def config_key(config: dict) -> str:
    """The canonical text of a trial config, to recognise the same config in MLflow tags."""
    return json.dumps(_plain(config), sort_keys=True, default=float)


def nested(entries: dict[tuple[str, ...], Any]) -> dict:
    space: dict = {}
    for path, value in entries.items():
        node = space
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return space


def _get(config: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        config = config[key]
    return config


SECTIONS = {"train": TrainSettings, "augment": AugmentationConfig}  # besides ``method``; a method reads its own


def section_classes(method_cls: type) -> dict[str, type]:
    """The sections ``method_cls`` reads: ``method`` and those of its ``sections``."""
    return {"method": method_cls.Params, **{name: cls for name, cls in SECTIONS.items() if name in method_cls.sections}}


def load_search_space(path: Path, method_cls: type) -> SearchSpace:
    """Read and validate ``path``: unknown sections or keys and out-of-range bounds name file and key."""
    return parse_search_space(read_yaml(path), method_cls, str(path), Path(path).parent)


def parse_search_space(raw: dict, method_cls: type, path: str, base_dir: Path | None = None) -> SearchSpace:
    """Validate a search space given as a dict (a file's content, or an experiment's inline ``search_space``);
    ``path`` names where it came from in errors. A relative file named by a key in the Params'
    ``FILE_KEYS`` (a GMT file) is taken from ``base_dir``, the folder of the file that names it."""
    sections = section_classes(method_cls)
    entries: dict[tuple[str, ...], Any] = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {list(sections)}")
    for section, body in raw.items():
        if section in SECTIONS and section not in sections:
            raise ConfigError(f"{path}: {section}: method {method_cls.name!r} does not use a {section!r} section "
                              f"(it reads {list(sections)}); remove it")
        if section not in sections:
            raise ConfigError(f"{path}: unknown section {section!r}; expected one of {list(sections)}")
        if isinstance(body, dict) and list(body) == ["choice"]:  # a choice among whole blocks
            entries[(section,)] = _domain(body, f"{path}: {section}")
        else:
            _collect(body, (section,), sections[section], path, entries, base_dir)
    for key, value in entries.items():
        candidates = value.extremes() if isinstance(value, Domain) else [value]
        # each value is checked beside the section's fixed values (masking: gene_program needs its gene_programs)
        fixed = nested({k[1:]: v for k, v in entries.items()
                        if k[0] == key[0] and len(k) > 1 and k != key and not isinstance(v, Domain)})
        for candidate in candidates:
            parse(sections[key[0]], _merge(fixed, _nest(key[1:], candidate)),
                  f"{path}: {'.'.join(key)} = {candidate!r}")
    return SearchSpace(method_cls.name, path, entries)


def _collect(body: Any, prefix: tuple[str, ...], cls: type, path: Path, out: dict, base_dir: Path | None) -> None:
    where = ".".join(prefix)
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: {where}: expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    for key, value in body.items():
        if key not in hints:
            raise ConfigError(
                f"{path}: {where}.{key}: {key!r} is not a parameter of {cls.__name__}; "
                f"parameters are {sorted(hints)}"
            )
        block = _settings_block(hints[key])
        if block is not None:
            _collect(value, prefix + (key,), block, path, out, base_dir)
        else:
            domain = _domain(value, f"{path}: {where}.{key}")
            if key in getattr(cls, "FILE_KEYS", ()) and base_dir is not None:
                domain = _files_from(domain, base_dir)
            out[prefix + (key,)] = domain


def _settings_block(hint: Any) -> type | None:
    """The settings class of a key that holds a block of settings (``X`` or ``X | None``), else None."""
    candidates = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _files_from(value: Any, base_dir: Path) -> Any:
    """``value`` (or each value of a choice) with a relative path of an existing file or folder under
    ``base_dir`` made absolute; anything else (a built-in name, a missing file the settings class reports)
    unchanged."""
    if isinstance(value, Domain):
        return Domain(value.kind, tuple(_files_from(v, base_dir) for v in value.args))
    if isinstance(value, str) and not Path(value).expanduser().is_absolute() and (base_dir / value).exists():
        return str((base_dir / value).resolve())
    return value


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
    trial's sampled values laid over them. A section the method does not read is None."""

    params: Any
    train: TrainSettings | None
    augment: AugmentationConfig | None

    def as_dict(self) -> dict:
        """The full resolved configuration of the sections the method reads, as logged to MLflow
        (``config.json``) and digested into a retrain job's identity."""
        sections = {"method": self.params, "train": self.train, "augment": self.augment}
        return {name: as_dict(value) for name, value in sections.items() if value is not None}


def trial_settings(
    method_cls: type, train: TrainSettings | None, augment: AugmentationConfig | None, config: dict,
    source: str = "trial config",
) -> TrialSettings:
    """Resolve a nested trial ``config`` (as sampled by Tune, or read back from MLflow)."""
    sections = section_classes(method_cls)
    bases = {"method": {}, "train": as_dict(train) if train is not None else {},
             "augment": as_dict(augment) if augment is not None else {}}
    resolved = {
        name: parse(cls, _merge(bases[name], _plain(config.get(name, {}))), f"{source} [{name}]")
        for name, cls in sections.items()
    }
    return TrialSettings(resolved["method"], resolved.get("train"), resolved.get("augment"))


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

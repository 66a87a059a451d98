"""Typed settings: every YAML block becomes a validated, frozen dataclass once, at load time.

Each layer declares its own settings class next to the code that uses it (``DatasetSpec`` in
``data``, ``AugmentationConfig`` in ``augment``, a method's ``Params`` beside the method, ...);
this module only holds the shared machinery, so no layer reads raw dicts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import ArgsKwargs
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from typing_extensions import Annotated

T = TypeVar("T")

# A name that becomes part of a path or an MLflow search (a study's name, a data set's id): no separators,
# no quotes, no leading dot, so it can neither leave the study folder nor break a filter string.
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
SAFE_NAME_TEXT = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
Name = Annotated[str, Field(pattern=SAFE_NAME)]

# Unknown keys are errors, values are coerced where unambiguous ("1e-4" -> 1e-4), instances frozen.
_STRICT = ConfigDict(extra="forbid")


def settings(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, validated dataclass that rejects unknown keys."""
    return _pydantic_dataclass(cls, config=_STRICT, frozen=True)


class ConfigError(ValueError):
    """A configuration is invalid; the message names the file, the key and what was expected."""


def parse(cls: type[T], raw: Any, source: str) -> T:
    """Validate ``raw`` (a dict read from YAML) into ``cls``; errors name ``source`` and the key path."""
    try:
        return TypeAdapter(cls).validate_python({} if raw is None else raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "(top level)"
            message, got = e["msg"], "" if e["type"] == "missing" else f" (got {e['input']!r})"
            if e["type"] == "string_type" and isinstance(e["input"], (int, float)):
                got += f"; YAML read it as a number: quote it, '{e['input']}'"
            if e["type"] == "string_pattern_mismatch" and e["ctx"].get("pattern") == SAFE_NAME:
                message = f"a name may hold only {SAFE_NAME_TEXT}"
            problems.append(f"  {key}: {message}{got}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(problems)) from None


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with an error that names the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def with_preset(data: Any, key: str, presets: dict[str, dict]) -> Any:
    """Raw settings ``data`` laid over the preset its ``key`` names (one level deep: a block given beside the
    preset updates the preset's block); for a ``model_validator(mode="before")``. Built in Python
    (``Params(preset=...)``) pydantic passes an ``ArgsKwargs``; an unknown name is left to the Literal check."""
    if isinstance(data, ArgsKwargs) and not data.args:
        data = data.kwargs or {}
    if not isinstance(data, dict) or data.get(key) not in presets:
        return data
    merged = {name: dict(value) if isinstance(value, dict) else value for name, value in presets[data[key]].items()}
    for name, value in data.items():
        merged[name] = {**merged.get(name, {}), **value} if isinstance(value, dict) else value
    return merged


def as_dict(obj: Any) -> dict:
    """A settings object as plain nested dicts (for MLflow params and JSON artifacts)."""
    return dataclasses.asdict(obj)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{"augment": {"masking": {"rate": 0.2}}} -> {"augment.masking.rate": 0.2}"""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

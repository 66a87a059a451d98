"""Offline check of a ``ray up`` cluster file against Ray's own schema, before any cloud is contacted.

``ray up`` has no dry run; Ray's autoscaler validates a config after merging the provider's
defaults, which is what this does (through Ray's internal helpers, the only offline path there is).
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
from ray.autoscaler._private.util import prepare_config, validate_config

from scssl.settings import ConfigError, read_yaml


def check_cluster_config(path: str | Path) -> dict:
    """The prepared config of ``path``; a ConfigError naming the file and the problem if it is invalid."""
    raw = read_yaml(path)
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ConfigError(f"{path}: {where}: {err.message}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ConfigError(f"{path}: {err}") from None
    return prepared

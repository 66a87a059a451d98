"""scssl: benchmark and tune self-supervised learning for single-cell genomics.

Layers, each importing only those before it: data -> augment -> methods -> train -> evaluate
-> tune -> report. Only ``tune`` and ``report`` know Ray and MLflow.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, list[str]]):
    """A package's module ``__getattr__`` that imports ``package.<submodule>`` when one of its names in
    ``exports`` (submodule -> names) is first used, so that listing commands and config checks load no
    torch, scanpy, sklearn or Ray they do not need."""
    owner = {name: submodule for submodule, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{owner[name]}")
        namespace = vars(sys.modules[package])
        for each in exports[owner[name]]:  # all at once: ``prepare`` the function must win over its submodule
            namespace[each] = getattr(module, each)
        return namespace[name]

    return __getattr__

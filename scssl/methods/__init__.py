"""Method layer: the registry of every method by name, each a small class with typed ``Params``."""

from scssl.methods.base import EncoderParams, SSLMethod
from scssl.methods.pca import PCABaseline
from scssl.methods.simclr import SimCLR
from scssl.methods.vicreg import VICReg

METHODS: dict[str, type] = {cls.name: cls for cls in (PCABaseline, SimCLR, VICReg)}


def get_method(name: str) -> type:
    """The method class registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "EncoderParams", "PCABaseline", "SSLMethod", "SimCLR", "VICReg", "get_method"]

"""Method layer: the registry of every method by name, each a small class with typed ``Params``."""

from scssl.methods.barlow_twins import BarlowTwins
from scssl.methods.base import EncoderParams, SSLMethod
from scssl.methods.byol import BYOL
from scssl.methods.moco import MoCo
from scssl.methods.nnclr import NNCLR
from scssl.methods.pca import PCABaseline
from scssl.methods.simclr import SimCLR
from scssl.methods.simsiam import SimSiam
from scssl.methods.vicreg import VICReg

METHODS: dict[str, type] = {
    cls.name: cls for cls in (PCABaseline, SimCLR, MoCo, SimSiam, NNCLR, BYOL, BarlowTwins, VICReg)
}


def get_method(name: str) -> type:
    """The method class registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = [
    "BYOL", "METHODS", "NNCLR", "BarlowTwins", "EncoderParams", "MoCo", "PCABaseline", "SSLMethod", "SimCLR",
    "SimSiam", "VICReg", "get_method",
]

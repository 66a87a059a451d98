"""Method layer: the registry of every method by name, each a small class with typed ``Params``, all
behind the contract of ``base.py``.

A method's module (torch with it) loads on the first look-up of its class, so that checking the
method names of an experiment file needs no torch.
"""

import sys
from collections.abc import Iterator, Mapping

from scssl import lazy_exports

_CLASSES = {  # method name (also its module) -> class
    "pca": "PCABaseline", "simclr": "SimCLR", "moco": "MoCo", "simsiam": "SimSiam", "nnclr": "NNCLR",
    "byol": "BYOL", "barlow_twins": "BarlowTwins", "vicreg": "VICReg", "mae": "MAE",
    "scclip": "SCCLIP", "totalvi": "TotalVI", "multivi": "MultiVI", "scvi": "SCVI", "scanvi": "SCANVI",
    "clear": "CLEAR", "claire": "CLAIRE", "concerto": "Concerto", "scgpt": "ScGPT", "scgpt_zero_shot": "ScGPTZeroShot", "geneformer": "Geneformer",
    "scbert": "ScBERT",
}

BASE = ["Batch", "EncoderParams", "FittedMethod", "SSLMethod", "TrainingContext", "TwoViewMethod",
        "UnavailableMethod"]
__getattr__ = lazy_exports(__name__, {"base": BASE, **{n: [c] for n, c in _CLASSES.items()}})


class _Registry(Mapping):
    """Method name -> class; a class loads on its first look-up."""

    def __getitem__(self, name: str) -> type:
        return getattr(sys.modules[__name__], _CLASSES[name])

    def __contains__(self, name: object) -> bool:  # without loading the class
        return name in _CLASSES

    def __iter__(self) -> Iterator[str]:
        return iter(_CLASSES)

    def __len__(self) -> int:
        return len(_CLASSES)


METHODS: Mapping[str, type] = _Registry()


def get_method(name: str) -> type:
    """The method class registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


__all__ = [
    "BYOL", "CLAIRE", "CLEAR", "Concerto", "Geneformer", "MAE", "ScBERT", "ScGPT", "ScGPTZeroShot", "METHODS", "NNCLR", "Batch", "BarlowTwins", "EncoderParams", "FittedMethod", "MoCo", "PCABaseline",
    "MultiVI", "SCANVI", "SCCLIP", "SCVI", "SSLMethod", "SimCLR", "SimSiam", "TotalVI", "TrainingContext", "TwoViewMethod", "UnavailableMethod", "VICReg",
    "get_method",
]

"""Data layer: data-set specs, built-in data, preprocessing, synthetic data, device mini-batches.

Specs and built-in data sets load at once; the rest (torch, anndata, scanpy) on first use.
"""

from scssl import lazy_exports
from scssl.data.builtin import BUILTIN_DATASETS, resolve
from scssl.data.spec import DatasetSpec

__getattr__ = lazy_exports(__name__, {
    "cells": ["CellMatrix", "Cells"],
    "prepare": ["DataError", "PreparedDataset", "prepare", "prepare_store", "read_h5ad"],
    "store": ["CellStore"],
    "synthetic": ["make_synthetic"],
})

__all__ = [
    "BUILTIN_DATASETS", "CellMatrix", "CellStore", "Cells", "DataError", "DatasetSpec", "PreparedDataset",
    "make_synthetic", "prepare", "prepare_store", "read_h5ad", "resolve",
]

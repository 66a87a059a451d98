"""Data layer: data-set specs, built-in data, preprocessing, synthetic data, device mini-batches."""

from scssl.data.builtin import BUILTIN_DATASETS, resolve
from scssl.data.cells import CellMatrix
from scssl.data.prepare import PreparedDataset, prepare, read_h5ad
from scssl.data.spec import DatasetSpec
from scssl.data.synthetic import make_synthetic

__all__ = [
    "BUILTIN_DATASETS", "CellMatrix", "DatasetSpec", "PreparedDataset",
    "make_synthetic", "prepare", "read_h5ad", "resolve",
]

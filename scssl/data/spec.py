"""The dataset block of an experiment file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import ConfigError, settings


@settings
class DatasetSpec:
    """Which cells to load and how to read them.

    Give either ``name`` (a built-in data set, see ``scssl datasets``) or ``path`` (any ``.h5ad``).
    ``counts_layer`` names the layer holding raw counts; ``None`` means ``X`` holds them.
    Cells of ``query_batches`` are held out of training for query-to-reference cell typing.
    A cell without a batch or cell type (NaN or empty) is an error, or with ``drop_missing`` is dropped.
    ``pretrain`` names (by ``id``) another data set of the experiment: methods are trained on that one's
    cells and scored on this one's, whose genes are aligned to the pretraining genes by name (transfer).
    """

    name: str | None = None
    path: str | None = None
    batch_key: str | None = None
    labels_key: str | None = None
    counts_layer: str | None = None
    query_batches: list[str] | None = None
    n_hvgs: Annotated[int, Field(ge=2)] = 4000
    drop_missing: bool = False
    id: str | None = None
    pretrain: str | None = None

    def __post_init__(self) -> None:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of `name` (a built-in data set) or `path` (an .h5ad file)")
        if self.path is not None and (self.batch_key is None or self.labels_key is None):
            raise ValueError("a data set given by `path` needs `batch_key` and `labels_key`")

    @property
    def label(self) -> str:
        """Short name used in tables, MLflow and file names."""
        return self.id or self.name or Path(self.path).stem


class DataError(ConfigError):
    """The data of a data set is unusable; ``key`` is the DatasetSpec field the problem concerns.

    The message names the data file; whoever knows the experiment file adds it and the key path.
    """

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # the default would rebuild it from the message alone, without ``key``
        return type(self), (str(self), self.key)

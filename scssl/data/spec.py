"""The dataset block of an experiment file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import ConfigError, settings


@settings
class ModalitySpec:
    """The second modality of the data set's cells (CITE-seq protein, or multiome ATAC), paired by cell name.

    Give ``path`` (an ``.h5ad`` whose cell names match the RNA file's), or with a ``.h5mu`` data set
    ``mod`` (the modality's name in it). ``counts_layer`` as for RNA. Protein is normalised by
    ``normalisation`` (``clr``: centred log-ratio per cell, as muon's; ``log1p``: scaled to 1e4 per cell,
    then log1p); ATAC is cut to the ``n_features`` peaks with the most counts in the reference cells,
    binarised and TF-IDF transformed. Cells measured in only one modality are dropped and counted.
    """

    kind: Literal["protein", "atac"]
    path: str | None = None
    mod: str | None = None
    counts_layer: str | None = None
    normalisation: Literal["clr", "log1p"] = "clr"
    n_features: Annotated[int, Field(ge=1)] = 20000

    def __post_init__(self) -> None:
        if (self.path is None) == (self.mod is None):
            raise ValueError("give exactly one of `path` (an .h5ad of the same cells) or `mod` (a modality of "
                             "the data set's .h5mu file)")


@settings
class DatasetSpec:
    """Which cells to load and how to read them.

    Give either ``name`` (a built-in data set, see ``scssl datasets``) or ``path`` (any ``.h5ad``).
    ``counts_layer`` names the layer holding raw counts; ``None`` means ``X`` holds them.
    Cells of ``query_batches`` are held out of training for query-to-reference cell typing.
    A cell without a batch or cell type (NaN or empty) is an error, or with ``drop_missing`` is dropped.
    ``pretrain`` names (by ``id``) another data set of the experiment: methods are trained on that one's
    cells and scored on this one's, whose genes are aligned to the pretraining genes by name (transfer).
    ``path`` may be a ``.h5mu`` file: its ``rna_mod`` modality is the RNA, and ``modality.mod`` names the
    second one; ``modality`` (``ModalitySpec``) makes the data set multimodal.
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
    modality: ModalitySpec | None = None
    rna_mod: str = "rna"

    def __post_init__(self) -> None:
        if (self.name is None) == (self.path is None):
            raise ValueError("give exactly one of `name` (a built-in data set) or `path` (an .h5ad file)")
        if self.path is not None and (self.batch_key is None or self.labels_key is None):
            raise ValueError("a data set given by `path` needs `batch_key` and `labels_key`")
        mod = self.modality is not None and self.modality.mod is not None
        if mod and self.path is not None and not self.path.endswith(".h5mu"):
            raise ValueError("`modality.mod` names a modality of a .h5mu file, and `path` is not one")

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

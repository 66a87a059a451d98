"""The dataset block of an experiment file."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field
from typing_extensions import Annotated

from scssl.settings import ConfigError, settings

DEFAULT_N_HVGS = 4000  # scSSL-Bench's final uni-modal configs' data.n_hvgs, and so each paper data set's


@settings
class ModalitySpec:
    """The second modality of the data set's cells (CITE-seq protein, or multiome ATAC), paired by cell name.

    Give ``path`` (an ``.h5ad`` whose cell names match the RNA file's), or with a ``.h5mu`` data set
    ``mod`` (the modality's name in it). ``kind`` may be left out beside a data set's ``name`` that has a
    second modality (it is taken from there). ``counts_layer`` as for RNA. Protein is normalised by
    ``normalisation`` (``clr``: centred log-ratio per cell, as muon's; ``log1p``: scaled to 1e4 per cell,
    then log1p); ATAC is cut to the ``n_features`` peaks with the most counts in the reference cells,
    binarised and TF-IDF transformed. Cells measured in only one modality are dropped and counted.
    """

    kind: Literal["protein", "atac"] | None = None
    path: str | None = None
    mod: str | None = None
    counts_layer: str | None = None
    normalisation: Literal["clr", "log1p"] = "clr"
    n_features: Annotated[int, Field(ge=1)] = 20000

    def __post_init__(self) -> None:
        if (self.path is None) == (self.mod is None):
            raise ValueError("give exactly one of `path` (an .h5ad of the same cells) or `mod` (a modality of "
                             "the data set's .h5mu file)")

    def under(self, base_dir: Path) -> ModalitySpec:
        """This modality with its file's path made absolute, a relative one taken from ``base_dir``."""
        return self if self.path is None else dataclasses.replace(self, path=_absolute(self.path, base_dir))


@settings
class DatasetSpec:
    """Which cells to load and how to read them.

    Give ``name`` alone (a built-in data set, shipped with scssl), ``path`` alone (any ``.h5ad``, with
    ``batch_key`` and ``labels_key``), or ``name`` and ``path``: one of the paper's data sets (see
    ``scssl datasets``) and your copy of its file, read by the paper's protocol. A name fills the keys left
    out; those given beside it win.
    ``counts_layer`` names the layer holding raw counts; ``None`` means ``X`` holds them (beside a ``name``
    a ``None`` takes the name's layer, and ``X`` says that ``X`` holds them).
    Cells of ``query_batches`` are held out of training for query-to-reference cell typing.
    A cell without a batch or cell type (NaN or empty) is an error, or with ``drop_missing`` is dropped.
    The cells of the cell types in ``drop_labels`` are dropped and counted (Tabula Sapiens' rare classes).
    ``pretrain`` names (by ``id``) another data set of the experiment: methods are trained on that one's
    cells and scored on this one's, whose genes are aligned to the pretraining genes by name (transfer).
    ``path`` may be a ``.h5mu`` file: its ``rna_mod`` modality is the RNA, and ``modality.mod`` names the
    second one; ``modality`` (``ModalitySpec``) makes the data set multimodal.
    An RNA ``.h5ad`` of ``store_from_cells`` cells or more (null: never) is prepared to disk, once, into a store
    that every later study reuses, and methods train on it streamed, in bounded memory; the tasks then score
    ``evaluation_cells`` of its cells (a random sample, held in memory). Smaller data sets are held in memory.
    """

    name: str | None = None
    path: str | None = None
    batch_key: str | None = None
    labels_key: str | None = None
    counts_layer: str | None = None
    query_batches: list[str] | None = None
    n_hvgs: Annotated[int, Field(ge=2)] = DEFAULT_N_HVGS
    drop_missing: bool = False
    drop_labels: list[str] | None = None
    id: str | None = None
    pretrain: str | None = None
    modality: ModalitySpec | None = None
    rna_mod: str = "rna"
    store_from_cells: Annotated[int, Field(ge=1)] | None = 1_000_000
    evaluation_cells: Annotated[int, Field(ge=100)] = 100_000

    def __post_init__(self) -> None:
        if self.name is None and self.path is None:
            raise ValueError("give exactly one of `name` (a built-in data set) or `path` (an .h5ad file), or both for "
                             "one of the paper's data sets (see `scssl datasets`)")
        if self.name is None and (self.batch_key is None or self.labels_key is None):
            raise ValueError("a data set given by `path` needs `batch_key` and `labels_key`")
        if self.name is None and self.modality is not None and self.modality.kind is None:
            raise ValueError("`modality` needs `kind` (protein or atac) unless `name` is a data set that has one")
        mod = self.modality is not None and self.modality.mod is not None
        if mod and self.path is not None and not self.path.endswith(".h5mu"):
            raise ValueError("`modality.mod` names a modality of a .h5mu file, and `path` is not one")

    @property
    def label(self) -> str:
        """Short name used in tables, MLflow and file names."""
        return self.id or self.name or Path(self.path).stem

    def under(self, base_dir: Path) -> DatasetSpec:
        """This spec with its files' paths made absolute, relative ones taken from ``base_dir``."""
        return dataclasses.replace(self, path=None if self.path is None else _absolute(self.path, base_dir),
                                   modality=None if self.modality is None else self.modality.under(base_dir))


def _absolute(value: str, base_dir: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


STORAGE_FIELDS = ("store_from_cells", "evaluation_cells")  # where prepared cells are held, not what they are

X_HOLDS_COUNTS = "X"  # ``counts_layer: X`` beside a name: the file's X holds the raw counts, not the name's layer


@dataclass(frozen=True)
class NamedKeys:
    """The keys a data set's name stands for; a user's own keys beside the name override them."""

    batch_key: str
    labels_key: str
    counts_layer: str | None
    query_batches: tuple[str, ...]

    @property
    def second_modality(self) -> str | None:
        """The kind of the data set's second modality; None: RNA alone."""
        return None

    @property
    def dropped_labels(self) -> tuple[str, ...]:
        """The cell types whose cells the data set's protocol drops."""
        return ()

    @property
    def modalities(self) -> str:
        return "RNA" if self.second_modality is None else f"RNA + {self.second_modality}"

    def fill(self, spec: DatasetSpec, path: str, modality: ModalitySpec | None) -> DatasetSpec:
        """``spec`` read from ``path`` with ``modality`` (its kind, if left out, this data set's), the keys it
        leaves out taken from here and its name become its ``id``: a spec as if given by ``path``."""
        if modality is not None and modality.kind is None:
            if self.second_modality is None:
                raise ConfigError(f"data set {spec.name!r} is RNA alone, so its `modality` needs `kind` "
                                  "(protein or atac)")
            modality = dataclasses.replace(modality, kind=self.second_modality)
        layer = self.counts_layer if spec.counts_layer is None else spec.counts_layer
        return dataclasses.replace(
            spec,
            name=None,
            id=spec.label,
            path=path,
            batch_key=spec.batch_key or self.batch_key,
            labels_key=spec.labels_key or self.labels_key,
            counts_layer=None if layer == X_HOLDS_COUNTS else layer,
            query_batches=list(self.query_batches) if spec.query_batches is None else spec.query_batches,
            drop_labels=list(self.dropped_labels) if spec.drop_labels is None else spec.drop_labels,
            modality=modality,
        )


class DataError(ConfigError):
    """The data of a data set is unusable; ``key`` is the DatasetSpec field the problem concerns.

    The message names the data file; whoever knows the experiment file adds it and the key path.
    """

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # the default would rebuild it from the message alone, without ``key``
        return type(self), (str(self), self.key)

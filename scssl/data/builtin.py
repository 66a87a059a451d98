"""Real data sets shipped inside the package, addressable by name (``scssl datasets`` lists them), and
``resolve``, which turns any data set of an experiment (built-in, the paper's, or a file) into a complete spec."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from scssl.data.paper import PAPER_DATASETS
from scssl.data.spec import DatasetSpec, ModalitySpec, NamedKeys
from scssl.settings import ConfigError

BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class BuiltinDataset(NamedKeys):
    file: str
    description: str
    modality: ModalitySpec | None = None  # its path (if any) a file name in BUILTIN_DIR

    @property
    def path(self) -> Path:
        return BUILTIN_DIR / self.file

    @property
    def second_modality(self) -> str | None:
        return None if self.modality is None else self.modality.kind

    def resolve(self, spec: DatasetSpec, base_dir: Path) -> DatasetSpec:
        """``spec`` naming this data set, read from the shipped file; a modality the user gives replaces its own."""
        if spec.path is not None:
            raise ConfigError(f"{spec.name!r} is a built-in data set, shipped with its file: give exactly one of "
                              f"`name` or `path` for it (the paper's data sets, {', '.join(PAPER_DATASETS)}, take "
                              "both)")
        own = None if self.modality is None else self.modality.under(BUILTIN_DIR)
        return self.fill(spec, str(self.path), own if spec.modality is None else spec.modality.under(base_dir))


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "bmmc_cite_starter": BuiltinDataset(
        file="neurips2021_bmmc_cite_starter_rna.h5ad",
        batch_key="batch",
        labels_key="cell_type",
        counts_layer="counts",
        query_batches=("s1d2",),
        description="NeurIPS 2021 BMMC CITE-seq starter, RNA: 600 cells x 1,000 genes, "
        "2 donors (s1d1, s1d2), 41 cell types, raw counts in layers['counts']. MIT (see PROVENANCE.md).",
    ),
    "pbmc_hao2021": BuiltinDataset(
        file="hao2021_pbmc_mosaic_rna.h5ad",
        batch_key="batch",
        labels_key="celltype",
        counts_layer=None,
        query_batches=("p4_0",),
        description="Hao et al. 2021 PBMC CITE-seq subset, RNA: 1,200 cells x 500 genes, "
        "3 donors (p1_0, p3_0, p4_0), 8 cell types, raw counts in X. MIT (see PROVENANCE.md).",
    ),
    "pbmc_hao2021_cite": BuiltinDataset(
        file="hao2021_pbmc_cite_mosaic_scmidas.h5mu",
        batch_key="batch",
        labels_key="celltype",
        counts_layer=None,
        query_batches=("p4_0",),
        description="Hao et al. 2021 PBMC CITE-seq mosaic (MuData): 800 cells with RNA (500 genes) and 224 "
        "proteins from 2 donors, plus 400 RNA-only cells (donor p1_0; totalVI and MultiVI train on them) and 400 "
        "protein-only cells (dropped), 8 cell types. MIT.",
        modality=ModalitySpec(kind="protein", mod="adt"),
    ),
    "bmmc_multiome": BuiltinDataset(
        file="neurips2021_bmmc_multiome_starter_rna.h5ad",
        batch_key="batch",
        labels_key="cell_type",
        counts_layer="counts",
        query_batches=("s1d2",),
        description="NeurIPS 2021 BMMC multiome starter: 500 cells, RNA 600 genes + ATAC 600 peaks, 2 donors, "
        "21 cell types. MIT (see PROVENANCE.md).",
        modality=ModalitySpec(kind="atac", path="neurips2021_bmmc_multiome_starter_atac.h5ad", counts_layer="counts"),
    ),
}
BUILTIN_DATASETS["bmmc_cite"] = dataclasses.replace(
    BUILTIN_DATASETS["bmmc_cite_starter"],
    description="The BMMC CITE-seq starter with its proteins: 600 cells, RNA 1,000 genes + 134 proteins (raw "
    "counts in layers['counts'] of both files), 2 donors, 41 cell types. MIT (see PROVENANCE.md).",
    modality=ModalitySpec(kind="protein", path="neurips2021_bmmc_cite_starter_adt.h5ad", counts_layer="counts"),
)


def resolve(spec: DatasetSpec, base_dir: Path) -> DatasetSpec:
    """A complete spec: a name filled with its data set's keys and file, relative paths made absolute."""
    if spec.name is None:
        return spec.under(base_dir)
    if spec.name in PAPER_DATASETS:
        return PAPER_DATASETS[spec.name].resolve(spec, base_dir)
    if spec.name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"dataset name {spec.name!r} is not a built-in data set ({', '.join(BUILTIN_DATASETS)}) nor one of the "
            f"paper's ({', '.join(PAPER_DATASETS)}, each with `path:` to your copy); or give `path:` alone to an "
            ".h5ad file"
        )
    return BUILTIN_DATASETS[spec.name].resolve(spec, base_dir)

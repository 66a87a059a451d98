"""Real data sets shipped inside the package, addressable by name (``scssl datasets`` lists them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from scssl.data.spec import DatasetSpec, ModalitySpec
from scssl.settings import ConfigError

BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass(frozen=True)
class BuiltinDataset:
    file: str
    batch_key: str
    labels_key: str
    counts_layer: str | None
    query_batches: tuple[str, ...]
    description: str
    modality: ModalitySpec | None = None  # its path (if any) a file name in BUILTIN_DIR

    @property
    def path(self) -> Path:
        return BUILTIN_DIR / self.file

    @property
    def modalities(self) -> str:
        return "RNA" if self.modality is None else f"RNA + {self.modality.kind}"


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
    """A complete spec: a built-in name filled with its keys, a relative path made absolute."""
    if spec.name is not None:
        if spec.name not in BUILTIN_DATASETS:
            raise ConfigError(
                f"dataset name {spec.name!r} is not a built-in data set; "
                f"known: {', '.join(BUILTIN_DATASETS)} (or give `path:` to an .h5ad file)"
            )
        known = BUILTIN_DATASETS[spec.name]
        return dataclasses.replace(
            spec,
            name=None,
            id=spec.label,
            path=str(known.path),
            batch_key=spec.batch_key or known.batch_key,
            labels_key=spec.labels_key or known.labels_key,
            counts_layer=spec.counts_layer if spec.counts_layer is not None else known.counts_layer,
            query_batches=spec.query_batches if spec.query_batches is not None else list(known.query_batches),
            modality=_under(spec.modality or known.modality, BUILTIN_DIR if spec.modality is None else base_dir),
        )
    return dataclasses.replace(spec, path=str(_path(spec.path, base_dir)), modality=_under(spec.modality, base_dir))


def _path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _under(modality: ModalitySpec | None, base_dir: Path) -> ModalitySpec | None:
    """``modality`` with its file's path made absolute."""
    if modality is None or modality.path is None:
        return modality
    return dataclasses.replace(modality, path=str(_path(modality.path, base_dir)))

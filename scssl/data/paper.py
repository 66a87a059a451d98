"""The nine data sets of scSSL-Bench (Ovcharenko et al., ICML 2025) as named protocols for a file the user has.

The paper's preprocessed files are not public (its repository's issue #2), so none ships with scssl: a user
with a copy writes ``name: pancreas`` beside ``path:`` and gets the paper's keys and query batches, and
its preprocessing (normalize_total, log1p, 4000 batch-aware HVGs: every data set's default ``n_hvgs``,
the value of the paper's final configs). Keys come from BoevaLab/scSSL-Bench's loaders
(``moco/prepare_dataset.py``: the ``prepare_*_our`` functions its dispatch uses, and the two multimodal
ones), query batches from its query-to-reference configs (``conf/experiment/*_qr*.yaml``,
``conf/exp/qr_big.yaml``). A data set the paper ran for batch correction alone has no query batches
(``[]``): an experiment with a query task then needs ``query_batches`` of the user's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scssl.data.spec import X_HOLDS_COUNTS, DataError, DatasetSpec, NamedKeys
from scssl.settings import ConfigError

# The broad classes prepare_sapiens.py drops from Tabula Sapiens before writing the paper's file.
SAPIENS_RARE_CLASSES = ("melanocyte", "connective tissue cell", "retinal pigment epithelial cell",
                        "vestibular dark cell", "female germ cell", "fat cell", "follicle")


@dataclass(frozen=True)
class PaperDataset(NamedKeys):
    """One of the paper's data sets: its keys and query batches, the name of the paper's file (``file``; with
    ``protein_file``, the ADT file of a CITE-seq data set, which the user then gives as ``modality.path``)
    and what the user's file must hold (``description``)."""

    title: str
    file: str
    description: str
    protein_file: str | None = None
    drop_labels: tuple[str, ...] = ()

    @property
    def dropped_labels(self) -> tuple[str, ...]:
        return self.drop_labels

    @property
    def second_modality(self) -> str | None:
        return None if self.protein_file is None else "protein"

    @property
    def files(self) -> str:
        """What the user gives, with the paper's file names."""
        rna = f"`path` (the paper's {self.file})"
        return rna if self.protein_file is None else f"{rna} and `modality: {{path: ...}}` ({self.protein_file})"

    def resolve(self, spec: DatasetSpec, base_dir: Path) -> DatasetSpec:
        """``spec`` naming this data set, with the user's file(s) and own keys, read by the paper's protocol;
        the file, where it can be read, must hold the keys and query batches (see ``check_file``)."""
        if spec.path is None:
            raise ConfigError(f"{spec.name!r} is the paper's {self.title} data set, whose file scssl does not ship: "
                              f"give {self.files} to your copy")
        if self.protein_file is not None and spec.modality is None:
            raise ConfigError(f"{spec.name!r} is the paper's {self.title} CITE-seq data set, RNA and proteins in two "
                              f"files: give `modality: {{path: ...}}` to the proteins' .h5ad (the paper's "
                              f"{self.protein_file}) beside `path`; for its RNA alone, give the file by `path` with "
                              f"batch_key {self.batch_key!r} and labels_key {self.labels_key!r} and no `name`")
        located = spec.under(base_dir)
        resolved = self.fill(spec, located.path, located.modality)
        self.check_file(resolved, spec)
        return resolved

    def check_file(self, resolved: DatasetSpec, given: DatasetSpec) -> None:
        """A file laid out otherwise than the paper's is an error naming the file, this data set, the key and
        what the file has, so that the user sets that key beside the name. Only obs columns, layer names and the
        batch column are read. A file that is missing or not an .h5ad in anndata's layout is left to
        ``prepare``, whose checks say what is wrong with it."""
        import h5py

        path = Path(resolved.path)
        if path.suffix != ".h5ad" or not path.is_file():
            return
        try:
            file = h5py.File(path, "r")
        except OSError:
            return
        with file:
            obs = file.get("obs")
            if not isinstance(obs, h5py.Group) or "column-order" not in obs.attrs:
                return
            columns = [str(c) for c in obs.attrs["column-order"]]
            for field in ("batch_key", "labels_key"):
                key = getattr(resolved, field)
                if key not in columns:
                    raise DataError(f"{path}: obs has no column {key!r}, the {field} {self._whose(given, field)}; "
                                    f"its columns are {columns}; set `{field}` to the file's own column", field)
            layers = list(file.get("layers", {}))
            if resolved.counts_layer is not None and resolved.counts_layer not in layers:
                raise DataError(f"{path}: no layer {resolved.counts_layer!r} of raw counts, the counts_layer "
                                f"{self._whose(given, 'counts_layer')}; its layers are {layers}; set `counts_layer` "
                                f"to the layer of raw counts, or `{X_HOLDS_COUNTS}` if X holds them", "counts_layer")
            batches = _values(obs[resolved.batch_key]) if resolved.query_batches else None
            if batches is not None:
                missing = [b for b in resolved.query_batches if b not in batches]
                if missing:
                    raise DataError(f"{path}: query batches {missing} ({self._whose(given, 'query_batches')}) are not "
                                    f"values of obs[{resolved.batch_key!r}]; its values are {sorted(batches)}; set "
                                    "`query_batches` to batches of the file ([] for batch correction alone)",
                                    "query_batches")

    def _whose(self, given: DatasetSpec, field: str) -> str:
        """Where a key's value came from: the experiment, or this data set's protocol."""
        named = f"the paper's {self.title} data set (`name: {given.name}`)"
        return f"given for {named}" if getattr(given, field) is not None else f"of {named}"


def _values(column) -> set[str] | None:
    """The values of an obs column of an .h5ad, as text (as ``prepare`` reads them); None for an encoding not read
    here. h5py alone: checking an experiment file does not pay for importing anndata."""
    import h5py

    encoding = column.attrs.get("encoding-type")
    if encoding == "categorical":
        categories = _texts(column["categories"])
        codes = column["codes"][()]
        return {str(c) for c in categories[np.unique(codes[codes >= 0])]}
    if encoding in ("string-array", "array") and isinstance(column, h5py.Dataset):
        return {str(v) for v in np.unique(_texts(column))}
    return None


def _texts(data) -> np.ndarray:
    """An HDF5 dataset's values, its strings decoded."""
    import h5py

    return data.asstr()[()] if h5py.check_string_dtype(data.dtype) else data[()]


_BC_ONLY = "The paper ran it for batch correction alone and names no query batch: give `query_batches` for cell typing."

PAPER_DATASETS: dict[str, PaperDataset] = {
    "pbmc": PaperDataset(
        title="PBMC", file="PBMC.h5ad", batch_key="batch", labels_key="CellType", counts_layer="counts",
        query_batches=(),
        description="PBMCs of two 10x protocols (3' and 5', Tran et al. 2020), about 15.5k cells in 2 batches; raw "
        f"counts in layers['counts']. {_BC_ONLY}",
    ),
    "pancreas": PaperDataset(
        title="Pancreas", file="Pancreas.h5ad", batch_key="batchlb", labels_key="celltype", counts_layer="counts",
        query_batches=("Mutaro_b2",),
        description="Five human pancreas studies, batches Baron_b1, Mutaro_b2, Segerstolpe_b3, Wang_b4 and Xin_b5 "
        "(about 14.9k cells, 13 types); raw counts in layers['counts']. The paper types each of Mutaro_b2, "
        "Segerstolpe_b3, Wang_b4 and Xin_b5 in a run of its own, all other batches the reference (Baron never the "
        "query); the default is Mutaro_b2. Choose another with `query_batches: [Xin_b5]`; run all four as four "
        "entries with distinct `id`s.",
    ),
    "immune_cell_atlas": PaperDataset(
        title="Immune Cell Atlas", file="ImmuneAtlas.h5ad", batch_key="batchlb", labels_key="cell_type",
        counts_layer="counts", query_batches=("10x 5' v2",),
        description="Conde et al. 2022 cross-tissue immune cells, about 330k cells; batches are the three 10x "
        "assays, the 10x 5' v2 cells the query; raw counts in layers['counts']. The CELLxGENE file (Conde.h5ad) "
        "keeps the assay in obs['assay'] (write `batch_key: assay`) and the raw counts in raw.X: copy them to a "
        "layer or to X.",
    ),
    "mca": PaperDataset(
        title="MCA", file="MCA.h5ad", batch_key="batch", labels_key="CellType", counts_layer="counts",
        query_batches=(),
        description="Mouse Cell Atlas, Seq-Well and 10x (about 7k cells, 2 batches); raw counts in "
        f"layers['counts']. {_BC_ONLY}",
    ),
    "hic": PaperDataset(
        title="HIC", file="ImmHuman.h5ad", batch_key="batch", labels_key="CellType", counts_layer="counts",
        query_batches=(),
        description="Human immune cells of scIB (Immune_ALL_human: 33,506 cells, 10 batches, 16 types); raw "
        "counts in layers['counts']. scIB's own file names the cell type final_annotation (write "
        f"`labels_key: final_annotation`). {_BC_ONLY}",
    ),
    "lung": PaperDataset(
        title="Lung", file="Lung.h5ad", batch_key="batch", labels_key="cell_type", counts_layer="counts",
        query_batches=(),
        description="scIB's lung atlas (Lung_atlas_public: 32,472 cells, 16 batches, 17 types); raw counts in "
        f"layers['counts']. {_BC_ONLY}",
    ),
    "tabula_sapiens": PaperDataset(
        title="Tabula Sapiens", file="sapiens.h5ad", batch_key="_scvi_batch", labels_key="broad_cell_class",
        counts_layer=None, query_batches=(), drop_labels=SAPIENS_RARE_CLASSES,
        description="Tabula Sapiens from CELLxGENE (10df7690-6d10-4029-a47e-0f071bb2df83.h5ad). Prepare it as the "
        "paper's utils/prepare_sapiens.py does, but keep raw counts: drop the ERCC and mitochondrial (MT-) genes, "
        "put the raw counts (raw.X) in X and write the file; scssl drops the cells of the paper's 7 rare broad "
        f"classes ({', '.join(SAPIENS_RARE_CLASSES)}), normalises and selects the 4000 HVGs itself. The paper's query batches are "
        "not known (its sapiens_qr configs are missing from its repository): give `query_batches` for cell typing.",
    ),
    "pbmc_m": PaperDataset(
        title="PBMC-M", file="adata_RNA_full.h5ad", protein_file="adata_Protein_full.h5ad", batch_key="batch",
        labels_key="cell_type_l1", counts_layer=None, query_batches=("P3", "P5", "P8"),
        description="Hao et al. 2021 PBMC CITE-seq (about 162k cells, donors P1-P8, 224 proteins), RNA and proteins "
        "in two files with the same cell names; donors P3, P5 and P8 together are the query. The paper used both "
        "files' X as stored (normalised outside its code); scssl needs raw counts (in X, or name the layer with "
        "`counts_layer` and `modality.counts_layer`) and normalises them itself: 4000 HVGs, proteins by CLR.",
    ),
    "bmmc": PaperDataset(
        title="BMMC", file="adata_neurips_GEX_full.h5ad", protein_file="adata_neurips_ADT_full.h5ad",
        batch_key="batch", labels_key="cell_type_l1", counts_layer=None, query_batches=("s4d1", "s4d8", "s4d9"),
        description="NeurIPS 2021 bone-marrow CITE-seq (about 90k cells, 12 site-donor batches, 134 proteins), GEX "
        "and ADT in two files with the same cell names; donors s4d1, s4d8 and s4d9 together are the query. The "
        "paper used both files' X as stored; scssl needs raw counts (the public release keeps them in "
        "layers['counts']: write `counts_layer: counts` and `modality: {path: ..., counts_layer: counts}`) and "
        "normalises them itself: 4000 HVGs, proteins by CLR. cell_type_l1 is the paper's coarse label; the "
        "release's obs has the finer cell_type.",
    ),
}

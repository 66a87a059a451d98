"""Read an .h5ad, check it, and preprocess it as scSSL-Bench does.

Checks come first, before the expensive steps: the file must be a readable AnnData file with unique
gene and cell names, the keys must exist, batch and cell type must be known for every cell (or, with
``drop_missing``, such cells are dropped), and every stored count must be a non-negative integer.
Cells and genes without a single count are dropped. Every problem is a ``DataError`` naming the file.

Then normalize_total(1e4) -> log1p -> batch-aware HVGs (flavor 'seurat') chosen on **reference cells
only**. Query cells are then cut to exactly the reference's genes, in the same order: the
study's code re-selected genes on all cells, so its query genes could differ from the training genes.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import anndata as ad
from anndata import OldFormatWarning
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scssl.data.cells import Cells
from scssl.data.paired import Modality, modality_of, other_modality, pair_cells, preprocess, read_h5mu
from scssl.data.spec import DataError, DatasetSpec

REFERENCE, QUERY = "reference", "query"
INPUTS = ("counts", "other_counts")  # what a method may read besides the normalised data (``SSLMethod.inputs``)
_CHUNK = 1 << 22  # stored values checked at once: bounds the memory of the masks on large files


@dataclass
class RNAOnlyCells:
    """Mosaic data's cells measured by RNA alone, preprocessed as the data set's; ``is_query`` marks those of
    query batches."""

    cells: Cells
    is_query: np.ndarray


@dataclass
class PreparedDataset:
    """Log-normalised HVG expression of all cells, with batch, label and reference/query split.

    Plain numpy/scipy so that Ray can put it in the object store once and share it with trials.
    ``obs`` has the categorical columns ``batch``, ``label`` and ``split``; ``notes`` says, one line
    each, what ``prepare`` dropped from the file. Aligned to another data set's genes (transfer),
    ``missing_genes`` marks the columns this file lacks (all zero). ``other`` is the second modality of
    multimodal data (its rows are these cells). ``counts`` holds the raw counts of ``X``'s genes (zero
    where a gene is missing), for methods with a count likelihood. ``rna_only``: mosaic data's cells measured
    by RNA alone, for the methods that train on them (the tasks score the paired cells).
    """

    id: str
    X: sp.csr_matrix
    genes: np.ndarray
    obs: pd.DataFrame
    batch_key: str
    labels_key: str
    notes: list[str] = field(default_factory=list)
    missing_genes: np.ndarray | None = None
    other: Modality | None = None
    counts: sp.csr_matrix | None = None
    rna_only: RNAOnlyCells | None = None

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]

    @property
    def reference_index(self) -> np.ndarray:
        return np.flatnonzero(self.obs["split"].to_numpy() == REFERENCE)

    @property
    def query_index(self) -> np.ndarray:
        return np.flatnonzero(self.obs["split"].to_numpy() == QUERY)

    @property
    def labels(self) -> np.ndarray:
        """Each cell's type, as text."""
        return self.obs["label"].to_numpy().astype(str)

    @property
    def label_codes(self) -> np.ndarray:
        return self.obs["label"].cat.codes.to_numpy()

    @property
    def batch_codes(self) -> np.ndarray:
        return self.obs["batch"].cat.codes.to_numpy()

    @cached_property
    def fingerprint(self) -> str:
        """16 hex digits of SHA-256 over X, genes, cell names and batch/label/split (and the second modality as a
        method sees it): another file or another preprocessing setting gives another value (cached: hashing a
        large X takes a while). Raw counts are apart (``fingerprint_for``): normalisation hides their scale."""
        parts = [np.asarray(self.X.shape, "<i8"), *_csr_parts(self.X)]
        texts = [self.genes, self.obs.index, self.obs["batch"], self.obs["label"], self.obs["split"]]
        texts += [] if self.missing_genes is None else [self.missing_genes]
        if self.rna_only is not None:
            parts += [*_csr_parts(self.rna_only.cells.X), np.asarray(self.rna_only.cells.batch_codes, "<i8")]
        if self.other is not None:
            parts += _csr_parts(self.other.X)
            texts += [[self.other.kind], self.other.features]
        return _sha(parts, texts)

    @cached_property
    def input_fingerprints(self) -> dict[str, str]:
        """The digest of each input that only some methods read (``INPUTS``): the RNA's raw counts (mosaic RNA-only
        cells' included) and the second modality's; "" for an input the data set lacks."""
        counts = [] if self.counts is None else _csr_parts(self.counts)
        if self.rna_only is not None and self.rna_only.cells.counts is not None:
            counts += _csr_parts(self.rna_only.cells.counts)
        other = [] if self.other is None else _csr_parts(self.other.counts)
        return {"counts": _sha(counts, []) if counts else "", "other_counts": _sha(other, []) if other else ""}

    def fingerprint_for(self, inputs: frozenset[str]) -> str:
        """The digest of what a method that reads ``inputs`` (besides what every method reads) sees: changed raw
        counts rerun the jobs of exactly the methods that read them. With no inputs, ``fingerprint``."""
        if not inputs:
            return self.fingerprint
        return _sha([], [[self.fingerprint, *(f"{name}={self.input_fingerprints[name]}" for name in sorted(inputs))]])

    def nbytes(self, inputs: Iterable[str] = ()) -> int:
        """Bytes of the matrices a method that reads ``inputs`` (of ``INPUTS``) reads: the normalised data, the
        second modality as a network sees it, and the raw counts named."""
        inputs = set(inputs)
        matrices = [self.X, None if self.counts is None or "counts" not in inputs else self.counts]
        if self.other is not None:
            matrices += [self.other.X, self.other.counts if "other_counts" in inputs else None]
        return sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes if sp.issparse(m) else m.nbytes
                   for m in matrices if m is not None)

    def cells(self, rows: np.ndarray | None = None, inputs: Iterable[str] = INPUTS, shared: bool = False) -> Cells:
        """The data set's cells (or its ``rows``) as a method that reads ``inputs`` (of ``INPUTS``, besides the
        normalised data) trains on or embeds them: raw counts no method reads are never cut. With ``shared`` the
        rows are indexed, not copied (``RowsOf``: for a method that ``gathers_rows``)."""
        other, inputs = self.other, set(inputs)
        cells = Cells(self.X, self.genes, self.batch_codes, counts=self.counts if "counts" in inputs else None,
                      other=None if other is None else other.X,
                      other_counts=None if other is None or "other_counts" not in inputs else other.counts,
                      other_kind=None if other is None else other.kind)
        return cells if rows is None else cells.subset(rows, shared)

    def to_anndata(self) -> ad.AnnData:
        """The preprocessed cells, with the user's own key names for batch and label."""
        obs = self.obs.rename(columns={"batch": self.batch_key, "label": self.labels_key})
        return ad.AnnData(X=self.X, obs=obs, var=pd.DataFrame(index=self.genes))


def _csr_parts(matrix: sp.csr_matrix) -> list[np.ndarray]:
    return [np.ascontiguousarray(matrix.data, "<f4"), np.asarray(matrix.indices, "<i8"),
            np.asarray(matrix.indptr, "<i8")]


def _sha(parts: list[np.ndarray], texts: list) -> str:
    digest = hashlib.sha256()
    for blob in [p.tobytes() for p in parts] + ["\x1f".join(map(str, t)).encode() for t in texts]:
        digest.update(len(blob).to_bytes(8, "little") + blob)  # the length keeps parts from running together
    return digest.hexdigest()[:16]


def read_h5ad(path: str | Path) -> ad.AnnData:
    """Read an AnnData file; any file that is not one is a DataError (key ``path``) with the reason."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found", "path")
    if path.suffix != ".h5ad":
        raise DataError(f"{path}: expected an .h5ad file", "path")
    try:
        with h5py.File(path, "r") as f:
            top = sorted(f.keys())
        if not {"obs", "var"} <= set(top):
            raise ValueError(f"HDF5 without the AnnData layout: no 'obs' and 'var' groups, top-level keys {top}")
        with warnings.catch_warnings():  # files written by older anndata versions read fine
            warnings.simplefilter("ignore", OldFormatWarning)
            return ad.read_h5ad(path)
    except Exception as err:  # h5py, anndata and pandas each raise their own kinds for a broken file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path}: not a readable .h5ad file ({reason})", "path") from None


def prepare(spec: DatasetSpec, adata: ad.AnnData | None = None, genes: np.ndarray | None = None) -> PreparedDataset:
    """Load (unless ``adata`` is given), check and preprocess the data set of a resolved ``spec``. With
    ``genes`` (a pretraining data set's), its columns are those genes by name instead of its own HVGs:
    each cell normalised over its own genes, a pretraining gene it lacks all zero."""
    source = spec.path
    multimodal = read_h5mu(spec.path) if spec.path.endswith(".h5mu") else None  # read once, for both modalities
    if adata is None:
        adata = read_h5ad(spec.path) if multimodal is None else modality_of(multimodal, spec.rna_mod, source, "rna_mod")
    _check_unique(adata.var_names, "gene", "var", source)
    _check_unique(adata.obs_names, "cell", "obs", source)
    paired_notes, other, rna_only = [], None, None
    if spec.modality is not None:
        measured = other_modality(spec, multimodal)
        try:
            adata, other, rna_only, paired_notes = pair_cells(adata, measured, spec.modality.kind)
        except DataError as err:
            raise DataError(f"{spec.modality.path or source}: {err}", err.key) from None
    for what, key in (("batch_key", spec.batch_key), ("labels_key", spec.labels_key)):
        if key not in adata.obs:
            raise DataError(
                f"{source}: {what} {key!r} is not a column of obs; columns are {list(adata.obs.columns)}", what
            )
    counts = _counts(adata, spec.counts_layer, source)

    given = adata.obs[spec.batch_key]
    all_batches = set(given[~_missing(given)].astype(str))
    keep, notes = _cells_to_keep(adata.obs, counts, spec, source)
    notes = paired_notes + notes
    counts = counts[keep]
    if other is not None:
        where = f"{spec.modality.path or source} ({spec.modality.kind})"
        try:
            other_counts = _counts(other, spec.modality.counts_layer, where)[keep]
        except DataError as err:
            raise DataError(str(err), f"modality.{err.key}") from None
    has_counts = np.asarray(counts.sum(axis=0)).ravel() > 0  # over all cells, reference and query alike
    if not has_counts.all():
        counts = counts[:, has_counts]
        notes.append(f"dropped {int((~has_counts).sum())} genes with no counts in any cell")
    batch = adata.obs[spec.batch_key][keep].astype(str)
    labels = adata.obs[spec.labels_key][keep].astype(str)
    names = adata.obs_names[keep].astype(str)

    query_batches = list(spec.query_batches or [])
    unknown = sorted(set(query_batches) - all_batches)
    if unknown:
        raise DataError(
            f"{source}: query_batches {unknown} are not values of obs[{spec.batch_key!r}]; "
            f"values are {sorted(all_batches)}", "query_batches"
        )
    is_query = batch.isin(query_batches).to_numpy()
    if is_query.all():
        raise DataError(f"{source}: query_batches {query_batches} leave no reference cells", "query_batches")
    per_batch = batch[~is_query].value_counts()
    if per_batch.max() < 2:  # e.g. batch_key names a column of cell barcodes; scanpy's HVGs fail on it
        raise DataError(
            f"{source}: each of the {len(per_batch)} reference batches in obs[{spec.batch_key!r}] holds a single "
            "cell; expected a column of batches (donors, samples) of several cells each", "batch_key"
        )

    import scanpy as sc  # only now: it takes seconds, bad data fails sooner, and trial workers only unpickle

    cells = ad.AnnData(X=counts.copy(), obs=pd.DataFrame({"batch": batch.to_numpy()}, index=names))
    cells.var_names = adata.var_names[has_counts].astype(str)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    missing = None
    if genes is None:
        genes = select_hvgs(cells[~is_query].copy(), spec.n_hvgs)
        X = sp.csr_matrix(cells[:, genes].X, dtype=np.float32)
        gene_counts = sp.csr_matrix(counts[:, cells.var_names.get_indexer(genes)], dtype=np.float32)
    else:
        X, missing = _aligned(cells, np.asarray(genes), source)
        gene_counts, _ = _aligned(ad.AnnData(counts, var=pd.DataFrame(index=cells.var_names)), np.asarray(genes),
                                  source)
        notes.append(f"{int(missing.sum())} of the {len(genes)} pretraining genes are not in this data set: "
                     "their columns are zero")

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(batch.to_numpy()),
            "label": pd.Categorical(labels.to_numpy()),
            "split": pd.Categorical(np.where(is_query, QUERY, REFERENCE), categories=[REFERENCE, QUERY]),
        },
        index=names,
    )
    second = None
    if other is not None:
        second = preprocess(spec.modality, other_counts, np.asarray(other.var_names.astype(str)), ~is_query)
    unpaired = None
    if rna_only is not None:
        unpaired = _rna_only_cells(rna_only, spec, np.asarray(genes), list(obs["batch"].cat.categories), source, notes)
    return PreparedDataset(spec.label, X, np.asarray(genes), obs, spec.batch_key, spec.labels_key, notes, missing,
                           second, gene_counts, unpaired)


def _rna_only_cells(rna: ad.AnnData, spec: DatasetSpec, genes: np.ndarray, batches: list[str], source: str,
                    notes: list[str]) -> RNAOnlyCells | None:
    """Mosaic data's RNA-only cells preprocessed as the paired ones, on their genes; those without counts or
    a batch dropped (noted); batch codes extend the data set's batches."""
    import scanpy as sc

    counts = _counts(rna, spec.counts_layer, source)
    batch = rna.obs[spec.batch_key]
    keep = (np.asarray(counts.sum(axis=1)).ravel() > 0) & ~_missing(batch)
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} of the RNA-only cells: no counts or no batch")
    if not keep.any():
        return None
    batch = batch[keep].astype(str).to_numpy()
    var = pd.DataFrame(index=rna.var_names.astype(str))
    cells = ad.AnnData(counts[keep].copy(), var=var)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    X, _ = _aligned(cells, genes, source)
    gene_counts, _ = _aligned(ad.AnnData(counts[keep], var=var), genes, source)
    categories = batches + sorted(set(batch) - set(batches))
    codes = pd.Categorical(batch, categories=categories).codes.astype(np.int64)
    is_query = np.isin(batch, list(spec.query_batches or []))
    return RNAOnlyCells(Cells(X, genes, codes, counts=gene_counts), is_query)


def _aligned(cells: ad.AnnData, genes: np.ndarray, source: str) -> tuple[sp.csr_matrix, np.ndarray]:
    """``cells``' expression in the columns of ``genes`` (by name), and which of them ``cells`` lacks."""
    position = pd.Index(cells.var_names).get_indexer(genes)
    missing = position < 0
    if missing.all():
        raise DataError(f"{source}: none of the {len(genes)} pretraining genes (e.g. {', '.join(genes[:3])}) is among "
                        f"this data set's genes (e.g. {', '.join(cells.var_names[:3])}); the data sets must name "
                        "genes alike", "pretrain")
    X = sp.csr_matrix(cells.X, dtype=np.float32)[:, position[~missing]].tocoo()
    columns = np.flatnonzero(~missing)[X.col]
    aligned = sp.csr_matrix((X.data, (X.row, columns)), shape=(cells.n_obs, len(genes)), dtype=np.float32)
    return aligned, missing


def select_hvgs(reference: ad.AnnData, n_hvgs: int) -> list[str]:
    """Batch-aware highly variable genes of log-normalised reference cells, in the data's gene order."""
    if n_hvgs >= reference.n_vars:
        return list(reference.var_names)
    import scanpy as sc

    table = sc.pp.highly_variable_genes(
        reference, n_top_genes=n_hvgs, flavor="seurat", batch_key="batch", inplace=False
    )
    return list(reference.var_names[table["highly_variable"].to_numpy()])


def _check_unique(names: pd.Index, what: str, axis: str, source: str) -> None:
    """Duplicate names make cells or genes ambiguous (and pandas fails on them deep inside scanpy)."""
    repeated = names[names.duplicated()].unique()
    if len(repeated):
        raise DataError(
            f"{source}: {len(repeated)} {what} names occur more than once, e.g. {list(map(str, repeated[:3]))}; "
            f"expected unique names: call adata.{axis}_names_make_unique() and write the file again", "path"
        )


def _missing(values: pd.Series) -> np.ndarray:
    """NaN, empty or blank values, and the text 'nan' that ``astype(str)`` makes of a NaN."""
    text = values.astype(str).str.strip()
    return (values.isna() | (text == "") | (text.str.lower() == "nan")).to_numpy()


def _cells_to_keep(
    obs: pd.DataFrame, counts: sp.csr_matrix, spec: DatasetSpec, source: str
) -> tuple[np.ndarray, list[str]]:
    """A mask of the usable cells and one note per reason a cell was dropped.

    A missing batch or cell type is an error unless ``spec.drop_missing``: scoring "nan" as a cell
    type would be wrong. Cells without counts cannot be normalised, so they are always dropped.
    """
    keep, notes = np.ones(len(obs), dtype=bool), []

    def drop(mask: np.ndarray, note: str, key: str) -> None:
        keep[mask] = False
        notes.append(note)
        if not keep.any():
            raise DataError(f"{source}: no cells left ({'; '.join(notes)})", key)

    for key, column, what in (("batch_key", spec.batch_key, "batch"), ("labels_key", spec.labels_key, "cell type")):
        missing = _missing(obs[column]) & keep
        n = int(missing.sum())
        if not n:
            continue
        if not spec.drop_missing:
            raise DataError(
                f"{source}: {n} of {len(obs)} cells have no {what} in obs[{column!r}] (NaN or empty), e.g. "
                f"{list(obs.index[missing][:3])}; fill them in, or set drop_missing: true to drop those cells", key
            )
        drop(missing, f"dropped {n} cells whose {what} (obs[{column!r}]) is missing (NaN or empty)", key)
    if spec.drop_labels:
        listed = obs[spec.labels_key].astype(str).isin(spec.drop_labels).to_numpy() & keep
        if listed.any():
            drop(listed, f"dropped {int(listed.sum())} cells of the cell types in drop_labels", "drop_labels")
    empty = (np.asarray(counts.sum(axis=1)).ravel() == 0) & keep
    if empty.any():
        drop(empty, f"dropped {int(empty.sum())} cells with no counts", "counts_layer")
    return keep, notes


def _counts(adata: ad.AnnData, layer: str | None, source: str) -> sp.csr_matrix:
    named = [name for name in adata.layers if name is not None]  # anndata 0.13 lists X as layers[None]
    if layer is not None and layer not in named:
        raise DataError(
            f"{source}: counts_layer {layer!r} is not a layer; layers are {named} "
            "(leave counts_layer empty if X holds raw counts)", "counts_layer"
        )
    matrix = adata.layers[layer] if layer is not None else adata.X
    where = f"layers[{layer!r}]" if layer is not None else "X"
    hint = "" if layer is not None else f"; set counts_layer if a layer holds them (layers: {named})"
    if matrix is None:
        raise DataError(f"{source}: X is empty; expected raw counts{hint}", "counts_layer")
    counts = sp.csr_matrix(matrix, dtype=np.float32)
    problems = _count_problems(counts, adata.obs_names, adata.var_names)
    if problems:
        raise DataError(
            f"{source}: {where} does not hold raw counts: {'; '.join(problems)}; "
            f"expected non-negative integers{hint}", "counts_layer"
        )
    return counts


def _count_problems(counts: sp.csr_matrix, cells: pd.Index, genes: pd.Index) -> list[str]:
    """How many stored values are not counts, by kind, each with an example; every value is checked."""
    data = counts.data
    found: dict[str, list[int]] = {}  # kind -> [how many, index of the first]
    for start in range(0, len(data), _CHUNK):
        chunk = data[start : start + _CHUNK]
        finite = np.isfinite(chunk)
        for kind, mask in (
            ("NaN or infinite", ~finite),
            ("negative", finite & (chunk < 0)),
            ("not integer-valued", finite & (chunk >= 0) & (chunk != np.round(chunk))),
        ):
            hits = np.flatnonzero(mask)
            if hits.size:
                found.setdefault(kind, [0, start + int(hits[0])])[0] += hits.size
    problems = []
    for kind, (n, i) in found.items():
        cell = cells[np.searchsorted(counts.indptr, i, side="right") - 1]
        problems.append(f"{n} values are {kind} (e.g. {data[i]:g} at cell {cell!r}, gene {genes[counts.indices[i]]!r})")
    return problems

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

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import anndata as ad
import h5py
from anndata import OldFormatWarning
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scssl.data.cells import Cells
from scssl.data.hvg import HVGStatistics
from scssl.data.paired import Modality, modality_of, other_modality, pair_cells, preprocess, read_h5mu
from scssl.data.spec import STORAGE_FIELDS, DataError, DatasetSpec
from scssl.data.store import STORE_FORMAT, CellStore

REFERENCE, QUERY = "reference", "query"
INPUTS = ("counts", "other_counts")  # what a method may read besides the normalised data (``SSLMethod.inputs``)
_CHUNK = 1 << 22  # stored values checked at once: bounds the memory of the masks on large files
_CHUNK_CELLS = 50_000  # cells whose raw counts are read and preprocessed at once


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
    by RNA alone, for the methods that train on them (the tasks score the paired cells). ``store``: an atlas
    prepared to disk (``prepare_store``), all of whose cells the methods train on, streamed; ``X``, ``counts`` and
    ``obs`` then hold a sample of its cells (``sampled``), which the tasks score.
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
    store: CellStore | None = None

    @classmethod
    def sampled(cls, store: CellStore, max_cells: int, batch_key: str, labels_key: str) -> "PreparedDataset":
        """A store's data set with ``max_cells`` of its cells in memory, the reference and query cells in proportion:
        the first ones of each part, a random sample (the store is shuffled). Their order is the store's, so the
        sample's reference cells are the first of ``store.cells("reference")``."""
        total = sum(store.n_cells.values())
        take = {part: min(n, math.ceil(max_cells * n / total)) for part, n in store.n_cells.items()}
        matrices = {layer: sp.vstack([store.cells(part, layer).read(np.arange(n)) for part, n in take.items()],
                                     format="csr") for layer in ("X", "counts")}
        obs = store.obs_of({part: store.cells(part).head_obs(n) for part, n in take.items()}).drop(columns="row")
        note = (f"the tasks score {len(obs):,} of its {total:,} cells (a random sample, held in memory); methods "
                f"train on all of them, streamed from {store.path}")
        return cls(store.id, matrices["X"], store.genes, obs, batch_key, labels_key, [*store.notes, note],
                   store.missing_genes, counts=matrices["counts"], store=store)

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
        texts += [] if self.store is None else [[self.store.path.name]]  # the file and settings it was prepared by
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
    return _read(Path(path), lambda: ad.read_h5ad(path))


def read_h5ad_backed(path: str | Path) -> tuple[ad.AnnData, h5py.File]:
    """An AnnData file's cells and genes (``obs`` and ``var`` alone), and the open file, whose matrices stay on disk
    to be read a chunk of cells at a time (``CountRows``); errors as ``read_h5ad``'s."""
    def read():
        stored = h5py.File(path, "r")
        try:
            with warnings.catch_warnings():  # repeated names are checked, and named, by ``prepare``
                warnings.filterwarnings("ignore", message=".* names are not unique", category=UserWarning)
                return ad.AnnData(obs=ad.io.read_elem(stored["obs"]), var=ad.io.read_elem(stored["var"])), stored
        except BaseException:
            stored.close()
            raise

    return _read(Path(path), read)


def _read(path: Path, read):
    """``read()`` of the .h5ad file ``path``; a missing file, another kind of file, or one that cannot be read is a
    DataError (key ``path``) with the reason."""
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
            return read()
    except Exception as err:  # h5py, anndata and pandas each raise their own kinds for a broken file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path}: not a readable .h5ad file ({reason})", "path") from None


def prepare(spec: DatasetSpec, adata: ad.AnnData | None = None, genes: np.ndarray | None = None,
            store_root: str | Path | None = None) -> PreparedDataset:
    """Load (unless ``adata`` is given), check and preprocess the data set of a resolved ``spec``. With
    ``genes`` (a pretraining data set's), its columns are those genes by name instead of its own HVGs:
    each cell normalised over its own genes, a pretraining gene it lacks all zero. With ``store_root``, an RNA
    ``.h5ad`` of at least ``spec.store_from_cells`` cells is prepared to disk under it (``prepare_store``) and
    held in memory as a sample of ``spec.evaluation_cells`` (``PreparedDataset.sampled``)."""
    if store_root is not None and adata is None and prepared_to_disk(spec):
        return PreparedDataset.sampled(prepare_store(spec, store_root, genes), spec.evaluation_cells, spec.batch_key,
                                       spec.labels_key)
    source = spec.path
    multimodal = read_h5mu(spec.path) if spec.path.endswith(".h5mu") else None  # read once, for both modalities
    stored = None
    if adata is None and multimodal is None and spec.modality is None:  # RNA alone: its counts stay on disk
        adata, stored = read_h5ad_backed(spec.path)
    elif adata is None:
        adata = read_h5ad(spec.path) if multimodal is None else modality_of(multimodal, spec.rna_mod, source, "rna_mod")
    try:
        return _prepare(spec, adata, genes, multimodal, stored)
    finally:
        if stored is not None:
            stored.close()


def prepared_to_disk(spec: DatasetSpec) -> bool:
    """Whether the data set of ``spec`` is prepared to disk: an RNA ``.h5ad`` (multimodal data sets are prepared in
    memory so far) of at least ``spec.store_from_cells`` cells, counted without reading them."""
    if spec.store_from_cells is None or spec.modality is not None or not spec.path.endswith(".h5ad"):
        return False

    def cells() -> int:  # the index of obs: an array of names, or an encoded one (categorical, nullable: a group)
        with h5py.File(spec.path, "r") as f:
            index = f["obs"][f["obs"].attrs["_index"]]
            if isinstance(index, h5py.Group):
                index = index["codes" if "codes" in index else "values"]
            return index.shape[0]

    return _read(Path(spec.path), cells) >= spec.store_from_cells


def prepare_store(spec: DatasetSpec, root: str | Path, genes: np.ndarray | None = None) -> CellStore:
    """``prepare`` written to disk (a ``CellStore`` in a folder under ``root``) instead of memory, for an atlas
    larger than memory: the file is read backed a chunk at a time and written a chunk at a time. The folder is
    named by the data set and a digest of the file (path, size, time of change), the settings and ``genes``, so a
    later call with the same ones reuses it. RNA data sets alone so far: multimodal ones are prepared in memory."""
    if spec.modality is not None or spec.path.endswith(".h5mu"):
        raise DataError(f"{spec.path}: only RNA .h5ad data sets are prepared to disk; multimodal ones are prepared "
                        "in memory", "modality")
    if not Path(spec.path).is_file():
        raise DataError(f"{spec.path}: data file not found", "path")
    stat = Path(spec.path).stat()
    what = {key: value for key, value in dataclasses.asdict(spec).items() if key not in STORAGE_FIELDS}
    settings = json.dumps(what, sort_keys=True, default=str)
    key = _sha([], [[STORE_FORMAT, stat.st_size, stat.st_mtime_ns, settings], [] if genes is None else list(genes)])
    path = Path(root) / f"{spec.label}-{key}"
    if CellStore.exists(path):  # reused without reading the file
        return CellStore.open(path)
    adata, stored = read_h5ad_backed(spec.path)
    try:
        _check_unique(adata.var_names, "gene", "var", spec.path)
        _check_unique(adata.obs_names, "cell", "obs", spec.path)
        kept = _kept_cells(spec, adata, stored, [])
        genes, columns, missing = _chosen_genes(spec, kept, genes)
        return CellStore.write(path, kept.counts.column_chunks(kept.keep, columns), kept.obs, genes, id=spec.label,
                               notes=kept.notes, missing_genes=missing)
    finally:
        stored.close()


def _prepare(spec: DatasetSpec, adata: ad.AnnData, genes: np.ndarray | None, multimodal,
             stored: h5py.File | None) -> PreparedDataset:
    """``prepare`` on the read file; its raw counts read ``_CHUNK_CELLS`` cells at a time (from ``stored``, the open
    file, when its matrices were left on disk): preprocessing holds its result and a chunk, never all the counts."""
    source = spec.path
    _check_unique(adata.var_names, "gene", "var", source)
    _check_unique(adata.obs_names, "cell", "obs", source)
    paired_notes, other, rna_only = [], None, None
    if spec.modality is not None:
        measured = other_modality(spec, multimodal)
        try:
            adata, other, rna_only, paired_notes = pair_cells(adata, measured, spec.modality.kind)
        except DataError as err:
            raise DataError(f"{spec.modality.path or source}: {err}", err.key) from None
    kept = _kept_cells(spec, adata, stored, paired_notes)
    if other is not None:
        where = f"{spec.modality.path or source} ({spec.modality.kind})"
        try:
            other_counts = _counts(other, spec.modality.counts_layer, where)[kept.keep]
        except DataError as err:
            raise DataError(str(err), f"modality.{err.key}") from None
    genes, columns, missing = _chosen_genes(spec, kept, genes)
    X, gene_counts = kept.counts.columns(kept.keep, columns)
    obs = kept.obs
    second = None
    if other is not None:
        second = preprocess(spec.modality, other_counts, np.asarray(other.var_names.astype(str)),
                            (obs["split"] == REFERENCE).to_numpy())
    unpaired = None
    if rna_only is not None:
        unpaired = _rna_only_cells(rna_only, spec, genes, list(obs["batch"].cat.categories), source, kept.notes)
    return PreparedDataset(spec.label, X, genes, obs, spec.batch_key, spec.labels_key, kept.notes, missing,
                           second, gene_counts, unpaired)


@dataclass
class KeptCells:
    """The cells ``prepare`` keeps of a file (``keep``, over its cells) and their ``obs`` (``PreparedDataset.obs``),
    their raw ``counts`` (all the file's cells and genes), and what was dropped (``notes``)."""

    counts: CountRows
    keep: np.ndarray
    obs: pd.DataFrame
    notes: list[str]


def _kept_cells(spec: DatasetSpec, adata: ad.AnnData, stored: h5py.File | None, notes: list[str]) -> KeptCells:
    """The checks of keys, counts and batches, and the cells kept: every problem a DataError before any gene is
    chosen. ``notes``: those of an earlier step, kept first."""
    source = spec.path
    for what, key in (("batch_key", spec.batch_key), ("labels_key", spec.labels_key)):
        if key not in adata.obs:
            raise DataError(
                f"{source}: {what} {key!r} is not a column of obs; columns are {list(adata.obs.columns)}", what
            )
    counts = CountRows.of(adata, spec.counts_layer, source, stored)
    totals = counts.checked_totals()

    given = adata.obs[spec.batch_key]
    all_batches = set(given[~_missing(given)].astype(str))
    keep, dropped = _cells_to_keep(adata.obs, totals, spec, source)
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
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(batch.to_numpy()),
            "label": pd.Categorical(labels.to_numpy()),
            "split": pd.Categorical(np.where(is_query, QUERY, REFERENCE), categories=[REFERENCE, QUERY]),
        },
        index=names,
    )
    return KeptCells(counts, keep, obs, notes + dropped)


def _chosen_genes(spec: DatasetSpec, kept: KeptCells, genes: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The prepared data set's genes, each one's column of the file (-1: missing) and, with the pretraining
    ``genes`` of a transfer, which are missing (else None): one pass over the counts for the genes' totals and the
    reference cells' HVG statistics. Notes what it drops in ``kept.notes``."""
    source, notes = spec.path, kept.notes
    all_genes = kept.counts.genes.astype(str).to_numpy()
    is_reference = (kept.obs["split"] == REFERENCE).to_numpy()
    reference_batch = pd.Categorical(kept.obs["batch"].to_numpy()[is_reference].astype(str))
    reference = np.full(len(kept.keep), -1)
    reference[np.flatnonzero(kept.keep)[is_reference]] = reference_batch.codes
    gene_totals, stats = kept.counts.normalised_statistics(kept.keep, reference, all_genes,
                                                           list(reference_batch.categories))
    has_counts = gene_totals > 0  # over all cells kept, reference and query alike
    if not has_counts.all():
        notes.append(f"dropped {int((~has_counts).sum())} genes with no counts in any cell")
    if genes is None:
        genes = np.asarray(select_hvgs(stats.subset(has_counts), spec.n_hvgs))
        return genes, pd.Index(all_genes).get_indexer(genes), None
    genes = np.asarray(genes)
    columns = _gene_columns(all_genes, has_counts, genes, source)
    missing = columns < 0
    notes.append(f"{int(missing.sum())} of the {len(genes)} pretraining genes are not in this data set: "
                 "their columns are zero")
    return genes, columns, missing


def _rna_only_cells(rna: ad.AnnData, spec: DatasetSpec, genes: np.ndarray, batches: list[str], source: str,
                    notes: list[str]) -> RNAOnlyCells | None:
    """Mosaic data's RNA-only cells preprocessed as the paired ones, on their genes; those without counts or
    a batch dropped (noted); batch codes extend the data set's batches."""
    counts = CountRows.of(rna, spec.counts_layer, source)
    batch = rna.obs[spec.batch_key]
    keep = (counts.checked_totals() > 0) & ~_missing(batch)
    if not keep.all():
        notes.append(f"dropped {int((~keep).sum())} of the RNA-only cells: no counts or no batch")
    if not keep.any():
        return None
    batch = batch[keep].astype(str).to_numpy()
    names = rna.var_names.astype(str).to_numpy()
    X, gene_counts = counts.columns(keep, _gene_columns(names, np.ones(len(names), bool), genes, source))
    categories = batches + sorted(set(batch) - set(batches))
    codes = pd.Categorical(batch, categories=categories).codes.astype(np.int64)
    is_query = np.isin(batch, list(spec.query_batches or []))
    return RNAOnlyCells(Cells(X, genes, codes, counts=gene_counts), is_query)


def _gene_columns(names: np.ndarray, usable: np.ndarray, genes: np.ndarray, source: str) -> np.ndarray:
    """For each of ``genes``, its column among a file's genes ``names`` (the ``usable`` ones; -1: not among them).
    None found is a DataError: the data sets name genes differently."""
    position = pd.Index(names[usable]).get_indexer(genes)
    if (position < 0).all():
        raise DataError(f"{source}: none of the {len(genes)} pretraining genes (e.g. {', '.join(genes[:3])}) is among "
                        f"this data set's genes (e.g. {', '.join(names[usable][:3])}); the data sets must name "
                        "genes alike", "pretrain")
    return np.where(position < 0, -1, np.flatnonzero(usable)[position])


def select_hvgs(stats: HVGStatistics, n_hvgs: int) -> list[str]:
    """Batch-aware highly variable genes (scanpy's 'seurat' flavour) of the reference cells whose statistics
    ``stats`` gathered, in the data's gene order."""
    if n_hvgs >= len(stats.genes):
        return list(stats.genes)
    return list(stats.genes[stats.highly_variable(n_hvgs)])


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
    obs: pd.DataFrame, totals: np.ndarray, spec: DatasetSpec, source: str
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
    empty = (totals == 0) & keep
    if empty.any():
        drop(empty, f"dropped {int(empty.sum())} cells with no counts", "counts_layer")
    return keep, notes


class CountRows:
    """The raw counts of every cell of a file, read ``_CHUNK_CELLS`` cells at a time: from disk when the file is
    read backed, so that a pass of ``prepare`` over them holds one chunk, never the whole matrix. ``where`` says
    which matrix of the file holds them (for messages), ``hint`` what else the user might set."""

    def __init__(self, matrix, cells: pd.Index, genes: pd.Index, where: str, hint: str, source: str):
        self.matrix, self.cells, self.genes = matrix, cells, genes
        self.where, self.hint, self.source = where, hint, source

    @classmethod
    def of(cls, adata: ad.AnnData, layer: str | None, source: str, stored: h5py.File | None = None) -> "CountRows":
        """``adata``'s counts: ``layers[layer]``, or ``X`` when ``layer`` is None; read from ``stored``, the open file,
        where ``adata`` holds its cells and genes alone (``read_h5ad_backed``)."""
        if stored is not None:
            named = list(stored["layers"]) if "layers" in stored else []
        else:
            named = [name for name in adata.layers if name is not None]  # anndata 0.13 lists X as layers[None]
        if layer is not None and layer not in named:
            raise DataError(
                f"{source}: counts_layer {layer!r} is not a layer; layers are {named} "
                "(leave counts_layer empty if X holds raw counts)", "counts_layer"
            )
        where = f"layers[{layer!r}]" if layer is not None else "X"
        hint = "" if layer is not None else f"; set counts_layer if a layer holds them (layers: {named})"
        if stored is None:
            matrix = adata.layers[layer] if layer is not None else adata.X
        else:
            element = stored["layers"][layer] if layer is not None else stored.get("X")
            matrix = ad.io.sparse_dataset(element) if isinstance(element, h5py.Group) else element
        if matrix is None:
            raise DataError(f"{source}: X is empty; expected raw counts{hint}", "counts_layer")
        return cls(matrix, adata.obs_names, adata.var_names, where, hint, source)

    def chunks(self):
        """(first row, the chunk's counts as float32 CSR) over every cell, in order."""
        for start in range(0, len(self.cells), _CHUNK_CELLS):
            yield start, sp.csr_matrix(self.matrix[start:start + _CHUNK_CELLS], dtype=np.float32)

    def checked_totals(self) -> np.ndarray:
        """Each cell's total count, every stored value checked: a DataError (key ``counts_layer``) says how many are
        not counts, by kind, each with an example."""
        totals, found = np.zeros(len(self.cells)), {}
        for start, chunk in self.chunks():
            totals[start:start + chunk.shape[0]] = np.asarray(chunk.sum(axis=1)).ravel()
            for kind, (n, example) in _count_problems(chunk, self.cells[start:], self.genes).items():
                seen, first = found.get(kind, (0, example))  # the first chunk's example stays
                found[kind] = (seen + n, first)
        if found:
            problems = "; ".join(f"{n} values are {kind} ({example})" for kind, (n, example) in found.items())
            raise DataError(f"{self.source}: {self.where} does not hold raw counts: {problems}; "
                            f"expected non-negative integers{self.hint}", "counts_layer")
        return totals

    def normalised_statistics(self, keep: np.ndarray, reference: np.ndarray, genes: np.ndarray,
                              batches: list[str]) -> tuple[np.ndarray, HVGStatistics]:
        """Over the ``keep`` cells: each gene's total count, and the HVG statistics of their log-normalised values
        (``reference``: each cell's code into ``batches``, -1 for a cell that is not a reference cell)."""
        gene_totals, stats = np.zeros(len(genes)), HVGStatistics(genes, batches)
        for start, chunk in self.chunks():
            kept = keep[start:start + chunk.shape[0]]
            gene_totals += np.asarray(chunk[kept].sum(axis=0)).ravel()
            stats.add(_log_normalised(chunk[kept]), reference[start:start + chunk.shape[0]][kept])
        return gene_totals, stats

    def column_chunks(self, keep: np.ndarray, columns: np.ndarray) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix]]:
        """The ``keep`` cells' log-normalised values and raw counts in ``columns`` (of the file's genes; -1: a
        column of zeros), as float32 CSR, a chunk of consecutive cells at a time."""
        present = columns >= 0
        for start, chunk in self.chunks():
            chunk = chunk[keep[start:start + chunk.shape[0]]]
            if chunk.shape[0]:
                yield tuple(_in_columns(matrix[:, columns[present]], present)
                            for matrix in (_log_normalised(chunk), chunk))

    def columns(self, keep: np.ndarray, columns: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """``column_chunks`` as two whole matrices."""
        parts = list(self.column_chunks(keep, columns))
        if not parts:
            empty = sp.csr_matrix((0, len(columns)), dtype=np.float32)
            return empty, empty.copy()
        return tuple(sp.vstack([part[i] for part in parts], format="csr") for i in range(2))


def _in_columns(picked: sp.csr_matrix, present: np.ndarray) -> sp.csr_matrix:
    """``picked``, the values of the ``present`` columns, placed among all the columns (the others zero)."""
    picked = picked.tocoo()
    return sp.csr_matrix((picked.data, (picked.row, np.flatnonzero(present)[picked.col])),
                         shape=(picked.shape[0], len(present)), dtype=np.float32)


def _log_normalised(counts: sp.csr_matrix) -> sp.csr_matrix:
    """scanpy's ``normalize_total(target_sum=1e4)`` then ``log1p`` of cells' ``counts`` (row by row, so a chunk's
    values are the whole matrix's)."""
    import scanpy as sc  # only here: it takes seconds, bad data fails sooner, and trial workers only unpickle

    cells = ad.AnnData(counts.copy())
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    return sp.csr_matrix(cells.X, dtype=np.float32)


def _counts(adata: ad.AnnData, layer: str | None, source: str) -> sp.csr_matrix:
    """``adata``'s raw counts (``CountRows``), checked, as one float32 CSR matrix."""
    rows = CountRows.of(adata, layer, source)
    rows.checked_totals()
    return sp.csr_matrix(rows.matrix, dtype=np.float32)


def _count_problems(counts: sp.csr_matrix, cells: pd.Index, genes: pd.Index) -> dict[str, tuple[int, str]]:
    """How many stored values of ``counts`` (rows: ``cells``) are not counts, by kind, each with its first example;
    every value is checked."""
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
    problems = {}
    for kind, (n, i) in found.items():
        cell = cells[np.searchsorted(counts.indptr, i, side="right") - 1]
        problems[kind] = n, f"e.g. {data[i]:g} at cell {cell!r}, gene {genes[counts.indices[i]]!r}"
    return problems

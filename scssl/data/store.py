"""A prepared data set on disk, for atlases larger than memory: a folder of two pre-shuffled, sharded zarr stores
of anndata's format (annbatch's ``DatasetCollection``), one of the reference cells and one of the query cells,
written once a chunk at a time and read a mini-batch at a time.

Each stored cell has ``X`` (the log-normalised expression of the chosen genes), ``layers["counts"]`` (their raw
counts) and in ``obs`` its ``row`` (its position among the prepared cells, in the file's order), ``batch_code`` and
``label_code``. ``scssl.json`` beside them holds the genes, the categories the codes stand for and the notes;
it is written last, so a folder without it is an interrupted write and is never read.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from queue import Empty, Queue

import numpy as np
import pandas as pd
import scipy.sparse as sp

STORE_FORMAT = 1  # bumped when what a store holds changes: an older store is then written anew
META = "scssl.json"
PARTS = ("reference", "query")
OBS_COLUMNS = ("row", "batch_code", "label_code")  # each stored cell's obs, besides its name
DATASET_SIZE = "512MB"  # the rows annbatch shuffles in memory at once while it writes: bounds its memory
SHUFFLE_SLICE = 1000  # consecutive cells annbatch moves together when it shuffles the store
CHUNK_CELLS = 256  # consecutive stored cells a mini-batch loader reads at once ...
PRELOAD_CHUNKS = 32  # ... and how many such chunks it holds and shuffles together (8,192 cells)


@dataclass(frozen=True)
class StoredCells:
    """Cells of a store (its ``reference`` or ``query`` part, or both, one after the other): a cells x genes matrix on
    disk (``layer``: ``X``, the normalised values, or ``counts``), read a mini-batch at a time. Small and picklable:
    a Ray trial gets the ``paths`` (of each part's zarr store), not the cells, and opens the store itself."""

    paths: tuple[str, ...]
    n_cells: int
    n_genes: int
    layer: str = "X"
    shard: tuple[int, int] | None = None  # (rank, workers): this worker's share of an epoch's mini-batches

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_cells, self.n_genes

    def of_layer(self, layer: str) -> "StoredCells":
        return replace(self, layer=layer)

    def sharded(self, rank: int, workers: int) -> "StoredCells":
        """These cells as worker ``rank`` of ``workers`` trains on them: its own contiguous share of the
        pre-shuffled store, as many whole mini-batches as every other worker's (annbatch's DistributedSampler).
        Positions stay the store's."""
        return replace(self, shard=(rank, workers))

    def steps(self, batch_size: int) -> int:
        """Mini-batches in an epoch of ``minibatches``."""
        if self.shard is None:
            return self.n_cells // batch_size
        return self.n_cells // self.shard[1] // batch_size

    def __getstate__(self) -> dict:
        """The fields alone: the open zarr groups and offsets cached below are opened anew where it is unpickled."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    @cached_property
    def _groups(self) -> list:
        import zarr

        groups = []
        for path in self.paths:
            root = zarr.open_group(path, mode="r")
            groups += [root[key] for key in sorted(root.group_keys(), key=lambda key: int(key.split("_")[1]))]
        return groups

    def _matrix(self, group):
        import anndata as ad

        return ad.io.sparse_dataset(group["X"] if self.layer == "X" else group["layers"][self.layer])

    @cached_property
    def _offsets(self) -> np.ndarray:
        return np.cumsum([0] + [group["obs"]["row"].shape[0] for group in self._groups])

    def obs_column(self, name: str) -> np.ndarray:
        """A column of the stored cells' ``obs`` (``row``, ``batch_code``, ``label_code``), in the store's order."""
        import anndata as ad

        return np.concatenate([ad.io.read_elem(group["obs"][name]) for group in self._groups])

    def head_obs(self, n: int | None = None) -> pd.DataFrame:
        """The first ``n`` stored cells' (None: all) ``row``, ``batch_code`` and ``label_code``, indexed by cell name;
        only the data sets that hold them are read."""
        import anndata as ad

        n = self.n_cells if n is None else n
        frames = []
        for group, start in zip(self._groups, self._offsets):
            if start >= n:
                break
            obs = group["obs"]
            take = slice(0, n - start)
            frames.append(pd.DataFrame({name: ad.io.read_elem(obs[name])[take] for name in OBS_COLUMNS},
                                       index=ad.io.read_elem(obs[obs.attrs["_index"]])[take]))
        return pd.concat(frames) if frames else pd.DataFrame({name: np.zeros(0, np.int64) for name in OBS_COLUMNS})

    def read(self, rows: np.ndarray) -> sp.csr_matrix:
        """The stored cells ``rows`` (positions in the store's order, in any order) as float32 CSR; consecutive
        rows are read as one slice of each of annbatch's data sets."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
            parts = []
            for i, group in enumerate(self._groups):
                start, stop = max(rows[0], self._offsets[i]), min(rows[-1] + 1, self._offsets[i + 1])
                if start < stop:
                    parts.append(self._matrix(group)[start - self._offsets[i]:stop - self._offsets[i]])
            return sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        dataset = np.searchsorted(self._offsets, rows[order], side="right") - 1
        parts = [self._matrix(self._groups[i])[rows[order][dataset == i] - self._offsets[i]]
                 for i in np.unique(dataset)]
        stacked = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, self.n_genes))
        return sp.csr_matrix(stacked[np.argsort(order)], dtype=np.float32)

    def minibatches(self, batch_size: int, seed: int) -> Iterator[tuple[sp.csr_matrix, np.ndarray]]:
        """One epoch of shuffled mini-batches of ``batch_size`` cells (the last, smaller one dropped): each the
        cells' matrix (float32 CSR) and their positions in the store. annbatch reads ``CHUNK_CELLS`` consecutive
        cells of the pre-shuffled store at a time and shuffles ``PRELOAD_CHUNKS`` chunks together; a thread
        reads the next buffer while the caller trains on this one. Memory is that buffer, whatever the cells."""
        from annbatch import Loader
        from annbatch.samplers import DistributedSampler, RandomSampler

        chunk, preload = loader_buffer(batch_size)
        sampler = RandomSampler(chunk, preload, batch_size, drop_last=True, rng=np.random.default_rng(seed))
        if self.shard is not None:
            sampler = DistributedSampler(sampler, dist_info=lambda: self.shard)
        loader = Loader(batch_sampler=sampler, return_index=True, to=None, preload_to_gpu=False)
        loader.add_datasets([self._matrix(group) for group in self._groups])  # no obs: names would cost memory per cell
        for batch in ahead(loader):
            yield sp.csr_matrix(batch["X"], dtype=np.float32), batch["index"]


def loader_buffer(batch_size: int) -> tuple[int, int]:
    """annbatch's chunk size and chunks per buffer for ``batch_size``: a buffer of about ``CHUNK_CELLS`` x
    ``PRELOAD_CHUNKS`` cells, a whole number of mini-batches (annbatch requires it), cut into at most
    ``PRELOAD_CHUNKS`` chunks."""
    buffer = batch_size * max(1, CHUNK_CELLS * PRELOAD_CHUNKS // batch_size)
    preload = next(n for n in range(min(PRELOAD_CHUNKS, buffer), 0, -1) if buffer % n == 0)
    return buffer // preload, preload


def ahead(items: Iterable, depth: int = 2) -> Iterator:
    """``items``, each made by a thread while the caller works on the ones before (at most ``depth`` ahead). A
    caller that stops early stops the thread too (it would otherwise wait forever to hand over the next one)."""
    queue: Queue = Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(item)
        except BaseException as err:  # raised again in the caller's thread
            queue.put(err)
        queue.put(done)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # free a thread waiting to put, until it sees the stop
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass


@dataclass(frozen=True)
class CellStore:
    """A prepared data set on disk (see the module): its ``genes``, the ``batches`` and ``labels`` that the stored
    codes stand for, ``notes`` (what preprocessing dropped), ``missing_genes`` (in a transfer) and each part's
    cells."""

    path: Path
    id: str
    genes: np.ndarray
    batches: list[str]
    labels: list[str]
    notes: list[str]
    n_cells: dict[str, int]
    missing_genes: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | Path) -> "CellStore":
        path = Path(path)
        meta = json.loads((path / META).read_text())
        if meta["format"] != STORE_FORMAT:
            raise ValueError(f"{path}: a store of format {meta['format']}, this scssl reads {STORE_FORMAT}")
        missing = meta["missing_genes"]
        return cls(path, meta["id"], np.asarray(meta["genes"]), meta["batches"], meta["labels"], meta["notes"],
                   meta["n_cells"], None if missing is None else np.asarray(missing, dtype=bool))

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether ``path`` holds a complete store of this format (an interrupted or older one does not count)."""
        meta = Path(path) / META
        return meta.is_file() and json.loads(meta.read_text()).get("format") == STORE_FORMAT

    def cells(self, part: str, layer: str = "X") -> StoredCells:
        """The ``reference`` or ``query`` cells' ``X`` or raw ``counts``; ``all``: the reference cells, then the query
        cells."""
        parts = [name for name in PARTS if part in (name, "all") and self.n_cells[name]]
        return StoredCells(tuple(str(self.path / f"{name}.zarr") for name in parts),
                           sum(self.n_cells[name] for name in parts), len(self.genes), layer)

    @classmethod
    def write(cls, path: str | Path, chunks: Iterable[tuple[sp.csr_matrix, sp.csr_matrix]], obs: pd.DataFrame,
              genes: np.ndarray, *, id: str, notes: list[str], missing_genes: np.ndarray | None = None,
              seed: int = 0) -> "CellStore":
        """Write the prepared cells, whose ``obs`` (categorical ``batch``, ``label`` and ``split``, in order) and
        normalised values and raw counts come a chunk of consecutive cells at a time (``chunks``): each chunk is
        staged as it comes, then annbatch shuffles each part into its store ``DATASET_SIZE`` at a time, so memory
        holds a chunk or that much, never all the cells. Written beside ``path`` and moved there when complete."""
        import anndata as ad
        from annbatch import DatasetCollection

        path = Path(path)
        partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        staged: dict[str, list[str]] = {part: [] for part in PARTS}
        split = obs["split"].to_numpy().astype(str)
        codes = pd.DataFrame({"row": np.arange(len(obs)), "batch_code": obs["batch"].cat.codes.to_numpy(),
                              "label_code": obs["label"].cat.codes.to_numpy()}, index=obs.index.astype(str))
        var = pd.DataFrame(index=pd.Index(genes, dtype=str))
        start = 0
        with warnings.catch_warnings():  # zarr: consolidated metadata (annbatch's) is not in zarr 3's specification
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            for i, (values, counts) in enumerate(chunks):
                rows = slice(start, start + values.shape[0])
                for part in PARTS:
                    mine = split[rows] == part
                    if mine.any():
                        staged[part].append(str(partial / "staging" / part / f"{i}.zarr"))
                        ad.AnnData(values[mine], obs=codes[rows][mine], var=var,
                                   layers={"counts": counts[mine]}).write_zarr(staged[part][-1])
                start = rows.stop
            if start != len(obs):
                raise ValueError(f"the chunks held {start} cells and obs {len(obs)}")
            for part, paths in staged.items():
                if paths:
                    DatasetCollection(partial / f"{part}.zarr").add_adatas(
                        paths, shuffle=True, rng=np.random.default_rng(seed), dataset_size=DATASET_SIZE,
                        shuffle_chunk_size=min(SHUFFLE_SLICE, int((split == part).sum())))
        shutil.rmtree(partial / "staging")
        meta = {"format": STORE_FORMAT, "id": id, "genes": [str(g) for g in genes],
                "batches": [str(b) for b in obs["batch"].cat.categories],
                "labels": [str(b) for b in obs["label"].cat.categories], "notes": list(notes),
                "n_cells": {part: int((split == part).sum()) for part in PARTS},
                "missing_genes": None if missing_genes is None else [bool(m) for m in missing_genes]}
        (partial / META).write_text(json.dumps(meta))
        shutil.rmtree(path, ignore_errors=True)  # an interrupted or older store of the same key
        os.replace(partial, path)
        return cls.open(path)

    def obs(self) -> pd.DataFrame:
        """Every stored cell's ``batch``, ``label`` and ``split`` (categorical) in the prepared order, indexed by cell
        name, as ``PreparedDataset.obs``."""
        return self.obs_of({part: self.cells(part).head_obs() for part in PARTS}).sort_values("row").drop(columns="row")

    def obs_of(self, stored: dict[str, pd.DataFrame]) -> pd.DataFrame:
        """Each part's stored obs (``StoredCells.head_obs``), one after the other, as ``PreparedDataset.obs``
        (categorical ``batch``, ``label`` and ``split``) with the cells' ``row`` beside."""
        frame = pd.concat([obs.assign(split=part) for part, obs in stored.items()])
        return pd.DataFrame({
            "batch": pd.Categorical.from_codes(frame["batch_code"].to_numpy(), self.batches),
            "label": pd.Categorical.from_codes(frame["label_code"].to_numpy(), self.labels),
            "split": pd.Categorical(frame["split"].to_numpy(), categories=list(PARTS)),
            "row": frame["row"].to_numpy(),
        }, index=pd.Index(frame.index.astype(str), name=None))

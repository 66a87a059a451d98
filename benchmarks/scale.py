"""What preparing and training on N cells costs in time and memory, from a file on disk, with the prepared data
in memory (held once per node) or on disk (a store, streamed).

For each N (default 100,000, 1,000,000 and 3,000,000): a synthetic count matrix of N cells x 4,000 genes, about
10 % non-zero, 4 batches (the last one the query) and 10 cell types, written to an ``.h5ad`` a chunk at a time;
then, each in a fresh process, for the data ``memory`` and ``store`` (``--data``):

- preparation (checks, normalisation, 2,000 batch-aware HVGs): ``prep_seconds`` and ``prep_peak_rss_gb``;
  ``prepared_gb``: in memory, the prepared matrix and its raw counts (``scssl.data.prepare``); on disk, the store's
  size (``scssl.data.prepare_store``: a pre-shuffled, sharded zarr store written through annbatch);
- 1 and 2 concurrent one-epoch SimCLR trials in a local Ray, each in a fresh worker: in memory, the data set put
  once in the object store, as a study puts it, each trial training on the reference cells and embedding them, as
  ``run_trial`` does; on disk, each trial opening the store and streaming an epoch of its reference cells from it,
  then embedding ``SCORED_CELLS`` of them (a random sample: the store is pre-shuffled). ``cells_per_s`` per trial,
  ``trial_peak_rss_gb`` (a trial worker's peak resident memory, the object store's pages it read included),
  ``trial_private_gb`` (its own memory after the epoch: USS, the shared data excluded), ``driver_peak_rss_gb``;
- ``knn_seconds``: kNN cell typing of the query cells from the reference on a trial's embedding (in memory of all
  cells; on disk of ``SCORED_CELLS`` of each part).

One JSON row per N, data and trial count (keyed ``cells``, ``data`` and ``trials``), and a Markdown table.
``--smoke`` runs 3,000 cells (a test runs it, so that the script cannot break unnoticed).

    .venv/bin/python benchmarks/scale.py --cells 100000 1000000 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GENES, STORED, HVGS = 4000, 400, 2000  # 400 of 4,000 genes non-zero per cell
SCORED_CELLS = 20_000  # cells of each part a trial on a store embeds: bounded, whatever the number of cells
CHUNK = 10_000  # cells generated and written at once


def write_synthetic(path: Path, n_cells: int, seed: int = 0) -> None:
    """Counts of ``n_cells`` cells in anndata's CSR layout, written ``CHUNK`` cells at a time (memory bounded by a
    chunk): each cell holds 400 distinct genes, a cell type's own 200 genes count more, each batch scales the genes
    by its own factors."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    types, batches = rng.integers(10, size=n_cells), rng.integers(4, size=n_cells)
    obs = pd.DataFrame({"batch": np.char.add("b", batches.astype(str)), "cell_type": np.char.add("t", types.astype(str))},
                       index=np.char.add("c", np.arange(n_cells).astype(str)))
    ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(GENES)])).write_h5ad(path)
    batch_scale = rng.uniform(0.5, 2.0, (4, GENES))
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        group = f.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, GENES)})
        data = group.create_dataset("data", (n_cells * STORED,), "float32", chunks=(1 << 20,))
        indices = group.create_dataset("indices", (n_cells * STORED,), "int32", chunks=(1 << 20,))
        group.create_dataset("indptr", data=np.arange(n_cells + 1, dtype=np.int64) * STORED)
        for start in range(0, n_cells, CHUNK):
            part = slice(start, min(start + CHUNK, n_cells))
            n = part.stop - start
            genes = np.sort(rng.random((n, GENES), dtype=np.float32).argpartition(STORED, axis=1)[:, :STORED], axis=1)
            marker = genes // 200 == types[part, None]
            counts = rng.poisson(batch_scale[batches[part, None], genes] * np.where(marker, 6.0, 1.0)) + 1
            data[start * STORED:part.stop * STORED] = counts.ravel().astype(np.float32)
            indices[start * STORED:part.stop * STORED] = genes.ravel().astype(np.int32)


def prepare_in_child(path: Path) -> dict:
    """In a fresh process: prepare the file; its seconds, peak RSS and the prepared data set's size."""
    from scssl.data import prepare

    started = time.perf_counter()
    dataset = prepare(spec_of(path))
    seconds = time.perf_counter() - started
    size = sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in (dataset.X, dataset.counts))
    return {"prep_seconds": round(seconds, 1), "prep_peak_rss_gb": round(_peak_rss_gb(), 3),
            "prepared_gb": round(size / 2**30, 3)}


def spec_of(path: Path):
    from scssl.data import DatasetSpec

    return DatasetSpec(path=str(path), batch_key="batch", labels_key="cell_type", n_hvgs=HVGS, query_batches=["b3"])


def prepare_store_in_child(path: Path, root: Path) -> dict:
    """In a fresh process: prepare the file into a store under ``root``; its seconds, peak RSS and size on disk."""
    from scssl.data.prepare import prepare_store

    started = time.perf_counter()
    store = prepare_store(spec_of(path), root)
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    return {"prep_seconds": round(seconds, 1), "prep_peak_rss_gb": round(_peak_rss_gb(), 3),
            "prepared_gb": round(size / 2**30, 3), "store": str(store.path)}


def stored_trials_in_child(store: Path, n_trials: int) -> dict:
    """In a fresh process (the driver): run ``n_trials`` one-epoch trials at once in a local Ray, each in a fresh
    worker streaming from the store."""
    import ray

    ray.init(num_cpus=n_trials, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    try:
        trial = ray.remote(num_cpus=1, max_calls=1)(one_stored_trial)
        results = ray.get([trial.remote(str(store)) for _ in range(n_trials)])
    finally:
        ray.shutdown()
    return {"trials": n_trials, "driver_peak_rss_gb": round(_peak_rss_gb(), 3), "per_trial": results}


def one_stored_trial(path: str) -> dict:
    """An epoch streamed from the store, the embedding of ``SCORED_CELLS`` reference cells (after the epoch, as
    ``run_trial`` embeds), and kNN cell typing of as many query cells from them."""
    import numpy as np
    import psutil

    from scssl.augment import AugmentationConfig
    from scssl.data import Cells
    from scssl.data.store import CellStore
    from scssl.evaluate import knn_cell_typing
    from scssl.methods import SimCLR
    from scssl.train import TrainSettings, fit

    store = CellStore.open(path)
    cells = {part: Cells.of_store(store, part) for part in ("reference", "query")}
    scored = {part: min(SCORED_CELLS, c.n_cells) for part, c in cells.items()}
    seconds, embeddings = [], {}

    def after_epoch(model, report):
        seconds.append(report.seconds)
        embeddings["reference"] = model.embed(cells["reference"].subset(np.arange(scored["reference"]), shared=True))

    model = fit("simclr", SimCLR.Params(), cells["reference"], TrainSettings(epochs=1, batch_size=256, device="cpu"),
                AugmentationConfig(), 0, on_epoch=after_epoch)
    private = psutil.Process().memory_full_info().uss
    embeddings["query"] = model.embed(cells["query"].subset(np.arange(scored["query"]), shared=True))
    labels = {part: np.asarray(store.labels)[store.cells(part).obs_column("label_code")[:scored[part]]]
              for part in cells}
    started = time.perf_counter()
    knn_cell_typing(embeddings["reference"], labels["reference"], embeddings["query"], labels["query"])
    n = cells["reference"].n_cells
    return {"cells_per_s": round(n // 256 * 256 / seconds[0], 1), "trial_peak_rss_gb": round(_peak_rss_gb(), 3),
            "trial_private_gb": round(private / 2**30, 3), "knn_seconds": round(time.perf_counter() - started, 2)}


def trials_in_child(path: Path, n_trials: int) -> dict:
    """In a fresh process (the driver): prepare, put the data set in a local Ray, run ``n_trials`` one-epoch trials
    at once, each in a fresh worker."""
    import numpy as np
    import ray

    from scssl.data import prepare
    from scssl.evaluate.shared import SharedData

    dataset = prepare(spec_of(path))
    shared = SharedData(dataset, np.zeros(len(dataset.reference_index), bool), np.zeros((dataset.n_cells, 2), "f4"))
    ray.init(num_cpus=n_trials, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    try:
        ref = ray.put(shared)
        del shared
        trial = ray.remote(num_cpus=1, max_calls=1)(one_trial)
        results = ray.get([trial.remote([ref]) for _ in range(n_trials)])
    finally:
        ray.shutdown()
    return {"trials": n_trials, "driver_peak_rss_gb": round(_peak_rss_gb(), 3), "per_trial": results}


def one_trial(refs: list) -> dict:
    """A trial's epoch and its embedding of the reference cells, as ``run_trial`` does them; kNN cell typing of the
    query cells on an embedding of all cells."""
    import psutil
    import ray

    from scssl.augment import AugmentationConfig
    from scssl.evaluate import knn_cell_typing
    from scssl.methods import SimCLR
    from scssl.train import TrainSettings, fit

    shared = ray.get(refs[0])
    data, cells = shared.trial_data(SimCLR)
    seconds = []
    model = fit("simclr", SimCLR.Params(), data, TrainSettings(epochs=1, batch_size=256, device="cpu"),
                AugmentationConfig(), 0, on_epoch=lambda m, report: seconds.append(report.seconds))
    model.embed(cells)
    private = psutil.Process().memory_full_info().uss
    everyone = shared.cells(inputs=())
    embedding = model.embed(everyone)
    labels, query = shared.dataset.labels, shared.dataset.obs["split"].to_numpy() == "query"
    started = time.perf_counter()
    knn_cell_typing(embedding[~query], labels[~query], embedding[query], labels[query])
    return {"cells_per_s": round(data.n_cells // 256 * 256 / seconds[0], 1), "trial_peak_rss_gb": round(_peak_rss_gb(), 3),
            "trial_private_gb": round(private / 2**30, 3), "knn_seconds": round(time.perf_counter() - started, 2)}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _in_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--folder", help="where the synthetic files go (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="3,000 cells")
    parser.add_argument("--data", nargs="+", choices=["memory", "store"], default=["memory", "store"],
                        help="where the prepared data is held (default: both)")
    parser.add_argument("--prepare", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--trials", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        path, *root = map(Path, args.prepare)
        print(json.dumps(prepare_store_in_child(path, root[0]) if root else prepare_in_child(path)))
        return
    if args.trials:
        where, n_trials = Path(args.trials[1]), int(args.trials[2])
        ran = stored_trials_in_child(where, n_trials) if args.trials[0] == "store" else trials_in_child(where, n_trials)
        print(json.dumps(ran))
        return
    sizes = [3000] if args.smoke else args.cells
    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for n in sizes:
            path = Path(folder) / f"synthetic_{n}.h5ad"
            print(f"[scale] {n:,} cells: writing {path}", file=sys.stderr, flush=True)
            write_synthetic(path, n)
            file_gb = path.stat().st_size / 2**30
            for data in args.data:
                print(f"[scale] {n:,} cells, {data}: preparing", file=sys.stderr, flush=True)
                prepared = _in_child("--prepare", str(path), *([folder] if data == "store" else []))
                source = prepared.pop("store", str(path))
                for n_trials in (1, 2):
                    print(f"[scale] {n:,} cells, {data}: {n_trials} concurrent trial(s)", file=sys.stderr, flush=True)
                    ran = _in_child("--trials", data, source, str(n_trials))
                    per_trial = ran.pop("per_trial")
                    rows.append({"cells": n, "data": data, "file_gb": round(file_gb, 3), **prepared, **ran,
                                 **{key: max(t[key] for t in per_trial) for key in per_trial[0]},
                                 "cells_per_s": min(t["cells_per_s"] for t in per_trial)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                if data == "store":
                    shutil.rmtree(source)
            path.unlink()
    print("\n| cells | data | trials | file (GB) | prep (s) | prep peak RSS (GB) | prepared (GB) | cells/s per trial "
          "| trial peak RSS (GB) | trial private (GB) | driver peak RSS (GB) | kNN (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cells']:,} | {r['data']} | {r['trials']} | {r['file_gb']:.2f} | {r['prep_seconds']:.0f} | "
              f"{r['prep_peak_rss_gb']:.2f} | {r['prepared_gb']:.2f} | {r['cells_per_s']:.0f} | "
              f"{r['trial_peak_rss_gb']:.2f} | {r['trial_private_gb']:.2f} | {r['driver_peak_rss_gb']:.2f} | "
              f"{r['knn_seconds']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()

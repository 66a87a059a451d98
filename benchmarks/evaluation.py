"""What evaluating one embedding costs, and whether scssl's scIB numbers are scib-metrics' own.

On a fixed embedding of a real data set (default ``../shared/data/kang2018_pbmc_ctrl_8donors.h5ad``: 12,261
cells, 8 donors; prepared as a study prepares it, the embedding a seeded 30-component PCA of its highly variable
genes, the pre-integration PCA with 50 components as in a study):

- ``scib_seconds``: scssl's whole scIB scoring of the embedding (``scib_scores``, the ten metrics), in a fresh
  process: JAX compiles scib-metrics' functions on the way, as in a study's worker; ``scib_seconds_warm``: the same
  call again in that process;
- ``neighbour_seconds``: the exact 90-nearest-neighbour search that every neighbour-based metric shares;
- ``metric_seconds``: each metric alone on those neighbours, warm (after the whole scoring, in that process);
- ``max_abs_diff``: the largest absolute difference of any metric from scib-metrics' own ``Benchmarker`` with its
  default metric set and neighbour search (pynndescent) on the same embedding, over the metrics both compute;
  ``max_abs_diff_exact``: the same against a Benchmarker given exact neighbours;
- ``knn_seconds``: kNN cell typing of the query donors (the last two) from the others;
- at scale, on synthetic embeddings of 100,000 and 1,000,000 cells (30 dimensions, 20 cell types of uneven sizes,
  10 batches that shift them; the pre-integration PCA 50 dimensions), each size in a fresh process:
  ``scib_seconds_100k`` / ``scib_seconds_1m``, the whole scIB scoring as a study runs it (on the stratified
  subsample beyond ``evaluation.scib_max_cells``, JAX compiling on the way), and ``knn_seconds_100k`` /
  ``knn_seconds_1m``, kNN cell typing of every cell of one batch (10 %) from the other nine.

Targets on the project's 2-core CPU: ``scib_seconds`` <= 15 and ``max_abs_diff`` <= 1e-6, and 1M cells evaluated
(scIB and kNN cell typing) in under 5 minutes. Prints a Markdown table; ``--json PATH`` writes the figures;
``--sizes`` the synthetic sizes (``--sizes`` alone: none). ``--smoke``: the built-in ``pbmc_hao2021`` and 3,000
synthetic cells (a test runs it, so that the script cannot break unnoticed).

    .venv/bin/python benchmarks/evaluation.py --json evaluation.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KANG = ROOT.parent / "shared" / "data" / "kang2018_pbmc_ctrl_8donors.h5ad"

def fixed_embedding(path: Path, batch_key: str, labels_key: str):
    """The prepared data set, its seeded 30-component PCA (the fixed embedding) and 50-component one."""
    import numpy as np

    from scssl.data import DatasetSpec, prepare
    from scssl.methods import PCABaseline

    dataset = prepare(DatasetSpec(path=str(path), batch_key=batch_key, labels_key=labels_key))
    cells = dataset.cells(inputs=())
    embedding = PCABaseline(PCABaseline.Params(n_components=30), seed=0).fit(cells).embed(cells)
    pre = PCABaseline(PCABaseline.Params(n_components=50), seed=0).fit(cells).embed(cells)
    return dataset, np.asarray(embedding, np.float32), np.asarray(pre, np.float32)


def metric_seconds(embedding, batch, labels, pre) -> tuple[float, dict[str, float]]:
    """The exact neighbour search, and each metric alone on its neighbours (scib-metrics' functions, as the
    Benchmarker calls them)."""
    import scib_metrics

    from scssl.evaluate.batch_correction import exact_neighbors

    started = time.perf_counter()
    nn = exact_neighbors(embedding, 90)
    search = time.perf_counter() - started
    calls = {
        "isolated_labels": lambda: scib_metrics.isolated_labels(embedding, labels, batch),
        "leiden_nmi_ari": lambda: scib_metrics.nmi_ari_cluster_labels_leiden(nn.subset_neighbors(15), labels,
                                                                             n_jobs=2),
        "silhouette_label": lambda: scib_metrics.silhouette_label(embedding, labels),
        "clisi": lambda: scib_metrics.clisi_knn(nn, labels),
        "silhouette_batch": lambda: scib_metrics.silhouette_batch(embedding, labels, batch),
        "ilisi": lambda: scib_metrics.ilisi_knn(nn, batch),
        "kbet": lambda: scib_metrics.kbet_per_label(nn.subset_neighbors(50), batch, labels),
        "graph_connectivity": lambda: scib_metrics.graph_connectivity(nn.subset_neighbors(15), labels),
        "pcr_comparison": lambda: scib_metrics.pcr_comparison(pre, embedding, batch, categorical=True),
    }
    seconds = {}
    for name, call in calls.items():
        started = time.perf_counter()
        call()
        seconds[name] = time.perf_counter() - started
    return search, seconds


def benchmarker_scores(embedding, batch, labels, pre, exact: bool) -> dict[str, float]:
    """scib-metrics' own Benchmarker, its default metric set (Leiden added, as scssl scores it), unscaled."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scib_metrics.benchmark import Benchmarker, BioConservation

    from scssl.evaluate.batch_correction import exact_neighbors

    cells = ad.AnnData(obs=pd.DataFrame({"batch": batch, "label": labels}, index=np.arange(len(batch)).astype(str)),
                       obsm={"emb": embedding, "pre": pre})
    benchmarker = Benchmarker(cells, batch_key="batch", label_key="label", embedding_obsm_keys=["emb"],
                              bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True),
                              pre_integrated_embedding_obsm_key="pre", progress_bar=False, n_jobs=2)
    benchmarker.prepare(**({"neighbor_computer": exact_neighbors} if exact else {}))
    benchmarker.benchmark()
    return {name: float(value) for name, value in benchmarker.get_results(min_max_scale=False).loc["emb"].items()
            if not isinstance(value, str)}


THEIRS = {"isolated_labels": "Isolated labels", "leiden_nmi": "Leiden NMI", "leiden_ari": "Leiden ARI",
          "silhouette_label": "Silhouette label", "clisi": "cLISI", "ilisi": "iLISI", "kbet": "KBET",
          "graph_connectivity": "Graph connectivity", "pcr_comparison": "PCR comparison"}


def measure(inputs_file: str) -> dict:
    """In a fresh process: scssl's scoring cold (JAX compiling) and warm, then each metric alone, warm."""
    import numpy as np

    inputs = np.load(inputs_file, allow_pickle=False)
    emb, pre, batch, labels = inputs["emb"], inputs["pre"], inputs["batch"], inputs["labels"]
    started = time.perf_counter()
    from scssl.evaluate.batch_correction import scib_scores

    scores = scib_scores(emb, batch, labels, pre, n_jobs=2)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    scib_scores(emb, batch, labels, pre, n_jobs=2)
    warm = time.perf_counter() - started
    search, seconds = metric_seconds(emb, batch, labels, pre)
    return {"scores": scores, "cold": cold, "warm": warm, "search": search, "seconds": seconds}


def synthetic_embedding(n: int, seed: int = 0):
    """(embedding, pre-integration PCA, batch, labels) of ``n`` synthetic cells: cell types of uneven sizes
    (Zipf-like, 20 types) as clusters, each of 10 batches shifting every cell by its own offset."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = 1.0 / np.arange(1, 21)
    types = rng.choice(20, size=n, p=sizes / sizes.sum())
    batches = rng.integers(10, size=n)
    centres, offsets = rng.normal(scale=3.0, size=(20, 30)), rng.normal(scale=0.25, size=(10, 30))
    embedding = (centres[types] + offsets[batches] + rng.normal(size=(n, 30))).astype(np.float32)
    pre = np.concatenate([embedding, rng.normal(size=(n, 20)).astype(np.float32)], axis=1) + offsets[batches, :1]
    return embedding, pre.astype(np.float32), np.char.add("b", batches.astype(str)), np.char.add("t", types.astype(str))


def measure_at_scale(n: int, max_cells: int) -> dict:
    """In a fresh process: scIB of ``n`` synthetic cells as a study scores them (a subsample beyond ``max_cells``),
    then kNN cell typing of one batch."""
    from scssl.evaluate import knn_cell_typing
    from scssl.evaluate.batch_correction import scib_scores
    from scssl.evaluate.settings import EvaluationSettings

    embedding, pre, batch, labels = synthetic_embedding(n)
    started = time.perf_counter()
    scores = scib_scores(embedding, batch, labels, pre, n_jobs=2, max_cells=max_cells,
                         seed=EvaluationSettings().subsample_seed)
    scib = time.perf_counter() - started
    query = batch == "b9"
    started = time.perf_counter()
    typing = knn_cell_typing(embedding[~query], labels[~query], embedding[query], labels[query])
    knn = time.perf_counter() - started
    return {"cells": n, "scib_cells": scores["scib_cells"], "scib_seconds": scib, "knn_seconds": knn,
            "query_cells": int(query.sum()), "scores": scores, "macro_f1": typing["macro_f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--h5ad", type=Path, default=KANG)
    parser.add_argument("--batch-key", default="batch")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="synthetic cell counts to evaluate at scale")
    parser.add_argument("--smoke", action="store_true", help="tiny data: the built-in pbmc_hao2021, --sizes 3000")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--measure-at", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        from scssl.data import BUILTIN_DATASETS

        builtin = BUILTIN_DATASETS["pbmc_hao2021"]
        args.h5ad, args.batch_key, args.labels_key, args.sizes = builtin.path, builtin.batch_key, builtin.labels_key, [3000]
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    if args.measure_at:
        print(json.dumps(measure_at_scale(*args.measure_at)))
        return
    if not args.h5ad.is_file():
        sys.exit(f"{args.h5ad}: no such file (give --h5ad)")

    import tempfile

    import numpy as np

    from scssl.evaluate import knn_cell_typing

    dataset, embedding, pre = fixed_embedding(args.h5ad, args.batch_key, args.labels_key)
    batch, labels = dataset.obs["batch"].to_numpy().astype(str), dataset.labels.astype(str)
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "inputs.npz"
        np.savez(inputs, emb=embedding, pre=pre, batch=batch, labels=labels)
        out = subprocess.run([sys.executable, __file__, "--measure", str(inputs)], check=True, capture_output=True,
                             text=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    ours, search, seconds = measured["scores"], measured["search"], measured["seconds"]
    differences = {}
    for exact in (False, True):
        theirs = benchmarker_scores(embedding, batch, labels, pre, exact)
        differences[exact] = {name: abs(ours[name] - theirs[column]) for name, column in THEIRS.items()}
    donors = sorted(set(batch))[-2:]
    query = np.isin(batch, donors)
    started = time.perf_counter()
    knn_cell_typing(embedding[~query], labels[~query], embedding[query], labels[query])
    knn = time.perf_counter() - started

    figures = {"h5ad": str(args.h5ad), "cells": int(len(batch)), "scib_seconds": round(measured["cold"], 2),
               "scib_seconds_warm": round(measured["warm"], 2), "neighbour_seconds": round(search, 3),
               "metric_seconds": {k: round(v, 3) for k, v in seconds.items()},
               "max_abs_diff": max(differences[False].values()), "max_abs_diff_exact": max(differences[True].values()),
               "abs_diff": differences[False], "knn_seconds": round(knn, 3)}
    from scssl.evaluate import AGGREGATES, BATCH_METRICS, BIO_METRICS
    from scssl.evaluate.settings import EvaluationSettings

    max_cells = EvaluationSettings().scib_max_cells
    for n in args.sizes:
        at = _at_scale(n, max_cells)
        suffix = _size_suffix(n)
        figures[f"scib_seconds_{suffix}"] = round(at["scib_seconds"], 1)
        figures[f"knn_seconds_{suffix}"] = round(at["knn_seconds"], 1)
        figures[f"at_{suffix}"] = at
    if args.sizes and min(args.sizes) > max_cells:  # what the subsample costs in accuracy: the same cells, all scored
        n = min(args.sizes)
        whole, sampled = _at_scale(n, n), figures[f"at_{_size_suffix(n)}"]["scores"]
        figures["subsample_abs_diff"] = {m: abs(whole["scores"][m] - sampled[m]) for m in BIO_METRICS + BATCH_METRICS
                                         + AGGREGATES}
        figures["subsample_cells"] = n
        figures["subsample_max_abs_diff"] = max(figures["subsample_abs_diff"].values())
        figures["scib_seconds_whole"] = round(whole["scib_seconds"], 1)
    print(f"\n{args.h5ad.name}: {figures['cells']} cells, fixed embedding (PCA 30)\n")
    print("| figure | value |\n|---|---|")
    for key in ("scib_seconds", "scib_seconds_warm", "neighbour_seconds", "knn_seconds", "max_abs_diff",
                "max_abs_diff_exact"):
        print(f"| {key} | {figures[key]:.3g} |")
    for n in args.sizes:
        at, suffix = figures[f"at_{_size_suffix(n)}"], _size_suffix(n)
        print(f"| scib_seconds_{suffix} ({at['scib_cells']:,} of {n:,} cells scored) | {at['scib_seconds']:.1f} |")
        print(f"| knn_seconds_{suffix} ({at['query_cells']:,} query cells) | {at['knn_seconds']:.1f} |")
    if "subsample_max_abs_diff" in figures:
        n = figures["subsample_cells"]
        print(f"| scIB of all {n:,} cells (s) | {figures['scib_seconds_whole']:.1f} |")
        print(f"| largest abs diff of a metric, subsample vs all {n:,} cells | {figures['subsample_max_abs_diff']:.3g} |")
    for name, value in figures["metric_seconds"].items():
        print(f"| {name} (s, warm) | {value:.3g} |")
    for name, value in differences[False].items():
        print(f"| {name}: abs diff from the default Benchmarker | {value:.2g} |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def _at_scale(n: int, max_cells: int) -> dict:
    """``measure_at_scale`` in a fresh process."""
    print(f"[evaluation] {n:,} synthetic cells, scIB on at most {max_cells:,} ...", flush=True)
    out = subprocess.run([sys.executable, __file__, "--measure-at", str(n), str(max_cells)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _size_suffix(n: int) -> str:
    """100000 -> "100k", 1000000 -> "1m"."""
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


if __name__ == "__main__":
    main()

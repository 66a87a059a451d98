"""Training throughput of the two-view SSL methods, and how much of a step is not network work.

For each method whose step is a loss on two augmented views of the matrix alone (the seven generic
methods and CLEAR; not the MAE, whose masking is its step, nor CLAIRE, which needs its neighbour graph), on a synthetic data set (default 20,000 cells x 4,000 genes, dense and sparse input)
with the clear_pipeline augmentations:

- cells_per_s: cells per second over a training epoch of the real loop (mini-batch cut from the
  matrix, both views augmented on the device, forward, backward, optimiser step, momentum update);
- bare_cells_per_s: the same model's network work alone on inputs augmented in advance (every
  forward pass the method needs, target and momentum networks included, the backward pass, the
  optimiser step and the EMA update), the fastest of as many rounds of 40 steps as there are epochs
  after the first (the machine's speed drifts, so both figures take the fastest of a few);
- overhead_ratio = bare_cells_per_s / cells_per_s (full step time over bare network time);
- rows_ms, augment_ms: what a step does besides the network, timed alone on the same mini-batches:
  cutting the dense mini-batch from the matrix, and making its two views;
- peak_rss_mb: the peak resident memory of the process that measured the method;
- others_cpu: the share of the machine's CPU time that other processes took while it was measured
  (on a shared machine they slow both figures and make the ratio noisy); with ``--retries N`` a method
  measured while others took more than 5 % is measured again, up to N times, keeping the quietest.

Each method runs in its own process so that peak memory is its own. Prints a Markdown table;
``--json PATH`` also writes the figures (one object per method and input).

    python benchmarks/train_throughput.py                 # all methods, dense and sparse
    python benchmarks/train_throughput.py --methods simclr byol --cells 5000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def measure(method: str, sparse: bool, cells: int, genes: int, epochs: int, device: str) -> dict:
    import numpy as np
    import scipy.sparse as sp
    import torch

    from scssl.augment import AugmentationConfig, Augmenter
    from scssl.data import CellMatrix, make_synthetic
    from scssl.methods import get_method
    from scssl.train import TrainSettings, resolve_device, train

    counts = make_synthetic(n_cells=cells, n_genes=genes, n_batches=4, n_cell_types=10, seed=0).X
    X = sp.csr_matrix(counts.multiply(1e4 / counts.sum(axis=1)).log1p(), dtype=np.float32)
    if not sparse:
        X = X.toarray()
    cls = get_method(method)
    settings = TrainSettings(epochs=epochs, batch_size=256, device=device)
    augment = AugmentationConfig()  # clear_pipeline

    epoch_seconds = []
    train(cls, cls.Params(), X, settings, augment, seed=0, on_epoch=lambda m, r: epoch_seconds.append(r.seconds))
    steps = cells // 256
    cells_per_s = steps * 256 / min(epoch_seconds[1:] or epoch_seconds)

    # The same network work on views augmented in advance.
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = cls(genes, cls.Params()).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    matrix, augmenter = CellMatrix(X, dev), Augmenter(augment, dev, seed=0)
    n_bare = min(steps, 40)
    batches = [torch.arange(b * 256, (b + 1) * 256, device=dev) for b in range(n_bare)]
    rows_s = _best_seconds(lambda: (matrix.rows(idx) for idx in batches), dev) / n_bare
    augment_s = _best_seconds(lambda: (augmenter(matrix.rows(idx)) for idx in batches), dev) / n_bare - rows_s
    views = [augmenter(matrix.rows(idx)) for idx in batches]

    def network_work(rounds: int) -> None:
        for _ in range(rounds):
            for step, (v1, v2) in enumerate(views, start=1):
                loss = model.loss(v1, v2)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                model.after_step(step, n_bare)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    network_work(1)  # warm-up
    rounds = []
    for _ in range(max(2, epochs - 1)):  # as many as the epochs that count, the fastest as for those
        started = time.perf_counter()
        network_work(1)
        rounds.append(time.perf_counter() - started)
    bare_cells_per_s = n_bare * 256 / min(rounds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "input": "sparse" if sparse else "dense", "cells": cells, "genes": genes,
            "device": str(dev), "cells_per_s": round(cells_per_s, 1), "bare_cells_per_s": round(bare_cells_per_s, 1),
            "overhead_ratio": round(bare_cells_per_s / cells_per_s, 3), "rows_ms": round(rows_s * 1e3, 2),
            "augment_ms": round(augment_s * 1e3, 2), "peak_rss_mb": round(peak, 1)}


def _best_seconds(work, device, repeats: int = 3) -> float:
    """The fastest of a few runs of ``work``, after one to warm up."""
    import torch

    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for _ in work():  # what it makes is dropped at once, as in training
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="*", help="default: every two-view method it can measure")
    parser.add_argument("--inputs", nargs="*", default=["dense", "sparse"], choices=["dense", "sparse"])
    parser.add_argument("--cells", type=int, default=20000)
    parser.add_argument("--genes", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4, help="the fastest epoch after the first counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--retries", type=int, default=0, help="measure again while other processes were busy")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "INPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1] == "sparse", args.cells, args.genes, args.epochs,
                                 args.device)))
        return

    from scssl.methods import METHODS
    from scssl.methods.base import TwoViewMethod

    measurable = [name for name, cls in METHODS.items()
                  if isinstance(cls, type) and issubclass(cls, TwoViewMethod) and not cls.needs_neighbours]
    unmeasurable = sorted(set(args.methods or []) - set(measurable))
    if unmeasurable:
        parser.error(f"--methods {' '.join(unmeasurable)}: the bare pass times two-view methods that train on "
                     f"the matrix alone; these can be measured: {', '.join(measurable)}")
    methods = args.methods or measurable
    rows = []
    for method in methods:
        for kind in args.inputs:
            command = [sys.executable, __file__, "--one", method, kind, "--cells", str(args.cells),
                       "--genes", str(args.genes), "--epochs", str(args.epochs), "--device", args.device]
            tries = []
            while not tries or (tries[-1]["others_cpu"] > 0.05 and len(tries) <= args.retries):
                tries.append(_measure_in_child(command))
                r = tries[-1]
                print(f"{method} ({kind}): {r['cells_per_s']:.0f} cells/s, bare {r['bare_cells_per_s']:.0f}, "
                      f"overhead {r['overhead_ratio']:.2f}, others took {r['others_cpu']:.0%} of the CPU",
                      file=sys.stderr, flush=True)
            rows.append(min(tries, key=lambda r: r["others_cpu"]))

    print(f"\n{args.cells} cells x {args.genes} genes, batch 256, clear_pipeline, device {rows[0]['device']}\n")
    print("| method | input | cells/s | bare cells/s | overhead_ratio | rows (ms) | augment (ms) | peak RSS (MB) "
          "| others' CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['input']} | {r['cells_per_s']:.0f} | {r['bare_cells_per_s']:.0f} | "
              f"{r['overhead_ratio']:.2f} | {r['rows_ms']:.1f} | {r['augment_ms']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{r['others_cpu']:.0%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


def _measure_in_child(command: list[str]) -> dict:
    """Run one measurement in a child process; add the share of the CPU that other processes took."""
    busy_before, child_before, started = _busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    others = (_busy_cpu_seconds() - busy_before) - (_children_cpu_seconds() - child_before)
    row = json.loads(out.strip().splitlines()[-1])
    row["others_cpu"] = round(max(others, 0.0) / ((time.perf_counter() - started) * os.cpu_count()), 3)
    return row


def _busy_cpu_seconds() -> float:
    """CPU time of the whole machine so far, idle excluded (Linux /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()

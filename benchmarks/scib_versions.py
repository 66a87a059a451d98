"""What an upgrade of scib-metrics changes: every scIB metric of a study's batch-correction embeddings, scored by
scssl under this Python's scib-metrics and under another's.

The inputs are written once (each ``embeddings/<data set>/<method>__batch_correction__seed<s>__<key>.npy`` of the
study, with its data set's batches, cell types and 50-component pre-integration PCA), so that the two scorings
see the same numbers and only scib-metrics (and JAX under it) differs. ``--python`` names the other interpreter:
a venv with scssl installed beside an older (or newer) scib-metrics.

    .venv/bin/python benchmarks/scib_versions.py experiments/quickstart.yaml --python /old/venv/bin/python \\
        --json scib_versions.json

Prints a Markdown table (one row per embedding and metric: the two values and their difference) and writes the
same as JSON. ``--smoke`` scores two small synthetic embeddings instead of a study's, under this interpreter twice
unless ``--python`` names another (a test runs it, so that the script cannot break unnoticed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SCORE = """
import json, sys
from importlib.metadata import version
import numpy as np
from scssl.evaluate.batch_correction import scib_scores
inputs = np.load(sys.argv[1], allow_pickle=False)
pre, batch, labels = inputs["pre"], inputs["batch"], inputs["labels"]
scores = {name[4:]: scib_scores(inputs[name], batch, labels, pre) for name in inputs.files if name.startswith("emb:")}
print(json.dumps({"scib_metrics": version("scib-metrics"), "scores": scores}))
"""


def write_inputs(experiment_file: str, folder: Path) -> list[Path]:
    """One ``.npz`` per data set of the study with batch-correction embeddings: ``emb:<file stem>`` arrays and
    the data set's ``pre``, ``batch`` and ``labels``."""
    from scssl.evaluate.shared import SharedData
    from scssl.experiment import load_experiment
    from scssl.study import prepare_datasets

    experiment = load_experiment(experiment_file)
    written = []
    for name, dataset in prepare_datasets(experiment, stages=("retrain",)).items():
        files = sorted((experiment.study_dir / "embeddings" / name).glob("*__batch_correction__*.npy"))
        if not files:
            continue
        shared = SharedData.build(dataset, experiment.config.tune, with_graphs=False)
        arrays = {f"emb:{name}/{f.stem.rsplit('__', 1)[0]}": np.load(f) for f in files}
        out = folder / f"{name}.npz"
        np.savez(out, pre=shared.pre_integration, batch=dataset.obs["batch"].to_numpy().astype(str),
                 labels=np.asarray(dataset.labels).astype(str), **arrays)
        written.append(out)
    if not written:
        sys.exit(f"{experiment.study_dir}: no batch-correction embeddings (run the study first)")
    return written


def write_synthetic_inputs(folder: Path) -> list[Path]:
    """One ``.npz`` as ``write_inputs`` writes it, of two embeddings of 600 synthetic cells (3 batches, 4 types)."""
    rng = np.random.default_rng(0)
    labels, batch = rng.integers(4, size=600), rng.integers(3, size=600)
    clusters = rng.normal(scale=3.0, size=(4, 10))[labels]
    arrays = {f"emb:synthetic/{name}": (clusters + rng.normal(scale=scale, size=(600, 10))).astype(np.float32)
              for name, scale in (("tight", 0.5), ("loose", 2.0))}
    out = folder / "synthetic.npz"
    np.savez(out, pre=(clusters + rng.normal(size=(600, 10))).astype(np.float32), batch=np.char.add("b", batch.astype(str)),
             labels=np.char.add("t", labels.astype(str)), **arrays)
    return [out]


def score(python: str, inputs: list[Path]) -> tuple[str, dict[str, dict[str, float]]]:
    """scssl's scIB scores of every embedding in ``inputs`` under ``python``; returns its scib-metrics version."""
    scores, release = {}, None
    for path in inputs:
        done = subprocess.run([python, "-c", SCORE, str(path)], capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        release = result["scib_metrics"]
        scores.update(result["scores"])
    return release, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="the study's experiment YAML (its embeddings are scored)")
    parser.add_argument("--python", help="the other interpreter (a venv with scssl installed)")
    parser.add_argument("--json", help="write the table as JSON here")
    parser.add_argument("--smoke", action="store_true", help="two synthetic embeddings instead of a study's")
    args = parser.parse_args()
    if not args.smoke and (args.experiment is None or args.python is None):
        parser.error("give the experiment and --python (or --smoke)")
    args.python = args.python or sys.executable
    with tempfile.TemporaryDirectory() as folder:
        inputs = write_synthetic_inputs(Path(folder)) if args.smoke else write_inputs(args.experiment, Path(folder))
        before_release, before = score(args.python, inputs)
        after_release, after = score(sys.executable, inputs)
    rows = [{"embedding": emb, "metric": metric, "before": before[emb][metric], "after": value,
             "difference": value - before[emb][metric]}
            for emb in sorted(after) for metric, value in after[emb].items()]
    print(f"| embedding | metric | scib-metrics {before_release} | scib-metrics {after_release} | difference |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['embedding']} | {row['metric']} | {row['before']:.6f} | {row['after']:.6f} | "
              f"{row['difference']:+.2e} |")
    largest = max(abs(r["difference"]) for r in rows)
    print(f"\nlargest difference: {largest:.2e} over {len(rows)} values")
    if args.json:
        Path(args.json).write_text(json.dumps({"before": before_release, "after": after_release, "rows": rows,
                                               "largest_difference": largest}, indent=1))


if __name__ == "__main__":
    main()

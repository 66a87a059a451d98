"""A study end to end: tune -> retrain -> report, each stage also runnable alone."""

from __future__ import annotations

import logging
import os
import shutil
import time

from scssl.data import PreparedDataset, prepare
from scssl.experiment import Experiment
from scssl.methods import get_method
from scssl.report import build_report, log_cell_metadata, write_embeddings
from scssl.tune.tracking import Tracker

STAGES = ("tune", "retrain", "report")


def tracker_for(experiment: Experiment) -> Tracker:
    experiment.study_dir.mkdir(parents=True, exist_ok=True)
    return Tracker(experiment.tracking_uri, experiment.name, experiment.study_dir / "mlartifacts")


def run_study(experiment: Experiment, stages: tuple[str, ...] = STAGES, address: str | None = None) -> str | None:
    """Run ``stages`` of ``experiment``; returns the headline Markdown table when ``report`` runs."""
    started = time.perf_counter()
    tracker = tracker_for(experiment)
    shutil.copyfile(experiment.source, experiment.study_dir / "experiment.yaml")
    print(f"[scssl] study {experiment.name!r} in {experiment.study_dir}; MLflow: {experiment.tracking_uri}",
          flush=True)
    if "tune" in stages or "retrain" in stages:
        datasets = _prepare_all(experiment)
        _run_on_ray(experiment, datasets, stages, tracker, address)
    table = None
    if "report" in stages:
        table = build_report(tracker, experiment.config.methods, experiment.config.final.seeds[0],
                             experiment.results_dir)
        print(f"\n{table}", flush=True)
    print(f"[scssl] done in {time.perf_counter() - started:.0f} s", flush=True)
    return table


def _prepare_all(experiment: Experiment) -> dict[str, PreparedDataset]:
    datasets = {}
    for spec in experiment.datasets:
        t = time.perf_counter()
        ds = prepare(spec)
        n_query = len(ds.query_index)
        print(f"[data] {spec.label}: {ds.n_cells} cells ({ds.n_cells - n_query} reference, {n_query} query), "
              f"{ds.X.shape[1]} genes, {ds.obs['batch'].nunique()} batches, {ds.obs['label'].nunique()} labels "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
        datasets[spec.label] = ds
    return datasets


def _run_on_ray(experiment, datasets, stages, tracker, address) -> None:
    import ray

    from scssl.tune.retrain import retrain_stage
    from scssl.tune.search import tune_method
    from scssl.tune.trainable import SharedData

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    try:
        graphs = experiment.uses_neighbours
        refs = {name: ray.put(SharedData.build(ds, experiment.config.tune, graphs)) for name, ds in datasets.items()}
        if "tune" in stages and experiment.config.final.retrain == "grid":
            print("[tune] skipped: final.retrain is grid, so the final stage trains every grid point", flush=True)
        elif "tune" in stages:
            for name in refs:
                for method in experiment.config.methods:
                    if get_method(method).trainable:
                        tune_method(experiment, name, refs[name], method, tracker)
        if "retrain" in stages:
            retrain_stage(experiment, refs, tracker)
            seed = experiment.config.final.seeds[0]
            for name, ds in datasets.items():
                log_cell_metadata(tracker, name, ds.obs)
                out = write_embeddings(ds, experiment.study_dir / "embeddings" / name,
                                       experiment.results_dir / f"embeddings_{name}.h5ad", seed)
                print(f"[retrain] embeddings of {name} (seed {seed}) in {out}", flush=True)
    finally:
        ray.shutdown()

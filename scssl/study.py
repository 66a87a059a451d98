"""A study end to end: tune -> retrain -> report, each stage also runnable alone.

Everything that can be checked is checked before the study folder is made or anything is trained:
the experiment (when it loads), every data set, the tracking server, and every trial's and job's
resource request against what the Ray cluster offers.
"""

from __future__ import annotations

import logging
import time

import yaml

from scssl.data import PreparedDataset, prepare
from scssl.experiment import Experiment
from scssl.interrupt import take_signals_back
from scssl.methods import get_method
from scssl.settings import ConfigError

STAGES = ("tune", "retrain", "report")


def run_study(experiment: Experiment, stages: tuple[str, ...] = STAGES, address: str | None = None,
              verbose: bool = False) -> list[str]:
    """Run ``stages`` of ``experiment``; returns one line per failed trial or job (empty: all finished).

    An interrupt (KeyboardInterrupt) propagates once each stage has closed its open runs as KILLED."""
    from scssl.tune.resources import quiet_libraries
    from scssl.tune.tracking import check_reachable

    quiet_libraries(verbose)
    started = time.perf_counter()
    computes = "tune" in stages or "retrain" in stages
    datasets = prepare_datasets(experiment, stages) if computes else {}
    check_reachable(experiment.tracking_uri)
    failures, tracker = [], None
    if computes:
        failures, tracker = _run_on_ray(experiment, datasets, stages, address, verbose)
    if "report" in stages:
        tracker = tracker or open_study(experiment)
        from scssl.report import build_report

        umap_seed = _first_seeds(experiment).get("batch_correction", 0)  # UMAPs show batch-correction models
        table = build_report(tracker, experiment.config.methods, umap_seed, experiment.results_dir)
        print(f"\n{table}", flush=True)
    ended = "done" if not failures else f"ended with {len(failures)} failure(s)"
    print(f"[scssl] {ended} in {time.perf_counter() - started:.0f} s", flush=True)
    return failures


def open_study(experiment: Experiment):
    """Make the study folder, write the experiment into it and open its MLflow tracker."""
    from scssl.tune.tracking import Tracker

    experiment.study_dir.mkdir(parents=True, exist_ok=True)
    copy = experiment.study_dir / "experiment.yaml"
    if not (copy.exists() and copy.samefile(experiment.source)):  # `scssl report` may be given the copy
        copy.write_text(f"# {experiment.source} as the study ran it, with its paths made absolute\n"
                        + yaml.safe_dump(experiment.relocated(), sort_keys=False))
    tracker = Tracker(experiment.tracking_uri, experiment.name, experiment.study_dir / "mlartifacts")
    print(f"[scssl] study {experiment.name!r} in {experiment.study_dir}; MLflow: {experiment.tracking_uri}",
          flush=True)
    return tracker


def prepare_datasets(experiment: Experiment, stages: tuple[str, ...] = STAGES) -> dict[str, PreparedDataset]:
    """Load, check and preprocess every data set; a problem is a ConfigError naming the experiment file,
    the key path (``datasets.0.labels_key``) and the data file."""
    from scssl.data import DataError
    from scssl.evaluate.requirements import check_tasks

    tunes = experiment.config.final.retrain == "best" and "tune" in stages
    datasets = {}
    # pretraining data sets first: a transfer target takes their genes
    for i, spec in sorted(enumerate(experiment.datasets), key=lambda item: item[1].pretrain is not None):
        t = time.perf_counter()
        try:
            genes = datasets[spec.pretrain].genes if spec.pretrain is not None else None
            ds = prepare(spec, genes=genes)
            check_tasks(ds, experiment.config.tasks, spec.path, tunes)
        except DataError as err:
            raise ConfigError(f"{experiment.source}: datasets.{i}.{err.key}: {err}") from None
        n_query = len(ds.query_index)
        print(f"[data] {spec.label}: {ds.n_cells} cells ({ds.n_cells - n_query} reference, {n_query} query), "
              f"{ds.X.shape[1]} genes, {ds.obs['batch'].nunique()} batches, {ds.obs['label'].nunique()} labels "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
        for note in ds.notes:
            print(f"[data] {spec.label}: {note}", flush=True)
        datasets[spec.label] = ds
    return {spec.label: datasets[spec.label] for spec in experiment.datasets}


def fingerprints(experiment: Experiment, datasets: dict[str, PreparedDataset]) -> dict[str, str]:
    """Each data set's content digest; a transfer target's also covers its pretraining data set's."""
    from scssl.tune.tracking import digest

    out = {}
    for spec in experiment.datasets:
        own = datasets[spec.label].fingerprint
        out[spec.label] = own if spec.pretrain is None else digest([own, datasets[spec.pretrain].fingerprint])
    return out


def validate_study(experiment: Experiment) -> None:
    """``scssl validate``: check the experiment and its data, and print what a run would do; starts nothing."""
    from scssl.tune.plan import study_plan
    from scssl.tune.tracking import check_reachable

    prepare_datasets(experiment)
    check_reachable(experiment.tracking_uri)
    print(f"[validate] {experiment.source}: valid. Study folder {experiment.study_dir}; "
          f"MLflow {experiment.tracking_uri}")
    for line in study_plan(experiment):
        print(f"[validate] {line}")


def _first_seeds(experiment: Experiment) -> dict[str, int]:
    return {task: experiment.config.final.seeds_for(task)[0] for task in experiment.config.tasks}


def _run_on_ray(experiment: Experiment, datasets: dict[str, PreparedDataset], stages, address, verbose):
    """Start (or join) Ray, check the resource request, run the tune and retrain stages; returns the
    failure lines and the study's tracker."""
    import ray

    from scssl.report import log_cell_metadata, write_embeddings
    from scssl.tune.resources import check_resources
    from scssl.tune.retrain import retrain_stage
    from scssl.tune.search import tune_method
    from scssl.evaluate.tasks import SharedData

    cfg = experiment.config
    local, since = address is None, time.time()
    # without --verbose, Ray's own warnings (token authentication on, ...) and its workers' output stay out
    ray.init(address=address or "local", include_dashboard=False,
             logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},
             **({"_node_ip_address": "127.0.0.1"} if local else {}))
    take_signals_back()
    if local:
        from scssl.tune.reaper import watch

        watch(since)
    failures: list[str] = []
    try:
        check_resources(experiment)
        tracker = open_study(experiment)
        killed = tracker.close_dead_runs()  # any stage's: the tuning runs of a killed `run`, its retrain runs...
        if killed:
            print(f"[scssl] {killed} run(s) of a stopped driver closed as KILLED", flush=True)
        graphs = experiment.uses_neighbours
        pretraining = {spec.label: datasets.get(spec.pretrain) for spec in experiment.datasets}
        refs = {name: ray.put(SharedData.build(ds, cfg.tune, graphs, pretraining[name]))
                for name, ds in datasets.items()}
        if "tune" in stages and cfg.final.retrain != "best":  # nothing to tune
            print(f"[tune] skipped: final.retrain is {cfg.final.retrain}, so the final stage trains "
                  f"{'every grid point' if cfg.final.retrain == 'grid' else 'each method with its defaults'}",
                  flush=True)
        data_digests = fingerprints(experiment, datasets)
        if "tune" in stages and cfg.final.retrain == "best":
            for name in refs:
                for method in cfg.methods:
                    if get_method(method).trainable:
                        failures += tune_method(experiment, name, data_digests[name], refs[name], method, tracker)
        if "retrain" in stages:
            failures += retrain_stage(experiment, refs, tracker, data_digests)
            seeds = _first_seeds(experiment)
            for name, ds in datasets.items():
                log_cell_metadata(tracker, name, ds.obs)
                out = write_embeddings(ds, experiment.study_dir / "embeddings" / name,
                                       experiment.results_dir / f"embeddings_{name}.h5ad", seeds)
                print(f"[retrain] embeddings of {name} (first seed of each task) in {out}", flush=True)
    finally:
        ray.shutdown()
    return failures, tracker

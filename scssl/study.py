"""A study end to end: tune -> retrain -> report, each stage also runnable alone.

Everything that can be checked is checked before the study folder is made or anything is trained:
the experiment (when it loads), every data set, the tracking server, and every trial's and job's
resource request against what the Ray cluster offers.
"""

from __future__ import annotations

import logging
import time

import yaml

from scssl.data import DatasetSpec, PreparedDataset, prepare
from scssl.data.prepare import prepared_to_disk
from scssl.experiment import Experiment
from scssl.interrupt import take_signals_back
from scssl.methods import get_method
from scssl.settings import ConfigError

STAGES = ("tune", "retrain", "report")


def run_study(experiment: Experiment, stages: tuple[str, ...] = STAGES, address: str | None = None,
              verbose: bool = False) -> list[str]:
    """Run ``stages`` of ``experiment``; returns one line per failed trial or job (empty: all finished).

    An interrupt (KeyboardInterrupt) propagates once each stage has closed its open runs as KILLED; a tracking
    store that stops answering ends the study with ``TrackingUnavailable``. A study folder is held by one
    driver at a time (``StudyLock``): a second one stops with ``StudyBusy`` before it reads any data."""
    from scssl.tune.lock import StudyLock
    from scssl.tune.resources import quiet_libraries
    from scssl.tune.tracking import check_store

    quiet_libraries(verbose)
    started = time.perf_counter()
    check_store(experiment.tracking_uri)
    lock = StudyLock(experiment.study_dir)
    lock.check()
    datasets = prepare_datasets(experiment, stages)
    digests = fingerprints(experiment, datasets)
    failures, tracker = [], None
    try:
        if "tune" in stages or "retrain" in stages:
            failures, tracker = _run_on_ray(experiment, datasets, digests, stages, address, verbose, lock)
        tracker = tracker or open_study(experiment, lock)
        if "retrain" in stages or "report" in stages:
            from scssl.tune.retrain import plan_jobs

            jobs, untuned = plan_jobs(experiment, tracker, digests)  # the study as it is now: only its runs count
        if "retrain" in stages:
            _write_embeddings(experiment, tracker, datasets, jobs)
        if "report" in stages:
            from scssl.report import build_report
            from scssl.tune.retrain import study_status

            from scssl.evaluate.tasks import TASKS

            shown = [seed for task, seed in _first_seeds(experiment).items() if TASKS[task].shows_embedding]
            umap_seed = shown[0] if shown else 0  # the first seed of the task whose embeddings the UMAPs show
            table = build_report(tracker, experiment.config.methods, {job.key for job in jobs},
                                 study_status(tracker, jobs, untuned), umap_seed, experiment.results_dir)
            print(f"\n{table}", flush=True)
    finally:
        lock.release()
    ended = "done" if not failures else f"ended with {len(failures)} failure(s)"
    print(f"[scssl] {ended} in {time.perf_counter() - started:.0f} s", flush=True)
    return failures


def open_study(experiment: Experiment, lock=None):
    """Take the study folder (``lock``, a ``StudyLock``; None: the caller holds it), write the experiment into
    it, open its MLflow tracker, log the results a lost store did not take, and close a dead driver's runs."""
    from scssl.tune.retrain import log_pending
    from scssl.tune.tracking import Tracker, sqlite_file

    if lock is not None:
        lock.acquire()
    copy = experiment.study_dir / "experiment.yaml"
    if not (copy.exists() and copy.samefile(experiment.source)):  # `scssl report` may be given the copy
        copy.write_text(f"# {experiment.source} as the study ran it, with its paths made absolute\n"
                        + yaml.safe_dump(experiment.relocated(), sort_keys=False))
    tracker = Tracker(experiment.tracking_uri, experiment.name, experiment.study_dir / "mlartifacts",
                      experiment.config.tracking_wait)
    if lock is not None and sqlite_file(experiment.tracking_uri) != experiment.study_dir / "mlflow.db":
        lock.take_marker(tracker.client, tracker.experiment_id)  # a store other study folders may share
    print(f"[scssl] study {experiment.name!r} in {experiment.study_dir}; MLflow: {experiment.tracking_uri}",
          flush=True)
    logged = log_pending(tracker, experiment.study_dir)
    if logged:
        print(f"[scssl] {logged} retrain result(s) kept while MLflow was unreachable now logged", flush=True)
    killed = tracker.close_dead_runs()  # any stage's: the tuning runs of a killed `run`, its retrain runs...
    if killed:
        print(f"[scssl] {killed} run(s) of a stopped driver closed as KILLED", flush=True)
    return tracker


def prepare_datasets(experiment: Experiment, stages: tuple[str, ...] = STAGES) -> dict[str, PreparedDataset]:
    """Load, check and preprocess every data set; a problem is a ConfigError naming the experiment file,
    the key path (``datasets.0.labels_key``) and the data file."""
    from scssl.data import DataError
    from scssl.evaluate.tasks import check_tasks

    tunes = "tune" in stages and any(experiment.tunes(method) for method in experiment.config.methods)
    datasets = {}
    # pretraining data sets first: a transfer target takes their genes
    for i, spec in sorted(enumerate(experiment.datasets), key=lambda item: item[1].pretrain is not None):
        t = time.perf_counter()
        try:
            if prepared_to_disk(spec):  # before the preparation: a large file takes a while
                _check_streamed(experiment, i, spec)
            genes = datasets[spec.pretrain].genes if spec.pretrain is not None else None
            ds = prepare(spec, genes=genes, store_root=experiment.store_dir)
            check_tasks(ds, experiment.config.tasks, spec.path, tunes)
        except DataError as err:
            raise ConfigError(f"{experiment.source}: datasets.{i}.{err.key}: {err}") from None
        n_cells = ds.n_cells if ds.store is None else sum(ds.store.n_cells.values())
        n_query = len(ds.query_index) if ds.store is None else ds.store.n_cells["query"]
        print(f"[data] {spec.label}: {n_cells} cells ({n_cells - n_query} reference, {n_query} query), "
              f"{ds.X.shape[1]} genes, {ds.obs['batch'].nunique()} batches, {ds.obs['label'].nunique()} labels "
              f"({time.perf_counter() - t:.1f} s)", flush=True)
        for note in ds.notes:
            print(f"[data] {spec.label}: {note}", flush=True)
        datasets[spec.label] = ds
    return {spec.label: datasets[spec.label] for spec in experiment.datasets}


def _check_streamed(experiment: Experiment, i: int, spec: DatasetSpec) -> None:
    """Every method of the experiment can train on the data set of ``spec``, prepared to disk, streamed from its
    store: a ConfigError naming the first that cannot, and why."""
    from scssl.evaluate.shared import cannot_stream

    why = {method: cannot_stream(get_method(method)) for method in experiment.config.methods}
    if experiment.uses_neighbours:  # a BBKNN or MNN augmentation
        why = {method: reason or "its BBKNN and MNN augmentations need a neighbour graph of all cells"
               for method, reason in why.items()}
    refused = {method: reason for method, reason in why.items() if reason is not None}
    if refused:
        first, *others = refused
        also = f"; nor can {', '.join(others)}" if others else ""
        raise ConfigError(
            f"{experiment.source}: datasets.{i}.store_from_cells: data set {spec.label!r} has at least "
            f"{spec.store_from_cells:,} cells, so it is prepared to disk and streamed to the methods; {first} cannot train on streamed cells "
            f"({refused[first]}){also}. Leave {'them' if others else 'it'} out, or raise store_from_cells to hold "
            "the data set in memory")


def fingerprints(experiment: Experiment, datasets: dict[str, PreparedDataset]) -> dict[str, dict[str, str]]:
    """Data set -> method -> the digest of the data the method reads there (``PreparedDataset.fingerprint_for``); a
    transfer target's also covers its pretraining data set's."""
    from scssl.tune.tracking import digest

    out = {}
    for spec in experiment.datasets:
        out[spec.label] = {}
        for method in experiment.config.methods:
            reads = get_method(method).inputs
            own = datasets[spec.label].fingerprint_for(reads)
            out[spec.label][method] = own if spec.pretrain is None else digest(
                [own, datasets[spec.pretrain].fingerprint_for(reads)])
    return out


def validate_study(experiment: Experiment) -> None:
    """``scssl validate``: check the experiment and its data, and print what a run would do; starts nothing."""
    from scssl.tune.plan import study_plan
    from scssl.tune.tracking import check_store

    check_store(experiment.tracking_uri)
    prepare_datasets(experiment)
    print(f"[validate] {experiment.source}: valid. Study folder {experiment.study_dir}; "
          f"MLflow {experiment.tracking_uri}")
    for line in study_plan(experiment):
        print(f"[validate] {line}")


def _write_embeddings(experiment: Experiment, tracker, datasets: dict[str, PreparedDataset], jobs: list) -> None:
    """``results/embeddings_<data set>.h5ad``: the embeddings of the first seed of each task, from the current jobs
    (``jobs``) that finished; and each data set's cells in MLflow, for the report's UMAPs."""
    from scssl.report import log_cell_metadata, write_embeddings
    from scssl.tune.retrain import finished_keys

    seeds, finished = _first_seeds(experiment), finished_keys(tracker)
    for name, ds in datasets.items():
        log_cell_metadata(tracker, name, ds.obs)
        folder = experiment.study_dir / "embeddings" / name
        chosen = [(job.method, job.task, job.variant, folder / job.embedding_file) for job in jobs
                  if job.dataset == name and job.seed == seeds[job.task] and job.key in finished]
        out = write_embeddings(ds, chosen, experiment.results_dir / f"embeddings_{name}.h5ad")
        print(f"[retrain] embeddings of {name} (first seed of each task) in {out}", flush=True)


def _first_seeds(experiment: Experiment) -> dict[str, int]:
    return {task: experiment.config.final.seeds_for(task)[0] for task in experiment.config.tasks}


def _run_on_ray(experiment: Experiment, datasets: dict[str, PreparedDataset], digests: dict[str, dict[str, str]],
                stages, address, verbose, lock):
    """Start (or join) Ray, check the resource request, take the study folder, run the tune and retrain
    stages; returns the failure lines and the study's tracker."""
    import ray

    from scssl.tune.resources import check_resources, trial_memory
    from scssl.tune.retrain import retrain_stage
    from scssl.tune.search import tune_method
    from scssl.evaluate.shared import SharedData

    cfg = experiment.config
    local, since = address is None, time.time()
    # without --verbose, Ray's own warnings (token authentication on, ...) and its workers' output stay out.
    # Trials on several workers need the dashboard's state API: a trial that Tune stops (ASHA, or its last epoch)
    # ends its TorchTrainer's controller abruptly, and Ray Train's cleaner asks that API before it frees the
    # trainer's reserved workers; without it the next trial's trainer waits for them forever.
    ray.init(address=address or "local", include_dashboard=cfg.tune.workers_per_trial > 1,
             logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose,
             runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}},
             **({"_node_ip_address": "127.0.0.1"} if local else {}))
    take_signals_back()
    if local:
        from scssl.tune.reaper import watch

        watch(since)
    failures: list[str] = []
    try:
        pretraining = {spec.label: datasets.get(spec.pretrain) for spec in experiment.datasets}
        memory = {name: {method: trial_memory(cfg.tune, [ds] + [pretraining[name]] * (pretraining[name] is not None),
                                              get_method(method)) for method in cfg.methods}
                  for name, ds in datasets.items()}
        check_resources(experiment, max(m for per_method in memory.values() for m in per_method.values()))
        tracker = open_study(experiment, lock)
        graphs = experiment.uses_neighbours
        refs = {name: ray.put(SharedData.build(ds, cfg.tune, graphs, pretraining[name]))
                for name, ds in datasets.items()}
        if "tune" in stages and cfg.final.retrain != "best":  # nothing to tune
            print(f"[tune] skipped: final.retrain is {cfg.final.retrain}, so the final stage trains "
                  f"{'every grid point' if cfg.final.retrain == 'grid' else 'each method with its defaults'}",
                  flush=True)
        if "tune" in stages and cfg.final.retrain == "best":
            for name in refs:
                for method in cfg.methods:
                    if experiment.tunes(method):
                        failures += tune_method(experiment, name, digests[name][method], refs[name], method, tracker,
                                                memory[name][method])
                    elif get_method(method).trainable:
                        print(f"[tune] {name}/{method}: not tuned: its search space fixes every value, so the "
                              "final stage trains that configuration", flush=True)
        if "retrain" in stages:
            failures += retrain_stage(experiment, refs, tracker, digests, memory)
    finally:
        ray.shutdown()
    return failures, tracker

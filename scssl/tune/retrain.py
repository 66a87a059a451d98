"""The final stage: each method's chosen configurations retrained with several seeds and evaluated.

Each job runs one task of the registry (``TASKS``): it fits the method on the cells the task trains on and
scores it by the task's protocol.
Jobs run as Ray tasks next to the data in the object store, as many at once as the cluster fits; each
is an MLflow run tagged ``stage=retrain``, opened when its job starts. A job is identified by a digest
of everything that changes its result (``RetrainJob.key``), so a finished one is not run again and an
edited experiment reruns what it changed. A method's configs are its best trial (one per objective),
with ``final.retrain: grid`` every point of its grid, each named by a variant label
("temperature=0.5"), or with ``final.retrain: defaults`` its declared defaults.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import ray
import torch
from mlflow.exceptions import MlflowException

from scssl.evaluate.settings import EvaluationSettings, FineTuneSettings
from scssl.evaluate.shared import SharedData, TaskInputs
from scssl.evaluate.tasks import TASKS
from scssl.experiment import Experiment
from scssl.interrupt import stop_reason
from scssl.methods import get_method
from scssl.search_space import TrialSettings, trial_settings
from scssl.tune.search import best_trials, tune_key
from scssl.tune.tracking import (
    CONFIG, DATASET, ERROR, JOB_KEY, METHOD, SEED, STAGE, SUPERSEDED, TASK, VARIANT, Tracker, digest,
)

PENDING = "pending"  # study subfolder: finished jobs' results that the store has not taken yet


@dataclass(frozen=True)
class RetrainJob:
    """One training and evaluation: ``config`` as sampled (or a grid point), ``trial`` the settings it
    resolves to over the experiment's defaults, ``fingerprint`` the data set's content."""

    dataset: str
    fingerprint: str
    method: str
    task: str
    seed: int
    config: dict
    trial: TrialSettings
    variant: str = ""
    fine_tuning: FineTuneSettings = FineTuneSettings()
    evaluation: EvaluationSettings = EvaluationSettings()

    @cached_property
    def key(self) -> str:
        """Digest of everything that changes the result: data, method, task, seed, variant, every resolved
        setting of the sections the method reads (``train.device`` included) and the evaluation."""
        task = TASKS[self.task]
        evaluation = {**task.evaluation, **task.settings_key(self.fine_tuning, self.evaluation)}
        return digest({"data": self.fingerprint, "method": self.method, "task": self.task, "seed": self.seed,
                       "variant": self.variant, "settings": self.trial.as_dict(), "evaluation": evaluation})

    @property
    def tags(self) -> dict[str, str]:
        return {STAGE: "retrain", DATASET: self.dataset, METHOD: self.method, TASK: self.task,
                SEED: str(self.seed), CONFIG: json.dumps(self.config, sort_keys=True, default=float),
                VARIANT: self.variant, JOB_KEY: self.key}

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.method}" + (f" ({self.variant})" if self.variant else "")

    @property
    def embedding_file(self) -> str:
        """Its embedding's file name; the key in it keeps an edited job's from replacing the job's own."""
        parts = [self.method, self.task, f"seed{self.seed}"]
        if self.variant:
            parts.append(re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.variant))
        return "__".join(parts + [self.key]) + ".npy"


def run_job(data, job: RetrainJob, threads: int):
    """Train and evaluate one job; returns (metrics with ``train_seconds`` and ``eval_seconds``, embedding
    of every cell)."""
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    torch.set_num_threads(threads)
    started = time.perf_counter()
    inputs = TaskInputs(job.method, job.trial, job.seed, threads, job.fine_tuning, job.evaluation)
    metrics, embedding = TASKS[job.task].run(shared, inputs)
    seconds = time.perf_counter() - started
    timings = {**inputs.timings, "eval_seconds": seconds - inputs.timings["train_seconds"]}
    return {**metrics, **timings}, embedding


def method_configs(experiment: Experiment, tracker: Tracker, dataset: str, fingerprint: str,
                   method: str) -> list[tuple[str, dict]]:
    """(variant label, config) of each configuration of ``method`` that the final stage trains; ``{}`` is the
    declared defaults (a baseline's only configuration), with its search space's fixed values. Empty when a
    tuned method has no finished tuning trial under the experiment as it is now."""
    cfg = experiment.config
    space = experiment.search_spaces.get(method)
    if cfg.final.retrain == "grid" and get_method(method).trainable:
        return [(space.label(point), point) for point in space.grid_points()]
    if not experiment.tunes(method):  # a baseline, final.retrain: defaults, or a space that fixes every value
        return [("", {} if space is None else space.fixed())]
    best = best_trials(tracker, dataset, method, cfg.tune, tune_key(experiment, fingerprint, method))
    if not best:
        return []
    by_run: dict[str, list[str]] = {}
    for objective, run in best.items():
        by_run.setdefault(run.info.run_id, []).append(objective)
    runs = {run.info.run_id: run for run in best.values()}
    if len(best) == 1:
        return [("", json.loads(runs[next(iter(by_run))].data.tags[CONFIG]))]
    return [(f"best {' & '.join(names)}", json.loads(runs[run_id].data.tags[CONFIG]))
            for run_id, names in by_run.items()]


def plan_jobs(experiment: Experiment, tracker: Tracker,
              fingerprints: dict[str, dict[str, str]]) -> tuple[list[RetrainJob], list[str]]:
    """Every job of the final stage, each once, and one line per method that has no configuration to
    retrain (no finished tuning trial); ``fingerprints`` maps a data set's label and a method to the digest of
    the data the method reads there."""
    cfg = experiment.config
    jobs, untuned = [], []
    for spec in experiment.datasets:
        for method in cfg.methods:
            fingerprint = fingerprints[spec.label][method]
            configs = method_configs(experiment, tracker, spec.label, fingerprint, method)
            if not configs:
                untuned.append(f"{spec.label}/{method}: no finished tuning trial of the experiment as it is now, "
                               "so nothing to retrain; run `scssl tune` (or `scssl run`)")
            for variant, config in configs:
                trial = trial_settings(get_method(method), cfg.train, cfg.augment, config)
                for task in [t for t in cfg.tasks if TASKS[t].serves(method)]:
                    for seed in cfg.final.seeds_for(task):
                        jobs.append(RetrainJob(spec.label, fingerprint, method, task, seed, config, trial, variant,
                                               cfg.fine_tuning, cfg.evaluation))
    return list({job.key: job for job in jobs}.values()), untuned  # a grid may repeat a point


def finished_keys(tracker: Tracker, runs: list | None = None) -> set[str]:
    """The job keys of the study's finished retrain runs (``runs``, else all of them)."""
    return {r.data.tags.get(JOB_KEY) for r in (runs or tracker.runs(stage="retrain")) if Tracker.finished(r)}


def study_status(tracker: Tracker, jobs: list[RetrainJob], untuned: list[str]) -> list[str]:
    """What the report cannot show of the study as it is now: one line per data set, method and variant whose
    jobs lack a finished run of their own (failed, out of date: only a result of other data or settings, or not
    run yet), and the ``untuned`` lines of ``plan_jobs``, each saying whether older results are hidden."""
    runs = tracker.runs(stage="retrain")
    finished = finished_keys(tracker, runs)
    failed = {r.data.tags.get(JOB_KEY) for r in runs if r.info.status == "FAILED"}
    older = {(r.data.tags[DATASET], r.data.tags[METHOD], r.data.tags.get(VARIANT, ""), r.data.tags[TASK],
              r.data.tags[SEED]) for r in runs if Tracker.finished(r)}
    totals, missing = Counter(job.label for job in jobs), {}
    for job in jobs:
        if job.key not in finished:
            stale = (job.dataset, job.method, job.variant, job.task, str(job.seed)) in older
            why = "failed" if job.key in failed else "out of date" if stale else "not run"
            missing.setdefault(job.label, Counter())[why] += 1
    lines = [f"{label}: {sum(whys.values())} of {totals[label]} job(s) without a current result ("
             + ", ".join(f"{n} {why}" for why, n in sorted(whys.items())) + ")" for label, whys in missing.items()]
    trained = {(r.data.tags[DATASET], r.data.tags[METHOD]) for r in runs if Tracker.finished(r)}
    for line in untuned:
        label = line.split(":", 1)[0]
        hidden = tuple(label.split("/", 1)) in trained
        lines.append(line + ("; its earlier results are out of date and not shown" if hidden else ""))
    if any("out of date" in line for line in lines):
        lines.append("out of date: trained on other data or settings than the experiment and data have now; "
                     "run `scssl run` (or `scssl tune` and `scssl retrain`) to bring them up to date")
    return lines


def _mark_superseded(tracker: Tracker, jobs: list[RetrainJob], finished: list) -> None:
    """Tag each finished run of a planned job's data set, method, variant, task and seed ``superseded``
    unless it is that job's own run, so that a reader of the MLflow UI can tell the run of the experiment as
    it is now from one of an edit since undone (the report selects runs by job key itself)."""
    planned = {(job.dataset, job.method, job.variant, job.task, str(job.seed)): job.key for job in jobs}
    for run in finished:
        tags = run.data.tags
        key = planned.get((tags[DATASET], tags[METHOD], tags.get(VARIANT, ""), tags[TASK], tags[SEED]))
        if key is None:
            continue
        superseded = "true" if tags.get(JOB_KEY) != key else "false"
        if tags.get(SUPERSEDED, "false") != superseded:
            tracker.set_tags(run.info.run_id, {SUPERSEDED: superseded})


def job_slots(resources: dict[str, float], cpus_per_job: float, gpus_per_job: float, memory_per_job: int = 0) -> int:
    """How many jobs fit ``resources`` (``ray.cluster_resources()``) at once; at least 1, so that a cluster
    whose GPU nodes an autoscaler has not started yet still makes progress."""
    fits = [resources.get("CPU", 0.0) / cpus_per_job]
    if gpus_per_job > 0:
        fits.append(resources.get("GPU", 0.0) / gpus_per_job)
    if memory_per_job > 0:
        fits.append(resources.get("memory", 0.0) / memory_per_job)
    return max(1, int(min(fits) + 1e-9))  # 0.9 / 0.3 is 2.9999999999999996


def retrain_stage(experiment: Experiment, data_refs: dict, tracker: Tracker,
                  fingerprints: dict[str, dict[str, str]], memory: dict[str, dict[str, int]] | None = None) -> list[str]:
    """Run every job without a finished run, each asking Ray for ``memory[data set][method]`` bytes besides its CPUs
    and GPUs; write embeddings under ``<study>/embeddings``. Returns one line
    per FAILED job. At most as many jobs as the cluster fits now are in flight, each with an open run: if
    anything interrupts the driver, their tasks are cancelled and their runs closed as KILLED (a rerun
    does them), then the interrupt is raised again. A job that finishes while the store does not answer is
    kept in ``<study>/pending`` and logged by the next driver (``log_pending``)."""
    cfg = experiment.config
    jobs, failures = plan_jobs(experiment, tracker, fingerprints)
    for line in failures:
        print(f"[retrain] {line}", flush=True)
    for method in cfg.methods:
        unserved = [task for task in cfg.tasks if not TASKS[task].serves(method)]
        if unserved:
            print(f"[retrain] {method} has no row in {', '.join(unserved)}: it cannot serve "
                  f"{'that task' if len(unserved) == 1 else 'those tasks'} (no decoder, or no network)", flush=True)
    finished = [r for r in tracker.runs(stage="retrain") if Tracker.finished(r)]
    _mark_superseded(tracker, jobs, finished)
    done = finished_keys(tracker, finished)
    todo = [job for job in jobs if job.key not in done]
    seeds = ", ".join(f"{len(cfg.final.seeds_for(task))} seed(s) for {task}" for task in cfg.tasks)
    print(f"[retrain] {len(todo)} of {len(jobs)} jobs to run ({seeds} per configuration)", flush=True)
    threads = max(1, int(cfg.tune.cpus_per_trial))
    task = ray.remote(run_job)
    queue = iter(todo)
    asks = {job.key: (memory or {}).get(job.dataset, {}).get(job.method, 0) for job in todo}  # bytes of memory
    largest = max(asks.values(), default=0)
    open_runs: dict[str, RetrainJob] = {}  # run id -> its job, until the run ends
    in_flight: dict[ray.ObjectRef, str] = {}  # a job's task -> its run id
    try:
        for n in range(1, len(todo) + 1):
            slots = job_slots(ray.cluster_resources(), cfg.tune.cpus_per_trial, cfg.tune.gpus_per_trial, largest)
            for job in itertools.islice(queue, max(0, slots - len(in_flight))):  # nodes may come and go
                run_id = tracker.start_run(f"{job.label}/{job.task}/seed{job.seed}", job.tags, job.config)
                open_runs[run_id] = job
                tracker.log_json(run_id, job.trial.as_dict(), "config.json")
                asked = task.options(num_cpus=cfg.tune.cpus_per_trial, num_gpus=cfg.tune.gpus_per_trial, memory=asks[job.key])
                in_flight[asked.remote(data_refs[job.dataset], job, threads)] = run_id
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            run_id = in_flight.pop(ref)
            failure = _record(experiment, tracker, open_runs[run_id], run_id, ref, f"{n}/{len(todo)}")
            del open_runs[run_id]
            if failure:
                failures.append(failure)
    except BaseException as interrupt:
        _close_interrupted(experiment, tracker, in_flight, open_runs, stop_reason(interrupt))
        raise
    return failures


def _record(experiment: Experiment, tracker: Tracker, job: RetrainJob, run_id: str, ref, progress: str) -> str | None:
    """Log a returned job's metrics and embedding and end its run; returns the failure line of a failed job."""
    where = f"{job.label} {job.task} seed {job.seed}"
    try:
        metrics, embedding = ray.get(ref)
    except Exception as err:  # the job failed: record why, keep the others going
        tracker.set_tags(run_id, {ERROR: str(err)[-4000:]})
        tracker.end_run(run_id, "FAILED")
        lines = str(err).strip().splitlines()
        failure = f"{where}: {lines[-1] if lines else type(err).__name__}"
        print(f"[retrain] {progress} FAILED {failure}", flush=True)
        return failure
    folder = experiment.study_dir / "embeddings" / job.dataset
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / job.embedding_file, embedding)
    # on disk first: a store that does not answer now takes the result at the next start
    pending = experiment.study_dir / PENDING / f"{run_id}.json"
    pending.parent.mkdir(exist_ok=True)
    embedding_file = (folder / job.embedding_file).relative_to(experiment.study_dir).as_posix()
    pending.write_text(json.dumps({"run_id": run_id, "embedding": embedding_file, "metrics": metrics}))
    _finish(tracker, run_id, experiment.study_dir / embedding_file, metrics)
    pending.unlink()
    name = TASKS[job.task].headline
    print(f"[retrain] {progress} {where}: {name} {metrics[name]:.3f} (train {metrics['train_seconds']:.1f} s, "
          f"evaluation {metrics['eval_seconds']:.1f} s)", flush=True)
    return None


def _finish(tracker: Tracker, run_id: str, embedding: Path, metrics: dict[str, float]) -> None:
    """Log a job's embedding (the report needs nothing but MLflow) and metrics, and end its run FINISHED."""
    tracker.log_artifact(run_id, embedding)
    tracker.log_metrics(run_id, metrics)
    tracker.end_run(run_id, "FINISHED")


def log_pending(tracker: Tracker, study_dir: Path) -> int:
    """Log the results kept in ``<study>/pending`` (jobs that finished while the store did not answer) into their
    runs, and close those FINISHED; returns how many. Call before closing a dead driver's runs."""
    logged = 0
    for file in sorted((study_dir / PENDING).glob("*.json")):
        record = json.loads(file.read_text())
        try:
            _finish(tracker, record["run_id"], study_dir / record["embedding"], record["metrics"])
            logged += 1
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            print(f"[retrain] {file}: its run {record['run_id']} is not in this store (started afresh?): "
                  "dropped", flush=True)
        file.unlink()
    return logged


def _close_interrupted(experiment: Experiment, tracker: Tracker, in_flight: dict, open_runs: dict[str, RetrainJob],
                       reason: str) -> None:
    """Cancel the tasks in flight and close every open run as KILLED, so that none stays RUNNING (a store that
    stopped answering keeps them RUNNING: the next driver closes them, after logging what ``pending`` kept)."""
    for ref in in_flight:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # already done, or Ray is going down: nothing left to stop
            pass
    if tracker.lost is not None:
        kept = len(list((experiment.study_dir / PENDING).glob("*.json")))
        print(f"[retrain] MLflow unreachable: {len(in_flight)} job(s) in flight stopped; {kept} finished result(s) "
              f"kept in {experiment.study_dir / PENDING}, logged at the next start", flush=True)
        return
    # and a run the interrupt caught as it was being opened, before it was listed (one driver per study)
    stray = [r.info.run_id for r in tracker.runs(stage="retrain") if r.info.status == "RUNNING"]
    closing = list(dict.fromkeys([*open_runs, *stray]))
    for run_id in closing:
        tracker.set_tags(run_id, {ERROR: f"interrupted ({reason})"})
        tracker.end_run(run_id, "KILLED")
    print(f"[retrain] interrupted ({reason}): {len(closing)} run(s) closed as KILLED", flush=True)

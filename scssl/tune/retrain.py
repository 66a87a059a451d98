"""The final stage: each method's best configuration retrained with several seeds and evaluated.

``cell_typing`` trains on reference cells and classifies the query with kNN; ``batch_correction``
trains on all cells and scores the embedding with scib-metrics (the study's protocol for each task).
Jobs run as Ray tasks next to the data in the object store; each is an MLflow run tagged
``stage=retrain``. A job whose finished run (same config) exists already is not run again.
A method's configs are its best trial (one per objective), or with ``final.retrain: grid`` every
point of its grid, each named by a variant label ("temperature=0.5").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import ray
import torch

from scssl.evaluate import knn_cell_typing, scib_scores
from scssl.experiment import Experiment
from scssl.methods import get_method
from scssl.train import fit_embedding
from scssl.tune.search import best_trials
from scssl.tune.search_space import TrialSettings, trial_settings
from scssl.tune.tracking import CONFIG, DATASET, ERROR, METHOD, SEED, STAGE, TASK, VARIANT, Tracker
from scssl.tune.trainable import SharedData


@dataclass(frozen=True)
class RetrainJob:
    dataset: str
    method: str
    task: str
    seed: int
    config: dict
    variant: str = ""

    @property
    def tags(self) -> dict[str, str]:
        return {STAGE: "retrain", DATASET: self.dataset, METHOD: self.method, TASK: self.task,
                SEED: str(self.seed), CONFIG: json.dumps(self.config, sort_keys=True, default=float),
                VARIANT: self.variant}

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.method}" + (f" ({self.variant})" if self.variant else "")

    @property
    def embedding_file(self) -> str:
        parts = [self.method, self.task, f"seed{self.seed}"]
        if self.variant:
            parts.append(re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.variant))
        return "__".join(parts) + ".npy"


def run_job(data, job: RetrainJob, trial: TrialSettings, threads: int):
    """Train and evaluate one job with its resolved settings; returns (metrics, embedding of every cell)."""
    shared: SharedData = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    torch.set_num_threads(threads)
    ds = shared.dataset
    labels = ds.obs["label"].to_numpy().astype(str)
    if job.task == "cell_typing":
        ref, query = ds.reference_index, ds.query_index
        emb = fit_embedding(job.method, trial.params, ds.X[ref], {"ref": ds.X[ref], "query": ds.X[query]},
                            trial.train, trial.augment, job.seed, graph=shared.reference_graph)
        metrics = knn_cell_typing(emb["ref"], labels[ref], emb["query"], labels[query])
        embedding = np.empty((ds.n_cells, emb["ref"].shape[1]), dtype=np.float32)
        embedding[ref], embedding[query] = emb["ref"], emb["query"]
    else:
        embedding = fit_embedding(job.method, trial.params, ds.X, {"all": ds.X}, trial.train, trial.augment,
                                  job.seed, graph=shared.all_graph)["all"]
        metrics = scib_scores(embedding, ds.obs["batch"].to_numpy(), labels, shared.pre_integration, n_jobs=threads)
    return metrics, embedding


def method_configs(experiment: Experiment, tracker: Tracker, dataset: str, method: str) -> list[tuple[str, dict]]:
    """(variant label, config) of each configuration of ``method`` that the final stage trains."""
    if not get_method(method).trainable:
        return [("", {})]
    cfg = experiment.config
    space = experiment.search_spaces[method]
    if cfg.final.retrain == "grid":
        return [(space.label(point), point) for point in space.grid_points()]
    best = best_trials(tracker, dataset, method, cfg.tune)
    if not best:
        raise RuntimeError(f"no finished tuning trial for {method!r} on {dataset!r} in {tracker.uri}; "
                           "run `scssl tune` first")
    by_run: dict[str, list[str]] = {}
    for objective, run in best.items():
        by_run.setdefault(run.info.run_id, []).append(objective)
    runs = {run.info.run_id: run for run in best.values()}
    if len(best) == 1:
        return [("", json.loads(runs[next(iter(by_run))].data.tags[CONFIG]))]
    return [(f"best {' & '.join(names)}", json.loads(runs[run_id].data.tags[CONFIG]))
            for run_id, names in by_run.items()]


def plan_jobs(experiment: Experiment, tracker: Tracker) -> list[RetrainJob]:
    jobs = []
    for spec in experiment.datasets:
        for method in experiment.config.methods:
            for variant, config in method_configs(experiment, tracker, spec.label, method):
                for task in experiment.config.tasks:
                    for seed in experiment.config.final.seeds:
                        jobs.append(RetrainJob(spec.label, method, task, seed, config, variant))
    return jobs


def retrain_stage(experiment: Experiment, data_refs: dict, tracker: Tracker) -> None:
    """Run every job not already finished; write embeddings under ``<study>/embeddings``."""
    cfg = experiment.config
    killed = tracker.close_dead_runs(stage="retrain")
    jobs = plan_jobs(experiment, tracker)
    identity = (DATASET, METHOD, TASK, SEED, CONFIG, VARIANT)
    finished = {tuple(r.data.tags.get(k, "") for k in identity)
                for r in tracker.runs(stage="retrain") if Tracker.finished(r)}
    todo = [j for j in jobs if tuple(j.tags[k] for k in identity) not in finished]
    print(f"[retrain] {len(todo)} of {len(jobs)} jobs to run "
          f"({len(cfg.final.seeds)} seeds x {len(cfg.tasks)} tasks per configuration)"
          + (f"; {killed} run(s) of a stopped driver closed as KILLED" if killed else ""), flush=True)
    threads = max(1, int(cfg.tune.cpus_per_trial))
    task = ray.remote(run_job).options(num_cpus=cfg.tune.cpus_per_trial, num_gpus=cfg.tune.gpus_per_trial)
    pending = {}
    for job in todo:
        trial = trial_settings(get_method(job.method), cfg.train, cfg.augment, job.config)
        run_id = tracker.start_run(f"{job.label}/{job.task}/seed{job.seed}", job.tags, job.config)
        tracker.log_json(run_id, trial.as_dict(), "config.json")
        pending[task.remote(data_refs[job.dataset], job, trial, threads)] = (job, run_id)
    for n in range(1, len(pending) + 1):
        [ref], _ = ray.wait(list(pending), num_returns=1)
        job, run_id = pending.pop(ref)
        try:
            metrics, embedding = ray.get(ref)
        except Exception as err:  # the job failed: record why, keep the others going
            tracker.set_tags(run_id, {ERROR: str(err)[-4000:]})
            tracker.end_run(run_id, "FAILED")
            print(f"[retrain] {n}/{len(todo)} {job.label} {job.task} seed {job.seed}: FAILED: "
                  f"{str(err).splitlines()[-1]}", flush=True)
            continue
        folder = experiment.study_dir / "embeddings" / job.dataset
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / job.embedding_file, embedding)
        tracker.log_artifact(run_id, folder / job.embedding_file)  # the report needs nothing but MLflow
        tracker.log_metrics(run_id, metrics)
        tracker.end_run(run_id, "FINISHED")
        headline = metrics.get("total", metrics.get("macro_f1"))
        name = "total" if "total" in metrics else "macro_f1"
        print(f"[retrain] {n}/{len(todo)} {job.label} {job.task} seed {job.seed}: "
              f"{name} {headline:.3f}", flush=True)

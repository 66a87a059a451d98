"""The tuning stage: for each data set and method, Optuna (or a grid) proposes trials and ASHA stops them early.

MLflow is the record of what ran: a stage that starts again (after ``kill -9`` of the driver, or a
plain rerun) counts the trials that ended for good there, closes the runs a dead driver left RUNNING
as KILLED, and runs only the rest. A grid skips its finished points; TPE and NSGA-II are told the
finished trials' results before they propose new ones. ASHA's rungs start afresh.
"""

from __future__ import annotations

import json
from collections import Counter

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from scssl.experiment import Experiment
from scssl.methods import get_method
from scssl.tune.callback import MLflowTrialCallback
from scssl.tune.search_space import SearchSpace, config_key, grid_param_space
from scssl.tune.settings import TuneSettings
from scssl.tune.tracking import CONFIG, Tracker
from scssl.tune.trainable import BATCH_METRIC, METRIC, MODE, SCORE, run_trial


def objectives(tune_settings: TuneSettings) -> list[str]:
    """The metrics the search maximises."""
    return [METRIC, BATCH_METRIC] if tune_settings.multi_objective else [METRIC]


def tune_method(experiment: Experiment, dataset: str, data_ref, method: str, tracker: Tracker) -> None:
    """Run the trials of one method on one data set that MLflow does not hold yet; each becomes a run."""
    cfg = experiment.config
    method_cls = get_method(method)
    space = experiment.search_spaces[method]
    tags = {"stage": "tune", "dataset": dataset, "method": method}
    killed = tracker.close_dead_runs(**tags)
    done = [r for r in tracker.runs(**tags) if Tracker.ended_for_good(r)]
    searcher, param_space, num_samples, n_todo = _plan(cfg.tune, space, done)
    total = n_todo + len(done)
    print(f"[tune] {dataset}/{method}: {n_todo} of {total} trials to run ({cfg.tune.search}), up to "
          f"{cfg.train.epochs} epochs each" + (f"; {killed} run(s) of a stopped driver closed as KILLED"
                                               if killed else ""), flush=True)
    if n_todo == 0:
        return
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, data=data_ref, method=method, train_settings=cfg.train, augment=cfg.augment,
            seed=cfg.tune.seed, threads=max(1, int(cfg.tune.cpus_per_trial)),
            multi_objective=cfg.tune.multi_objective,
        ),
        {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial},
    )
    callback = MLflowTrialCallback(tracker, dataset, method_cls, cfg.train, cfg.augment, total, len(done))
    ranked_by = SCORE if cfg.tune.multi_objective else METRIC
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples, search_alg=searcher,
            scheduler=ASHAScheduler(
                metric=ranked_by, mode=MODE, time_attr="training_iteration", max_t=cfg.train.epochs,
                grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
                reduction_factor=cfg.tune.reduction_factor,
            ),
            max_concurrent_trials=cfg.tune.max_concurrent_trials or None,
            reuse_actors=cfg.tune.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=_fresh_name(experiment, f"{dataset}__{method}"),
            storage_path=str(experiment.study_dir / "ray_results"),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_retries),
            verbose=0,
        ),
    )
    tuner.fit()


def _plan(settings: TuneSettings, space: SearchSpace, done: list) -> tuple[object, dict, int, int]:
    """The searcher, param space, ``num_samples`` and number of trials still to run, given the runs ``done``."""
    if settings.search == "grid":
        finished = Counter(config_key(json.loads(r.data.tags[CONFIG])) for r in done)
        todo = []
        for point in space.grid_points() * settings.num_samples:
            key = config_key(point)
            if finished[key]:
                finished[key] -= 1
            else:
                todo.append(point)
        return BasicVariantGenerator(random_state=settings.seed), grid_param_space(todo), 1, len(todo)
    names = objectives(settings)
    # A resumed search draws with another seed, so that it does not propose the finished trials again.
    seed = settings.seed + len(done)
    sampler = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[settings.search]()
    points, rewards = [], []
    if len(names) == 1:  # Ray's warm start takes one value per trial
        for run in done:
            if Tracker.finished(run) and METRIC in run.data.metrics:
                points.append(space.optuna_point(json.loads(run.data.tags[CONFIG])))
                rewards.append(run.data.metrics[METRIC])
    searcher = OptunaSearch(
        sampler=sampler, metric=names if len(names) > 1 else names[0],
        mode=[MODE] * len(names) if len(names) > 1 else MODE,
        points_to_evaluate=points or None, evaluated_rewards=rewards or None,
    )
    n_todo = max(0, settings.num_samples - len(done))
    return searcher, space.param_space(), n_todo, n_todo


def _fresh_name(experiment: Experiment, base: str) -> str:
    """A new Ray experiment folder for each attempt, so that a resumed stage never mixes with a dead one."""
    root = experiment.study_dir / "ray_results"
    name, attempt = base, 1
    while (root / name).exists():
        attempt += 1
        name = f"{base}__attempt{attempt}"
    return name


def best_trials(tracker: Tracker, dataset: str, method: str, tune_settings: TuneSettings) -> dict[str, object]:
    """For each objective, the finished tuning run with its highest final value (none when there is none)."""
    runs = [r for r in tracker.runs(stage="tune", dataset=dataset, method=method) if Tracker.finished(r)]
    best = {}
    for name in objectives(tune_settings):
        scored = [r for r in runs if name in r.data.metrics]
        if scored:
            best[name] = max(scored, key=lambda r: r.data.metrics[name])
    return best


def pareto_front(runs: list, names: list[str]) -> list:
    """The runs that no other run beats on every objective (ties kept), in the given order."""
    points = [[r.data.metrics[n] for n in names] for r in runs]
    return [r for r, p in zip(runs, points)
            if not any(all(q[i] >= p[i] for i in range(len(p))) and q != p for q in points)]

"""The tuning stage: for each data set and method, Optuna TPE proposes trials and ASHA stops them early."""

from __future__ import annotations

import json

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from scssl.experiment import Experiment
from scssl.methods import get_method
from scssl.tune.callback import MLflowTrialCallback
from scssl.tune.tracking import CONFIG, Tracker
from scssl.tune.trainable import METRIC, MODE, run_trial


def tune_method(experiment: Experiment, dataset: str, data_ref, method: str, tracker: Tracker) -> None:
    """Run the trials of one method on one data set; every trial becomes an MLflow run."""
    cfg = experiment.config
    method_cls = get_method(method)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, data=data_ref, method=method, train_settings=cfg.train, augment=cfg.augment,
            seed=cfg.tune.seed, threads=max(1, int(cfg.tune.cpus_per_trial)),
        ),
        {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial},
    )
    space = experiment.search_spaces[method]
    grid = cfg.tune.search == "grid"
    n_trials = cfg.tune.num_samples * (space.grid_size() if grid else 1)
    print(f"[tune] {dataset}/{method}: {n_trials} trials ({cfg.tune.search}), up to {cfg.train.epochs} epochs each",
          flush=True)
    tuner = tune.Tuner(
        trainable,
        param_space=space.param_space(grid=grid),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=cfg.tune.num_samples,
            search_alg=_searcher(cfg.tune.search, cfg.tune.seed),
            scheduler=ASHAScheduler(
                time_attr="training_iteration", max_t=cfg.train.epochs,
                grace_period=min(cfg.tune.grace_period, cfg.train.epochs),
                reduction_factor=cfg.tune.reduction_factor,
            ),
            max_concurrent_trials=cfg.tune.max_concurrent_trials or None,
        ),
        run_config=tune.RunConfig(
            name=f"{dataset}__{method}",
            storage_path=str(experiment.study_dir / "ray_results"),
            callbacks=[MLflowTrialCallback(tracker, dataset, method_cls, cfg.train, cfg.augment, n_trials)],
            verbose=0,
        ),
    )
    tuner.fit()


def _searcher(kind: str, seed: int):
    if kind == "tpe":
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    if kind == "random":
        return OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=seed))
    return BasicVariantGenerator(random_state=seed)  # grid: every combination, in order


def best_trial(tracker: Tracker, dataset: str, method: str):
    """The finished tuning run with the highest final objective, or None when there is none."""
    runs = [r for r in tracker.runs(stage="tune", dataset=dataset, method=method)
            if Tracker.finished(r) and METRIC in r.data.metrics]
    return max(runs, key=lambda r: r.data.metrics[METRIC], default=None)


def best_config(tracker: Tracker, dataset: str, method: str) -> tuple[dict, str | None]:
    """The sampled config of the best trial (empty: the method's defaults) and that run's id."""
    run = best_trial(tracker, dataset, method)
    if run is None:
        return {}, None
    return json.loads(run.data.tags[CONFIG]), run.info.run_id

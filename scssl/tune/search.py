"""The tuning stage: for each data set and method, Optuna (or a grid) proposes trials and ASHA stops them early.

MLflow is the record of what ran: a stage that starts again (after ``kill -9`` of the driver, or a
plain rerun) counts the trials that ended for good there, closes the runs a dead driver left RUNNING
as KILLED, and runs only the rest. A grid skips its finished points; TPE and NSGA-II are told the
finished trials' results before they propose new ones. ASHA's rungs start afresh.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from scssl.evaluate.tasks import DEFAULT_OBJECTIVE
from scssl.experiment import Experiment
from scssl.interrupt import stop_reason
from scssl.methods import get_method
from scssl.search_space import SearchSpace, config_key, trial_settings
from scssl.stages import TuneSettings
from scssl.tune.callback import MLflowTrialCallback
from scssl.tune.domains import grid_param_space, param_space
from scssl.tune.resources import concurrent_trials
from scssl.tune.tracking import CONFIG, Tracker, digest
from scssl.tune.trainable import BATCH_METRIC, EPOCH, MODE, NONFINITE, OBJECTIVES, SCORE, TRIAL_ERROR, run_trial


def objectives(tune_settings: TuneSettings) -> list[str]:
    """The metrics the search maximises."""
    metric = OBJECTIVES[tune_settings.objective]
    return [metric, BATCH_METRIC] if tune_settings.multi_objective else [metric]


def tune_key(experiment: Experiment, fingerprint: str, method: str) -> str:
    """What a trial's result depends on besides its sampled values: the data, the search space, the
    defaults laid under it and the objective. Trials run under another key (an edited experiment) are
    neither resumed nor retrained; the budget (``num_samples``, the searcher, ASHA) is not part of it."""
    cfg = experiment.config
    space = experiment.search_spaces[method]
    defaults = trial_settings(get_method(method), cfg.train, cfg.augment, {}).as_dict()  # the sections it reads
    return digest({
        "data": fingerprint, "method": method, "defaults": defaults,
        "space": {".".join(path): repr(value) for path, value in space.entries.items()},
        "objective": [cfg.tune.seed, cfg.tune.validation_fraction, cfg.tune.validation_max_cells,
                      cfg.tune.multi_objective]
        + ([] if cfg.tune.objective == DEFAULT_OBJECTIVE else [cfg.tune.objective]),  # the default: keys as before
    })


WAITING_CPU = 0.01  # what a trial on several workers asks for itself: it only waits for its TorchTrainer's workers


def tune_method(experiment: Experiment, dataset: str, fingerprint: str, data_ref, method: str,
                tracker: Tracker, memory: int = 0) -> list[str]:
    """Run the trials of one method on one data set that MLflow does not hold yet, each asking Ray for ``memory``
    bytes besides its CPUs and GPUs; each becomes a run.
    Returns one line per trial that failed for an error. An interrupt closes the open runs as KILLED; a store that
    stops answering ends the trials and raises ``TrackingUnavailable`` (the next driver closes their runs)."""
    cfg = experiment.config
    method_cls = get_method(method)
    space = experiment.search_spaces[method]
    tags = {"stage": "tune", "dataset": dataset, "method": method}
    key = tune_key(experiment, fingerprint, method)
    done = [r for r in tracker.runs(**tags, tune_key=key) if Tracker.ended_for_good(r)]
    searcher, param_space, num_samples, n_todo = _plan(cfg.tune, space, done)
    if isinstance(searcher, OptunaSearch):
        known = _final_results(tracker, done, space, cfg.train.epochs, objectives(cfg.tune))
        searcher = AnswerRepeats(searcher, space, cfg.train.epochs, known)
    total = n_todo + len(done)
    print(f"[tune] {dataset}/{method}: {n_todo} of {total} trials to run ({cfg.tune.search}), up to "
          f"{cfg.train.epochs} epochs each", flush=True)
    if n_todo == 0:
        return []
    asked = {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial, "memory": memory}
    workers = cfg.tune.workers_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, data=data_ref, method=method, train_settings=cfg.train, augment=cfg.augment,
            seed=cfg.tune.seed, threads=max(1, int(cfg.tune.cpus_per_trial)), objective=cfg.tune.objective,
            multi_objective=cfg.tune.multi_objective, workers=workers,
            worker_resources={"CPU": cfg.tune.cpus_per_trial, "GPU": cfg.tune.gpus_per_trial, "memory": memory},
        ),
        asked if workers == 1 else {"cpu": WAITING_CPU},
    )
    metric = objectives(cfg.tune)[0]
    callback = MLflowTrialCallback(tracker, dataset, method_cls, cfg.train, cfg.augment, total, len(done), key,
                                   metric)
    ranked_by = SCORE if cfg.tune.multi_objective else metric
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
            max_concurrent_trials=concurrent_trials(cfg.tune, memory),
            reuse_actors=cfg.tune.reuse_actors and workers == 1,  # Tune cannot reset a trial that ran a trainer
        ),
        run_config=tune.RunConfig(
            name=_fresh_name(experiment, f"{dataset}__{method}"),
            storage_path=str(experiment.study_dir / "ray_results"),
            callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_retries),
            verbose=0,
        ),
    )
    try:
        tuner.fit()
    except BaseException as stop:
        if tracker.lost is not None:  # Tune wraps a callback's error: the study stops for the store, runs stay open
            print(f"[tune] {dataset}/{method}: stopped: MLflow unreachable; its running trials ended", flush=True)
            raise tracker.lost from None
        closed = callback.close_open(f"interrupted ({stop_reason(stop)})")
        print(f"[tune] {dataset}/{method}: stopped; {closed} running trial(s) closed as KILLED", flush=True)
        raise
    if isinstance(searcher, AnswerRepeats) and searcher.answered:
        print(f"[tune] {dataset}/{method}: {searcher.answered} proposal(s) of a configuration that had trained all "
              f"its epochs answered with that trial's result instead of training it again", flush=True)
    return callback.failures


class AnswerRepeats(Searcher):
    """Answers a proposal of a configuration that has trained all its epochs already (or whose loss
    turned NaN) with that trial's result and asks again, instead of training it again.

    With ``tune.seed`` a configuration trains to the same curve in every trial, so a repeat costs its
    epochs and tells nothing new; TPE over ``choice`` axes proposes its best points again and again. A
    configuration that ASHA stopped early runs again (the rungs have moved, it may get further). The
    ``MAX_ASKS``-th proposal in a row (in a space all but exhausted) runs whatever it is.
    """

    MAX_ASKS = 100

    def __init__(self, searcher: OptunaSearch, space: SearchSpace, epochs: int, known: dict[str, dict] | None = None):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.space, self.epochs = searcher, space, epochs
        self.known = dict(known or {})  # sampled values (``point_key``) -> the result that ended its trial
        self.asked: dict[str, tuple[str, dict]] = {}  # Tune's trial id -> (the searcher's trial id, config)
        self.answered = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        for ask in range(self.MAX_ASKS):
            asked_as = trial_id if ask == 0 else f"{trial_id}:repeat{ask}"
            config = self.searcher.suggest(asked_as)
            result = self.known.get(point_key(self.space, config)) if isinstance(config, dict) else None
            if result is None or ask == self.MAX_ASKS - 1:
                break
            self.searcher.on_trial_complete(asked_as, result)
            self.answered += 1
        if isinstance(config, dict):
            self.asked[trial_id] = (asked_as, config)
        return config

    def get_state(self) -> dict:  # Tune checkpoints a wrapping searcher's state (and the wrapped one's itself)
        return copy.deepcopy({"known": self.known, "asked": self.asked, "answered": self.answered})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(self.asked[trial_id][0], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        asked_as, config = self.asked[trial_id]
        self.searcher.on_trial_complete(asked_as, result, error)
        ended_early = NONFINITE in (result or {}) or TRIAL_ERROR in (result or {})
        if result and not error and (result.get("training_iteration", 0) >= self.epochs or ended_early):
            self.known[point_key(self.space, config)] = result


def point_key(space: SearchSpace, config: dict) -> str:
    """The values a trial config took on the axes of ``space``: the same for a suggestion and for the
    trial's whole config (with the fixed values) in MLflow."""
    return config_key(space.optuna_point(config))


def _final_results(tracker: Tracker, done: list, space: SearchSpace, epochs: int,
                   names: list[str]) -> dict[str, dict]:
    """The results (objectives ``names``, and the score ASHA ranks by) of the finished trials in ``done`` that
    trained all ``epochs``, by ``point_key``."""
    known = {}
    for run in done:
        if not Tracker.finished(run) or names[0] not in run.data.metrics:
            continue
        history = tracker.client.get_metric_history(run.info.run_id, names[0])
        if max(m.step for m in history) >= epochs:
            metrics = {name: value for name, value in run.data.metrics.items() if name in [*names, SCORE]}
            known[point_key(space, json.loads(run.data.tags[CONFIG]))] = metrics
    return known


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
        "nsga2": lambda: PicklableNSGAII(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[settings.search]()
    points, rewards = [], []
    if len(names) == 1:  # Ray's warm start takes one value per trial
        for run in done:
            if Tracker.finished(run) and names[0] in run.data.metrics:
                points.append(space.optuna_point(json.loads(run.data.tags[CONFIG])))
                rewards.append(run.data.metrics[names[0]])
    searcher = OptunaSearch(
        sampler=sampler, metric=names if len(names) > 1 else names[0],
        mode=[MODE] * len(names) if len(names) > 1 else MODE,
        points_to_evaluate=points or None, evaluated_rewards=rewards or None,
    )
    n_todo = max(0, settings.num_samples - len(done))
    return searcher, param_space(space), n_todo, n_todo


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, which Ray Tune can pickle with the search algorithm: optuna 5.1's sampler holds a
    ``threading.Lock``, made anew here when unpickled."""

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def _fresh_name(experiment: Experiment, base: str) -> str:
    """A new Ray experiment folder for each attempt, so that a resumed stage never mixes with a dead one."""
    root = experiment.study_dir / "ray_results"
    name, attempt = base, 1
    while (root / name).exists():
        attempt += 1
        name = f"{base}__attempt{attempt}"
    return name


def best_trials(tracker: Tracker, dataset: str, method: str, tune_settings: TuneSettings, key: str) -> dict[str, object]:
    """For each objective, the finished tuning run of ``tune_key`` ``key`` with its highest final value among the
    runs that trained the most epochs (none when there is none): at equal fidelity, so that a trial ASHA stopped
    after a few epochs never wins on a value that a full-length trial was not compared with."""
    runs = [r for r in tracker.runs(stage="tune", dataset=dataset, method=method, tune_key=key) if Tracker.finished(r)]
    best = {}
    for name in objectives(tune_settings):
        scored = [r for r in runs if name in r.data.metrics]
        if scored:
            longest = max(_epochs(r) for r in scored)
            best[name] = max((r for r in scored if _epochs(r) == longest), key=lambda r: r.data.metrics[name])
    return best


def _epochs(run) -> int:
    """The epochs a tuning run trained (0 for a run logged before scssl recorded them)."""
    return int(run.data.metrics.get(EPOCH, 0))


def pareto_front(runs: list, names: list[str]) -> list:
    """The runs that no other run beats on every objective (ties kept), in the given order."""
    points = [[r.data.metrics[n] for n in names] for r in runs]
    return [r for r, p in zip(runs, points)
            if not any(all(q[i] >= p[i] for i in range(len(p))) and q != p for q in points)]

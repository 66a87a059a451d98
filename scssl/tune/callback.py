"""A Ray Tune callback that records every trial as an MLflow run and prints progress.

Written against Tune's callback API rather than Ray's ``MLflowLoggerCallback`` because runs must
carry the study's tags (data set, method, trial id, the sampled config) that the final stage and
``scssl report`` look runs up by, and only the metrics the trial reports, not Tune's bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune import Callback

from scssl.search_space import trial_settings
from scssl.tune.domains import unwrap
from scssl.tune.tracking import (
    CONFIG, DATASET, ERROR, METHOD, NODE, OBJECTIVE, RETRIED, STAGE, TRIAL_ID, TUNE_KEY, Tracker,
)
from scssl.tune.trainable import BATCH_METRIC, EPOCH, METRIC, NONFINITE, OBJECTIVES, SCORE, TRIAL_ERROR

REPORTED = (EPOCH, "loss", *dict.fromkeys([METRIC, *OBJECTIVES.values(), BATCH_METRIC, SCORE]), "epoch_seconds")


class MLflowTrialCallback(Callback):
    """Opens a run when a trial starts and closes it when the trial ends; ``failures`` lists the trials
    that failed for an error (a loss that turned NaN is a result of the search, not a failure)."""

    def __init__(self, tracker: Tracker, dataset: str, method_cls: type, train, augment, num_samples: int,
                 done: int, tune_key: str, objective: str = METRIC):
        self.tracker = tracker
        self.dataset = dataset
        self.method_cls = method_cls
        self.train, self.augment = train, augment
        self.num_samples = num_samples
        self.run_ids: dict[str, str] = {}
        self.ended_early: dict[str, tuple[str, bool]] = {}  # trial id -> (reason, whether it is a failure)
        self.failures: list[str] = []
        self.done = done  # trials ended before this attempt (a resumed stage)
        self.tune_key = tune_key
        self.objective = objective  # the metric the search maximises

    def on_trial_start(self, iteration, trials, trial, **info):
        config = unwrap(trial.config)
        resolved = trial_settings(self.method_cls, self.train, self.augment, config)
        run_id = self.tracker.start_run(
            f"{self.dataset}/{self.method_cls.name}/{trial.trial_id}",
            tags={
                STAGE: "tune", DATASET: self.dataset, METHOD: self.method_cls.name,
                TRIAL_ID: trial.trial_id, CONFIG: json.dumps(config, default=float), TUNE_KEY: self.tune_key,
                OBJECTIVE: self.objective,
            },
            params=config,
        )
        self.tracker.log_json(run_id, resolved.as_dict(), "config.json")
        self.run_ids[trial.trial_id] = run_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        for key, failure in ((NONFINITE, False), (TRIAL_ERROR, True)):
            if key in result:
                self.ended_early[trial.trial_id] = (result[key], failure)
                return
        metrics = {k: result[k] for k in REPORTED if k in result}
        run_id = self.run_ids[trial.trial_id]
        if int(result[EPOCH]) == 1 and "node_ip" in result:
            self.tracker.set_tags(run_id, {NODE: result["node_ip"]})
        self.tracker.log_metrics(run_id, metrics, step=int(result[EPOCH]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason, failure = self.ended_early.pop(trial.trial_id, (None, False))
        if reason is not None:  # the loss became NaN, or the trial's code raised: it ended, but failed
            self._fail(trial, reason, failure)
            return
        self.tracker.end_run(self.run_ids.pop(trial.trial_id), "FINISHED")
        result = trial.last_result or {}
        score = result.get(self.objective, float("nan"))
        self._progress(trial, f"epochs {result.get('epoch', 0)}, {self.objective} {score:.3f}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A crashed trial that Tune will run again: this attempt's run is FAILED, the next gets its own."""
        reason = _last_error_line(trial)
        run_id = self.run_ids.pop(trial.trial_id, None)
        if run_id is not None:
            self.tracker.set_tags(run_id, {ERROR: reason[:4000], RETRIED: "true"})
            self.tracker.end_run(run_id, "FAILED")
        print(f"[tune] {self.dataset}/{self.method_cls.name}: trial {trial.trial_id} crashed ({reason}); "
              f"retrying (failure {trial.run_metadata.num_failures})", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        """A trial that crashed (after its retries) is a FAILED run tagged with the reason."""
        self._fail(trial, _last_error_line(trial), failure=True)

    def close_open(self, reason: str) -> int:
        """Close the runs of the trials still going as KILLED (the study was stopped); returns how many."""
        for run_id in self.run_ids.values():
            self.tracker.set_tags(run_id, {ERROR: reason})
            self.tracker.end_run(run_id, "KILLED")
        closed, self.run_ids = len(self.run_ids), {}
        return closed

    def _fail(self, trial, reason: str, failure: bool) -> None:
        run_id = self.run_ids.pop(trial.trial_id, None)
        if run_id is not None:
            self.tracker.set_tags(run_id, {ERROR: reason[:4000]})
            self.tracker.end_run(run_id, "FAILED")
        self._progress(trial, f"FAILED: {reason}")
        if failure:
            self.failures.append(f"{self.dataset}/{self.method_cls.name} trial {trial.trial_id}: {reason}")

    def _progress(self, trial, what: str) -> None:
        self.done += 1
        print(f"[tune] {self.dataset}/{self.method_cls.name}: trial {self.done}/{self.num_samples} "
              f"({trial.trial_id}) {what}", flush=True)


def _last_error_line(trial) -> str:
    """The exception line of a failed trial (e.g. 'NonFiniteLossError: simclr: loss is nan in epoch 3')."""
    error = trial.get_pickled_error()
    text = str(error) if error is not None else ""
    if not text and trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error (see the Ray logs)"

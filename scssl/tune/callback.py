"""A Ray Tune callback that records every trial as an MLflow run and prints progress.

Written against Tune's callback API rather than Ray's ``MLflowLoggerCallback`` because runs must
carry the study's tags (data set, method, trial id, the sampled config) that the final stage and
``scssl report`` look runs up by, and only the metrics the trial reports, not Tune's bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

from ray.tune import Callback

from scssl.tune.search_space import trial_settings
from scssl.tune.tracking import CONFIG, DATASET, METHOD, STAGE, TRIAL_ID, Tracker

REPORTED = ("loss", "val_knn_accuracy", "epoch_seconds")


class MLflowTrialCallback(Callback):
    def __init__(self, tracker: Tracker, dataset: str, method_cls: type, train, augment, num_samples: int):
        self.tracker = tracker
        self.dataset = dataset
        self.method_cls = method_cls
        self.train, self.augment = train, augment
        self.num_samples = num_samples
        self.run_ids: dict[str, str] = {}
        self.done = 0

    def on_trial_start(self, iteration, trials, trial, **info):
        config = trial.config
        resolved = trial_settings(self.method_cls, self.train, self.augment, config)
        run_id = self.tracker.start_run(
            f"{self.dataset}/{self.method_cls.name}/{trial.trial_id}",
            tags={
                STAGE: "tune", DATASET: self.dataset, METHOD: self.method_cls.name,
                TRIAL_ID: trial.trial_id, CONFIG: json.dumps(config, default=float),
            },
            params=config,
        )
        self.tracker.log_json(run_id, resolved.as_dict(), "config.json")
        self.run_ids[trial.trial_id] = run_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = {k: result[k] for k in REPORTED if k in result}
        self.tracker.log_metrics(self.run_ids[trial.trial_id], metrics, step=int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.tracker.end_run(self.run_ids[trial.trial_id], "FINISHED")
        result = trial.last_result or {}
        self._progress(trial, f"epochs {result.get('epoch', 0)}, "
                              f"val_knn_accuracy {result.get('val_knn_accuracy', float('nan')):.3f}")

    def on_trial_error(self, iteration, trials, trial, **info):
        """A failed trial (a crash, or a loss that became NaN) is a FAILED run tagged with the reason."""
        reason = _last_error_line(trial)
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is not None:
            self.tracker.set_tags(run_id, {"scssl.error": reason[:4000]})
            self.tracker.end_run(run_id, "FAILED")
        self._progress(trial, f"FAILED: {reason}")

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

"""MLflow tracking of a study: one experiment per study, one run per trial and per retrain.

Runs are created and closed by the driver only (never by trial processes), so a SQLite store in
the study folder is safe and a remote ``mlflow server`` works the same way.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

STAGE, DATASET, METHOD, TASK, SEED, TRIAL_ID, CONFIG = (
    "scssl.stage", "scssl.dataset", "scssl.method", "scssl.task", "scssl.seed", "scssl.trial_id", "scssl.config",
)
ERROR = "scssl.error"  # why a run FAILED or was KILLED
RETRIED = "scssl.retried"  # on a FAILED run whose trial Tune ran again
NODE = "scssl.node"  # the IP address of the Ray node that ran a trial
VARIANT = "scssl.variant"  # a retrain run's label within a sweep, e.g. "temperature=0.5"; absent: ""


def flatten(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{"augment": {"masking": {"rate": 0.2}}} -> {"augment.masking.rate": 0.2}"""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Tracker:
    """The MLflow experiment named after the study, at ``uri``; artifacts of a local store go under
    ``artifact_dir``."""

    def __init__(self, uri: str, experiment_name: str, artifact_dir: Path):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
            location = artifact_dir.resolve().as_uri() if local else None
            self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id

    def start_run(self, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={k: str(v) for k, v in tags.items()})
        items = [Param(k, str(v)) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, json.loads(json.dumps(obj, default=str)), artifact_file)

    def log_artifact(self, run_id: str, local_path: Path) -> None:
        self.client.log_artifact(run_id, str(local_path))

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def runs(self, **tags: str) -> list:
        """All runs of the study whose tags equal ``tags`` (keys given without the ``scssl.`` prefix)."""
        clauses = [f"tags.`scssl.{k}` = '{v}'" for k, v in tags.items()]
        return self.client.search_runs(
            [self.experiment_id], filter_string=" and ".join(clauses), max_results=50000,
            order_by=["attributes.start_time ASC"],
        )

    @staticmethod
    def finished(run) -> bool:
        return run.info.status == RunStatus.to_string(RunStatus.FINISHED)

    @staticmethod
    def ended_for_good(run) -> bool:
        """FINISHED, or FAILED without a retry: a trial or job not to run again."""
        failed = run.info.status == RunStatus.to_string(RunStatus.FAILED)
        return Tracker.finished(run) or (failed and RETRIED not in run.data.tags)

    def close_dead_runs(self, **tags: str) -> int:
        """Mark KILLED the RUNNING runs with ``tags``: only a driver opens and closes runs, so when a
        driver starts, such runs belong to one that died (one driver per study at a time)."""
        dead = [r for r in self.runs(**tags) if r.info.status == RunStatus.to_string(RunStatus.RUNNING)]
        for run in dead:
            self.set_tags(run.info.run_id, {ERROR: "the driver stopped before this run ended"})
            self.end_run(run.info.run_id, "KILLED")
        return len(dead)

"""MLflow tracking of a study: one experiment per study, one run per trial and per retrain.

Runs are created and closed by the driver only (never by trial processes), so a SQLite store in
the study folder is safe and a remote ``mlflow server`` works the same way.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from scssl.settings import ConfigError, flatten

STAGE, DATASET, METHOD, TASK, SEED, TRIAL_ID, CONFIG = (
    "scssl.stage", "scssl.dataset", "scssl.method", "scssl.task", "scssl.seed", "scssl.trial_id", "scssl.config",
)
ERROR = "scssl.error"  # why a run FAILED or was KILLED
RETRIED = "scssl.retried"  # on a FAILED run whose trial Tune ran again
NODE = "scssl.node"  # the IP address of the Ray node that ran a trial
VARIANT = "scssl.variant"  # a retrain run's label within a sweep, e.g. "temperature=0.5"; absent: ""
JOB_KEY = "scssl.job_key"  # a retrain run's identity: a digest of everything that changes its result
SUPERSEDED = "scssl.superseded"  # "true" on a finished retrain run whose job the experiment no longer has
OBJECTIVE = "scssl.objective"  # a tuning run's: the metric its search maximised
TUNE_KEY = "scssl.tune_key"  # a tuning run's: a digest of what changes a trial's result besides its sampled values


def digest(obj: Any) -> str:
    """A short stable hash of a JSON-able object (settings, a data set's fingerprint), for run identities."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _quoted(value: str) -> str:
    """``value`` as an MLflow filter string literal. MLflow has no escape inside one, so the quote is
    the kind the value does not contain; names that reach here never hold both (``scssl.names``)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r}: a tag value with both quote characters cannot be searched in MLflow")


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """A ConfigError at once when an MLflow server does not answer (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(f"tracking URI {uri}: no MLflow server answers there ({getattr(err, 'reason', err)}); "
                          "start it, or give another --tracking-uri") from None


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
        clauses = [f"tags.`scssl.{k}` = {_quoted(v)}" for k, v in tags.items()]
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
        """Mark KILLED the RUNNING runs with ``tags`` (all with none): only a driver opens and closes runs,
        so when a driver starts, such runs belong to one that died (one driver per study at a time)."""
        dead = [r for r in self.runs(**tags) if r.info.status == RunStatus.to_string(RunStatus.RUNNING)]
        for run in dead:
            self.set_tags(run.info.run_id, {ERROR: "the driver stopped before this run ended"})
            self.end_run(run.info.run_id, "KILLED")
        return len(dead)

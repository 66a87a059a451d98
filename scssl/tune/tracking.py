"""MLflow tracking of a study: one experiment per study, one run per trial and per retrain.

Runs are created and closed by the driver only (never by trial processes), and one driver at a time
holds a study (``scssl.tune.lock``). Every call to the store goes through ``PatientClient``: a busy
SQLite file or an MLflow server that stopped answering is retried for a bounded time (``tracking_wait``,
60 s by default), after which the study stops with ``TrackingUnavailable`` instead of a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from scssl.evaluate.batch_correction import metric_set
from scssl.settings import ConfigError, flatten

# MLflow's own HTTP retries wait minutes per call; the bounded wait of PatientClient replaces them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # its "View run" lines per run

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
SCIB_METRIC_SET = "scssl.scib_metric_set"  # every run's: the scib-metrics release and metrics of scIB numbers


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


TRACKING_WAIT = 60.0  # seconds a study waits for its tracking store before it stops
# Failures that pass: a busy SQLite file (TEMPORARILY_UNAVAILABLE), a server that is overloaded or restarting.
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


class TrackingUnavailable(Exception):
    """The tracking store did not answer for ``waited`` seconds: the study stops (``cli`` exit 75)."""

    def __init__(self, uri: str, waited: float, reason: str):
        self.uri, self.waited, self.reason = uri, waited, reason
        super().__init__(f"the MLflow tracking store {uri} did not answer for {waited:.0f} s ({reason})")


def _transient(err: BaseException, remote: bool) -> bool:
    """Whether ``err`` may pass if the call is tried again: the store is busy or out of reach, not the call wrong."""
    if isinstance(err, MlflowException):
        if err.error_code in _TRANSIENT_CODES:
            return True
        # a server that does not answer, or answers 5xx (its own store busy): MLflow calls both INTERNAL_ERROR
        return remote and err.error_code == "INTERNAL_ERROR" and (
            isinstance(err, RestException) or str(err).startswith("API request to"))
    # a locked SQLite file met before MLflow's own session (its store's start): SQLAlchemy's error, unwrapped
    return isinstance(err, (sqlite3.OperationalError, sqlalchemy.exc.OperationalError, ConnectionError))


def _reason(err: BaseException) -> str:
    """The last line of ``err`` that says something, shortened: 'Connection refused', 'database is locked'."""
    text = str(err)
    for known in ("Connection refused", "database is locked", "Read timed out", "Connection reset",
                  "Name or service not known", "Remote end closed connection"):
        if known in text:
            return known
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


class PatientClient:
    """An ``MlflowClient`` whose every call is tried again while the store is busy or unreachable, for at most
    ``wait`` seconds from the call's start; then it raises ``TrackingUnavailable``, and so does every later call
    at once (``lost``): a study that lost its store stops instead of waiting again for each open run."""

    def __init__(self, uri: str, wait: float = TRACKING_WAIT):
        self.uri, self.wait = uri, wait
        self.remote = uri.startswith(("http://", "https://"))
        self.lost: TrackingUnavailable | None = None
        # making the client opens a SQLite store (its tables checked): patiently too
        self.raw = self._call(MlflowClient, (), {"tracking_uri": uri})  # unwrapped: for a heartbeat that may fail

    def __getattr__(self, name: str):
        attribute = getattr(self.raw, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patiently(*args, **kwargs):
            return self._call(attribute, args, kwargs)

        return patiently

    def _call(self, function, args, kwargs):
        if self.lost is not None:
            raise self.lost
        started, pause, told = time.monotonic(), 0.5, False
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as err:
                if not _transient(err, self.remote):
                    raise
                waited = time.monotonic() - started  # a SQLite call fails after its own busy wait (20 s)
                if waited >= self.wait:
                    self.lost = TrackingUnavailable(self.uri, waited, _reason(err))
                    raise self.lost from None
                if not told and waited >= 2.0:
                    told = True
                    print(f"[scssl] MLflow at {self.uri} is not answering ({_reason(err)}); waiting up to "
                          f"{self.wait:.0f} s", flush=True)
                time.sleep(min(pause, self.wait - waited))
                pause = min(2 * pause, 5.0)
                continue
            if told:
                print(f"[scssl] MLflow at {self.uri} answers again", flush=True)
            return result


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_store(uri: str, timeout: float = 10.0) -> None:
    """A ConfigError at once for a store that cannot hold the study: an MLflow server that does not answer
    (MLflow itself retries for minutes), or a SQLite file that is damaged, not a database, or read-only."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
        return
    path = sqlite_file(uri)
    if path is None or not path.exists():
        return
    afresh = (f"to start afresh, move the study folder (or {path.name}) away, or give another --output-dir or "
              "--tracking-uri")
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        what = path if not os.access(path, os.R_OK | os.W_OK) else path.parent
        raise ConfigError(f"tracking store {path}: {what} is read-only, and a study writes its runs there; make it "
                          f"writable (chmod u+w), or {afresh}")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout) as connection:
            verdict = [row[0] for row in connection.execute("PRAGMA quick_check")]
    except sqlite3.OperationalError as err:
        if "locked" in str(err):  # busy, not broken: the study waits for it
            return
        verdict = [str(err)]
    except sqlite3.DatabaseError as err:
        verdict = [str(err)]
    if verdict != ["ok"]:
        raise ConfigError(f"tracking store {path}: not a usable SQLite database ({verdict[0]}); the study's runs "
                          f"cannot be read from it: {afresh}")


def _check_server(uri: str, timeout: float) -> None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as err:
        raise ConfigError(f"tracking URI {uri}: no MLflow server answers there ({getattr(err, 'reason', err)}); "
                          "start it, or give another --tracking-uri") from None


class Tracker:
    """The MLflow experiment named after the study, at ``uri``; artifacts of a local store go under
    ``artifact_dir``. A study folder that was moved has its artifact locations moved with it."""

    def __init__(self, uri: str, experiment_name: str, artifact_dir: Path, wait: float = TRACKING_WAIT):
        self.uri = uri
        self.client = PatientClient(uri, wait)
        experiment = self.client.get_experiment_by_name(experiment_name)
        location = artifact_dir.resolve().as_uri() if uri.startswith(("sqlite:", "file:")) or "://" not in uri else None
        if experiment is None:
            self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
            if location is not None and sqlite_file(uri) is not None:
                _follow_move(sqlite_file(uri), self.experiment_id, experiment.artifact_location, location)

    @property
    def lost(self) -> TrackingUnavailable | None:
        """Why the store stopped answering, once it has."""
        return self.client.lost

    def start_run(self, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        tags = {SCIB_METRIC_SET: metric_set(), **tags}
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


def _follow_move(database: Path, experiment_id: str, recorded: str, location: str) -> None:
    """Point the experiment's and its runs' artifact URIs at ``location`` when they name a folder that is gone
    and ``location`` exists: the study folder was moved. MLflow stores absolute URIs and has no call to change
    them, so the study's own SQLite file is updated directly (its ``experiments`` and ``runs`` tables)."""
    from urllib.parse import unquote, urlparse

    def folder(uri: str) -> Path:
        return Path(unquote(urlparse(uri).path))

    if recorded == location or not recorded.startswith("file:") or not folder(location).exists():
        return
    if folder(recorded).exists():
        return  # another study folder's artifacts (a shared store): not a move
    with sqlite3.connect(database, timeout=60) as connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                           (location, int(experiment_id)))
        connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                           "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                           (location, len(recorded) + 1, int(experiment_id), len(recorded), recorded))
    print(f"[scssl] the study folder moved: artifact locations {recorded} -> {location}", flush=True)

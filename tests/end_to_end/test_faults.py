"""Faults, as a hostile tester makes them: a tracking server killed mid-tune and mid-retrain, a second driver, a
SIGKILLed driver's lock, a busy store, a search space with nothing to sample, changed counts, a Ray worker killed
mid-retrain, a damaged or read-only store, a query with no reference cell type, changed data before a report,
--output-dir at another study, a moved study folder.

Each case asserts the exit code, the line the user sees, and the MLflow runs afterwards: nothing RUNNING, nothing
FINISHED twice. Each prints one ``[fault]`` line (seen with ``pytest -s``): the fault, the line, the exit code,
the seconds to that exit, and what the rerun did.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import yaml
from conftest import wait_for
from mlflow.tracking import MlflowClient

from scssl.cli import main
from scssl.data import make_synthetic


def _scssl(*args: str, **kwargs) -> subprocess.Popen:
    """A ``scssl`` command in its own process group, as a user starts it in a terminal."""
    return subprocess.Popen([sys.executable, "-m", "scssl", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def _wait(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "Traceback" not in out + err, out + err
    return process.returncode, out, err


def _command(*args: str, timeout: float = 900) -> tuple[int, str, str, float]:
    started = time.monotonic()
    code, out, err = _wait(_scssl(*args), timeout)
    return code, out, err, time.monotonic() - started


def _runs(uri: str, name: str, stage: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`scssl.stage` = '{stage}'")


def _running(uri: str, name: str, stage: str, at_least: int = 1) -> list:
    """The RUNNING runs of ``stage`` once there are ``at_least`` (a tuning one counts once it reported an epoch)."""
    client = MlflowClient(uri)
    running = [r for r in _runs(uri, name, stage) if r.info.status == "RUNNING"]
    if stage == "tune":
        running = [r for r in running if client.get_metric_history(r.info.run_id, "loss")]
    return running if len(running) >= at_least else []


def _settled(uri: str, name: str) -> dict[str, list]:
    """Every tune and retrain run of study ``name``; asserts none is RUNNING and no trial or job FINISHED twice."""
    runs = {stage: _runs(uri, name, stage) for stage in ("tune", "retrain")}
    for stage, key in (("tune", "scssl.trial_id"), ("retrain", "scssl.job_key")):
        assert not [r for r in runs[stage] if r.info.status == "RUNNING"], f"a {stage} run stayed RUNNING"
        twice = [k for k, n in Counter(r.data.tags[key] for r in runs[stage] if r.info.status == "FINISHED").items()
                 if n > 1]
        assert not twice, f"{stage} {twice} FINISHED twice"
    return runs


def _finished(runs: list) -> list:
    return [r for r in runs if r.info.status == "FINISHED"]


def _note(fault: str, line: str, code: int, seconds: float, rerun: str) -> None:
    print(f"\n[fault] {fault} | {line.strip()} | exit {code} | {seconds:.0f} s | rerun: {rerun}")


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(start))


def _local(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite backend in ``folder``, killed and started again on the
    same port and store."""

    def __init__(self, folder: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder = folder
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}", "--workers", "1",
             "--artifacts-destination", str(self.folder / "server-artifacts"), "--serve-artifacts"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def answers() -> bool:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2).close()
                return True
            except OSError:
                return False

        wait_for(answers, "the MLflow server to answer", timeout=180)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


# ---------------------------------------------------------------------------------------------------------------
# The tracking store goes away


def _kill_server_when(server, driver, condition, what: str):
    """Kill the tracking server once ``condition`` holds, then wait for the driver: (exit code, stdout, stderr,
    seconds from the kill to its end)."""
    try:
        wait_for(condition, what)
        server.kill()
        killed = time.monotonic()
        code, out, err = _wait(driver, timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    return code, out, err, time.monotonic() - killed


@pytest.mark.slow
def test_a_server_killed_mid_tune_stops_the_study_and_a_rerun_finishes_it(server, small_experiment):
    experiment = small_experiment("tune_outage", tracking_wait=10, train={"epochs": 150, "batch_size": 64},
                                  tune={"num_samples": 1, "grace_period": 150})
    driver = _scssl("run", experiment, "--tracking-uri", server.uri)
    code, out, err, seconds = _kill_server_when(
        server, driver, lambda: _running(server.uri, "tune_outage", "tune"), "a trial in training")
    assert code == 75, out + err
    line = _line(err, "[scssl] stopped:")
    assert f"the MLflow tracking store {server.uri} did not answer for 1" in line and "(Connection refused)" in line
    assert "run `scssl run" in line and "[retrain]" not in out
    assert seconds < 120, "the bounded wait is 10 s"

    server.start()
    code, out, err, _ = _command("run", experiment, "--tracking-uri", server.uri)
    assert code == 0, out + err
    assert "run(s) of a stopped driver closed as KILLED" in out
    runs = _settled(server.uri, "tune_outage")
    assert len(_finished(runs["tune"])) == 1 and len(_finished(runs["retrain"])) == 1
    assert [r.info.status for r in runs["tune"] if r.info.status != "FINISHED"] == ["KILLED"]
    _note("server killed mid-tune", line, 75, seconds, "closed the open trial KILLED, ran the missing trial, retrain")


@pytest.mark.slow
def test_a_server_killed_mid_retrain_keeps_the_finished_result_for_the_rerun(server, small_experiment):
    experiment = small_experiment("retrain_outage", tracking_wait=10, train={"epochs": 400, "batch_size": 64},
                                  final={"retrain": "defaults", "seeds": [0, 1, 2]})
    study = experiment.parent / "out"
    driver = _scssl("retrain", experiment, "--tracking-uri", server.uri)
    # two jobs training and none ended yet: the first to end meets the dead server
    code, out, err, seconds = _kill_server_when(
        server, driver, lambda: _running(server.uri, "retrain_outage", "retrain", at_least=2)
        and not _finished(_runs(server.uri, "retrain_outage", "retrain")), "two jobs in flight")
    assert code == 75, out + err
    line = _line(err, "[scssl] stopped:")
    assert "(Connection refused)" in line
    logged = len(re.findall(r"^\[retrain\] \d/3 .*: macro_f1 ", out, flags=re.M))  # ended before the kill took
    kept = int(re.search(r"(\d+) finished result\(s\) kept in", out).group(1))
    assert kept >= 1, out
    pending = sorted((study / "pending").glob("*.json"))
    assert len(pending) == kept
    assert len(list((study / "embeddings" / "synthetic").glob("*.npy"))) == logged + kept

    server.start()
    code, out, err, _ = _command("retrain", experiment, "--tracking-uri", server.uri)
    assert code == 0, out + err
    assert f"{kept} retrain result(s) kept while MLflow was unreachable now logged" in out
    assert f"[retrain] {3 - logged - kept} of 3 jobs to run" in out
    assert not any(file.exists() for file in pending)
    runs = _settled(server.uri, "retrain_outage")
    assert len(_finished(runs["retrain"])) == 3
    for file in pending:
        result = MlflowClient(server.uri).get_run(file.stem)
        assert result.info.status == "FINISHED" and "macro_f1" in result.data.metrics
        assert [a.path for a in MlflowClient(server.uri).list_artifacts(file.stem) if a.path.endswith(".npy")]
    _note("server killed mid-retrain", line, 75, seconds, f"logged the {kept} kept result(s), ran the "
          f"{3 - logged - kept} missing job(s)")


# ---------------------------------------------------------------------------------------------------------------
# Drivers


@pytest.mark.slow
def test_a_second_driver_stops_at_once_at_start_and_mid_retrain(tmp_path, small_experiment):
    experiment = small_experiment("two_drivers", train={"epochs": 80, "batch_size": 64},
                                  tune={"num_samples": 1, "grace_period": 80}, final={"seeds": [0, 1]})
    uri = _local(tmp_path / "out")
    first = _scssl("run", experiment)
    try:
        wait_for(lambda: _running(uri, "two_drivers", "tune"), "the first driver's trial")
        for command in ("run", "tune", "retrain"):
            code, out, err, seconds = _command(command, experiment)
            assert code == 2, out + err
            assert f"is in use by another scssl driver (driver.lock): PID {first.pid} on {socket.gethostname()}" in err
            assert "`scssl run " in err and "[data]" not in out, "it stops before reading the data"
        _note("second driver at start", _line(err, "scssl: error:")[:120] + "...", 2, seconds, "-")
        wait_for(lambda: _running(uri, "two_drivers", "retrain"), "the first driver's retrain job")
        code, out, err, seconds = _command("retrain", experiment)
        assert code == 2 and "in use by another scssl driver" in err
        code, out, err = _wait(first)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert code == 0, out + err
    runs = _settled(uri, "two_drivers")
    assert len(_finished(runs["tune"])) == 1 and len(_finished(runs["retrain"])) == 2
    _note("second driver mid-retrain", "scssl: error: study folder ... is in use by another scssl driver", 2,
          seconds, "- (the first driver finished every job once)")


@pytest.mark.slow
def test_a_sigkilled_drivers_lock_is_taken_over_and_its_runs_closed(tmp_path, small_experiment):
    experiment = small_experiment("killed_driver", train={"epochs": 150, "batch_size": 64},
                                  tune={"num_samples": 2, "grace_period": 150, "max_concurrent_trials": 1})
    uri = _local(tmp_path / "out")
    first = _scssl("tune", experiment)
    try:
        victim = wait_for(lambda: _running(uri, "killed_driver", "tune"), "a trial in training")[0]
        first.kill()  # SIGKILL to the driver alone: it can release nothing
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert MlflowClient(uri).get_run(victim.info.run_id).info.status == "RUNNING"
    code, out, err, seconds = _command("run", experiment)
    assert code == 0, out + err
    assert "1 run(s) of a stopped driver closed as KILLED" in out
    runs = _settled(uri, "killed_driver")
    assert MlflowClient(uri).get_run(victim.info.run_id).info.status == "KILLED"
    assert len(_finished(runs["tune"])) == 2 and len(_finished(runs["retrain"])) == 1
    _note("lock of a SIGKILLed driver", _line(out, "[scssl] 1 run(s)"), 0, seconds,
          "took the lock over, closed the dead driver's trial KILLED, finished the study")


# ---------------------------------------------------------------------------------------------------------------
# A busy store


class Locked:
    """An exclusive lock on a SQLite file, as a second program writing to it holds one, until ``release``."""

    def __init__(self, database: Path):
        self.connection = sqlite3.connect(database, isolation_level=None, timeout=60, check_same_thread=False)
        self.connection.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.connection.execute("ROLLBACK")
        self.connection.close()


class Output:
    """A driver's standard output and error, line by line as they come (a thread reads each)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.readers = [threading.Thread(target=lambda s=stream: self.lines.extend(iter(s.readline, "")))
                        for stream in (process.stdout, process.stderr)]
        for reader in self.readers:
            reader.start()

    def shows(self, text: str) -> str | None:
        return next((line for line in list(self.lines) if text in line), None)

    def all(self) -> str:
        for reader in self.readers:
            reader.join()
        return "".join(self.lines)


@pytest.mark.slow
def test_a_busy_store_is_waited_for_and_a_store_busy_too_long_stops_the_study(tmp_path, small_experiment):
    experiment, study = _study_folder(small_experiment, "busy")  # a real store to lock
    uri, database = _local(study), study / "mlflow.db"
    experiment = small_experiment("busy", tracking_wait=120, final={"retrain": "defaults", "seeds": [0, 1]})
    locked = Locked(database)
    driver = _scssl("retrain", experiment)
    output = Output(driver)
    try:  # MLflow waits 20 s for a locked SQLite file itself, then fails; scssl says so and waits on
        line = wait_for(lambda: output.shows("is not answering (database is locked)"), "the driver to wait")
        locked.release()
        code = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    everything = output.all()
    assert code == 0 and "Traceback" not in everything, everything
    assert f"[scssl] MLflow at {uri} is not answering (database is locked); waiting up to 120 s" in line
    assert output.shows(f"[scssl] MLflow at {uri} answers again")
    assert len(_finished(_settled(uri, "busy")["retrain"])) == 2
    _note("store locked until the study said it waits (tracking_wait 120)", line, 0, 0,
          "- (the study waited, then finished)")

    experiment = small_experiment("busy", tracking_wait=5, final={"retrain": "defaults", "seeds": [2, 3]})
    locked = Locked(database)
    started = time.monotonic()
    try:
        code, out, err, _ = _command("retrain", experiment)
    finally:
        locked.release()
    seconds = time.monotonic() - started
    assert code == 75, out + err
    line = _line(err, "[scssl] stopped:")
    assert re.search(rf"the MLflow tracking store {re.escape(uri)} did not answer for \d+ s \(database is locked\)", line)
    code, out, err, _ = _command("retrain", experiment)
    assert code == 0, out + err
    assert len(_finished(_settled(uri, "busy")["retrain"])) == 4
    _note("store locked throughout (tracking_wait 5)", line, 75, seconds, "ran the 2 jobs, each once")


# ---------------------------------------------------------------------------------------------------------------
# What is trained


@pytest.mark.slow
def test_a_search_space_of_fixed_values_is_trained_as_that_configuration(tmp_path, small_experiment):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "simclr.yaml").write_text(yaml.safe_dump({"train": {"lr": 1.0e-4}}))
    experiment = small_experiment("fixed", search_spaces=str(spaces), tune={"search": "random", "num_samples": 3})
    code, out, err, _ = _command("validate", experiment)
    assert code == 0, out + err
    assert f"simclr: no tuning: {spaces / 'simclr.yaml'} fixes every value, so that configuration is trained" in out
    code, out, err, seconds = _command("run", experiment)
    assert code == 0, out + err
    line = _line(out, "[tune] synthetic/simclr: not tuned")
    runs = _settled(_local(tmp_path / "out"), "fixed")
    assert runs["tune"] == []
    [job] = _finished(runs["retrain"])
    assert float(job.data.params["train.lr"]) == 1.0e-4
    _note("search space of fixed values", line, 0, seconds, "-")


def _own_data(folder: Path, seed: int) -> tuple[Path, dict]:
    """A data file of the test's own (``cells.h5ad``, which the test may change) and its data set entry."""
    data = folder / "cells.h5ad"
    make_synthetic(n_cells=300, n_genes=200, n_batches=3, n_cell_types=4, seed=seed).write_h5ad(data)
    return data, {"path": str(data), "batch_key": "batch", "labels_key": "cell_type", "counts_layer": "counts",
                  "query_batches": ["batch2"], "n_hvgs": 150}


@pytest.mark.slow
def test_doubled_counts_rerun_exactly_the_methods_that_read_counts(tmp_path, small_experiment):
    data, spec = _own_data(tmp_path, seed=4)
    experiment = small_experiment("counts", datasets=[spec], methods=["pca", "scvi"],
                                  final={"retrain": "defaults", "seeds": [0]})
    code, out, err, _ = _command("retrain", experiment)
    assert code == 0 and "[retrain] 2 of 2 jobs to run" in out, out + err
    cells = ad.read_h5ad(data)
    cells.layers["counts"] = cells.layers["counts"] * 2
    cells.write_h5ad(data)
    code, out, err, seconds = _command("retrain", experiment)
    assert code == 0, out + err
    line = _line(out, "[retrain] 1 of 2 jobs to run")
    runs = _settled(_local(tmp_path / "out"), "counts")
    assert Counter(r.data.tags["scssl.method"] for r in _finished(runs["retrain"])) == {"pca": 1, "scvi": 2}
    _note("raw counts doubled", line, 0, seconds, "retrained scvi only (it reads counts); pca kept")


@pytest.mark.slow
def test_a_ray_worker_killed_mid_retrain_is_retried_and_every_job_finishes_once(tmp_path, small_experiment):
    experiment = small_experiment("worker", train={"epochs": 150, "batch_size": 64},
                                  final={"retrain": "defaults", "seeds": [0, 1, 2]})
    uri = _local(tmp_path / "out")
    driver = _scssl("retrain", experiment)
    try:
        wait_for(lambda: _running(uri, "worker", "retrain"), "a job in flight")
        subprocess.run(["pkill", "-9", "-f", "ray::run_job"], check=False)
        code, out, err = _wait(driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert code == 0, out + err
    assert len(_finished(_settled(uri, "worker")["retrain"])) == 3
    _note("Ray worker SIGKILLed mid-retrain", "(none: Ray ran the task again)", 0, 0, "-")


# ---------------------------------------------------------------------------------------------------------------
# A damaged store, bad data, and study folders


def _study_folder(small_experiment, name: str = "store") -> tuple[Path, Path]:
    """A study whose folder holds a real MLflow store and nothing trained (``scssl report`` makes it)."""
    experiment = small_experiment(name)
    code, out, err, _ = _command("report", experiment)
    assert code == 0, out + err
    return experiment, experiment.parent / "out"


@pytest.mark.slow
def test_a_damaged_store_is_named_with_how_to_start_afresh(small_experiment):
    experiment, study = _study_folder(small_experiment)
    database = study / "mlflow.db"
    good = database.read_bytes()
    damages = {"not a database": b"this is not a database" * 100, "half of it": good[: len(good) // 2],
               "its first 4 KiB": good[:4096]}
    for damage, content in damages.items():
        database.write_bytes(content)
        for command in ("run", "report"):
            code, out, err, seconds = _command(command, experiment)
            assert code == 2, out + err
            assert err.startswith(f"scssl: error: tracking store {database}: not a usable SQLite database (")
            assert "to start afresh, move the study folder (or mlflow.db) away" in err
        _note(f"mlflow.db: {damage}", err, 2, seconds, "-")


@pytest.mark.slow
def test_a_read_only_store_is_named_with_how_to_start_afresh(tmp_path, small_experiment):
    """As root, which writes any file, the command runs without the capability that overrides file modes."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and no setpriv to drop CAP_DAC_OVERRIDE with")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    study = tmp_path / "out"
    study.mkdir()
    with sqlite3.connect(study / "mlflow.db") as connection:
        connection.execute("CREATE TABLE t (a)")
    (study / "mlflow.db").chmod(0o444)
    experiment = small_experiment("readonly")
    started = time.monotonic()
    result = subprocess.run([*prefix, sys.executable, "-m", "scssl", "run", str(experiment)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    database = study / "mlflow.db"
    assert result.stderr.startswith(f"scssl: error: tracking store {database}: {database} is read-only"), result.stderr
    assert "to start afresh" in result.stderr and "Traceback" not in result.stderr
    _note("mlflow.db read-only", result.stderr, 2, time.monotonic() - started, "-")


def _labelled(path: Path, query_labels) -> Path:
    cells = make_synthetic(n_cells=300, n_genes=120, n_batches=3, n_cell_types=3, seed=3)
    labels = cells.obs["cell_type"].astype(str).to_numpy()
    query = (cells.obs["batch"] == "batch2").to_numpy()
    labels[query] = query_labels(labels[query])
    cells.obs["cell_type"] = labels
    cells.write_h5ad(path)
    return path


def _in_process(capsys, *args) -> tuple[int, str, str, float]:
    """A command that ends before Ray starts, run in this process (fast); its code, output, error and seconds."""
    started = time.monotonic()
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out + err
    return code, out, err, time.monotonic() - started


def test_a_query_with_no_reference_cell_type_is_caught_before_any_compute(tmp_path, small_experiment, capsys):
    spec = {"batch_key": "batch", "labels_key": "cell_type", "counts_layer": "counts", "query_batches": ["batch2"],
            "n_hvgs": 100}
    none = _labelled(tmp_path / "none.h5ad", lambda q: np.array([f"novel{i % 2}" for i in range(len(q))]))
    experiment = small_experiment("novel", datasets=[{"path": str(none), **spec}])
    for command in ("validate", "run"):
        code, out, err, seconds = _in_process(capsys, command, experiment)
        assert code == 2, out + err
        assert f"datasets.0.query_batches: {none}: cell_typing score the query cells of cell types the reference" in err
        assert "none of the" in err and not (tmp_path / "out").exists()
    _note("query with no reference cell type", err, 2, seconds, "-")
    some = _labelled(tmp_path / "some.h5ad", lambda q: np.where(np.arange(len(q)) % 4 == 0, "novel", q))
    experiment = small_experiment("novel", datasets=[{"path": str(some), **spec}])
    code, out, err, _ = _in_process(capsys, "validate", experiment)
    assert code == 0, out + err
    assert "query cells are of 1 cell type(s) the reference lacks (e.g. ['novel'])" in out


def test_duplicated_cell_names_in_the_second_modality_are_a_clear_error(tmp_path, small_experiment, capsys):
    rna = make_synthetic(n_cells=200, n_genes=100, n_batches=2, n_cell_types=3, seed=5)
    rna.write_h5ad(tmp_path / "rna.h5ad")
    protein = ad.AnnData(np.ones((200, 5), np.float32), obs=rna.obs[[]].copy())
    protein.obs_names = [*rna.obs_names[:199], rna.obs_names[0]]
    protein.write_h5ad(tmp_path / "adt.h5ad")
    spec = {"path": str(tmp_path / "rna.h5ad"), "batch_key": "batch", "labels_key": "cell_type",
            "counts_layer": "counts", "query_batches": ["batch1"], "n_hvgs": 80,
            "modality": {"kind": "protein", "path": str(tmp_path / "adt.h5ad")}}
    code, out, err, _ = _in_process(capsys, "validate", small_experiment("dup", datasets=[spec]))
    assert code == 2, out + err
    assert f"datasets.0.modality.path: {tmp_path / 'adt.h5ad'}: 1 cell names of the protein data occur more" in err


def test_an_output_dir_that_holds_another_study_is_refused(tmp_path, small_experiment, capsys):
    other = tmp_path / "other_study"
    other.mkdir()
    (other / "experiment.yaml").write_text(yaml.safe_dump({"name": "other", "datasets": [], "methods": []}))
    experiment = small_experiment("mine")
    code, out, err, seconds = _in_process(capsys, "run", experiment, "--output-dir", other)
    assert code == 2, out + err
    assert f"--output-dir: the study folder {other} holds the study 'other' (its experiment.yaml), not 'mine'" in err
    assert sorted(p.name for p in other.iterdir()) == ["experiment.yaml"]
    _note("--output-dir at another study", err, 2, seconds, "-")


@pytest.mark.slow
def test_a_report_shows_only_the_study_as_it_is_now_and_a_moved_folder_keeps_working(tmp_path, small_experiment):
    data, spec = _own_data(tmp_path, seed=6)
    experiment = small_experiment("changing", datasets=[spec], methods=["pca", "simclr"],
                                  tasks=["batch_correction", "cell_typing"], tune={"num_samples": 1})
    code, out, err, _ = _command("run", experiment)
    assert code == 0, out + err

    # moved: the report finds its artifacts in the new place and leaves the old path alone
    old, moved = tmp_path / "out", tmp_path / "elsewhere" / "study"
    moved.parent.mkdir()
    shutil.move(old, moved)
    code, out, err, seconds = _command("report", moved / "experiment.yaml")
    assert code == 0, out + err
    line = _line(out, "[scssl] the study folder moved")
    assert not old.exists()
    assert sorted(p.name for p in (moved / "results" / "figures").glob("umap_*.png")) == [
        "umap_cells__pca.png", "umap_cells__simclr.png"]
    _note("study folder moved", line, 0, seconds, "-")

    # the data changed: retrain refuses simclr (its tuning is of the old data), the report shows pca alone
    cells = ad.read_h5ad(data)[20:].copy()
    cells.write_h5ad(data)
    code, out, err, _ = _command("retrain", moved / "experiment.yaml")
    assert code == 1 and "cells/simclr: no finished tuning trial" in err, out + err
    code, out, err, seconds = _command("report", moved / "experiment.yaml")
    assert code == 0, out + err
    line = _line(out, "[report] not shown: cells/simclr")
    assert "its earlier results are out of date and not shown" in line
    for table in ("cell_typing.csv", "batch_correction.csv"):
        assert (moved / "results" / table).read_text().count("simclr") == 0
        assert (moved / "results" / table).read_text().count("pca") == 1
    assert "out of date" in (moved / "results" / "report.html").read_text()
    _note("data changed, then report", line, 0, seconds, "retrain: pca on the new data; simclr needs tuning (exit 1)")

    # changed again, not retrained: nothing current, and no old table is left standing
    cells[20:].copy().write_h5ad(data)
    code, out, err, _ = _command("report", moved / "experiment.yaml")
    assert code == 0, out + err
    assert "(no finished retrain runs of the study as it is now)" in out
    assert not list((moved / "results").glob("*.csv")) and not list((moved / "results").rglob("*.png"))
    assert "No finished retrain run of the study as it is now" in (moved / "results" / "report.html").read_text()
    _settled(_local(moved), "changing")

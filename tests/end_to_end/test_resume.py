"""Fault tolerance of a study: a lost trial worker is retried, and a driver killed with SIGKILL resumes."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import wait_for
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
NUM_SAMPLES = 3


def _tune_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("resume")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`scssl.stage` = 'tune'")


def _mid_training(client: MlflowClient):
    """A RUNNING trial that has reported two epochs, when another trial has finished."""
    runs = _tune_runs(client)
    if not any(r.info.status == "FINISHED" for r in runs):
        return None
    running = [r for r in runs if r.info.status == "RUNNING"]
    return next((r for r in running if len(client.get_metric_history(r.info.run_id, "loss")) >= 2), None)


def _scssl(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scssl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def test_lost_worker_is_retried_and_a_killed_driver_resumes(tmp_path, small_experiment):
    experiment = small_experiment("resume", train={"epochs": 30, "batch_size": 64}, tune={
        "num_samples": NUM_SAMPLES, "grace_period": 30, "max_concurrent_trials": 1, "max_retries": 1})
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    driver = _scssl("tune", str(experiment), start_new_session=True)
    try:
        # A worker dies mid-trial: Tune runs the trial again, the lost attempt's run is FAILED and marked retried.
        victim = wait_for(lambda: _mid_training(client), "a trial in training")
        subprocess.run(["pkill", "-9", "-f", "ray::ImplicitFunc"], check=False)
        wait_for(lambda: client.get_run(victim.info.run_id).info.status == "FAILED", "the lost attempt to fail")
        assert client.get_run(victim.info.run_id).data.tags["scssl.retried"] == "true"
        # Then the driver is killed (with its local Ray) while a trial trains.
        running = wait_for(lambda: _mid_training(client), "a trial in training after the retry")
        finished_before = {r.info.run_id for r in _tune_runs(client) if r.info.status == "FINISHED"}
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert finished_before and len(finished_before) < NUM_SAMPLES
    assert client.get_run(running.info.run_id).info.status == "RUNNING"  # left open by the dead driver

    again = _scssl("tune", str(experiment))
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    n_left = NUM_SAMPLES - len(finished_before)
    assert f"{n_left} of {NUM_SAMPLES} trials to run" in output
    assert "1 run(s) of a stopped driver closed as KILLED" in output

    runs = {r.info.run_id: r for r in _tune_runs(client)}
    statuses = sorted(r.info.status for r in runs.values())
    # every trial finished once; the lost attempt and the killed run are closed, nothing left RUNNING
    assert statuses == ["FAILED"] + ["FINISHED"] * NUM_SAMPLES + ["KILLED"]
    assert finished_before <= set(runs)
    assert runs[running.info.run_id].info.status == "KILLED"
    assert "driver stopped" in runs[running.info.run_id].data.tags["scssl.error"]
    trial_ids = [r.data.tags["scssl.trial_id"] for r in runs.values() if r.info.status == "FINISHED"]
    assert len(set(trial_ids)) == NUM_SAMPLES

    # A third run finds nothing left to do.
    third = _scssl("tune", str(experiment))
    output, _ = third.communicate(timeout=600)
    assert third.returncode == 0 and f"0 of {NUM_SAMPLES} trials to run" in output, output
    assert len(_tune_runs(client)) == len(runs)

"""Ctrl-C and SIGTERM stop a whole study: open runs are closed as KILLED with the reason, the command says
how to resume and exits 128 + the signal; a rerun finishes the rest, running nothing twice."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import wait_for
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def _runs(client: MlflowClient, name: str, stage: str) -> list:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.`scssl.stage` = '{stage}'")


def _scssl(*args: str) -> subprocess.Popen:
    # its own process group, which the test signals as a terminal signals its foreground job
    return subprocess.Popen([sys.executable, "-m", "scssl", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _training(client, name, stage):
    """A RUNNING run of ``stage`` (a tuning one that has reported an epoch)."""
    running = [r for r in _runs(client, name, stage) if r.info.status == "RUNNING"]
    if stage == "tune":
        running = [r for r in running if client.get_metric_history(r.info.run_id, "loss")]
    return running[0] if running else None


def _stop(driver: subprocess.Popen, signum: int, group: bool) -> str:
    if group:
        os.killpg(driver.pid, signum)
    else:
        driver.send_signal(signum)
    output, _ = driver.communicate(timeout=120)
    return output


def test_ctrl_c_mid_tune_stops_the_study_and_a_rerun_finishes_it(tmp_path, small_experiment):
    experiment = small_experiment("sigint", train={"epochs": 40, "batch_size": 64},
                                  tune={"num_samples": 3, "grace_period": 40, "max_concurrent_trials": 1})
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    driver = _scssl("run", str(experiment))
    try:
        victim = wait_for(lambda: _training(client, "sigint", "tune"), "a trial in training")
        output = _stop(driver, signal.SIGINT, group=True)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, output
    assert "stopped by SIGINT" in output and f"scssl run {experiment}` again to resume" in output
    assert "Tuner.restore" not in output and "[retrain]" not in output  # no Ray advice, no retrain stage
    runs = _runs(client, "sigint", "tune")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["scssl.error"] == "interrupted (SIGINT)"
    assert not _runs(client, "sigint", "retrain")

    again = subprocess.run([sys.executable, "-m", "scssl", "run", str(experiment)], capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = _runs(client, "sigint", "tune")
    finished = [r.data.tags["scssl.trial_id"] for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 3 and len(set(finished)) == 3
    assert not [r for r in runs if r.info.status == "RUNNING"]
    [retrain] = _runs(client, "sigint", "retrain")
    assert retrain.info.status == "FINISHED"


def test_sigterm_mid_retrain_closes_the_running_jobs_and_a_rerun_runs_each_job_once(tmp_path, small_experiment):
    experiment = small_experiment("sigterm", train={"epochs": 60, "batch_size": 64},
                                  final={"retrain": "defaults", "seeds": [0, 1, 2]})
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    driver = _scssl("retrain", str(experiment))
    try:
        victim = wait_for(lambda: _training(client, "sigterm", "retrain"), "a retrain job")
        output = _stop(driver, signal.SIGTERM, group=False)  # as a batch scheduler ends a job
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143, output
    assert "stopped by SIGTERM" in output
    runs = _runs(client, "sigterm", "retrain")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["scssl.error"] == "interrupted (SIGTERM)"
    finished_before = {r.data.tags["scssl.job_key"] for r in runs if r.info.status == "FINISHED"}
    assert len(runs) < 3, "runs are opened when jobs start, not when they are queued"

    again = subprocess.run([sys.executable, "-m", "scssl", "retrain", str(experiment)], capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{3 - len(finished_before)} of 3 jobs to run" in again.stdout
    runs = _runs(client, "sigterm", "retrain")
    finished = Counter(r.data.tags["scssl.job_key"] for r in runs if r.info.status == "FINISHED")
    assert len(finished) == 3 and set(finished.values()) == {1}, "a job finished twice"
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_a_second_ctrl_c_ends_at_once_and_any_later_stage_closes_what_it_left(tmp_path, small_experiment):
    experiment = small_experiment("twice", train={"epochs": 60, "batch_size": 64},
                                  final={"retrain": "defaults", "seeds": [0, 1]})
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    driver = _scssl("retrain", str(experiment))
    try:
        wait_for(lambda: _training(client, "twice", "retrain"), "a retrain job")
        os.killpg(driver.pid, signal.SIGINT)
        time.sleep(0.5)  # two separate signals, not one pending twice
        os.killpg(driver.pid, signal.SIGINT)
        driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130
    # a later stage of any kind closes the runs the driver could not close
    tune = subprocess.run([sys.executable, "-m", "scssl", "tune", str(experiment)], capture_output=True, text=True,
                          timeout=900)
    assert tune.returncode == 0, tune.stdout + tune.stderr
    assert not [r for r in _runs(client, "twice", "retrain") if r.info.status == "RUNNING"]
    again = subprocess.run([sys.executable, "-m", "scssl", "retrain", str(experiment)], capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    runs = _runs(client, "twice", "retrain")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert Counter(r.info.status for r in runs)["FINISHED"] == 2


def test_a_study_with_failures_lists_them_and_exits_1_without_retrying_what_would_fail_again(tmp_path,
                                                                                            small_experiment):
    # `mps` passes the configuration checks (a Mac's GPU) but this machine has none: every trial's own code
    # raises, and a retry would raise again
    experiment = small_experiment("fails", train={"epochs": 2, "batch_size": 64, "device": "mps"},
                                  tune={"num_samples": 2, "max_retries": 2})
    result = subprocess.run([sys.executable, "-m", "scssl", "run", str(experiment)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[scssl] 3 trial(s) or job(s) failed:" in result.stderr
    assert result.stderr.count("PyTorch is not linked with support for mps devices") == 2
    assert "synthetic/simclr: no finished tuning trial" in result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = _runs(client, "fails", "tune")
    assert len(runs) == 2 and all(r.info.status == "FAILED" for r in runs)  # two trials, no retry
    assert not any("scssl.retried" in r.data.tags for r in runs)
    assert "mps" in runs[0].data.tags["scssl.error"]


def test_a_killed_drivers_ray_agents_are_watched_and_ended(tmp_path, small_experiment):
    """Ray's dashboard and runtime-env agents outlive a SIGKILLed driver by about a minute on their own;
    the study's reaper (tests/tune/test_reaper.py) watches them and ends them at once."""
    import psutil

    experiment = small_experiment("orphans", train={"epochs": 60, "batch_size": 64},
                                  tune={"num_samples": 1, "grace_period": 60})
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    driver = _scssl("tune", str(experiment))
    try:
        wait_for(lambda: _training(client, "orphans", "tune"), "a trial in training")
        def command(process) -> str:  # "" for a process that ended meanwhile
            try:
                return " ".join(process.cmdline()).strip()
            except psutil.Error:
                return ""

        processes = psutil.Process(driver.pid).children(recursive=True)
        [reaper] = [p for p in processes if "scssl.tune.reaper" in command(p)]
        agents = [p for p in processes if command(p) in ("ray::DashboardAgent", "ray::RuntimeEnvAgent")]
        assert len(agents) == 2
        assert all(f"{p.pid}:" in command(reaper) for p in agents)
        driver.kill()  # SIGKILL to the driver alone: it can clean nothing up
        driver.wait(timeout=30)
        wait_for(lambda: not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
                 "the dead driver's Ray processes to end", timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

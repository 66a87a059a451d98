"""The final stage: job identity, seeds per task, declared defaults, jobs in flight, interrupts, failures."""

import numpy as np
import pandas as pd
import pytest
import ray
from mlflow.tracking import MlflowClient

from scssl.cli import main
from scssl.experiment import load_experiment
from scssl.methods import get_method
from scssl.settings import ConfigError, as_dict, parse
from scssl.tune.retrain import JOB_KEY, job_slots, method_configs, plan_jobs, retrain_stage
from scssl.stages import FinalSettings
from scssl.tune.tracking import ERROR, Tracker


def _jobs(small_experiment, fingerprint="data-v1", **overrides):
    final = overrides.pop("final", {"retrain": "defaults", "seeds": [0]})
    experiment = load_experiment(small_experiment("exp", final=final, **overrides))
    fingerprints = {"synthetic": {method: fingerprint for method in experiment.config.methods}}
    jobs, untuned = plan_jobs(experiment, None, fingerprints)  # defaults need no tuning runs
    assert not untuned
    return jobs


def _key(small_experiment, **kwargs):
    [job] = _jobs(small_experiment, **kwargs)
    return job.key


def test_a_job_key_is_stable_and_changes_with_every_setting_of_the_result(small_experiment):
    base = _key(small_experiment)
    assert _key(small_experiment) == base
    changed = {
        "epochs": _key(small_experiment, train={"epochs": 3, "batch_size": 64}),
        "schedule": _key(small_experiment, train={"epochs": 2, "batch_size": 64, "schedule": "step"}),
        "augment": _key(small_experiment, augment={"masking": {"rate": 0.3}}),
        "fingerprint": _key(small_experiment, fingerprint="data-v2"),
        "task": _key(small_experiment, tasks=["batch_correction"]),
    }
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    seeds = _jobs(small_experiment, final={"retrain": "defaults", "seeds": [0, 1]})
    assert len({job.key for job in seeds}) == 2


def test_the_evaluation_settings_change_the_keys_of_the_task_that_reads_them_alone(small_experiment):
    both = dict(tasks=["batch_correction", "cell_typing"])
    base = {job.task: job.key for job in _jobs(small_experiment, **both)}
    capped = {job.task: job.key for job in _jobs(small_experiment, evaluation={"scib_max_cells": 5000}, **both)}
    assert capped["batch_correction"] != base["batch_correction"] and capped["cell_typing"] == base["cell_typing"]
    with pytest.raises(ConfigError, match="evaluation: only the batch_correction task uses it"):
        _jobs(small_experiment, evaluation={"scib_max_cells": 5000}, tasks=["cell_typing"])


def test_a_baseline_key_ignores_training_settings(small_experiment):
    assert _key(small_experiment, methods=["pca"]) == _key(small_experiment, methods=["pca"], train={"epochs": 7})


def test_defaults_train_the_declared_settings_without_a_search(small_experiment):
    experiment = load_experiment(small_experiment("exp", final={"retrain": "defaults", "seeds": [0]},
                                                  augment={"masking": {"rate": 0.3}}))
    assert method_configs(experiment, None, "synthetic", "f", "simclr") == [("", {})]
    [job], _ = plan_jobs(experiment, None, {"synthetic": {"simclr": "f"}})
    assert (job.method, job.variant, job.config) == ("simclr", "", {})
    assert as_dict(job.trial.params) == as_dict(get_method("simclr").Params())
    assert job.trial.train.epochs == 2 and job.trial.augment.masking.rate == 0.3


def test_seeds_are_one_list_or_a_list_per_task():
    every = parse(FinalSettings, {"seeds": [3, 4]}, "exp.yaml")
    assert every.seeds_for("cell_typing") == every.seeds_for("batch_correction") == [3, 4]
    per_task = parse(FinalSettings, {"seeds": {"cell_typing": [0, 1, 2], "batch_correction": [0]}}, "exp.yaml")
    assert per_task.seeds_for("cell_typing") == [0, 1, 2] and per_task.seeds_for("batch_correction") == [0]
    assert parse(FinalSettings, {}, "exp.yaml").seeds_for("cell_typing") == [0, 1, 2]


def test_seeds_per_task_plan_their_jobs(small_experiment):
    jobs = _jobs(small_experiment, tasks=["batch_correction", "cell_typing"],
                 final={"retrain": "defaults", "seeds": {"cell_typing": [0, 1], "batch_correction": [5]}})
    assert sorted((job.task, job.seed) for job in jobs) == [("batch_correction", 5), ("cell_typing", 0),
                                                             ("cell_typing", 1)]


@pytest.mark.parametrize("seeds, expected", [
    ([], "seeds.list: Value error, expected at least one seed"),
    ([1, 1], "each seed may appear once"),
    ({"cell_typing": []}, "seeds.per_task.cell_typing: Value error, expected at least one seed"),
    ({"clustering": [0]}, "seeds.per_task.clustering.[key]: Input should be 'batch_correction', 'cell_typing', "
                          "'reconstruction', 'fine_tuned_cell_typing', 'modality_prediction' or "
                          "'cross_modality_prediction'"),
    ({}, "seeds.per_task: Dictionary should have at least 1 item"),
])
def test_bad_seeds_are_config_errors(seeds, expected):
    with pytest.raises(ConfigError) as err:
        parse(FinalSettings, {"seeds": seeds}, "exp.yaml [final]")
    assert str(err.value).startswith("exp.yaml [final]") and expected in str(err.value)


def test_seeds_per_task_must_cover_every_task():
    final = parse(FinalSettings, {"seeds": {"cell_typing": [0]}}, "exp.yaml")
    final.check_tasks(["cell_typing"], "exp.yaml")
    with pytest.raises(ConfigError, match=r"exp.yaml: final.seeds: no seeds for task\(s\) \['batch_correction'\]"):
        final.check_tasks(["batch_correction", "cell_typing"], "exp.yaml")


def test_job_slots_fit_the_cluster_and_are_at_least_one():
    assert job_slots({"CPU": 16.0}, 2, 0) == 8
    assert job_slots({"CPU": 16.0, "GPU": 1.0}, 1, 0.25) == 4
    assert job_slots({"CPU": 0.9}, 0.3, 0) == 3
    assert job_slots({"CPU": 4.0}, 1, 1) == 1  # GPU nodes not started yet: one job goes, the autoscaler follows
    assert job_slots({"CPU": 16.0, "memory": 10.0 * 2**30}, 1, 0, 3 * 2**30) == 3  # memory binds first


class FakeRay:
    """Ray's task calls as ``retrain_stage`` makes them, without Ray: each ``wait`` takes the next action of
    ``script``: "ok" or "fail" returns the oldest task in flight with that outcome, "interrupt" raises
    KeyboardInterrupt("SIGTERM") as the study's SIGTERM handler does."""

    def __init__(self, monkeypatch, tracker, cpus, script):
        self.tracker, self.script = tracker, list(script)
        self.jobs, self.cancelled, self.runs_at_wait, self.outcome = [], [], [], {}
        for name, fake in {"cluster_resources": lambda: {"CPU": cpus}, "remote": lambda fn: self,
                           "wait": self.wait, "get": self.get, "cancel": self.cancel}.items():
            monkeypatch.setattr(ray, name, fake)

    def options(self, **resources):
        return self

    def remote(self, data, job, threads):
        self.jobs.append(job)
        return len(self.jobs) - 1  # the task's reference

    def wait(self, refs, num_returns):
        self.runs_at_wait.append(len(self.tracker.runs(stage="retrain")))
        action = self.script.pop(0)
        if action == "interrupt":
            raise KeyboardInterrupt("SIGTERM")
        self.outcome[refs[0]] = action
        return [refs[0]], refs[1:]

    def get(self, ref):
        if self.outcome[ref] == "fail":
            raise RuntimeError("Traceback (most recent call last):\n  ...\nValueError: boom")
        return {"macro_f1": 0.5, "train_seconds": 2.0, "eval_seconds": 1.0}, np.zeros((4, 2), np.float32)

    def cancel(self, ref, force):
        self.cancelled.append((ref, force))


def _statuses(tracker):
    return sorted(r.info.status for r in tracker.runs(stage="retrain"))


def test_runs_open_when_jobs_start_and_an_interrupt_closes_them(tmp_path, small_experiment, monkeypatch):
    experiment = load_experiment(small_experiment("exp", methods=["pca"], final={"seeds": [0, 1, 2]}))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", tmp_path / "artifacts")
    fingerprints = {"synthetic": {"pca": "f"}}

    ray_ = FakeRay(monkeypatch, tracker, cpus=2, script=["ok", "interrupt"])
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        retrain_stage(experiment, {"synthetic": None}, tracker, fingerprints)
    assert ray_.runs_at_wait == [2, 3]  # 2 slots: the third job's run opened when the first job returned
    assert ray_.cancelled == [(1, True), (2, True)]
    killed = [r for r in tracker.runs(stage="retrain") if r.info.status == "KILLED"]
    assert _statuses(tracker) == ["FINISHED", "KILLED", "KILLED"]
    assert all(r.data.tags[ERROR] == "interrupted (SIGTERM)" for r in killed)
    [done] = [r for r in tracker.runs(stage="retrain") if Tracker.finished(r)]
    assert done.data.metrics["train_seconds"] == 2.0 and done.data.metrics["eval_seconds"] == 1.0

    # the rerun does the two interrupted jobs once each, and reports the one that fails
    ray_ = FakeRay(monkeypatch, tracker, cpus=2, script=["ok", "fail"])
    failures = retrain_stage(experiment, {"synthetic": None}, tracker, fingerprints)
    assert sorted(job.key for job in ray_.jobs) == sorted(r.data.tags[JOB_KEY] for r in killed)
    failed_seed = ray_.jobs[1].seed
    assert failures == [f"synthetic/pca cell_typing seed {failed_seed}: ValueError: boom"]
    assert _statuses(tracker) == ["FAILED", "FINISHED", "FINISHED", "KILLED", "KILLED"]


def _retrain_runs(out):
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("defaults")
    return client.search_runs([experiment.experiment_id], "tags.`scssl.stage` = 'retrain'")


@pytest.mark.slow
def test_an_edited_experiment_reruns_only_what_it_changed(tmp_path, small_experiment, capsys):
    final = {"retrain": "defaults", "seeds": [0]}
    path = small_experiment("defaults", final=final)
    assert main(["retrain", str(path)]) == 0
    assert "[retrain] 1 of 1 jobs to run" in capsys.readouterr().out
    assert main(["retrain", str(path)]) == 0
    assert "[retrain] 0 of 1 jobs to run" in capsys.readouterr().out
    small_experiment("defaults", final=final, train={"epochs": 3, "batch_size": 64})
    assert main(["retrain", str(path)]) == 0
    assert "[retrain] 1 of 1 jobs to run" in capsys.readouterr().out

    runs = _retrain_runs(tmp_path / "out")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags[JOB_KEY] for r in runs}) == 2
    for run in runs:
        assert run.data.metrics["train_seconds"] > 0 and run.data.metrics["eval_seconds"] > 0

    # the edit undone: nothing runs, and the report counts the first run again, not the newer edited one
    small_experiment("defaults", final=final)
    assert main(["retrain", str(path)]) == 0
    assert "[retrain] 0 of 1 jobs to run" in capsys.readouterr().out
    first, edited = sorted(_retrain_runs(tmp_path / "out"), key=lambda r: r.info.start_time)
    assert first.data.tags["scssl.superseded"] == "false" and edited.data.tags["scssl.superseded"] == "true"
    assert main(["report", str(path)]) == 0
    reported = pd.read_csv(tmp_path / "out" / "results" / "metrics_per_seed.csv").set_index("metric")["value"]
    assert reported["train_seconds"] == pytest.approx(first.data.metrics["train_seconds"])
    assert first.data.metrics["train_seconds"] != edited.data.metrics["train_seconds"]


def test_the_best_trial_is_chosen_among_the_trials_that_trained_the_most_epochs(tmp_path):
    """ASHA stopped one trial after 2 epochs on a value above the full-length trials' last values."""
    from scssl.stages import TuneSettings
    from scssl.tune.search import best_trials
    from scssl.tune.tracking import CONFIG

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "study", tmp_path / "artifacts")
    for name, curve in {"stopped": [0.5, 0.9], "full_a": [0.4, 0.6, 0.7, 0.8], "full_b": [0.3, 0.5, 0.6, 0.75]}.items():
        run = tracker.start_run(name, {"scssl.stage": "tune", "scssl.dataset": "d", "scssl.method": "simclr",
                                       "scssl.tune_key": "k", CONFIG: "{}"}, {})
        for epoch, value in enumerate(curve, start=1):
            tracker.log_metrics(run, {"epoch": epoch, "val_knn_accuracy": value}, step=epoch)
        tracker.end_run(run)
    best = best_trials(tracker, "d", "simclr", TuneSettings(), "k")
    assert best["val_knn_accuracy"].info.run_name == "full_a"

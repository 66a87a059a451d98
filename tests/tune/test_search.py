"""The tuning stage's plan from MLflow's record: what a resumed stage still runs, and the Pareto front."""

import json
from types import SimpleNamespace

import optuna
import pytest
import ray.cloudpickle

from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from scssl.methods import METHODS
from scssl.tune.search import AnswerRepeats, _final_results, _plan, pareto_front
from scssl.search_space import parse_search_space
from scssl.tune.domains import GRID_POINT, param_space
from scssl.stages import TuneSettings


def _run(config: dict, status: str = "FINISHED", **metrics):
    return SimpleNamespace(info=SimpleNamespace(status=status, run_id=json.dumps(metrics)),
                           data=SimpleNamespace(tags={"scssl.config": json.dumps(config)}, metrics=metrics))


SPACE = parse_search_space({"method": {"temperature": {"choice": [0.1, 0.5, 1.0]}}, "train": {"lr": 0.001}},
                           METHODS["simclr"], "test")


def test_a_resumed_grid_runs_only_its_missing_points():
    done = [_run({"train": {"lr": 0.001}, "method": {"temperature": 0.5}})]  # key order does not matter
    _, space, num_samples, n_todo = _plan(TuneSettings(search="grid", num_samples=2), SPACE, done)
    points = space[GRID_POINT]["grid_search"]
    assert (num_samples, n_todo) == (1, 5)  # 2 repeats x 3 points, one done
    assert [p["method"]["temperature"] for p in points] == [0.1, 1.0, 0.1, 0.5, 1.0]


def test_a_resumed_tpe_search_learns_the_finished_trials_and_draws_anew(monkeypatch):
    seeds = []
    monkeypatch.setattr(optuna.samplers, "TPESampler", lambda seed: seeds.append(seed) or optuna.samplers.RandomSampler(seed))
    done = [_run({"method": {"temperature": 0.5}}, val_knn_accuracy=0.8),
            _run({"method": {"temperature": 1.0}}, status="FAILED")]
    searcher, _, num_samples, n_todo = _plan(TuneSettings(search="tpe", num_samples=5, seed=3), SPACE, done)
    assert isinstance(searcher, OptunaSearch) and (num_samples, n_todo) == (3, 3)
    assert searcher._points_to_evaluate == [{"method/temperature": 0.5}] and searcher._evaluated_rewards == [0.8]
    assert seeds == [5]  # seed 3 + 2 trials done: not the sequence that proposed them
    assert _plan(TuneSettings(search="tpe", num_samples=2), SPACE, done)[3] == 0


def test_pareto_front_keeps_the_runs_no_other_beats_on_both():
    names = ["bio", "batch"]
    runs = [_run({}, bio=0.9, batch=0.1), _run({}, bio=0.5, batch=0.5), _run({}, bio=0.4, batch=0.4),
            _run({}, bio=0.2, batch=0.8), _run({}, bio=0.2, batch=0.8)]
    front = pareto_front(runs, names)
    assert [(r.data.metrics["bio"], r.data.metrics["batch"]) for r in front] == [
        (0.9, 0.1), (0.5, 0.5), (0.2, 0.8), (0.2, 0.8)]  # (0.4, 0.4) is beaten by (0.5, 0.5); ties stay


def _answering(epochs=4, known=None):
    searcher = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=0), metric="val_knn_accuracy", mode="max")
    answering = AnswerRepeats(searcher, SPACE, epochs, known)
    answering.set_search_properties("val_knn_accuracy", "max", param_space(SPACE))
    return answering


def _temperature(config):
    return config["method"]["temperature"]


def test_a_proposal_of_a_configuration_that_trained_all_its_epochs_is_answered_not_run():
    answering = _answering()
    tried = {}
    for i in range(12):  # each temperature once to its last epoch, except 1.0, which ASHA stops at epoch 2
        config = answering.suggest(f"t{i}")
        temperature = _temperature(config)
        assert temperature not in (t for t, epochs in tried.items() if epochs == 4)
        epochs = 2 if temperature == 1.0 else 4
        tried[temperature] = epochs
        answering.on_trial_result(f"t{i}", {"val_knn_accuracy": temperature, "training_iteration": 1})
        answering.on_trial_complete(f"t{i}", {"val_knn_accuracy": temperature, "training_iteration": epochs})
    assert tried == {0.1: 4, 0.5: 4, 1.0: 2} and answering.answered > 0
    told = [t for t in answering.searcher._ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) == 12 + answering.answered  # Optuna learns each answer as a trial
    assert all(t.value == t.params["method/temperature"] for t in told)


def test_an_exhausted_space_runs_the_repeat():
    answering = _answering(known={f'{{"method/temperature": {t}}}': {"val_knn_accuracy": t} for t in (0.1, 0.5, 1.0)})
    answering.MAX_ASKS = 5
    assert _temperature(answering.suggest("t0")) in (0.1, 0.5, 1.0) and answering.answered == 4


def test_a_resumed_stage_knows_the_finished_trials_that_trained_all_epochs():
    runs = [_run({"method": {"temperature": 0.5}, "train": {"lr": 0.001}}, val_knn_accuracy=0.8),
            _run({"method": {"temperature": 1.0}, "train": {"lr": 0.001}}, val_knn_accuracy=0.7),
            _run({"method": {"temperature": 0.1}}, status="FAILED")]
    last_epoch = {runs[0].info.run_id: 4, runs[1].info.run_id: 2}  # the second one ASHA stopped
    client = SimpleNamespace(get_metric_history=lambda run_id, _: [SimpleNamespace(step=s) for s in
                                                                    range(1, last_epoch[run_id] + 1)])
    known = _final_results(SimpleNamespace(client=client), runs, SPACE, 4, ["val_knn_accuracy"])
    assert known == {'{"method/temperature": 0.5}': {"val_knn_accuracy": 0.8}}


def test_tune_can_checkpoint_the_answering_searcher(tmp_path):
    answering = _answering()
    answering.suggest("t0")
    answering.on_trial_complete("t0", {"val_knn_accuracy": 0.9, "training_iteration": 4})
    SearchGenerator(answering).save_to_dir(str(tmp_path), "s")  # what Tune does as it goes
    again = SearchGenerator(_answering())
    again.restore_from_dir(str(tmp_path))
    assert again.searcher.known == answering.known and len(answering.known) == 1
    assert len(again.searcher.searcher._ot_study.trials) == 1


def test_a_tuning_key_changes_with_what_changes_a_trial_and_not_with_the_budget(small_experiment):
    from scssl.experiment import load_experiment
    from scssl.tune.search import tune_key

    def key(fingerprint="data-v1", **overrides):
        return tune_key(load_experiment(small_experiment("exp", **overrides)), fingerprint, "simclr")

    base = key()
    assert key() == base
    assert key(tune={"num_samples": 20, "search": "random", "grace_period": 1, "cpus_per_trial": 2}) == base
    changed = [key(train={"epochs": 3, "batch_size": 64}), key(augment={"masking": {"rate": 0.3}}),
               key(fingerprint="data-v2"), key(tune={"seed": 1}), key(tune={"validation_fraction": 0.3}),
               key(search_space={"method": {"temperature": {"choice": [0.5]}}})]
    assert base not in changed and len(set(changed)) == len(changed)


@pytest.mark.parametrize("search", ["tpe", "nsga2", "random"])
def test_every_search_survives_the_pickling_of_ray_tune_and_proposes_after_it(search):
    settings = TuneSettings(search=search, multi_objective=search == "nsga2", num_samples=3, seed=0)
    searcher, _, _, _ = _plan(settings, SPACE, [])
    again = ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))  # what Tuner does with its search algorithm
    again.set_search_properties(None, None, param_space(SPACE))
    point = again.suggest("t0")
    assert point["method"]["temperature"] in (0.1, 0.5, 1.0)

"""The tuning stage's plan from MLflow's record: what a resumed stage still runs, and the Pareto front."""

import json
from types import SimpleNamespace

import optuna

from ray.tune.search.optuna import OptunaSearch

from scssl.methods import METHODS
from scssl.tune.search import _plan, pareto_front
from scssl.tune.search_space import GRID_POINT, parse_search_space
from scssl.tune.settings import TuneSettings


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

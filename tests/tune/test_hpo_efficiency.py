"""The counting of benchmarks/hpo_efficiency.py, on trials made by hand: (epochs run, final objective)."""

import importlib.util
from pathlib import Path

import pytest

_file = Path(__file__).resolve().parents[2] / "benchmarks" / "hpo_efficiency.py"
_spec = importlib.util.spec_from_file_location("hpo_efficiency", _file)
hpo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hpo)

TPE = [(5, 0.80), (10, 0.90), (30, 0.93), (5, 0.95)]


def test_epochs_up_to_and_including_the_first_trial_that_reaches():
    assert hpo.trial_epochs_to_reach(TPE, 0.93) == (5 + 10 + 30, True)  # 0.93 itself counts
    assert hpo.trial_epochs_to_reach(TPE, 0.90) == (15, True)  # the best-so-far's first crossing
    assert hpo.trial_epochs_to_reach(TPE, 0.80) == (5, True)


def test_never_reached_counts_every_epoch():
    assert hpo.trial_epochs_to_reach(TPE, 0.96) == (50, False)
    assert hpo.trial_epochs_to_reach([], 0.5) == (0, False)


def test_compare_one_seed():
    grid = [(30, 0.90), (30, 0.94), (30, 0.92), (30, float("-inf"))]  # the last one failed
    row = hpo.compare(grid, TPE)
    assert row["grid_best"] == 0.94 and row["grid_trial_epochs"] == 120
    assert row["tpe_trial_epochs_to_reach"] == 45 and row["reached"]  # 0.93 >= 0.94 - 0.01
    assert row["ratio"] == pytest.approx(45 / 120)
    assert row["tpe_best"] == 0.95 and row["tpe_trial_epochs"] == 50


def test_compare_not_reached_gives_a_lower_bound():
    row = hpo.compare([(30, 0.99), (30, 0.50)], TPE)
    assert not row["reached"] and row["tpe_trial_epochs_to_reach"] == 50
    assert row["ratio"] == pytest.approx(50 / 60)

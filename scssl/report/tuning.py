"""Optuna's optimisation history and parameter importances of a tuning, rebuilt from its MLflow runs.

The Optuna study that proposed the trials lives inside Ray Tune's searcher and is not kept, so the trials
are re-created from the tune runs: their params (the sampled config, flattened with dots) and the
objective's history. The search domains are not stored; they are inferred from the values the trials took:
numbers span their observed range (integers if all are), anything else is categorical.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import TrialState

from scssl.tune.tracking import OBJECTIVE, TUNE_KEY, Tracker
from scssl.tune.trainable import METRIC, MODE


def latest_search(runs: list) -> list:
    """Those of the tune ``runs`` of one data set and method that belong to the latest search: the
    ``scssl.tune_key`` of the run that started last. Trials of the experiment before an edit that changes
    their results are not mixed with the new ones (the report knows nothing but MLflow)."""
    if not runs:
        return []
    key = max(runs, key=lambda r: r.info.start_time).data.tags.get(TUNE_KEY, "")
    return [r for r in runs if r.data.tags.get(TUNE_KEY, "") == key]


def tuning_study(tracker: Tracker, dataset: str, method: str) -> optuna.Study | None:
    """The tune runs of ``method`` on ``dataset`` (its latest search) as an Optuna study, in the order they
    started; finished runs with an objective are COMPLETE trials, failed ones (not retried) FAIL; None when
    there are none."""
    runs = [r for r in latest_search(tracker.runs(stage="tune", dataset=dataset, method=method))
            if Tracker.ended_for_good(r)]
    if not runs:
        return None
    params = [{k: _value(v) for k, v in r.data.params.items()} for r in runs]
    distributions = _distributions(params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=f"{dataset}/{method}", direction="maximize" if MODE == "max" else "minimize")
    metric = runs[0].data.tags.get(OBJECTIVE, METRIC)
    study.set_user_attr("objective", metric)
    for run, trial in zip(runs, params):
        values = {k: str(v) if isinstance(distributions[k], CategoricalDistribution) else v for k, v in trial.items()}
        history = tracker.client.get_metric_history(run.info.run_id, metric)
        complete = Tracker.finished(run) and metric in run.data.metrics
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={k: distributions[k] for k in values},
            value=run.data.metrics[metric] if complete else None,
            intermediate_values={m.step: m.value for m in history},
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
        ))
    return study


def tuning_figures(study: optuna.Study, stem: Path) -> dict[str, Path]:
    """``<stem>_history.png`` and, when the objective and a parameter of every finished trial vary among them,
    ``<stem>_importances.png`` (fANOVA, seed 0, over those parameters); keyed "history" and "importances"."""
    figures = {"history": _save(optuna.visualization.matplotlib.plot_optimization_history, study,
                                f"Optimisation history ({study.user_attrs['objective']})",
                                Path(f"{stem}_history.png"))}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    common = set.intersection(*(set(t.params) for t in complete)) if complete else set()
    varying = sorted(k for k in common if len({t.params[k] for t in complete}) > 1)
    if varying and len({t.value for t in complete}) > 1:  # fANOVA needs the objective to vary too
        figures["importances"] = _save(optuna.visualization.matplotlib.plot_param_importances, study,
                                       "Parameter importances (fANOVA)", Path(f"{stem}_importances.png"),
                                       evaluator=FanovaImportanceEvaluator(seed=0), params=varying)
    return figures


def _save(plot, study: optuna.Study, title: str, out: Path, **kwargs) -> Path:
    with plt.rc_context(), warnings.catch_warnings():  # Optuna switches to its own style and warns "experimental"
        warnings.simplefilter("ignore")
        ax = plot(study, **kwargs)
        ax.set_title("", loc="left")
        ax.set_title(f"{study.study_name}: {title}")
        ax.figure.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
    return out


def _value(text: str):
    """An MLflow param back as the int or finite float it was, else the string."""
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        if math.isfinite(number):
            return number
    return text


def _distributions(params: list[dict]) -> dict:
    values: dict[str, list] = {}
    for trial in params:
        for key, value in trial.items():
            values.setdefault(key, []).append(value)
    out = {}
    for key, seen in values.items():
        if all(isinstance(v, int) for v in seen):
            out[key] = IntDistribution(min(seen), max(seen))
        elif all(isinstance(v, (int, float)) for v in seen):
            out[key] = FloatDistribution(min(seen), max(seen))
        else:
            out[key] = CategoricalDistribution(sorted({str(v) for v in seen}))
    return out

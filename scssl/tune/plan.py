"""What a study will do, counted from its experiment alone (``scssl validate``): no Ray, no MLflow."""

from __future__ import annotations

from scssl.evaluate.tasks import TASKS
from scssl.experiment import Experiment
from scssl.methods import get_method


def study_plan(experiment: Experiment) -> list[str]:
    """One line per method (trials, configurations retrained, jobs) and a line of totals."""
    cfg = experiment.config
    n_datasets = len(experiment.datasets)
    lines, trials, jobs = [], 0, 0
    for method in cfg.methods:
        seeds = sum(len(cfg.final.seeds_for(task)) for task in cfg.tasks if TASKS[task].serves(method))
        if not get_method(method).trainable:
            tuned, configs = "no tuning (a baseline)", 1
        elif cfg.final.retrain == "defaults":
            tuned, configs = "no tuning: its declared defaults", 1
        elif cfg.final.retrain == "grid":
            configs = len(experiment.search_spaces[method].grid_points())
            tuned = f"no tuning: every point of its grid ({configs})"
        elif not experiment.tunes(method):
            tuned, configs = f"no tuning: {experiment.search_spaces[method].source} fixes every value, so that " \
                             "configuration is trained", 1
        else:
            space = experiment.search_spaces[method]
            n = cfg.tune.num_samples * (len(space.grid_points()) if cfg.tune.search == "grid" else 1)
            trials += n * n_datasets
            tuned = f"{n} trials ({cfg.tune.search} + ASHA, up to {cfg.train.epochs} epochs each)"
            configs = 2 if cfg.tune.multi_objective else 1  # the best of each objective; 1 when one trial is both
        jobs += configs * seeds * n_datasets
        unserved = [task for task in cfg.tasks if not TASKS[task].serves(method)]
        lines.append(f"{method}: {tuned}; retrain {configs} configuration(s) x {seeds} task-seed(s) "
                     f"= {configs * seeds} job(s) per data set"
                     + (f" (it cannot serve {', '.join(unserved)})" if unserved else ""))
    data = ", ".join(spec.label for spec in experiment.datasets)
    seed_text = "; ".join(f"{task} seeds {cfg.final.seeds_for(task)}" for task in cfg.tasks)
    lines.append(f"total on {n_datasets} data set(s) ({data}): {trials} tuning trial(s), "
                 f"{jobs if not cfg.tune.multi_objective else f'up to {jobs}'} retrain job(s) ({seed_text}); "
                 f"each asks for {cfg.tune.cpus_per_trial:g} CPU and {cfg.tune.gpus_per_trial:g} GPU")
    return lines

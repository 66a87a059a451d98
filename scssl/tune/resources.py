"""Pre-flight against the Ray cluster, and the libraries' own output kept out of scssl's progress lines.

A trial or job asks for ``tune.cpus_per_trial`` CPUs and ``tune.gpus_per_trial`` GPUs on one node. Ray
waits forever for a request no node can meet (it only warns every minute), so the study checks it
first against every node there is and every node type an autoscaling cluster can add.
"""

from __future__ import annotations

import logging
import os

from scssl.settings import ConfigError


def node_shapes() -> list[dict[str, float]]:
    """CPU and GPU of each live node and of each node type the autoscaler may start."""
    import ray

    shapes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    try:  # Ray keeps an autoscaling cluster's node types in its GCS (what Ray Data reads too)
        from ray._private.state import state

        config = state.get_cluster_config()
        groups = config.node_group_configs if config is not None else []
        shapes += [dict(group.resources) for group in groups if group.max_count != 0]
    except Exception:  # a cluster without an autoscaler, or another Ray version: live nodes only
        pass
    return [{"CPU": float(s.get("CPU", 0)), "GPU": float(s.get("GPU", 0))} for s in shapes]


def check_resources(experiment) -> None:
    """A ConfigError naming the experiment file and the numbers when no node can run a trial or job."""
    tune = experiment.config.tune
    shapes = node_shapes()
    if any(s["CPU"] >= tune.cpus_per_trial and s["GPU"] >= tune.gpus_per_trial for s in shapes):
        return
    offered = ", ".join(sorted({f"{s['CPU']:g} CPU / {s['GPU']:g} GPU" for s in shapes})) or "no nodes"
    keys = "tune.gpus_per_trial" if any(s["CPU"] >= tune.cpus_per_trial for s in shapes) else "tune.cpus_per_trial"
    raise ConfigError(
        f"{experiment.source}: {keys}: every trial and job asks for {tune.cpus_per_trial:g} CPU and "
        f"{tune.gpus_per_trial:g} GPU on one node, but the Ray cluster's nodes offer {offered}; "
        "lower the request or use a cluster that has such nodes"
    )


def quiet_libraries(verbose: bool) -> None:
    """Ray Tune's, Optuna's and MLflow's own progress chatter only with ``--verbose``; errors stay."""
    import optuna

    # Tune's newer console output prints a configuration box, a results folder and TensorBoard advice
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    level = logging.INFO if verbose else logging.ERROR
    # Tune's WARNING level is advice ("Processing trial results took ...", TensorBoard hints), not problems
    for name in ("ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)  # "Creating tables..."
    # a traceback per busy SQLite call, which the tracker waits out and reports in one line (``PatientClient``)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.INFO if verbose else logging.CRITICAL)

"""What a trial asks Ray for, the pre-flight against the Ray cluster, and the libraries' own output kept out of
scssl's progress lines.

A trial or job asks for ``tune.cpus_per_trial`` CPUs, ``tune.gpus_per_trial`` GPUs and ``trial_memory`` bytes of
memory on one node. Ray waits forever for a request no node can meet (it only warns every minute), so the study
checks it first against every node there is and every node type an autoscaling cluster can add.
"""

from __future__ import annotations

import logging
import os

from scssl.settings import ConfigError

GIB = 2**30
# A trial's worker on its own: Python, torch, numba and scssl loaded, a network's optimiser, mini-batches and
# per-epoch embedding of up to a few hundred thousand cells (benchmarks/scale.py measures it).
WORKER_BYTES = int(1.5 * GIB)


def trial_memory(tune_settings, datasets: list, method: type) -> int:
    """Bytes a trial or job of ``method`` asks Ray for, reading the prepared ``datasets`` (a data set, and the one
    it pretrains on): ``tune.memory_per_trial_gb`` where set; else a worker's own, and for a method that reads whole
    matrices (not ``gathers_rows``) three copies of the matrices it reads (its cells cut, and what it builds from
    them). The data sets themselves are held once per node, in the object store, apart from this."""
    if tune_settings.memory_per_trial_gb is not None:
        return int(tune_settings.memory_per_trial_gb * GIB)
    if method.gathers_rows:
        return WORKER_BYTES
    return WORKER_BYTES + 3 * sum(dataset.nbytes(method.inputs) for dataset in datasets)


def node_shapes() -> list[dict[str, float]]:
    """CPU, GPU and memory (bytes) of each live node and of each node type the autoscaler may start."""
    import ray

    shapes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    try:  # Ray keeps an autoscaling cluster's node types in its GCS (what Ray Data reads too)
        from ray._private.state import state

        config = state.get_cluster_config()
        groups = config.node_group_configs if config is not None else []
        shapes += [dict(group.resources) for group in groups if group.max_count != 0]
    except Exception:  # a cluster without an autoscaler, or another Ray version: live nodes only
        pass
    return [{"CPU": float(s.get("CPU", 0)), "GPU": float(s.get("GPU", 0)), "memory": float(s.get("memory", 0))}
            for s in shapes]


def workers_that_fit(shapes: list[dict[str, float]], tune, memory: int) -> int:
    """How many workers of a trial (each asking for ``tune.cpus_per_trial`` CPUs, ``tune.gpus_per_trial`` GPUs and
    ``memory`` bytes) the nodes of ``shapes`` hold at once."""
    asked = {"CPU": tune.cpus_per_trial, "GPU": tune.gpus_per_trial, "memory": memory}
    return sum(int(min(s[kind] // value for kind, value in asked.items() if value > 0)) for s in shapes)


def concurrent_trials(tune, memory: int) -> int | None:
    """The most trials Tune may run at once (None: as many as their own requests allow): ``tune.max_concurrent_trials``,
    and with several ``workers_per_trial`` no more trials than the cluster holds worker groups. Tune does not see
    what a trial's TorchTrainer asks for, and trainers that each hold some of their workers would wait forever."""
    limit = tune.max_concurrent_trials or None
    if tune.workers_per_trial == 1:
        return limit
    groups = max(1, workers_that_fit(node_shapes(), tune, memory) // tune.workers_per_trial)
    return groups if limit is None else min(limit, groups)


def check_resources(experiment, memory: int = 0) -> None:
    """A ConfigError naming the experiment file and the numbers when no node can run a trial or job asking for
    ``memory`` bytes (the most any trial or job of the study asks for)."""
    tune = experiment.config.tune
    shapes = node_shapes()
    asked = {"CPU": tune.cpus_per_trial, "GPU": tune.gpus_per_trial, "memory": memory}
    if any(all(s[kind] >= value for kind, value in asked.items()) for s in shapes):
        fits = workers_that_fit(shapes, tune, memory)
        if fits < tune.workers_per_trial:
            raise ConfigError(
                f"{experiment.source}: tune.workers_per_trial: a trial asks for {tune.workers_per_trial} workers of "
                f"{tune.cpus_per_trial:g} CPU, {tune.gpus_per_trial:g} GPU and {memory / GIB:.1f} GiB each, but the "
                f"Ray cluster holds {fits} such workers at once; lower the request or add nodes")
        return
    offered = ", ".join(sorted({f"{s['CPU']:g} CPU / {s['GPU']:g} GPU / {s['memory'] / GIB:.1f} GiB"
                                for s in shapes})) or "no nodes"
    settings = {"CPU": "tune.cpus_per_trial", "GPU": "tune.gpus_per_trial", "memory": "tune.memory_per_trial_gb"}
    unmet = [settings[kind] for kind in asked if not any(s[kind] >= asked[kind] for s in shapes)]
    key = unmet[0] if unmet else " with ".join(settings.values())  # each met by some node, not all by one
    raise ConfigError(
        f"{experiment.source}: {key}: a trial or job asks for {tune.cpus_per_trial:g} CPU, {tune.gpus_per_trial:g} "
        f"GPU and {memory / GIB:.1f} GiB of memory on one node, but the Ray cluster's nodes offer {offered}; "
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

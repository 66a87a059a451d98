"""The ``scssl`` command line."""

from __future__ import annotations

import argparse
import sys

from scssl.settings import ConfigError, as_dict


def _methods() -> None:
    from scssl.methods import METHODS

    for name, cls in METHODS.items():
        kind = "SSL method" if cls.trainable else "baseline, no training"
        print(f"{name} ({kind}): {cls.__doc__.strip().splitlines()[0] if cls.__doc__ else ''}")
        for key, value in as_dict(cls.Params()).items():
            print(f"    {key} = {value}")


def _datasets() -> None:
    from scssl.data import BUILTIN_DATASETS

    for name, ds in BUILTIN_DATASETS.items():
        print(f"{name}: {ds.description}\n    batch_key={ds.batch_key} labels_key={ds.labels_key} "
              f"counts_layer={ds.counts_layer} query_batches={list(ds.query_batches)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scssl", description="Benchmark and tune SSL for single-cell data.")
    commands = parser.add_subparsers(dest="command", required=True)
    stages = {
        "run": ("tune, retrain the best configurations, report", ("tune", "retrain", "report")),
        "tune": ("only the search: trials through Ray Tune, Optuna and ASHA", ("tune",)),
        "retrain": ("only the final stage: best configurations with several seeds", ("retrain",)),
        "report": ("only the report (tables, figures, HTML), from the study's MLflow runs alone", ("report",)),
    }
    for name, (help_text, _) in stages.items():
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("experiment", help="experiment YAML file, e.g. experiments/quickstart.yaml")
        sub.add_argument("--output-dir", help="study folder (default: the file's output_dir)")
        sub.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in the study folder)")
        if name != "report":
            sub.add_argument("--address", help="a running Ray cluster: host:port, or auto (default: start a local Ray)")
    commands.add_parser("methods", help="list the methods and their hyper-parameters with defaults")
    commands.add_parser("datasets", help="list the built-in data sets")
    check = commands.add_parser("check-cluster", help="validate a `ray up` cluster file offline")
    check.add_argument("cluster", help="cluster YAML file, e.g. cluster.yaml")
    args = parser.parse_args(argv)

    if args.command == "methods":
        _methods()
        return 0
    if args.command == "datasets":
        _datasets()
        return 0
    if args.command == "check-cluster":
        from scssl.tune.cluster import check_cluster_config

        try:
            prepared = check_cluster_config(args.cluster)
        except ConfigError as err:
            print(f"scssl: error: {err}", file=sys.stderr)
            return 2
        types = ", ".join(f"{name} {spec.get('resources', {})}" for name, spec in prepared["available_node_types"].items())
        print(f"{args.cluster}: valid Ray cluster config ({types})")
        return 0
    from scssl.experiment import load_experiment
    from scssl.study import run_study

    try:
        experiment = load_experiment(args.experiment, args.output_dir, args.tracking_uri)
        run_study(experiment, stages[args.command][1], getattr(args, "address", None))
    except ConfigError as err:
        print(f"scssl: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

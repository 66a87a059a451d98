"""The ``scssl`` command line.

Exit codes: 0 when every planned trial and job finished, 1 when some failed (each named with its
reason), 2 for an invalid experiment, data, store or cluster file, or a study folder another driver holds
(before any compute), 75 (EX_TEMPFAIL) when the MLflow store stopped answering for longer than
``tracking_wait``, 128 + the signal's number when SIGINT (130) or SIGTERM (143) stopped the study. Heavy
libraries are imported only by the commands that use them, so listing commands and configuration errors
answer within seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys

from scssl import __version__
from scssl.interrupt import stop_on_signals
from scssl.settings import ConfigError, as_dict

EXIT_FAILED, EXIT_INVALID, EXIT_TRACKING = 1, 2, 75


def _methods() -> None:
    from scssl.methods import METHODS

    for name, cls in METHODS.items():
        kind = cls.kind
        if cls.modality is not None:
            kind += ", multimodal data only" if cls.modality == "any" else f", RNA + {cls.modality} data only"
        print(f"{name} ({kind}): {cls.__doc__.strip().splitlines()[0] if cls.__doc__ else ''}")
        for key, value in as_dict(cls.Params()).items():
            print(f"    {key} = {value}")


def _datasets() -> None:
    from scssl.data.builtin import BUILTIN_DATASETS
    from scssl.data.paper import PAPER_DATASETS
    from scssl.data.spec import DEFAULT_N_HVGS

    def keys(ds) -> str:
        return (f"    batch_key={ds.batch_key} labels_key={ds.labels_key} counts_layer={ds.counts_layer} "
                f"query_batches={list(ds.query_batches)}")

    print("Built-in (shipped with scssl; give `name` alone):")
    for name, ds in BUILTIN_DATASETS.items():
        print(f"{name} ({ds.modalities}): {ds.description}\n{keys(ds)}")
    print("\nThe paper's (scSSL-Bench), read from your copy of its file: give `name` and `path`:")
    for name, ds in PAPER_DATASETS.items():
        print(f"{name} ({ds.title}, {ds.modalities}; give {ds.files}): {ds.description}\n{keys(ds)} "
              f"n_hvgs={DEFAULT_N_HVGS}")


def _check_cluster(path: str) -> None:
    from scssl.tune.cluster import check_cluster_config

    prepared = check_cluster_config(path)
    types = ", ".join(f"{name} {spec.get('resources', {})}" for name, spec in prepared["available_node_types"].items())
    print(f"{path}: valid Ray cluster config ({types})")


STAGE_COMMANDS = {  # command -> (help, the study's stages it runs)
    "run": ("tune, retrain the best configurations, report", ("tune", "retrain", "report")),
    "tune": ("only the search: trials through Ray Tune, Optuna and ASHA", ("tune",)),
    "retrain": ("only the final stage: best configurations with several seeds", ("retrain",)),
    "report": ("only the report (tables, figures, HTML), from the study's MLflow runs alone", ("report",)),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scssl", description="Benchmark and tune SSL for single-cell data.")
    parser.add_argument("--version", action="version", version=f"scssl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in STAGE_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("experiment", help="experiment YAML file, e.g. experiments/quickstart.yaml")
        sub.add_argument("--output-dir", help="study folder (default: the file's output_dir)")
        sub.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in the study folder)")
        sub.add_argument("-v", "--verbose", action="store_true",
                         help="also show Ray's and Optuna's own progress output")
        if name != "report":
            sub.add_argument("--address", help="a running Ray cluster: host:port, or auto (default: start a local Ray)")
    validate = commands.add_parser("validate", help="check an experiment and its data, print the plan; starts nothing")
    validate.add_argument("experiment", help="experiment YAML file")
    validate.add_argument("--output-dir", help="study folder (default: the file's output_dir)")
    commands.add_parser("methods", help="list the methods and their hyper-parameters with defaults")
    commands.add_parser("datasets", help="list the built-in data sets and the paper's (for your own copy)")
    check = commands.add_parser("check-cluster", help="validate a `ray up` cluster file offline")
    check.add_argument("cluster", help="cluster YAML file, e.g. cluster.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "methods":
            _methods()
        elif args.command == "datasets":
            _datasets()
        elif args.command == "check-cluster":
            _check_cluster(args.cluster)
        elif args.command == "validate":
            from scssl.experiment import load_experiment
            from scssl.study import validate_study

            validate_study(load_experiment(args.experiment, args.output_dir))
        else:
            return _run(args)
    except ConfigError as err:
        print(f"scssl: error: {err}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _run(args: argparse.Namespace) -> int:
    from scssl.experiment import load_experiment

    experiment = load_experiment(args.experiment, args.output_dir, args.tracking_uri)
    from scssl.study import run_study
    from scssl.tune.tracking import TrackingUnavailable

    again = f"`scssl {args.command} {args.experiment}`"
    with stop_on_signals() as received:
        try:
            failures = run_study(experiment, STAGE_COMMANDS[args.command][1], getattr(args, "address", None), args.verbose)
        except KeyboardInterrupt:
            name = received[0] if received else "SIGINT"
            print(f"\n[scssl] stopped by {name}: unfinished trials and jobs are closed in MLflow as KILLED. "
                  f"Run {again} again to resume; finished work is kept.", file=sys.stderr, flush=True)
            return 128 + getattr(signal, name)
        except TrackingUnavailable as lost:
            print(f"\n[scssl] stopped: {lost}. Running trials and jobs were ended. Once it answers again (start "
                  f"the server, or end what holds the file), run {again} again: finished work is kept and only "
                  "what is missing runs.", file=sys.stderr, flush=True)
            return EXIT_TRACKING
    if failures:
        print(f"[scssl] {len(failures)} trial(s) or job(s) failed:", file=sys.stderr)
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())

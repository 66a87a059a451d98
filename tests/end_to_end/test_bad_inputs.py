"""Bad inputs as a user (or a hostile tester) writes them: each is a small file this test writes, each must
stop `scssl run` with exit code 2 and a message naming the file, the key and what was expected, before
the study folder exists (nothing computed, nothing started). Data that is usable after dropping some
cells or genes runs, and says how many it dropped."""

from __future__ import annotations

import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from scssl.cli import main
from scssl.data import make_synthetic

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    """A valid small data set; cases copy and break it."""
    return make_synthetic(n_cells=300, n_genes=120, n_batches=3, n_cell_types=3, seed=3)


def _experiment(folder: Path, data: Path, dataset: dict | None = None, **top) -> Path:
    spec = {"path": str(data), "batch_key": "batch", "labels_key": "cell_type", "counts_layer": "counts",
            "query_batches": ["batch2"], "n_hvgs": 100, **(dataset or {})}
    config = {"name": "bad", "output_dir": "out", "search_spaces": str(ROOT / "search_spaces"),
              "datasets": [spec], "methods": ["simclr"], "tasks": ["cell_typing"],
              "train": {"epochs": 1, "batch_size": 64}, "final": {"seeds": [0]}, **top}
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _fails(capsys, experiment: Path, *expected: str, command: str = "run") -> str:
    assert main([command, str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scssl: error: ") and "Traceback" not in err, err
    for text in expected:
        assert text in err, f"{text!r} not in:\n{err}"
    assert not (experiment.parent / "out").exists(), "the study folder was made before the error"
    return err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case id, changes to the experiment: top-level keys, or "dataset" for the data set's keys, texts expected)
CONFIG_CASES = [
    ("no datasets", {"datasets": None}, ["datasets"]),
    ("empty datasets", {"datasets": []}, ["datasets", "at least 1"]),
    ("empty methods", {"methods": []}, ["methods", "at least 1"]),
    ("empty tasks", {"tasks": []}, ["tasks", "at least 1"]),
    ("empty name", {"name": ""}, ["name: a name may hold only letters"]),
    ("name with a path", {"name": "../escape"}, ["name: a name may hold only", "'../escape'"]),
    ("name with a quote", {"name": "it's"}, ["name: a name may hold only"]),
    ("unknown top-level key", {"epochs": 3}, ["epochs", "Unexpected keyword argument"]),
    ("unknown method", {"methods": ["simclrr"]}, ["methods: unknown ['simclrr']"]),
    ("method twice", {"methods": ["simclr", "simclr"]}, ["each method may appear once"]),
    ("unknown task", {"tasks": ["clustering"]}, ["tasks.0", "clustering"]),
    ("zero epochs", {"train": {"epochs": 0}}, ["train.epochs", "greater than or equal to 1"]),
    ("text for a number", {"train": {"lr": "fast"}}, ["train.lr", "'fast'"]),
    ("not a device", {"train": {"device": "tpu0"}}, ["train.device: 'tpu0' is not a device"]),
    ("cuda without a GPU per trial", {"train": {"device": "cuda"}},
     ["train.device: 'cuda' needs tune.gpus_per_trial > 0"]),
    ("cuda:1 with one GPU per trial", {"train": {"device": "cuda:1"}, "tune": {"gpus_per_trial": 1}},
     ["train.device: 'cuda:1': a trial sees only the 1 GPU"]),
    ("no seeds", {"final": {"seeds": []}}, ["final.seeds", "expected at least one seed"]),
    ("seeds of an unknown task", {"final": {"seeds": {"clustering": [0]}}}, ["final.seeds", "clustering"]),
    ("unknown search", {"tune": {"search": "bayes"}}, ["tune.search", "'bayes'"]),
    ("validation fraction above 1", {"tune": {"validation_fraction": 1.5}}, ["tune.validation_fraction"]),
    ("negative CPUs", {"tune": {"cpus_per_trial": -1}}, ["tune.cpus_per_trial"]),
    ("unknown search-space key", {"search_space": {"method": {"temprature": {"choice": [0.5]}}}},
     ["search_space [simclr]", "method.temprature", "not a parameter"]),
    ("search-space bound out of range", {"search_space": {"augment": {"masking": {"rate": {"uniform": [0.1, 1.5]}}}}},
     ["augment.masking.rate = 1.5"]),
    ("missing search-space file", {"search_spaces": "nowhere"}, ["search_spaces: no search space", "simclr"]),
    ("grid search over a range", {"tune": {"search": "grid"},
                                  "search_space": {"method": {"temperature": {"uniform": [0.1, 1.0]}}}},
     ["grid search needs `choice` values"]),
    ("numeric batch name", {"dataset": {"query_batches": [1244]}},
     ["datasets.0.query_batches.0", "quote it, '1244'"]),
    ("data set id with a path", {"dataset": {"id": "../../x"}}, ["datasets.0.id", "may hold only letters"]),
    ("data set id with a quote", {"dataset": {"id": "a'b"}}, ["datasets.0.id", "may hold only letters"]),
    ("name and path", {"dataset": {"name": "bmmc_cite_starter"}}, ["give exactly one of `name`"]),
    ("unknown built-in", {"datasets": [{"name": "pbmc3k"}]}, ["datasets.0.name", "'pbmc3k' is not a built-in"]),
    ("path without keys", {"dataset": {"batch_key": None}}, ["needs `batch_key` and `labels_key`"]),
    ("cell typing without query batches", {"dataset": {"query_batches": None}}, ["datasets.0.query_batches"]),
    ("two data sets with one id", {"datasets": "twice"}, ["distinct `id`"]),
    ("n_hvgs of 1", {"dataset": {"n_hvgs": 1}}, ["datasets.0.n_hvgs"]),
]


@pytest.mark.parametrize(("case", "changes", "expected"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_experiment_is_exit_2_with_the_key(tmp_path, capsys, synthetic_h5ad, case, changes, expected):
    changes = dict(changes)
    dataset, datasets = changes.pop("dataset", None), changes.pop("datasets", "as written")
    experiment = _experiment(tmp_path, synthetic_h5ad, dataset, **changes)
    if datasets != "as written":
        config = yaml.safe_load(experiment.read_text())
        if datasets is None:
            del config["datasets"]
        else:
            config["datasets"] = [config["datasets"][0]] * 2 if datasets == "twice" else datasets
        experiment.write_text(yaml.safe_dump(config))
    _fails(capsys, experiment, str(experiment), *expected)


def test_a_missing_or_malformed_experiment_file(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert main(["run", str(missing)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    assert main(["run", str(broken)]) == 2
    assert f"{broken}: not valid YAML" in capsys.readouterr().err
    listing = tmp_path / "list.yaml"
    listing.write_text("- name: x\n")
    assert main(["run", str(listing)]) == 2
    assert "expected a mapping of keys at the top level" in capsys.readouterr().err


def test_an_output_dir_under_a_regular_file(tmp_path, capsys, synthetic_h5ad):
    (tmp_path / "afile").write_text("x")
    experiment = _experiment(tmp_path, synthetic_h5ad, output_dir="afile/study")
    assert main(["run", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "output_dir" in err and "is a file, not a folder" in err and str(tmp_path / "afile") in err


def test_a_tracking_server_that_is_down_is_named_at_once(tmp_path, capsys, synthetic_h5ad):
    uri = f"http://127.0.0.1:{_free_port()}"
    experiment = _experiment(tmp_path, synthetic_h5ad, tracking_uri=uri)
    _fails(capsys, experiment, f"tracking URI {uri}: no MLflow server answers there")


def test_validate_checks_without_starting_anything(tmp_path, capsys, synthetic_h5ad):
    experiment = _experiment(tmp_path, synthetic_h5ad, methods=["pca", "simclr"],
                             tasks=["batch_correction", "cell_typing"],
                             tune={"num_samples": 4}, final={"seeds": {"cell_typing": [0, 1, 2], "batch_correction": [0]}})
    assert main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert f"{experiment}: valid" in out
    assert "simclr: 4 trials (tpe + ASHA, up to 1 epochs each); retrain 1 configuration(s) x 4 task-seed(s)" in out
    assert "pca: no tuning (a baseline)" in out
    assert "4 tuning trial(s), 8 retrain job(s)" in out
    assert not (tmp_path / "out").exists()
    broken = _experiment(tmp_path, synthetic_h5ad, train={"device": "tpu0"})
    _fails(capsys, broken, "train.device", command="validate")


# ---------------------------------------------------------------------------------------------------------
# Data files


def _write(adata, folder: Path, name: str = "cells.h5ad") -> Path:
    path = folder / name
    adata.write_h5ad(path)
    return path


def _data_case(tmp_path, capsys, data: Path, key: str, *expected: str, **dataset) -> str:
    experiment = _experiment(tmp_path, data, dataset)
    return _fails(capsys, experiment, str(experiment), f"datasets.0.{key}", str(data), *expected)


def test_a_text_file_named_h5ad(tmp_path, capsys):
    data = tmp_path / "notes.h5ad"
    data.write_text("cell,gene\n")
    _data_case(tmp_path, capsys, data, "path", "not a readable .h5ad")


def test_a_truncated_h5ad(tmp_path, capsys, cells):
    data = _write(cells, tmp_path)
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    _data_case(tmp_path, capsys, data, "path", "not a readable .h5ad")


def test_an_hdf5_file_that_is_not_anndata(tmp_path, capsys):
    data = tmp_path / "other.h5ad"
    with h5py.File(data, "w") as f:
        f["numbers"] = np.arange(3)
    _data_case(tmp_path, capsys, data, "path", "not a readable .h5ad")


def test_a_csv_file(tmp_path, capsys):
    data = tmp_path / "cells.csv"
    data.write_text("a,b\n")
    _data_case(tmp_path, capsys, data, "path", ".h5ad")


def test_a_missing_data_file(tmp_path, capsys):
    _data_case(tmp_path, capsys, tmp_path / "gone.h5ad", "path", "not found")


def test_duplicate_gene_names(tmp_path, capsys, cells):
    adata = cells.copy()
    adata.var_names = ["g0"] * 2 + list(adata.var_names[2:])
    _data_case(tmp_path, capsys, _write(adata, tmp_path), "path", "duplicate", "g0", "var_names_make_unique")


def test_duplicate_cell_names(tmp_path, capsys, cells):
    adata = cells.copy()
    adata.obs_names = ["c0"] * 3 + list(adata.obs_names[3:])
    _data_case(tmp_path, capsys, _write(adata, tmp_path), "path", "duplicate", "c0", "obs_names_make_unique")


def test_missing_labels_are_an_error(tmp_path, capsys, cells):
    adata = cells.copy()
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[:4] = np.nan
    labels.iloc[4:6] = ""
    adata.obs["cell_type"] = labels
    _data_case(tmp_path, capsys, _write(adata, tmp_path), "labels_key", "6 of 300 cells have no cell type", "drop_missing: true")


def test_missing_batches_are_an_error(tmp_path, capsys, cells):
    adata = cells.copy()
    batches = adata.obs["batch"].astype(object)
    batches.iloc[:2] = "  "
    adata.obs["batch"] = batches
    _data_case(tmp_path, capsys, _write(adata, tmp_path), "batch_key", "2 of 300 cells have no batch")


def test_non_integer_counts_after_the_first_ten_thousand_values(tmp_path, capsys, cells):
    adata = cells.copy()
    counts = adata.layers["counts"].tocsr()
    assert counts.nnz > 10_001
    counts.data[-1] += 0.5
    adata.layers["counts"] = counts
    _data_case(tmp_path, capsys, _write(adata, tmp_path), "counts_layer", "integer")


def test_negative_counts(tmp_path, capsys, cells):
    adata = cells.copy()
    counts = adata.layers["counts"].tocsr()
    counts.data[5] = -1
    adata.layers["counts"] = counts
    _data_case(tmp_path, capsys, _write(adata, tmp_path), "counts_layer", "negative")


@pytest.mark.parametrize(("dataset", "key", "expected"), [
    ({"batch_key": "donor"}, "batch_key", "'donor' is not a column of obs"),
    ({"labels_key": "celltype"}, "labels_key", "'celltype' is not a column of obs"),
    ({"counts_layer": "raw"}, "counts_layer", "'raw' is not a layer"),
    ({"query_batches": ["batch9"]}, "query_batches", "['batch9'] are not values"),
    ({"query_batches": ["batch0", "batch1", "batch2"]}, "query_batches", "leave no reference cells"),
], ids=["batch key", "labels key", "counts layer", "query batch", "every batch a query"])
def test_keys_that_do_not_fit_the_file(tmp_path, capsys, cells, dataset, key, expected):
    _data_case(tmp_path, capsys, _write(cells, tmp_path), key, expected, **dataset)


def test_too_few_cells_for_the_task(tmp_path, capsys, cells):
    tiny = cells[:5].copy()
    tiny.obs["batch"] = ["batch0", "batch0", "batch1", "batch1", "batch2"]
    _data_case(tmp_path, capsys, _write(tiny, tmp_path), "query_batches", "needs at least 50 reference cells")


def test_one_batch_cannot_be_batch_corrected(tmp_path, capsys, cells):
    one = cells.copy()
    one.obs["batch"] = "batch0"
    experiment = _experiment(tmp_path, _write(one, tmp_path), {"query_batches": None}, tasks=["batch_correction"])
    _fails(capsys, experiment, "datasets.0.batch_key", "batch_correction needs at least 2 batches")


def test_cells_and_genes_without_counts_and_unlabelled_cells_are_dropped_with_a_count(tmp_path, capsys, cells):
    adata = cells.copy()
    counts = adata.layers["counts"].toarray()
    counts[:3] = 0  # three cells without a count
    counts[:, :2] = 0  # two genes without a count
    adata.layers["counts"] = type(adata.layers["counts"])(counts)
    labels = adata.obs["cell_type"].astype(object)
    labels.iloc[10:14] = np.nan
    adata.obs["cell_type"] = labels
    experiment = _experiment(tmp_path, _write(adata, tmp_path), {"drop_missing": True, "id": "holes"})
    assert main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "[data] holes: 293 cells" in out
    assert "[data] holes: dropped 4 cells whose cell type (obs['cell_type']) is missing (NaN or empty)" in out
    assert "[data] holes: dropped 3 cells with no counts" in out
    assert "[data] holes: dropped 2 genes with no counts in any cell" in out


def test_a_request_no_node_can_meet_is_exit_2_with_the_numbers(tmp_path, monkeypatch, synthetic_h5ad):
    from scssl.experiment import load_experiment
    from scssl.settings import ConfigError
    from scssl.tune import resources

    gib = 2.0**30
    shapes = [{"CPU": 2.0, "GPU": 0.0, "memory": 8 * gib}, {"CPU": 8.0, "GPU": 1.0, "memory": 30 * gib}]  # a live
    monkeypatch.setattr(resources, "node_shapes", lambda: shapes)  # node and an autoscaler node type
    offered = "2 CPU / 0 GPU / 8.0 GiB, 8 CPU / 1 GPU / 30.0 GiB"
    for tune, key in (({"cpus_per_trial": 16}, "tune.cpus_per_trial"), ({"gpus_per_trial": 2}, "tune.gpus_per_trial"),
                      ({"memory_per_trial_gb": 40}, "tune.memory_per_trial_gb")):
        experiment = load_experiment(_experiment(tmp_path, synthetic_h5ad, tune=tune))
        with pytest.raises(ConfigError) as err:
            resources.check_resources(experiment, int((tune.get("memory_per_trial_gb") or 1) * gib))
        assert str(experiment.source) in str(err.value) and key in str(err.value) and offered in str(err.value)
    for fits in ({"cpus_per_trial": 8, "gpus_per_trial": 1}, {"cpus_per_trial": 0.5, "gpus_per_trial": 0.25}):
        resources.check_resources(load_experiment(_experiment(tmp_path, synthetic_h5ad, tune=fits)), int(20 * gib))
    # workers of one trial: 2 CPU each fit once on the first node and 4 times on the second, 5 in all
    many = {"cpus_per_trial": 2, "workers_per_trial": 6}
    with pytest.raises(ConfigError, match="tune.workers_per_trial: a trial asks for 6 workers .* holds 5 such"):
        resources.check_resources(load_experiment(_experiment(tmp_path, synthetic_h5ad, tune=many)), int(gib))
    tune = load_experiment(_experiment(tmp_path, synthetic_h5ad, tune={**many, "workers_per_trial": 2})).config.tune
    resources.check_resources(load_experiment(_experiment(tmp_path, synthetic_h5ad, tune={**many, "workers_per_trial": 5})),
                              int(gib))
    assert resources.concurrent_trials(tune, int(gib)) == 2  # two groups of two workers at once, not five trials


@pytest.mark.slow
@pytest.mark.parametrize(("tune", "key"), [({"cpus_per_trial": 64}, "tune.cpus_per_trial"),
                                           ({"gpus_per_trial": 1}, "tune.gpus_per_trial")])
def test_an_impossible_request_on_the_local_ray_stops_before_any_trial(tmp_path, capsys, synthetic_h5ad, tune, key):
    import torch

    if key == "tune.gpus_per_trial" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    experiment = _experiment(tmp_path, synthetic_h5ad, tune=tune)
    assert main(["run", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert f"{experiment}: {key}: a trial or job asks for" in err and "the Ray cluster's nodes offer" in err
    assert not (tmp_path / "out").exists()

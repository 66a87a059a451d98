from pathlib import Path

import pytest
import yaml

from scssl.experiment import load_experiment
from scssl.methods import METHODS
from scssl.settings import ConfigError
from scssl.search_space import Domain, config_key, load_search_space, trial_settings
from scssl.tune.domains import param_space as tune_param_space

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _experiment(tmp_path, **overrides) -> Path:
    data = {"name": "t", "datasets": [{"name": "bmmc_cite_starter"}], "methods": ["pca", "simclr"],
            "search_spaces": str(ROOT / "search_spaces"), **overrides}
    return _write(tmp_path / "exp.yaml", data)


def test_quickstart_loads():
    exp = load_experiment(ROOT / "experiments" / "quickstart.yaml")
    assert exp.config.methods == ["pca", "simclr", "vicreg"]
    assert exp.datasets[0].query_batches == ["s1d2"]
    assert exp.study_dir == ROOT / "studies" / "quickstart"
    assert exp.tracking_uri == f"sqlite:///{ROOT / 'studies' / 'quickstart' / 'mlflow.db'}"
    assert set(exp.search_spaces) == {"simclr", "vicreg"}


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.trainable])
def test_every_method_has_a_valid_search_space(name):
    space = load_search_space(ROOT / "search_spaces" / f"{name}.yaml", METHODS[name])
    assert space.entries, "an empty search space tunes nothing"
    assert any(path[0] == "method" for path in space.entries)


def test_unknown_key_names_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_experiment(_experiment(tmp_path, train={"epochz": 3}))
    assert str(tmp_path / "exp.yaml") in str(err.value) and "train.epochz" in str(err.value)


def test_unknown_method_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown \\['simclrr'\\]"):
        load_experiment(_experiment(tmp_path, methods=["simclrr"]))


def test_cell_typing_needs_query_batches(tmp_path):
    data = tmp_path / "d.h5ad"
    with pytest.raises(ConfigError, match="datasets.0.query_batches"):
        load_experiment(_experiment(tmp_path, datasets=[{"path": str(data), "batch_key": "b", "labels_key": "l"}]))


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    exp = load_experiment(_experiment(tmp_path, train={"lr": "1e-3"}))
    assert exp.config.train.lr == 1e-3


def test_overrides_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    exp = load_experiment(_experiment(tmp_path), output_dir=str(tmp_path / "out"))
    assert exp.study_dir == tmp_path / "out" and exp.tracking_uri == "http://127.0.0.1:5000"
    assert load_experiment(_experiment(tmp_path), tracking_uri="sqlite:///x.db").tracking_uri == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"method": {"temprature": {"uniform": [0.1, 1.0]}}}, "method.temprature: 'temprature' is not a parameter of SimCLRParams"),
        ({"augment": {"masking": {"ratio": 0.5}}}, "augment.masking.ratio"),
        ({"optimizer": {"lr": 0.1}}, "unknown section 'optimizer'"),
        ({"method": {"temperature": {"uniform": [1.0, 0.1]}}}, "needs low < high"),
        ({"method": {"temperature": {"normal": [1.0, 0.1]}}}, "expected one of"),
        ({"augment": {"masking": {"rate": {"uniform": [0.5, 1.5]}}}}, "augment.masking.rate = 1.5"),
        ({"method": {"embedding_dim": {"choice": [1, 64]}}}, "method.embedding_dim = 1"),
    ],
)
def test_bad_search_space_names_file_and_key(tmp_path, body, message):
    path = _write(tmp_path / "simclr.yaml", body)
    with pytest.raises(ConfigError) as err:
        load_search_space(path, METHODS["simclr"])
    assert str(path) in str(err.value) and message in str(err.value)


def test_param_space_and_trial_settings(tmp_path):
    path = _write(tmp_path / "simclr.yaml", {
        "method": {"temperature": {"loguniform": [0.1, 10.0]}, "projector_layers": {"int": [1, 3]}},
        "train": {"lr": 0.001},
        "augment": {"masking": {"rate": {"choice": [0.1, 0.5]}}},
    })
    space = load_search_space(path, METHODS["simclr"])
    assert space.entries[("method", "projector_layers")] == Domain("int", (1, 3))
    param_space = tune_param_space(space)
    assert param_space["train"]["lr"] == 0.001
    assert param_space["method"]["projector_layers"].upper == 4  # inclusive bound -> randint's exclusive one

    exp = load_experiment(_experiment(tmp_path))
    trial = trial_settings(METHODS["simclr"], exp.config.train, exp.config.augment,
                           {"method": {"temperature": 2.0}, "augment": {"masking": {"rate": 0.5}}})
    assert trial.params.temperature == 2.0 and trial.params.embedding_dim == 64
    assert trial.augment.masking.rate == 0.5 and trial.augment.masking.prob == exp.config.augment.masking.prob
    assert trial.train == exp.config.train


def test_augment_preset_in_experiment_and_neighbour_detection(tmp_path):
    exp = load_experiment(_experiment(tmp_path, augment={"preset": "our_pipeline", "masking": {"rate": 0.4}}))
    assert exp.config.augment.mnn.prob == 0.5 and exp.config.augment.masking.rate == 0.4
    assert exp.uses_neighbours
    assert not load_experiment(_experiment(tmp_path)).uses_neighbours
    space_dir = tmp_path / "spaces"
    space_dir.mkdir()
    _write(space_dir / "simclr.yaml", {"augment": {"mnn": {"prob": {"uniform": [0.0, 0.5]}}}})
    assert load_experiment(_experiment(tmp_path, search_spaces=str(space_dir))).uses_neighbours
    with pytest.raises(ConfigError, match="augment.preset"):
        load_experiment(_experiment(tmp_path, augment={"preset": "clear"}))


def test_grid_search_needs_choices_and_expands_them(tmp_path):
    space_dir = tmp_path / "spaces"
    space_dir.mkdir()
    _write(space_dir / "simclr.yaml", {"method": {"temperature": {"choice": [0.1, 0.5]},
                                                  "embedding_dim": {"choice": [16, 32, 64]}},
                                       "train": {"lr": 0.001}})
    exp = load_experiment(_experiment(tmp_path, search_spaces=str(space_dir), tune={"search": "grid"}))
    space = exp.search_spaces["simclr"]
    points = space.grid_points()
    assert len(points) == 6 and len({config_key(p) for p in points}) == 6
    assert points[0] == {"method": {"embedding_dim": 16, "temperature": 0.1}, "train": {"lr": 0.001}}
    assert space.label(points[-1]) == "embedding_dim=64, temperature=0.5"  # the file's key order
    assert space.optuna_point(points[-1]) == {"method/temperature": 0.5, "method/embedding_dim": 64}
    _write(space_dir / "simclr.yaml", {"method": {"temperature": {"loguniform": [0.1, 1.0]}}})
    with pytest.raises(ConfigError, match="method.temperature: grid search needs `choice` values"):
        load_experiment(_experiment(tmp_path, search_spaces=str(space_dir), tune={"search": "grid"}))


def test_inline_search_space_with_a_choice_of_augment_blocks(tmp_path):
    blocks = [{"masking": {"prob": 0.5}}, {"masking": {"prob": 0.5}, "mnn": {"prob": 0.5}}]
    inline = {"augment": {"choice": blocks}, "method": {"embedding_dim": 32}}
    exp = load_experiment(_experiment(tmp_path, augment={"preset": "base"}, search_space=inline,
                                      final={"retrain": "grid"}))
    space = exp.search_spaces["simclr"]
    assert [space.label(p) for p in space.grid_points()] == ["masking.prob=0.5", "masking.prob=0.5, mnn.prob=0.5"]
    assert exp.uses_neighbours  # the second block switches MNN on
    trial = trial_settings(METHODS["simclr"], exp.config.train, exp.config.augment, space.grid_points()[1])
    assert trial.augment.mnn.prob == 0.5 and trial.augment.gaussian_noise.prob == 0.0 and trial.params.embedding_dim == 32
    with pytest.raises(ConfigError, match="a choice among whole blocks needs tune.search: grid"):
        load_experiment(_experiment(tmp_path, search_space=inline))
    with pytest.raises(ConfigError, match=r"search_space \[simclr\]: augment"):
        load_experiment(_experiment(tmp_path, search_space={"augment": {"choice": [{"maskin": {"prob": 0.5}}]}},
                                    final={"retrain": "grid"}))


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_experiment_loads(path):
    exp = load_experiment(path)
    assert exp.datasets and exp.config.methods
    if exp.config.final.retrain == "grid":
        assert all(len(space.grid_points()) > 1 for space in exp.search_spaces.values())


def test_the_study_folders_copy_has_every_file_path_absolute(tmp_path):
    from scssl.data.builtin import BUILTIN_DIR

    rna, adt = BUILTIN_DIR / "neurips2021_bmmc_cite_starter_rna.h5ad", BUILTIN_DIR / "neurips2021_bmmc_cite_starter_adt.h5ad"
    data = tmp_path / "data"
    data.mkdir()
    for source in (rna, adt):
        (data / source.name).write_bytes(source.read_bytes())
    exp = load_experiment(_experiment(tmp_path, datasets=[{
        "path": f"data/{rna.name}", "batch_key": "batch", "labels_key": "cell_type", "counts_layer": "counts",
        "query_batches": ["s1d2"], "modality": {"kind": "protein", "path": f"data/{adt.name}", "counts_layer": "counts"}}]))
    entry = exp.relocated()["datasets"][0]
    assert entry["path"] == str(data.resolve() / rna.name)
    assert entry["modality"]["path"] == str(data.resolve() / adt.name)


def test_a_method_that_cannot_run_here_is_a_load_error_saying_what_it_needs(tmp_path):
    with pytest.raises(ConfigError, match=r"methods: geneformer needs the `geneformer` package .* not on PyPI"):
        load_experiment(_experiment(tmp_path, methods=["pca", "geneformer"]))


def test_an_untuned_method_takes_fixed_values_from_its_file_and_nothing_to_tune(tmp_path):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "ckpt").mkdir()
    _write(spaces / "scgpt_zero_shot.yaml", {"method": {"checkpoint": "ckpt", "max_length": 64}})
    exp = load_experiment(_experiment(tmp_path, methods=["pca", "scgpt_zero_shot"], search_spaces=str(spaces)))
    assert exp.search_spaces["scgpt_zero_shot"].fixed() == {"method": {"checkpoint": str(spaces / "ckpt"),
                                                                       "max_length": 64}}
    _write(spaces / "scgpt_zero_shot.yaml", {"method": {"checkpoint": "ckpt", "max_length": {"choice": [64, 128]}}})
    with pytest.raises(ConfigError, match="is not tuned, so its file may only fix values"):
        load_experiment(_experiment(tmp_path, methods=["pca", "scgpt_zero_shot"], search_spaces=str(spaces)))

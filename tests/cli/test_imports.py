"""Which libraries an import loads: listing commands and experiment-file checks must not pay for the heavy ones."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("ray", "torch", "sklearn", "numba", "scanpy", "anndata", "mlflow", "scib_metrics")
PACKAGES = ("scssl.data", "scssl.augment", "scssl.methods", "scssl.train", "scssl.evaluate", "scssl.report")


def heavy_after(code: str) -> list[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    report = f"import json, sys; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", f"{code}; {report}"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def test_checking_an_experiment_loads_no_heavy_library():
    assert heavy_after("import scssl.experiment, scssl.methods, scssl.data, scssl.train, scssl.augment") == []


def test_loading_an_experiment_loads_neither_ray_nor_mlflow():
    """The search spaces and stage settings sit below ``tune``: no tune <-> experiment import cycle."""
    path = Path(__file__).resolve().parents[2] / "experiments" / "richter_masking.yaml"
    code = f"from scssl.experiment import load_experiment; load_experiment({str(path)!r})"
    assert heavy_after(code) == ["torch"]  # the method classes, to check the search spaces against


def test_listing_the_methods_loads_torch_alone():
    code = "from scssl.methods import METHODS; [METHODS[name].Params() for name in METHODS]"
    assert heavy_after(code) == ["torch"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


def test_prepare_is_the_function_not_its_module():
    code = "from scssl.data import PreparedDataset, prepare; assert callable(prepare), prepare"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_registry_names_each_method_by_its_own_name():
    from scssl.methods import METHODS, get_method

    assert [METHODS[name].name for name in METHODS] == list(METHODS)
    assert "nosuch" not in METHODS
    with pytest.raises(KeyError, match="unknown method 'nosuch'"):
        get_method("nosuch")

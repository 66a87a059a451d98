"""Every built-in data set loads by name with its keys, labels and query batch."""

from scssl.data import BUILTIN_DATASETS, DatasetSpec, prepare, resolve


def test_pbmc_hao2021_loads_by_name(tmp_path):
    data = prepare(resolve(DatasetSpec(name="pbmc_hao2021"), tmp_path))
    assert data.X.shape == (1200, 500)
    assert data.obs["label"].nunique() == 8
    assert data.obs["batch"].value_counts().to_dict() == {"p1_0": 400, "p3_0": 400, "p4_0": 400}
    assert set(data.obs.loc[data.obs["split"] == "query", "batch"]) == {"p4_0"}
    assert len(data.reference_index) == 800
    assert BUILTIN_DATASETS["pbmc_hao2021"].path.stat().st_size < 5_000_000

"""The paper's nine data sets as named protocols for a user's own file (scssl.data.paper).

Each test writes small files laid out as the paper's (its obs keys, its batch names, raw counts where the paper
keeps them): such a file resolves to the paper's keys and query batches and prepares with 4000 HVGs; a file laid
out otherwise, or a paper name without its file(s), is an error naming the file, the data set and the key, and
stops `scssl run` with exit code 2 before any data set is prepared; keys given beside the name win.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import h5py
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from scssl.cli import main
from scssl.data import DatasetSpec, make_synthetic, prepare, resolve
from scssl.data.paper import PAPER_DATASETS, PaperDataset
from scssl.data.spec import DEFAULT_N_HVGS, DataError, ModalitySpec
from scssl.settings import ConfigError, parse

ROOT = Path(__file__).resolve().parents[2]
N_GENES = DEFAULT_N_HVGS + 100  # more genes than the paper's HVG count, so that the selection shows
N_PROTEINS = 12


def _batches(ds: PaperDataset) -> list[str]:
    """The paper's query batches and two reference batches (the paper names no others for most sets)."""
    return [*ds.query_batches, "ref_a", "ref_b"]


def _write(folder: Path, ds: PaperDataset, batches: list[str] | None = None, batch_key: str | None = None,
           labels_key: str | None = None, counts_layer: str | None = "paper") -> tuple[Path, Path | None]:
    """``ds``'s file(s) in ``folder``, laid out as the paper's unless told otherwise: obs ``batch_key`` holding
    ``batches``, ``labels_key``, raw counts in ``counts_layer`` (``"paper"``: where ``ds`` says; None: in X);
    for a CITE-seq set also the proteins' file (raw counts in X, the same cell names)."""
    batches = _batches(ds) if batches is None else batches
    cells = make_synthetic(n_cells=60 * len(batches), n_genes=N_GENES, n_batches=len(batches), n_cell_types=3,
                           n_proteins=N_PROTEINS if ds.protein_file else 0, mean_library_size=4000, seed=2)
    codes = cells.obs["batch"].cat.codes.to_numpy()
    layer = ds.counts_layer if counts_layer == "paper" else counts_layer
    rna = ad.AnnData(X=cells.X if layer is None else sp.csr_matrix(cells.shape, dtype="float32"),
                     obs=pd.DataFrame({batch_key or ds.batch_key: pd.Categorical([batches[c] for c in codes]),
                                       labels_key or ds.labels_key: cells.obs["cell_type"].to_numpy()},
                                      index=cells.obs_names),
                     var=cells.var)
    if layer is not None:
        rna.layers[layer] = cells.layers["counts"]
    folder.mkdir(parents=True, exist_ok=True)
    rna.write_h5ad(folder / ds.file)
    if ds.protein_file is None:
        return folder / ds.file, None
    proteins = cells.obsm["protein_expression"]
    ad.AnnData(X=sp.csr_matrix(proteins.to_numpy(dtype="float32")), obs=pd.DataFrame(index=proteins.index),
               var=pd.DataFrame(index=proteins.columns)).write_h5ad(folder / ds.protein_file)
    return folder / ds.file, folder / ds.protein_file


def _spec(name: str, **keys) -> DatasetSpec:
    """``name`` with the paper's file names under data/ (relative: resolve makes them absolute), and ``keys``."""
    ds = PAPER_DATASETS[name]
    modality = ModalitySpec(path=f"data/{ds.protein_file}") if ds.protein_file else None
    return DatasetSpec(name=name, path=f"data/{ds.file}", modality=modality, **keys)


def test_the_nine_data_sets_of_the_paper():
    assert [ds.title for ds in PAPER_DATASETS.values()] == [
        "PBMC", "Pancreas", "Immune Cell Atlas", "MCA", "HIC", "Lung", "Tabula Sapiens", "PBMC-M", "BMMC"]
    assert [name for name, ds in PAPER_DATASETS.items() if ds.protein_file] == ["pbmc_m", "bmmc"]
    assert PAPER_DATASETS["pancreas"].query_batches == ("Mutaro_b2",)
    assert PAPER_DATASETS["immune_cell_atlas"].query_batches == ("10x 5' v2",)
    assert PAPER_DATASETS["pbmc_m"].query_batches == ("P3", "P5", "P8")
    assert PAPER_DATASETS["bmmc"].query_batches == ("s4d1", "s4d8", "s4d9")
    assert [name for name, ds in PAPER_DATASETS.items() if not ds.query_batches] == [
        "pbmc", "mca", "hic", "lung", "tabula_sapiens"]
    assert PAPER_DATASETS["tabula_sapiens"].batch_key == "_scvi_batch"
    assert PAPER_DATASETS["tabula_sapiens"].labels_key == "broad_cell_class"


@pytest.mark.parametrize("name", list(PAPER_DATASETS))
def test_a_file_laid_out_as_the_papers_resolves_and_prepares_by_its_protocol(tmp_path, name):
    ds = PAPER_DATASETS[name]
    rna, proteins = _write(tmp_path / "data", ds)
    spec = resolve(_spec(name), tmp_path)
    assert (spec.name, spec.id, spec.path) == (None, name, str(rna))
    assert (spec.batch_key, spec.labels_key, spec.counts_layer) == (ds.batch_key, ds.labels_key, ds.counts_layer)
    assert spec.query_batches == list(ds.query_batches) and spec.n_hvgs == DEFAULT_N_HVGS == 4000
    if proteins is None:
        assert spec.modality is None
    else:
        modality = spec.modality
        assert (modality.kind, modality.path, modality.normalisation) == ("protein", str(proteins), "clr")

    data = prepare(spec)
    assert data.X.shape == (60 * len(_batches(ds)), DEFAULT_N_HVGS)
    assert set(data.obs["batch"].iloc[data.query_index]) == set(ds.query_batches)
    assert set(data.obs["batch"].iloc[data.reference_index]) == {"ref_a", "ref_b"}
    assert data.batch_key == ds.batch_key and data.labels_key == ds.labels_key
    if proteins is not None:
        assert data.other.kind == "protein" and data.other.X.shape == (data.n_cells, N_PROTEINS)


# (case, the file's layout, the key at fault, texts the message must hold besides the file and the data set)
BAD_FILES = [
    ("no batch column", {"batch_key": "tech"}, "batch_key", ["obs has no column 'batchlb'", "'tech'"]),
    ("no label column", {"labels_key": "cell_type"}, "labels_key", ["obs has no column 'celltype'", "'cell_type'"]),
    ("no query batch", {"batches": ["Baron_b1", "Xin_b5"]}, "query_batches",
     ["['Mutaro_b2']", "obs['batchlb']", "['Baron_b1', 'Xin_b5']"]),
    ("counts in X", {"counts_layer": None}, "counts_layer", ["no layer 'counts'", "`X` if X holds them"]),
]


@pytest.mark.parametrize(("case", "layout", "key", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_file_laid_out_otherwise_is_an_error_naming_file_data_set_and_key(tmp_path, case, layout, key, expected):
    rna, _ = _write(tmp_path / "data", PAPER_DATASETS["pancreas"], **layout)
    with pytest.raises(DataError) as err:
        resolve(_spec("pancreas"), tmp_path)
    assert err.value.key == key
    for text in [str(rna), "Pancreas data set (`name: pancreas`)", f"set `{key}`", *expected]:
        assert text in str(err.value), f"{text!r} not in {err.value}"


def test_a_multimodal_file_without_the_papers_label_column(tmp_path):
    rna, _ = _write(tmp_path / "data", PAPER_DATASETS["bmmc"], labels_key="cell_type")
    with pytest.raises(DataError, match="obs has no column 'cell_type_l1'") as err:
        resolve(_spec("bmmc"), tmp_path)
    assert str(rna) in str(err.value) and "(`name: bmmc`)" in str(err.value) and "'cell_type'" in str(err.value)


def test_keys_given_beside_the_name_win(tmp_path):
    ds = PAPER_DATASETS["pancreas"]
    batches = ["Baron_b1", "Mutaro_b2", "Xin_b5"]
    rna, _ = _write(tmp_path / "data", ds, batches=batches, batch_key="tech", labels_key="cell_type", counts_layer=None)
    given = dict(batch_key="tech", labels_key="cell_type", counts_layer="X", query_batches=["Xin_b5"], n_hvgs=100,
                 id="pancreas_xin")
    spec = resolve(_spec("pancreas", **given), tmp_path)
    assert (spec.batch_key, spec.labels_key, spec.counts_layer, spec.query_batches, spec.n_hvgs, spec.label) == (
        "tech", "cell_type", None, ["Xin_b5"], 100, "pancreas_xin")
    data = prepare(spec)
    assert data.X.shape[1] == 100 and set(data.obs["batch"].iloc[data.query_index]) == {"Xin_b5"}
    # a query batch given beside the name is checked as the paper's are, and said to be the user's
    with pytest.raises(DataError, match=r"query batches \['Wang_b4'\] \(given for the paper's Pancreas"):
        resolve(_spec("pancreas", **{**given, "query_batches": ["Wang_b4"]}), tmp_path)


def test_query_batches_empty_means_batch_correction_alone(tmp_path):
    """A data set the paper ran for batch correction alone prepares with no query cells; a study that types
    cells on it must name query batches, and says so before anything runs."""
    _write(tmp_path / "data", PAPER_DATASETS["lung"], batches=["ref_a", "ref_b"])
    spec = resolve(_spec("lung"), tmp_path)
    assert spec.query_batches == [] and len(prepare(spec).query_index) == 0
    assert resolve(_spec("lung", query_batches=["ref_b"]), tmp_path).query_batches == ["ref_b"]


def test_a_numeric_batch_column_is_read_as_prepare_reads_it(tmp_path):
    """Tabula Sapiens' _scvi_batch holds integers: the query batches are checked against their text."""
    ds = PAPER_DATASETS["tabula_sapiens"]
    rna, _ = _write(tmp_path / "data", ds, batches=["0", "2", "3"])
    adata = ad.read_h5ad(rna)
    adata.obs[ds.batch_key] = adata.obs[ds.batch_key].astype(int)
    adata.write_h5ad(rna)
    with h5py.File(rna, "r") as f:
        assert f["obs"][ds.batch_key].attrs["encoding-type"] == "array"
    spec = resolve(_spec("tabula_sapiens", query_batches=["2"]), tmp_path)
    data = prepare(spec)
    assert set(data.obs["batch"].iloc[data.query_index]) == {"2"}
    assert set(data.obs["batch"].iloc[data.reference_index]) == {"0", "3"}
    with pytest.raises(DataError, match=r"query batches \['7'\] .* its values are \['0', '2', '3'\]"):
        resolve(_spec("tabula_sapiens", query_batches=["7"]), tmp_path)


def test_tabula_sapiens_drops_the_papers_rare_classes_and_counts_them(tmp_path):
    from scssl.data.paper import SAPIENS_RARE_CLASSES

    ds = PAPER_DATASETS["tabula_sapiens"]
    rna, _ = _write(tmp_path / "data", ds, batches=["0", "2"])
    adata = ad.read_h5ad(rna)
    labels = adata.obs[ds.labels_key].astype(str).to_numpy()
    labels[:7] = SAPIENS_RARE_CLASSES  # one cell of each rare class
    adata.obs[ds.labels_key] = labels
    adata.write_h5ad(rna)
    spec = resolve(_spec("tabula_sapiens"), tmp_path)
    assert spec.drop_labels == list(SAPIENS_RARE_CLASSES)
    data = prepare(spec)
    assert data.n_cells == adata.n_obs - 7 and not set(SAPIENS_RARE_CLASSES) & set(data.labels)
    assert any("dropped 7 cells of the cell types in drop_labels" in note for note in data.notes)
    assert prepare(resolve(_spec("tabula_sapiens", drop_labels=[]), tmp_path)).n_cells == adata.n_obs


def test_checking_a_paper_data_set_loads_no_heavy_library(tmp_path):
    """An experiment file is checked without anndata or scanpy (see test_imports): h5py reads the keys."""
    _write(tmp_path / "data", PAPER_DATASETS["pancreas"])
    code = ("import sys; from pathlib import Path; from scssl.data import DatasetSpec, resolve; "
            f"resolve(DatasetSpec(name='pancreas', path='data/Pancreas.h5ad'), Path({str(tmp_path)!r})); "
            "print(sorted(m for m in ('anndata', 'scanpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_multimodal_data_sets_need_their_proteins_file(tmp_path):
    for name in ("pbmc_m", "bmmc"):
        ds = PAPER_DATASETS[name]
        with pytest.raises(ConfigError) as err:
            resolve(DatasetSpec(name=name, path=ds.file), tmp_path)
        for text in (f"{name!r}", f"the paper's {ds.title} CITE-seq", "`modality: {path: ...}`", ds.protein_file):
            assert text in str(err.value), f"{text!r} not in {err.value}"
    # a kind given beside the name wins, as every key does; counts_layer too
    spec = resolve(DatasetSpec(name="bmmc", path="rna.h5ad", modality=ModalitySpec(
        kind="protein", path="adt.h5ad", counts_layer="counts", normalisation="log1p")), tmp_path)
    assert (spec.modality.path, spec.modality.counts_layer, spec.modality.normalisation) == (
        str(tmp_path / "adt.h5ad"), "counts", "log1p")


def test_names_paths_and_kinds_that_do_not_go_together(tmp_path):
    with pytest.raises(ConfigError, match=r"'pancreas' is the paper's Pancreas data set.*give `path` \(the paper's "
                                          r"Pancreas.h5ad\)"):
        resolve(DatasetSpec(name="pancreas"), tmp_path)
    with pytest.raises(ConfigError, match="'bmmc_cite_starter' is a built-in data set.*give exactly one of `name`"):
        resolve(DatasetSpec(name="bmmc_cite_starter", path="x.h5ad"), tmp_path)
    with pytest.raises(ConfigError, match=r"'pbmc3k' is not a built-in data set .* nor one of the paper's \(pbmc, "
                                          r"pancreas, .*bmmc, each with `path:`"):
        resolve(DatasetSpec(name="pbmc3k"), tmp_path)
    with pytest.raises(ConfigError, match="'lung' is RNA alone, so its `modality` needs `kind`"):
        resolve(DatasetSpec(name="lung", path="x.h5ad", modality=ModalitySpec(path="adt.h5ad")), tmp_path)
    with pytest.raises(ConfigError, match="(?s)exp.yaml: invalid configuration.*`modality` needs `kind`"):
        parse(DatasetSpec, {"path": "x.h5ad", "batch_key": "b", "labels_key": "l", "modality": {"path": "a.h5ad"}},
              "exp.yaml")
    # a file that is not there is left to `prepare` (a study's report needs no data), which names it
    spec = resolve(_spec("hic"), tmp_path)
    with pytest.raises(DataError, match="data file not found"):
        prepare(spec)


def _experiment(folder: Path, dataset: dict, tasks: list[str]) -> Path:
    path = folder / "paper.yaml"
    path.write_text(yaml.safe_dump({
        "name": "paper", "output_dir": "out", "search_spaces": str(ROOT / "search_spaces"), "datasets": [dataset],
        "methods": ["pca"], "tasks": tasks, "final": {"seeds": [0]}}, sort_keys=False))
    return path


def _boom(*args, **kwargs):
    raise AssertionError("a data set was prepared: the error came after the checks that need no compute")


# (case, the pancreas file's layout, the data set's keys in the experiment, tasks, texts expected)
CLI_CASES = [
    ("file without the batch key", {"batch_key": "tech"}, {}, ["cell_typing"],
     ["'batchlb'", "batch_key", "(`name: pancreas`)"]),
    ("file without the query batch", {"batches": ["Baron_b1", "Wang_b4"]}, {}, ["cell_typing"],
     ["['Mutaro_b2']", "query_batches", "(`name: pancreas`)"]),
    ("batch correction only, cell typing asked", {}, {"name": "mca", "path": "data/MCA.h5ad"}, ["cell_typing"],
     ["datasets.0.query_batches", "the cell_typing task needs query batches for data set 'mca'"]),
    ("CITE-seq without its proteins", {}, {"name": "pbmc_m", "path": "data/adata_RNA_full.h5ad"}, ["batch_correction"],
     ["datasets.0", "adata_Protein_full.h5ad", "`modality: {path: ...}`"]),
]


@pytest.mark.parametrize(("case", "layout", "dataset", "tasks", "expected"), CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_scssl_run_with_a_bad_paper_data_set_exits_2_before_any_compute(tmp_path, capsys, monkeypatch, case, layout,
                                                                        dataset, tasks, expected):
    monkeypatch.setattr("scssl.study.prepare", _boom)
    name = dataset.get("name", "pancreas")
    rna, _ = _write(tmp_path / "data", PAPER_DATASETS[name], **layout)
    experiment = _experiment(tmp_path, {"name": name, "path": f"data/{rna.name}", **dataset}, tasks)
    assert main(["run", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scssl: error: ") and "Traceback" not in err, err
    for text in [str(experiment), *expected] + ([str(rna)] if layout else []):
        assert text in err, f"{text!r} not in:\n{err}"
    assert not (tmp_path / "out").exists(), "the study folder was made before the error"


def test_scssl_datasets_lists_the_papers_with_the_files_they_need(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "bmmc_cite_starter (RNA)" in out
    for name, ds in PAPER_DATASETS.items():
        assert f"{name} ({ds.title}, " in out and f"give `path` (the paper's {ds.file})" in out
        assert f"batch_key={ds.batch_key} labels_key={ds.labels_key}" in out
    assert "bmmc (BMMC, RNA + protein; give `path` (the paper's adata_neurips_GEX_full.h5ad) and " \
           "`modality: {path: ...}` (adata_neurips_ADT_full.h5ad))" in out
    assert "query_batches=['Mutaro_b2'] n_hvgs=4000" in out

"""Gene programmes read from GMT files and matched to the data's genes, and the masked autoencoder's masks."""

import h5py
import numpy as np
import pytest
import torch

from scssl.augment.masks import Masker
from scssl.data.builtin import BUILTIN_DATASETS
from scssl.data.gene_programs import (
    BUILTIN_GENE_PROGRAMS, load_gene_programs, match_programs, read_gmt, resolve_gene_programs, tf_programs,
)
from scssl.data.prepare import DataError
from scssl.settings import ConfigError

N_CELLS, N_GENES, N_PROGRAMS = 512, 200, 20
GENES = [f"G{i:03d}" for i in range(N_GENES)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def _x(device="cpu", seed=0):
    """Strictly positive expression, so that an input entry is 0 exactly where it was masked."""
    return (torch.rand(N_CELLS, N_GENES, generator=_gen(seed)) + 0.5).to(device)


@pytest.fixture(scope="module")
def programs():
    """20 programmes of 3 to 14 overlapping genes; the last 20 genes are in none."""
    rng = np.random.default_rng(0)
    gmt = {f"P{p}": [GENES[g] for g in rng.choice(N_GENES - 20, rng.integers(3, 15), replace=False)]
           for p in range(N_PROGRAMS)}
    return match_programs(gmt, GENES, "test.gmt")


def _write_gmt(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# --- masks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5, 0.8])
def test_random_masks_each_entry_at_the_rate_and_rescales_the_rest(rate, device):
    x = _x(device)
    masked = Masker("random", rate, device=device)(x, _gen(1, device))
    hidden = masked.loss_mask
    assert hidden.dtype == torch.bool and hidden.shape == x.shape
    assert abs(masked.fraction_masked - rate) < 0.02
    assert abs(hidden.float().mean(dim=0) - rate).max() < 0.1  # every gene, not a few columns
    assert torch.equal(hidden, masked.inputs == 0)  # loss on exactly the hidden entries
    assert torch.equal(masked.inputs[~hidden], x[~hidden] / (1 - rate))
    assert torch.equal(masked.target, x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rate, k", [(0.25, 5), (0.33, 7), (0.5, 10), (0.01, 1)])
def test_gene_program_hides_the_union_of_the_drawn_programmes_in_every_cell(programs, rate, k, device):
    x = _x(device)
    masked = Masker("gene_program", rate, programs, device)(x, _gen(2, device))
    chosen = masked.programs.cpu().numpy()
    assert len(set(chosen)) == k
    union = torch.from_numpy(programs.membership[chosen].any(axis=0)).to(device)
    assert torch.equal(masked.loss_mask, union.expand_as(x))
    assert torch.equal(masked.inputs == 0, union.expand_as(x))
    kept = N_GENES - int(union.sum())
    torch.testing.assert_close(masked.inputs[:, ~union], x[:, ~union] * (N_GENES / kept), rtol=1e-6, atol=0)
    assert masked.fraction_masked == pytest.approx(1 - kept / N_GENES)
    assert torch.equal(masked.target, x)


@pytest.mark.parametrize("device", DEVICES)
def test_isolated_gp_to_gp_shows_and_scores_one_programme_per_cell(programs, device):
    x = _x(device)
    masked = Masker("isolated_gp_to_gp", 0.5, programs, device)(x, _gen(3, device))
    choice = masked.programs.cpu().numpy()
    assert choice.shape == (N_CELLS,)
    assert len(set(choice)) == N_PROGRAMS  # cells draw their own programme, each one in 512 cells
    own = torch.from_numpy(programs.membership[choice]).to(device)
    assert torch.equal(masked.inputs != 0, own)
    assert torch.equal(masked.inputs[own], x[own])  # no rescaling
    assert torch.equal(masked.loss_mask, own)
    assert torch.equal(masked.target, x)


def _tf_programs():
    """TF-target programmes over GENES with TFs renamed in: programme p's TF is gene 180 + p; programme 0
    lists its own TF among its targets, programme 3's TF is not among the genes."""
    genes = list(GENES)
    tfs = [f"TF{p}" for p in range(5)]
    for p, tf in enumerate(tfs[:3] + tfs[4:]):
        genes[180 + p] = tf
    rng = np.random.default_rng(1)
    gmt = {f"{tf}_TARGET_GENES": [genes[g] for g in rng.choice(150, 8, replace=False)] for tf in tfs}
    gmt["TF0_TARGET_GENES"].append("tf0")
    return tf_programs(match_programs(gmt, genes, "tft.gmt"), genes), genes


@pytest.mark.parametrize("device", DEVICES)
def test_isolated_gp_to_tf_scores_only_the_programme_tf(device):
    (programs, skipped), genes = _tf_programs()
    assert skipped == 1 and "TF3_TARGET_GENES" not in programs.names
    x = _x(device)
    masked = Masker("isolated_gp_to_tf", 0.5, programs, device)(x, _gen(4, device))
    choice = masked.programs.cpu().numpy()
    assert len(set(choice)) == programs.n_programs
    assert torch.equal(masked.loss_mask.sum(dim=1), torch.ones(N_CELLS, dtype=torch.long, device=device))
    scored = masked.loss_mask.nonzero()[:, 1].cpu().numpy()
    by_name = [genes.index(programs.names[p].split("_")[0]) for p in choice]
    assert scored.tolist() == by_name
    assert (masked.inputs[np.arange(N_CELLS), scored] == 0).all()  # the input never holds the target
    own = torch.from_numpy(programs.membership[choice]).to(device)
    assert torch.equal(masked.inputs != 0, own)
    assert torch.equal(masked.target, x)


@pytest.mark.parametrize("strategy", ["random", "gene_program", "isolated_gp_to_gp", "isolated_gp_to_tf"])
def test_masks_repeat_with_the_seed(programs, strategy):
    if strategy == "isolated_gp_to_tf":
        (programs, _), _ = _tf_programs()
    masker = Masker(strategy, 0.3, programs)
    x = _x()
    first, again, other = (masker(x, _gen(seed)) for seed in (7, 7, 8))
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.loss_mask, again.loss_mask)
    assert not torch.equal(first.loss_mask, other.loss_mask)


def test_masker_refuses_what_it_cannot_mask(programs):
    with pytest.raises(ValueError, match="unknown masking strategy"):
        Masker("genes", 0.5)
    for strategy in ("gene_program", "isolated_gp_to_gp", "isolated_gp_to_tf"):
        with pytest.raises(ValueError, match="needs gene programmes"):
            Masker(strategy, 0.5)
    with pytest.raises(ValueError, match="tf_programs"):
        Masker("isolated_gp_to_tf", 0.5, programs)
    with pytest.raises(ValueError, match="rate"):
        Masker("random", 1.0)
    with pytest.raises(ValueError, match="shape"):
        Masker("gene_program", 0.5, programs)(torch.ones(4, N_GENES - 1), _gen())


# --- gene programmes -------------------------------------------------------------------------------------


def test_gmt_symbols_match_case_insensitively_and_missing_ones_are_counted(tmp_path):
    path = _write_gmt(tmp_path / "sets.gmt", [
        "T_CELL\tna\tcd3e\tCd4\tNOT_A_GENE\t",
        "",
        "B_CELL\thttp://x\tMS4A1\tcd79a",
        "ONLY_MISSING\tna\tXYZ1\tXYZ2",
    ])
    assert read_gmt(path) == {"T_CELL": ["cd3e", "Cd4", "NOT_A_GENE"], "B_CELL": ["MS4A1", "cd79a"],
                              "ONLY_MISSING": ["XYZ1", "XYZ2"]}
    genes = ["CD79A", "CD3E", "LYZ", "CD4", "Ms4a1"]
    gp = load_gene_programs(path, genes)
    assert gp.names == ("T_CELL", "B_CELL") and gp.n_programs == 2
    assert gp.membership.tolist() == [[False, True, False, True, False], [True, False, False, False, True]]
    assert gp.n_genes_matched == 4 and gp.source == str(path) and gp.tf_columns is None
    with pytest.raises(DataError) as err:
        load_gene_programs(path, genes, min_genes=3)
    assert str(path) in str(err.value) and "at least 3" in str(err.value)


def test_a_gmt_matching_no_gene_names_the_file_and_examples(tmp_path):
    path = _write_gmt(tmp_path / "mouse.gmt", ["SET_A\tna\tCd4x\tLyzz\tFoo1", "SET_B\tna\tBar2"])
    with pytest.raises(DataError) as err:
        load_gene_programs(path, ["ENSG01", "ENSG02", "ENSG03", "ENSG04"])
    message = str(err.value)
    assert err.value.key == "gene_programs"
    assert str(path) in message and "none of the data's genes" in message
    assert "2 programmes" in message and "4 genes" in message
    assert all(s in message for s in ("Cd4x", "Lyzz", "Foo1", "ENSG01", "ENSG02", "ENSG03"))


def test_unreadable_or_malformed_gmt_is_a_data_error_naming_file_and_line(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        read_gmt(tmp_path / "absent.gmt")
    assert err.value.key == "gene_programs" and "absent.gmt" in str(err.value)
    bad = _write_gmt(tmp_path / "bad.gmt", ["OK\tna\tCD4", "NO_GENES only spaces here"])
    with pytest.raises(DataError, match=r"bad\.gmt, line 2"):
        read_gmt(bad)
    twice = _write_gmt(tmp_path / "twice.gmt", ["A\tna\tCD4", "A\tna\tCD8A"])
    with pytest.raises(DataError, match=r"line 2.*line 1"):
        read_gmt(twice)


def test_tf_programs_take_the_tf_from_the_name_and_skip_absent_ones():
    genes = ["STAT1", "IRF1", "CXCL10", "GBP1", "SOCS1", "IRF8", "Nr_1"]
    gmt = {"STAT1_TARGET_GENES": ["CXCL10", "gbp1", "stat1"], "irf1": ["SOCS1", "CXCL10"], "NR_1": ["GBP1"],
           "MYC_TARGET_GENES": ["GBP1"], "IRF8_TARGET_GENES": ["irf8"]}
    tf, skipped = tf_programs(match_programs(gmt, genes, "tft.gmt"), genes)
    assert tf.names == ("STAT1_TARGET_GENES", "irf1", "NR_1")  # a whole name that is a gene names the TF
    assert skipped == 2  # MYC is not among the genes; IRF8's programme holds only IRF8
    assert tf.tf_columns.tolist() == [0, 1, 6]
    assert tf.membership.astype(int).tolist() == [[0, 0, 1, 1, 0, 0, 0], [0, 0, 1, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0, 0]]
    assert tf.n_genes_matched == 3
    with pytest.raises(DataError, match="transcription factor") as err:
        tf_programs(match_programs({"MYC_TARGET_GENES": ["GBP1"]}, genes, "tft.gmt"), genes)
    assert err.value.key == "gene_programs" and "tft.gmt" in str(err.value)


def test_gene_programmes_resolve_by_builtin_name_or_path(tmp_path):
    assert resolve_gene_programs("hallmark") == BUILTIN_GENE_PROGRAMS["hallmark"]
    path = _write_gmt(tmp_path / "own.gmt", ["A\tna\tCD4"])
    assert resolve_gene_programs(str(path)) == path
    assert resolve_gene_programs("own.gmt", base_dir=tmp_path) == path
    with pytest.raises(ConfigError, match="hallmark"):
        resolve_gene_programs("halmark")


@pytest.mark.parametrize("dataset, min_programs, min_genes",
                         [("bmmc_cite_starter", 45, 300), ("pbmc_hao2021", 40, 150)])
def test_shipped_hallmark_programmes_match_the_builtin_data(dataset, min_programs, min_genes):
    with h5py.File(BUILTIN_DATASETS[dataset].path, "r") as f:
        var = f["var"]
        genes = [g.decode() for g in var[var.attrs["_index"]][:]]
    gp = load_gene_programs(resolve_gene_programs("hallmark"), genes)
    assert gp.n_programs >= min_programs and gp.n_genes_matched >= min_genes
    assert len(read_gmt(BUILTIN_GENE_PROGRAMS["hallmark"])) == 50

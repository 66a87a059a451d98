"""Gene programmes (named gene sets of a GMT file) matched to a data set's genes, for the masked
autoencoder's programme masking.

A programme becomes one row of a boolean membership matrix whose columns are the data's genes in the
data's order, so that a mini-batch mask is a row gather. Symbols match case-insensitively, since GMT
files and data sets disagree on case (``Cd4`` against ``CD4``). For GP->TF masking each programme is
read as the targets of the transcription factor its name starts with (MSigDB C3 ``STAT1_TARGET_GENES``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scssl.data.builtin import BUILTIN_DIR
from scssl.data.spec import DataError
from scssl.settings import ConfigError

KEY = "gene_programs"

BUILTIN_GENE_PROGRAMS: dict[str, Path] = {
    "hallmark": BUILTIN_DIR / "msigdb_hallmark_v7.0.gmt",  # CC BY 4.0, see GENE_PROGRAMS.md
}


@dataclass(frozen=True, eq=False)
class GenePrograms:
    """Programmes over the data's genes: ``membership[p, g]`` says gene column g is in programme p.

    ``n_genes_matched`` counts the data's genes that are in at least one programme. ``tf_columns[p]`` is
    the column of programme p's transcription factor, which is then not in its own row (set by
    ``tf_programs`` only).
    """

    names: tuple[str, ...]
    membership: np.ndarray
    source: str
    n_genes_matched: int
    tf_columns: np.ndarray | None = None

    @property
    def n_programs(self) -> int:
        return len(self.names)


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Programme name -> gene symbols, from lines ``name<TAB>description<TAB>gene<TAB>gene...``.

    Blank lines are skipped; a line without a name and at least one gene, or a name given twice, is a
    DataError naming the file and line, so a truncated or mis-delimited file fails before training.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: gene-programme file not found", KEY)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the gene-programme file: {err}", KEY) from err
    programs: dict[str, list[str]] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split("\t")]
        genes = [gene for gene in fields[2:] if gene]
        if len(fields) < 3 or not fields[0] or not genes:
            raise DataError(
                f"{path}, line {number}: expected 'name<TAB>description<TAB>gene...' with at least one gene, "
                f"got {len(fields)} tab-separated field(s)", KEY)
        if fields[0] in programs:
            raise DataError(f"{path}, line {number}: programme {fields[0]!r} already given on line "
                            f"{first_line[fields[0]]}", KEY)
        programs[fields[0]] = genes
        first_line[fields[0]] = number
    if not programs:
        raise DataError(f"{path}: the gene-programme file has no programme", KEY)
    return programs


def _columns_by_symbol(genes: Sequence[str]) -> dict[str, list[int]]:
    """Upper-cased symbol -> the data's columns of that symbol (several where names differ only in case)."""
    columns: dict[str, list[int]] = {}
    for column, gene in enumerate(genes):
        columns.setdefault(str(gene).upper(), []).append(column)
    return columns


def match_programs(gmt: dict[str, list[str]], genes: Sequence[str], source: str, min_genes: int = 1) -> GenePrograms:
    """The programmes of ``gmt`` over ``genes`` (the data's gene names, in column order); programmes with
    fewer than ``min_genes`` of the data's genes are dropped. ``source`` names the file in errors."""
    if min_genes < 1:
        raise ValueError(f"min_genes must be at least 1, got {min_genes}")
    columns = _columns_by_symbol(genes)
    membership = np.zeros((len(gmt), len(genes)), dtype=bool)
    for row, symbols in enumerate(gmt.values()):
        for symbol in symbols:
            membership[row, columns.get(symbol.upper(), [])] = True
    sizes = membership.sum(axis=1)
    keep = sizes >= min_genes
    if not keep.any():
        gmt_examples = list(dict.fromkeys(symbol for symbols in gmt.values() for symbol in symbols))[:3]
        what = ("matches none of the data's genes" if sizes.max(initial=0) == 0
                else f"has no programme with at least {min_genes} of the data's genes (the most is {sizes.max()})")
        raise DataError(
            f"{source}: the gene-programme file {what}: {len(gmt)} programmes against {len(genes)} genes; "
            f"programme symbols e.g. {gmt_examples}, data genes e.g. {[str(g) for g in list(genes)[:3]]} "
            "(symbols of another species or another kind of identifier, such as Ensembl IDs?)", KEY)
    membership = membership[keep]
    membership.setflags(write=False)
    names = tuple(name for name, kept in zip(gmt, keep) if kept)
    return GenePrograms(names, membership, source, int(membership.any(axis=0).sum()))


def tf_programs(programs: GenePrograms, genes: Sequence[str]) -> tuple[GenePrograms, int]:
    """The programmes for GP->TF masking and how many were skipped.

    A programme's TF is its whole name where that is one of the data's genes, else the part of its name
    before the first "_" (``STAT1_TARGET_GENES`` -> STAT1), matched case-insensitively. The TF's column
    leaves its programme's row, since the input must not hold the target. Programmes whose TF is not
    among the genes, or that hold no other gene, are skipped.
    """
    if len(genes) != programs.membership.shape[1]:
        raise ValueError(f"{len(genes)} gene names for programmes over {programs.membership.shape[1]} genes")
    columns = _columns_by_symbol(genes)
    names, rows, tf_columns = [], [], []
    for name, members in zip(programs.names, programs.membership):
        symbol = name.upper() if name.upper() in columns else name.split("_", 1)[0].upper()
        if symbol not in columns:
            continue
        members = members.copy()
        members[columns[symbol]] = False
        if members.any():
            names.append(name)
            rows.append(members)
            tf_columns.append(columns[symbol][0])
    if not rows:
        tfs = list(dict.fromkeys(name.split("_", 1)[0] for name in programs.names))[:3]
        raise DataError(
            f"{programs.source}: no gene programme's transcription factor is among the data's {len(genes)} genes "
            f"({programs.n_programs} programmes, TFs looked for e.g. {tfs}; a programme's TF is its name, or "
            "the part of its name before the first '_')", KEY)
    membership = np.stack(rows)
    tf_array = np.asarray(tf_columns, dtype=np.int64)
    membership.setflags(write=False)
    tf_array.setflags(write=False)
    matched = int(membership.any(axis=0).sum())
    return GenePrograms(tuple(names), membership, programs.source, matched, tf_array), programs.n_programs - len(rows)


def load_gene_programs(path: str | Path, genes: Sequence[str], min_genes: int = 1) -> GenePrograms:
    """``read_gmt`` then ``match_programs``, the file's path as the source."""
    return match_programs(read_gmt(path), genes, str(path), min_genes)


def resolve_gene_programs(name_or_path: str, base_dir: Path | None = None) -> Path:
    """The GMT file of a built-in collection's name, else of a path (a relative one from ``base_dir``,
    default the working directory); neither is a ConfigError listing the built-in names."""
    if name_or_path in BUILTIN_GENE_PROGRAMS:
        return BUILTIN_GENE_PROGRAMS[name_or_path]
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(f"gene_programs {name_or_path!r} is neither a built-in collection "
                          f"({', '.join(BUILTIN_GENE_PROGRAMS)}) nor an existing GMT file")
    return path

"""The second modality of paired cells: read from a second ``.h5ad`` or from the data set's ``.h5mu``, paired
with the RNA by cell name, and preprocessed for its kind (protein CLR or log1p; ATAC top peaks, binarised,
TF-IDF). Feature selection uses reference cells only, as the RNA's HVGs do."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

from scssl.data.spec import DataError, DatasetSpec, ModalitySpec


@dataclass
class Modality:
    """A preprocessed second modality, rows in the data set's cell order: ``X`` what a method sees, ``target``
    what missing-modality prediction predicts (protein: ``X``; ATAC: the binary accessibility), ``counts`` the
    raw counts of its features (for methods with a count likelihood)."""

    kind: str
    features: np.ndarray
    X: sp.csr_matrix
    target: sp.csr_matrix
    counts: sp.csr_matrix


def read_h5mu(path: str | Path):
    """A ``.h5mu`` file as a MuData; any file that is not one is a DataError (key ``path``) with the reason."""
    import mudata

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found", "path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mudata.read_h5mu(path)
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"{path}: not a readable .h5mu file ({reason})", "path") from None


def modality_of(data, mod: str, source: str, key: str) -> ad.AnnData:
    """Modality ``mod`` of MuData ``data`` (read from ``source``), with the file's global obs columns added where
    the modality lacks them (batch and label may be kept at either level)."""
    if mod not in data.mod:
        raise DataError(f"{source}: no modality {mod!r}; modalities are {list(data.mod)}", key)
    adata = data.mod[mod].copy()
    shared = data.obs.reindex(adata.obs_names)
    for column in shared.columns:
        if column not in adata.obs:
            adata.obs[column] = shared[column].to_numpy()
    return adata


def pair_cells(rna: ad.AnnData, other: ad.AnnData, kind: str
               ) -> tuple[ad.AnnData, ad.AnnData, ad.AnnData | None, list[str]]:
    """The cells measured in both modalities (RNA and other, in the RNA's order), those measured by RNA
    alone (mosaic data; None if there are none), and one note per kind of unpaired cell: the RNA-only ones
    are kept for the methods that train on them, those without RNA dropped."""
    for names, what in ((other.obs_names, "cell"), (other.var_names, "feature")):
        repeated = names[names.duplicated()].unique()
        if len(repeated):
            raise DataError(f"{len(repeated)} {what} names of the {kind} data occur more than once, e.g. "
                            f"{list(map(str, repeated[:3]))}; expected unique names: call "
                            f"adata.{'obs' if what == 'cell' else 'var'}_names_make_unique() and write the file again",
                            "modality.path")
    in_other = rna.obs_names.isin(other.obs_names)
    in_rna = other.obs_names.isin(rna.obs_names)
    if not in_other.any():
        raise DataError(f"no cell name of the RNA (e.g. {', '.join(rna.obs_names[:3])}) is among the {kind} "
                        f"file's (e.g. {', '.join(other.obs_names[:3])}); the two must name the same cells",
                        "modality.path")
    notes, rna_only = [], None
    if not in_other.all():
        notes.append(f"kept {int((~in_other).sum())} cells with RNA but no {kind} measurement (mosaic) for the "
                     "methods that train on them (totalVI, MultiVI); the tasks score the paired cells")
        rna_only = rna[~in_other].copy()
    if not in_rna.all():
        notes.append(f"dropped {int((~in_rna).sum())} cells with {kind} but no RNA measurement (mosaic)")
    rna = rna[in_other].copy()
    return rna, other[rna.obs_names].copy(), rna_only, notes


def preprocess(spec: ModalitySpec, counts: sp.csr_matrix, features: np.ndarray, is_reference: np.ndarray) -> Modality:
    """``counts`` (cells x features, the data set's cells) preprocessed for ``spec.kind``."""
    from scssl.data.modalities import binarise, clr, log_normalise, tfidf, top_features_by_count

    if spec.kind == "protein":
        X = clr(counts) if spec.normalisation == "clr" else log_normalise(counts)
        X = sp.csr_matrix(X, dtype=np.float32)
        return Modality("protein", features, X, X, sp.csr_matrix(counts, dtype=np.float32))
    peaks = top_features_by_count(counts[is_reference], spec.n_features)
    binary = sp.csr_matrix(binarise(counts[:, peaks]), dtype=np.float32)
    return Modality("atac", features[peaks], sp.csr_matrix(tfidf(binary), dtype=np.float32), binary,
                    sp.csr_matrix(counts[:, peaks], dtype=np.float32))


def other_modality(spec: DatasetSpec, data=None) -> ad.AnnData:
    """The second modality's AnnData of a resolved ``spec``: a modality of ``data``, the MuData of the data
    set's ``.h5mu``, or its own ``.h5ad``."""
    from scssl.data.prepare import read_h5ad

    modality = spec.modality
    if modality.mod is not None:
        return modality_of(data, modality.mod, spec.path, "modality.mod")
    try:
        return read_h5ad(modality.path)
    except DataError as err:
        raise DataError(str(err), "modality.path") from None

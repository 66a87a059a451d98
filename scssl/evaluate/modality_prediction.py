"""scSSL-Bench's missing-modality prediction: reference and query cells are embedded from RNA alone, and each
query cell's other modality (protein or chromatin accessibility) is predicted as the mean over its k = 5
cosine-nearest reference cells. How well that works says how much of the other modality the RNA embedding holds."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from scssl.neighbours import nearest

K_MODALITY = 5


def knn_modality_prediction(
    ref_embedding: np.ndarray, ref_other, query_embedding: np.ndarray, k: int = K_MODALITY
) -> np.ndarray:
    """Each query cell's other modality as the mean of ``ref_other`` (dense or sparse) over its ``k``
    cosine-nearest reference cells (all of them if fewer): dense float32, query cells x features."""
    if len(ref_embedding) != ref_other.shape[0]:
        raise ValueError(f"{len(ref_embedding)} reference embeddings but {ref_other.shape[0]} rows of ref_other")
    k = min(k, len(ref_embedding))
    rows = nearest(ref_embedding, query_embedding, k, metric="cosine")[1]
    # a (query x reference) matrix of 1/k at each query cell's neighbours: one product averages dense or sparse rows
    averaging = sp.csr_matrix((np.full(rows.size, 1 / k), rows.ravel(), np.arange(0, rows.size + 1, k)),
                              shape=(len(rows), len(ref_embedding)))
    predicted = averaging @ ref_other
    return np.asarray(predicted.toarray() if sp.issparse(predicted) else predicted, dtype=np.float32)


def modality_prediction_scores(true, predicted: np.ndarray, binary: bool = False) -> dict[str, float]:
    """How close the predicted other modality is to the measured one (both query cells x features).

    ``pearson`` (the paper's headline), ``pearson_min`` and ``pearson_max`` summarise the Pearson r between
    each query cell's true and predicted feature vectors; ``spearman`` is the mean over cells of the
    Spearman rank correlation (Richter et al.'s second score); ``feature_pearson`` is the mean over features
    of the r across cells; ``mse`` and ``rmse`` run over all entries. A cell or feature whose true or predicted values are
    constant has no r and is left out of these summaries; with none left they are NaN. With ``binary``
    (accessibility), ``auroc`` scores the predictions as a ranking of the open (> 0) entries, NaN where the
    truth holds only one class.
    """
    true = np.asarray(true.toarray() if sp.issparse(true) else true, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if true.shape != predicted.shape:
        raise ValueError(f"true values have shape {true.shape} but predictions {predicted.shape}")
    per_cell = _defined(_row_pearson(true, predicted))
    per_feature = _defined(_row_pearson(true.T, predicted.T))
    scores = {
        "pearson": _summary(np.mean, per_cell),
        "pearson_min": _summary(np.min, per_cell),
        "pearson_max": _summary(np.max, per_cell),
        "spearman": _summary(np.mean, _defined(_row_pearson(rankdata(true, axis=1), rankdata(predicted, axis=1)))),
        "feature_pearson": _summary(np.mean, per_feature),
        "mse": float(np.mean((true - predicted) ** 2)),
        "rmse": float(np.sqrt(np.mean((true - predicted) ** 2))),
    }
    if binary:
        is_open = true.ravel() > 0
        one_class = is_open.all() or not is_open.any()
        scores["auroc"] = np.nan if one_class else float(roc_auc_score(is_open, predicted.ravel()))
    return scores


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``a`` with the same row of ``b``; NaN where either row is constant."""
    defined = ~(_constant_rows(a) | _constant_rows(b))
    a = a[defined] - a[defined].mean(axis=1, keepdims=True)
    b = b[defined] - b[defined].mean(axis=1, keepdims=True)
    r = np.full(len(defined), np.nan)
    r[defined] = np.clip((a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1)), -1, 1)
    return r


def _constant_rows(x: np.ndarray) -> np.ndarray:
    """Exactly constant rows: centring by a rounded mean would leave noise that looks like variation."""
    return (x == x[:, :1]).all(axis=1)


def _defined(r: np.ndarray) -> np.ndarray:
    return r[~np.isnan(r)]


def _summary(statistic, values: np.ndarray) -> float:
    return float(statistic(values)) if len(values) else np.nan

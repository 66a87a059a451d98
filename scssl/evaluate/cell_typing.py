"""Query-to-reference cell typing: kNN (k = 11, Euclidean, uniform) fitted on reference embeddings, and the
label-transfer scores it shares with fine-tuned classifiers."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from scssl.neighbours import majority_vote, nearest

K_NEIGHBORS = 11


def knn_predict(ref_emb: np.ndarray, ref_labels: np.ndarray, query_emb: np.ndarray, k: int = K_NEIGHBORS):
    """Each query cell's majority label among its ``k`` nearest reference cells (Euclidean, uniform votes)."""
    return majority_vote(ref_labels, nearest(ref_emb, query_emb, k)[1])


def knn_cell_typing(
    ref_emb: np.ndarray, ref_labels: np.ndarray, query_emb: np.ndarray, query_labels: np.ndarray,
    k: int = K_NEIGHBORS,
) -> dict[str, float]:
    """Macro-F1 and accuracy of kNN label transfer to the query (see ``label_transfer_scores``)."""
    return label_transfer_scores(ref_labels, query_labels, knn_predict(ref_emb, ref_labels, query_emb, k))


def label_transfer_scores(ref_labels: np.ndarray, query_labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Macro-F1 and accuracy of query labels ``predicted`` by any classifier trained on the reference.

    ``macro_f1`` / ``accuracy`` count only query cells whose type occurs in the reference, and
    average F1 over those types (the study's ``exclude=True``); the ``_all`` variants keep every
    query cell, so types absent from the reference count as errors.
    """
    query_labels, predicted = np.asarray(query_labels), np.asarray(predicted)
    shared = np.isin(query_labels, np.asarray(ref_labels))
    shared_types = np.unique(query_labels[shared])
    return {
        "macro_f1": float(f1_score(query_labels[shared], predicted[shared], labels=shared_types,
                                   average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(query_labels[shared], predicted[shared])),
        "macro_f1_all": float(f1_score(query_labels, predicted, average="macro", zero_division=0)),
        "accuracy_all": float(accuracy_score(query_labels, predicted)),
    }


def validation_split(labels: np.ndarray, fraction: float, max_cells: int, seed: int) -> np.ndarray:
    """A fixed boolean mask of validation cells, the same for every trial of a study."""
    n = len(labels)
    n_val = max(1, min(max_cells, round(fraction * n)))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=n_val, replace=False)] = True
    return mask


def knn_accuracy(embedding: np.ndarray, labels: np.ndarray, is_validation: np.ndarray) -> float:
    """kNN accuracy of the validation cells, classified by the others: cheap, comparable per epoch."""
    predicted = knn_predict(embedding[~is_validation], labels[~is_validation], embedding[is_validation])
    return float(accuracy_score(labels[is_validation], predicted))

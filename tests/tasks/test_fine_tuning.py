import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scssl.evaluate.fine_tuning import fine_tune
from scssl.evaluate.settings import FineTuneSettings


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Networks this small gain nothing from threads, and on a busy machine two spinning threads per
    process make them ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallEncoder(torch.nn.Sequential):
    def forward(self, x, codes=None):  # an encoder's input: rows and their batch codes (none read here)
        return super().forward(x)


def small_encoder(n_genes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return SmallEncoder(torch.nn.Linear(n_genes, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                        torch.nn.Linear(32, 8))


def split(prepared):
    labels = prepared.obs["label"].to_numpy()
    ref, query = prepared.reference_index, prepared.query_index
    return prepared.X[ref], labels[ref], prepared.X[query], labels[query]


def imbalanced_cells(seed: int):
    """Two overlapping Gaussian types, the rare one 1 in 21 reference cells; the query holds only rare cells,
    so its accuracy is the rare type's recall."""
    rng = np.random.default_rng(seed)

    def cells(n, rare):
        x = rng.normal(size=(n, 20)).astype(np.float32)
        x[:, 0] += 1.5 * rare
        return x

    X_ref = np.vstack([cells(500, False), cells(25, True)])
    return X_ref, np.array(["common"] * 500 + ["rare"] * 25), cells(300, True), np.array(["rare"] * 300)


def test_fine_tuned_encoder_types_the_query_cells(prepared):
    X_ref, ref_labels, X_query, query_labels = split(prepared)
    n_types = len(np.unique(ref_labels))
    scores = fine_tune(small_encoder(X_ref.shape[1]), 8, X_ref, ref_labels, X_query, query_labels,
                       FineTuneSettings(epochs=5, batch_size=64), seed=0)
    assert set(scores) == {"macro_f1", "accuracy", "macro_f1_all", "accuracy_all"}
    assert n_types == 4 and scores["macro_f1"] > 0.8  # chance: 0.25
    assert scores["macro_f1_all"] == scores["macro_f1"]  # every query type is in the reference


def test_query_types_missing_from_the_reference_count_only_in_the_all_scores(prepared):
    X_ref, ref_labels, X_query, query_labels = split(prepared)
    keep = ref_labels != "type3"
    scores = fine_tune(small_encoder(X_ref.shape[1]), 8, X_ref[keep], ref_labels[keep], X_query, query_labels,
                       FineTuneSettings(epochs=5, batch_size=64), seed=0)
    seen = np.mean(query_labels != "type3")  # the head never predicts type3, so those cells are all errors
    assert scores["accuracy_all"] == pytest.approx(scores["accuracy"] * seen)
    assert scores["accuracy"] > 0.8 and scores["macro_f1"] > scores["macro_f1_all"]


def test_the_callers_encoder_is_left_untouched(prepared):
    X_ref, ref_labels, X_query, query_labels = split(prepared)
    encoder = small_encoder(X_ref.shape[1]).eval()
    before = {name: value.clone() for name, value in encoder.state_dict().items()}  # BatchNorm statistics too
    fine_tune(encoder, 8, X_ref, ref_labels, X_query, query_labels, FineTuneSettings(epochs=2, batch_size=64), seed=0)
    assert not encoder.training
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_same_seed_same_scores_and_dense_equals_sparse():
    X_ref, ref_labels, X_query, query_labels = imbalanced_cells(0)
    encoder, settings = small_encoder(20), FineTuneSettings(epochs=3, batch_size=64)

    def run(X, seed):  # the global torch RNG moves on between runs: only the seed may fix the result
        return fine_tune(encoder, 8, X, ref_labels, X_query, query_labels, settings, seed=seed)

    first = run(X_ref, seed=0)
    assert run(X_ref, seed=0) == first
    assert run(sp.csr_matrix(X_ref), seed=0) == pytest.approx(first)
    assert run(X_ref, seed=1) != first  # the seed matters, so the equality above can fail


def test_a_last_batch_of_one_cell_is_skipped(prepared):
    X_ref, ref_labels, X_query, query_labels = split(prepared)
    batch_size = len(ref_labels) - 1  # the last batch holds one cell: BatchNorm would raise on it
    scores = fine_tune(small_encoder(X_ref.shape[1]), 8, X_ref, ref_labels, X_query, query_labels,
                       FineTuneSettings(epochs=1, batch_size=batch_size), seed=0)
    assert 0.0 <= scores["accuracy"] <= 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_class_weighting_finds_the_rare_type(seed):
    X_ref, ref_labels, X_query, query_labels = imbalanced_cells(seed)

    def rare_recall(class_weighted):
        settings = FineTuneSettings(epochs=20, batch_size=64, class_weighted=class_weighted)
        return fine_tune(small_encoder(20), 8, X_ref, ref_labels, X_query, query_labels, settings, seed=seed)["accuracy"]

    # Balanced weights move the boundary to where the types' densities cross (recall 0.77 for Bayes' rule);
    # unweighted, the common type's prior wins almost everywhere.
    assert rare_recall(True) > 0.3
    assert rare_recall(False) < 0.1


def test_settings_default_to_richters_classifier_and_are_checked():
    from scssl.settings import ConfigError, parse

    defaults = FineTuneSettings()
    assert (defaults.lr, defaults.weight_decay, defaults.class_weighted) == (9e-4, 0.05, True)
    with pytest.raises(ConfigError, match="batch_size"):
        parse(FineTuneSettings, {"batch_size": 1}, "experiment.yaml")  # BatchNorm needs 2 cells

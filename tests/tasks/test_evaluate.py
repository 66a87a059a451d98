import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import scib_metrics
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier

from scssl.evaluate import BATCH_METRICS, BIO_METRICS, exact_neighbors, knn_accuracy, knn_cell_typing, scib_scores
from scssl.evaluate.batch_correction import stratified_subsample
from scssl.evaluate.cell_typing import knn_predict, validation_split
from scssl.neighbours import nearest


def test_knn_cell_typing_equals_sklearn(rng):
    ref = rng.normal(size=(200, 8))
    ref_labels = np.array(["a", "b", "c", "d"])[rng.integers(4, size=200)]
    ref[:, 0] += (ref_labels == "a") * 3
    query = rng.normal(size=(120, 8))
    query_labels = np.array(["a", "b", "c", "new"])[rng.integers(4, size=120)]  # "new" is not in the reference
    query[:, 0] += (query_labels == "a") * 3

    scores = knn_cell_typing(ref, ref_labels, query, query_labels)

    predicted = KNeighborsClassifier(n_neighbors=11).fit(ref, ref_labels).predict(query)
    seen = query_labels != "new"
    assert scores["macro_f1_all"] == pytest.approx(f1_score(query_labels, predicted, average="macro"))
    assert scores["accuracy_all"] == pytest.approx(accuracy_score(query_labels, predicted))
    assert scores["accuracy"] == pytest.approx(accuracy_score(query_labels[seen], predicted[seen]))
    assert scores["macro_f1"] == pytest.approx(
        f1_score(query_labels[seen], predicted[seen], labels=["a", "b", "c"], average="macro")
    )
    assert scores["accuracy"] > scores["accuracy_all"]


def test_knn_votes_equal_sklearns_classifier_ties_included(rng):
    ref = rng.integers(0, 3, size=(300, 2)).astype(float)  # a coarse grid: many equal distances
    ref_labels = np.array(["b", "a", "c"])[rng.integers(3, size=300)]
    query = rng.integers(0, 3, size=(200, 2)).astype(float) + 0.5
    for k in (2, 4, 11):  # even k: many votes tie
        expected = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(ref, ref_labels).predict(query)
        assert np.array_equal(knn_predict(ref, ref_labels, query, k), expected), k


def test_nearest_neighbours_are_exact(rng):
    reference, queries = rng.normal(size=(500, 20)), rng.normal(size=(60, 20))
    distances, indices = nearest(reference, queries, 7)
    full = np.linalg.norm(queries[:, None] - reference[None], axis=2)
    assert np.array_equal(indices, np.argsort(full, axis=1)[:, :7])
    assert np.allclose(distances, np.sort(full, axis=1)[:, :7])
    assert nearest(reference[:5], queries, 7)[1].shape == (60, 5)  # fewer cells than k: all of them


def test_stratified_subsample_keeps_each_batch_and_type_share(rng):
    batch = rng.choice(["b0", "b1", "b2"], size=20_000, p=[0.5, 0.3, 0.2])
    labels = rng.choice(["common", "mid", "rare"], size=20_000, p=[0.7, 0.2997, 0.0003])
    rows = stratified_subsample(batch, labels, 2_000, seed=0)
    assert np.array_equal(rows, np.unique(rows)) and abs(len(rows) - 2_000) <= 9
    for b in ("b0", "b1", "b2"):
        for t in ("common", "mid"):
            group = (batch == b) & (labels == t)
            assert np.isin(np.flatnonzero(group), rows).sum() == int(group.sum() * 2_000 / 20_000), (b, t)
        rare = (batch == b) & (labels == "rare")
        assert np.isin(np.flatnonzero(rare), rows).sum() == min(1, rare.sum())  # at least one of each group
    assert np.array_equal(rows, stratified_subsample(batch, labels, 2_000, seed=0))
    assert not np.array_equal(rows, stratified_subsample(batch, labels, 2_000, seed=1))


def test_knn_accuracy_on_fixed_validation_cells(rng):
    labels = np.repeat([0, 1], 100)
    emb = rng.normal(size=(200, 4)) + labels[:, None] * 5
    is_val = validation_split(labels, 0.2, 1000, seed=0)
    assert is_val.sum() == 40 and np.array_equal(is_val, validation_split(labels, 0.2, 1000, seed=0))
    assert knn_accuracy(emb, labels, is_val) == 1.0
    assert validation_split(labels, 0.5, 30, seed=0).sum() == 30


@pytest.fixture(scope="module")
def scib_worker():
    """One spawned process for the scIB comparisons: JAX compiles scib-metrics' functions once (about 30 s)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def _cells(seed: int, n: int):
    """(embedding, pre-integration PCA, batch, labels) of ``n`` cells: three types, two batches, one of each
    shifting the embedding."""
    rng = np.random.default_rng(seed)
    labels = np.array(["t0", "t1", "t2"])[rng.integers(3, size=n)]
    batch = np.array(["b0", "b1"])[rng.integers(2, size=n)]
    emb = (rng.normal(size=(n, 10)) + (labels == "t1")[:, None] * 2 + (batch == "b1")[:, None] * 0.5).astype(np.float32)
    pre = rng.normal(size=(n, 20)).astype(np.float32) + (batch == "b1")[:, None]
    return emb, pre, batch, labels


def _scib_both_ways(seed: int) -> tuple[dict, dict]:
    """scssl's scIB scores and scib-metrics' own on one embedding. Run in a spawned process: JAX's threads
    must not live in the test process, which forks (Ray's start) in other tests."""
    emb, pre, batch, labels = _cells(seed, 300)

    scores = scib_scores(emb, batch, labels, pre)

    nn = exact_neighbors(emb, 90)
    leiden = scib_metrics.nmi_ari_cluster_labels_leiden(nn.subset_neighbors(15), labels)
    direct = {
        "isolated_labels": scib_metrics.isolated_labels(emb, labels, batch),
        "leiden_nmi": leiden["nmi"], "leiden_ari": leiden["ari"],
        "silhouette_label": scib_metrics.silhouette_label(emb, labels),
        "clisi": scib_metrics.clisi_knn(nn, labels),
        "silhouette_batch": scib_metrics.silhouette_batch(emb, labels, batch),
        "ilisi": scib_metrics.ilisi_knn(nn, batch),
        "kbet": scib_metrics.kbet_per_label(nn.subset_neighbors(50), batch, labels),
        "graph_connectivity": scib_metrics.graph_connectivity(nn.subset_neighbors(15), labels),
        "pcr_comparison": scib_metrics.pcr_comparison(pre, emb, batch, categorical=True),
    }
    return scores, {name: float(value) for name, value in direct.items()}


@pytest.mark.slow  # JAX compiles scib-metrics' functions first (kBET per label alone about 28 s here)
def test_scib_wrapper_equals_scib_metrics_called_directly(scib_worker):
    scores, direct = scib_worker.submit(_scib_both_ways, 0).result()
    for name, value in direct.items():
        assert scores[name] == pytest.approx(float(value), abs=1e-6), name
    bio = np.mean([direct[m] for m in BIO_METRICS])
    batch_score = np.mean([direct[m] for m in BATCH_METRICS])
    assert scores["bio_conservation"] == pytest.approx(bio, abs=1e-6)
    assert scores["batch_correction"] == pytest.approx(batch_score, abs=1e-6)
    assert scores["total"] == pytest.approx(0.6 * bio + 0.4 * batch_score, abs=1e-6)


def _scib_and_benchmarker(seed: int) -> tuple[dict, dict]:
    """scssl's scIB scores and the results table of scib-metrics' own Benchmarker (its default metric set, Leiden
    clustering added) on one embedding, neighbours exact (scikit-learn) for both. In a spawned process, as above."""
    import anndata as ad
    import pandas as pd
    from scib_metrics.benchmark import Benchmarker, BioConservation
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    n = 400
    labels = np.array(["t0", "t1", "t2", "t3"])[rng.integers(4, size=n)]
    batch = np.array(["b0", "b1", "b2"])[rng.integers(3, size=n)]
    emb = (rng.normal(size=(n, 12)) + (labels == "t1")[:, None] * 2 + (batch == "b1")[:, None] * 0.7).astype(np.float32)
    pre = rng.normal(size=(n, 20)).astype(np.float32) + (batch == "b1")[:, None]
    scores = scib_scores(emb, batch, labels, pre)

    def neighbours(X, k):
        distances, indices = NearestNeighbors(n_neighbors=k).fit(X).kneighbors(X)
        return NeighborsResults(indices=indices, distances=distances)

    cells = ad.AnnData(obs=pd.DataFrame({"batch": batch, "cell_type": labels}, index=[f"c{i}" for i in range(n)]),
                       obsm={"emb": emb, "pre": pre})
    benchmarker = Benchmarker(cells, batch_key="batch", label_key="cell_type", embedding_obsm_keys=["emb"],
                              bio_conservation_metrics=BioConservation(nmi_ari_cluster_labels_leiden=True),
                              pre_integrated_embedding_obsm_key="pre", progress_bar=False)
    benchmarker.prepare(neighbor_computer=neighbours)
    benchmarker.benchmark()
    table = benchmarker.get_results(min_max_scale=False)
    return scores, {name: float(value) for name, value in table.loc["emb"].items()}


def _scib_whole_and_subsample(seed: int) -> tuple[dict, dict]:
    """scssl's scIB scores of 600 cells with ``max_cells`` 300, and of the subsample it draws. Spawned, as above."""
    emb, pre, batch, labels = _cells(seed, 600)
    rows = stratified_subsample(batch, labels, 300, seed=3)
    return scib_scores(emb, batch, labels, pre, max_cells=300, seed=3), scib_scores(emb[rows], batch[rows],
                                                                                     labels[rows], pre[rows])


@pytest.mark.slow  # as above
def test_scib_beyond_max_cells_scores_the_stratified_subsample(scib_worker):
    capped, subsample = scib_worker.submit(_scib_whole_and_subsample, 2).result()
    assert capped["embedded_cells"] == 600 and capped["scib_cells"] == subsample["scib_cells"] == subsample[
        "embedded_cells"] < 600
    for name in BIO_METRICS + BATCH_METRICS:
        assert capped[name] == subsample[name], name


@pytest.mark.slow  # as above
def test_scib_scores_equal_scib_metrics_own_benchmarker(scib_worker):
    scores, table = scib_worker.submit(_scib_and_benchmarker, 1).result()
    theirs = {"isolated_labels": "Isolated labels", "leiden_nmi": "Leiden NMI", "leiden_ari": "Leiden ARI",
              "silhouette_label": "Silhouette label", "clisi": "cLISI", "ilisi": "iLISI", "kbet": "KBET",
              "graph_connectivity": "Graph connectivity", "pcr_comparison": "PCR comparison"}
    for ours, column in theirs.items():
        assert scores[ours] == pytest.approx(table[column], abs=1e-6), ours
    # Bio: the same five metrics as the Benchmarker's, which also averages its KMeans NMI and ARI
    bio = np.mean([table[theirs[m]] for m in BIO_METRICS])
    assert scores["bio_conservation"] == pytest.approx(bio, abs=1e-6)
    kmeans = [table["KMeans NMI"], table["KMeans ARI"]]
    assert table["Bio conservation"] == pytest.approx(np.mean([*(table[theirs[m]] for m in BIO_METRICS), *kmeans]))
